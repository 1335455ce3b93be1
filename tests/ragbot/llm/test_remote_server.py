"""The OpenAI-compatible backend against a real server: llama.cpp's (``python -m llama_cpp.server``, from the
``llamacpp`` extra) on the bundled GGUF, on a free local port. What a user of a shared server meets: a cited
answer, a refusal, concurrent questions, the server dying mid-answer, a wrong key, a prompt that does not fit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("llama_cpp.server.app", reason="needs the llamacpp extra (llama-cpp-python[server])")

from ragbot.errors import LLMServerError  # noqa: E402
from ragbot.generation import Generator  # noqa: E402
from ragbot.llm.remote import OpenAIChatModel  # noqa: E402
from ragbot.settings import REFUSAL, Settings  # noqa: E402
from ragbot.types import Chunk, ScoredChunk  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.llamacpp]

KEY = "sk-ragbot-test"
CONTEXT = 2048
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: Path, port: int) -> subprocess.Popen:
    """llama.cpp's server: one model, requests queued rather than interrupting each other; its log (llama.cpp
    writes ~170 KB at load: a pipe would fill and stall it) goes to a file next to the model."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "qwen",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT), "--api_key", KEY,
           "--interrupt_requests", "false", "--n_threads", str(min(2, os.cpu_count() or 1))]
    log = open(gguf.parent / f"llama-server-test-{port}.log", "wb")  # noqa: SIM115  (the server holds it)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}/v1"
    model = OpenAIChatModel("qwen", url, api_key=KEY, retries=0, connect_timeout_s=1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (gguf.parent / f"llama-server-test-{port}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"llama_cpp.server exited: {tail}")
        try:
            model.served()
            return proc
        except LLMServerError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def gguf(models_dir) -> Path:
    from ragbot.llm.llamacpp import bundled_gguf

    return bundled_gguf(models_dir, show_progress=False)


@pytest.fixture(scope="module")
def server(gguf):
    port = free_port()
    proc = start_server(gguf, port)
    yield f"http://127.0.0.1:{port}/v1"
    stop(proc)


def passages() -> list[ScoredChunk]:
    texts = ["LoRA 冻结预训练模型的权重，只在每层旁路训练两个低秩矩阵 A 和 B，可训练参数因此大大减少。",
             "Adam 优化器为每个参数维护一阶矩和二阶矩的滑动平均，默认 beta1 为 0.9，beta2 为 0.999。"]
    return [ScoredChunk(Chunk(id=f"c{i}", doc_id=f"d{i}", text=t, source=f"doc{i}.md"), 1.0, "rerank")
            for i, t in enumerate(texts)]


def model(url: str, **kw) -> OpenAIChatModel:
    return OpenAIChatModel("qwen", url, **{"api_key": KEY, "retries": 0, **kw})


def test_a_cited_answer_through_the_server(server):
    answer = Generator(model(server), max_new_tokens=96).run("LoRA 冻结什么？", passages())
    assert not answer.refused and answer.finish_reason in ("stop", "length")
    assert [c.chunk.id for c in answer.citations] == ["c0"], answer.text
    assert "冻结" in answer.text


def test_refusals_through_the_server(server):
    """Questions the passages do not answer: the 0.5B model refuses most (greedy, so the same ones each run)."""
    answers = [Generator(model(server), max_new_tokens=96).run(q, passages())
               for q in ("BERT 有多少层？", "GPT-4 有多少参数？", "Dropout 的丢弃率一般取多少？")]
    refused = [a for a in answers if a.refused]
    assert len(refused) >= 2, [a.raw_text for a in answers]
    assert all(a.text == REFUSAL and not a.citations and a.refused_by == "model" for a in refused)


def test_four_concurrent_questions_are_all_answered(server):
    m = model(server, concurrency=4)
    questions = ["LoRA 冻结什么？", "Adam 的 beta1 默认是多少？", "LoRA 为什么能减少可训练参数？", "Adam 维护哪些滑动平均？"]
    answers: dict[str, object] = {}

    def ask(q: str) -> None:
        answers[q] = Generator(m, max_new_tokens=48).run(q, passages())

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(answers) == set(questions)
    assert all(a.text and not a.refused for a in answers.values()), {q: a.text for q, a in answers.items()}


def test_a_wrong_key_is_a_clear_error(server):
    with pytest.raises(LLMServerError, match="rejected the API key .*RAGBOT_LLM_API_KEY"):
        model(server, api_key="sk-wrong").generate([{"role": "user", "content": "你好"}], max_new_tokens=4)


def test_a_prompt_longer_than_the_context_is_a_clear_error(server):
    long = [{"role": "user", "content": "低秩矩阵。" * 1200}]  # ~2,400+ tokens for a 2,048-token window
    with pytest.raises(LLMServerError, match="longer than the model's context .*maximum context length is 2048"):
        model(server).generate(long, max_new_tokens=16)
    # told the window, the client refuses before sending
    with pytest.raises(LLMServerError, match=f"does not fit the context window .*{CONTEXT} tokens"):
        model(server, context_window=CONTEXT).generate(long, max_new_tokens=16)


def test_the_server_killed_mid_answer(gguf, sample_index, models_dir):
    """The library raises after the partial text; ``ragbot ask`` exits non-zero and says the answer is incomplete."""
    port = free_port()
    proc = start_server(gguf, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        got = []
        with pytest.raises(LLMServerError, match="incomplete|closed the stream"):
            for piece in model(url).stream([{"role": "user", "content": "用五百字介绍神经网络的历史。"}],
                                            max_new_tokens=400, temperature=0.0):
                got.append(piece)
                if len(got) == 3:
                    os.killpg(proc.pid, signal.SIGKILL)
        assert len(got) >= 3
    finally:
        stop(proc)
    proc = start_server(gguf, port)
    assert models_dir.name == "models"  # the CLI finds the bundled embedder under <home>/models
    env = {**os.environ, "RAGBOT_HOME": str(models_dir.parent), "RAGBOT_INDEX_DIR": str(sample_index),
           "RAGBOT_LLM": "openai:qwen", "RAGBOT_LLM_BASE_URL": url, "RAGBOT_LLM_API_KEY": KEY,
           "RAGBOT_LLM_RETRIES": "0", "RAGBOT_MAX_NEW_TOKENS": "400", "RAGBOT_ALLOW_DOWNLOADS": "0"}
    ask = subprocess.Popen([sys.executable, "-m", "ragbot", "ask", "--json", "LoRA 的原理是什么？请详细说明。"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        time.sleep(0.5)
        # kill the server once it is generating: wait until its CPU is busy with our request
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and ask.poll() is None:
            if _busy(proc.pid):
                time.sleep(1.0)
                break
            time.sleep(0.2)
        stop(proc)
        out, err = ask.communicate(timeout=120)
    finally:
        stop(proc)
        if ask.poll() is None:
            ask.kill()
    assert ask.returncode != 0
    assert out.decode().strip() == ""  # no answer printed as if it were whole
    message = err.decode()
    assert "LLM server" in message and "Traceback" not in message, message


def _busy(pid: int) -> bool:
    """Whether the process used CPU in the last 0.2 s (it is prefilling or decoding)."""
    def ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    try:
        before = ticks()
        time.sleep(0.2)
        return ticks() - before > 5
    except (FileNotFoundError, IndexError):
        return False


def test_settings_never_show_the_key():
    s = Settings(llm="openai:qwen", llm_base_url="http://127.0.0.1:1/v1", llm_api_key=KEY)
    assert KEY not in json.dumps(s.to_dict()) and KEY not in repr(s)
