"""The OpenAI-compatible backend (ragbot/llm/remote.py) against a tiny local HTTP server that speaks the API.

The server is real HTTP on a free port (no mocks of the client): each test sets how it behaves (what it streams,
how slowly, which status it answers) and reads back what it was sent.
"""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("openai")

from ragbot.errors import LLMServerError  # noqa: E402
from ragbot.generation import Generator  # noqa: E402
from ragbot.llm.remote import OpenAIChatModel, estimate_tokens  # noqa: E402
from ragbot.settings import BUNDLED_LLM, Settings  # noqa: E402
from ragbot.testing import FakeOpenAIServer as FakeServer  # noqa: E402
from ragbot.types import Chunk, ScoredChunk  # noqa: E402

KEY = FakeServer.KEY


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def model(server: FakeServer, **kw) -> OpenAIChatModel:
    kw = {"api_key": KEY, "retries": 0, "first_token_timeout_s": 5, "idle_timeout_s": 5, **kw}
    return OpenAIChatModel("qwen", server.url, **kw)


MESSAGES = [{"role": "system", "content": "只根据资料回答。"}, {"role": "user", "content": "LoRA 训练什么？"}]


def test_streams_the_reply_and_returns_the_finish_reason(server):
    m = model(server)
    stream = m.stream(MESSAGES, max_new_tokens=64, temperature=0.0)
    pieces = []
    with pytest.raises(StopIteration) as stop:
        while True:
            pieces.append(next(stream))
    assert "".join(pieces) == "LoRA 只训练低秩矩阵 [1]。"
    assert stop.value.value == "stop"
    sent = server.requests[0]
    assert sent["model"] == "qwen" and sent["stream"] is True and sent["temperature"] == 0.0
    assert sent["messages"] == MESSAGES and sent["max_tokens"] == 64


def test_a_cut_answer_says_so_in_the_answer(server):
    server.finish = "length"
    passages = [ScoredChunk(Chunk(id="a", doc_id="d", text="LoRA 只训练低秩矩阵。", source="lora.md"), 1.0, "rerank")]
    answer = Generator(model(server)).run("LoRA 训练什么？", passages)
    assert answer.finish_reason == "length" and answer.to_dict()["finish_reason"] == "length"
    assert [c.n for c in answer.citations] == [1]


def test_max_tokens_is_clamped_to_the_window_left_after_the_prompt(server):
    server.models = [{"id": "qwen", "object": "model", "max_model_len": 300}]
    m = model(server)
    m.generate(MESSAGES, max_new_tokens=1000)
    assert server.requests[0]["max_tokens"] == 300 - estimate_tokens(MESSAGES)
    # llama.cpp's server puts the window under "meta"; a setting overrides what the server says
    server.models = [{"id": "qwen", "object": "model", "meta": {"n_ctx": 200}}]
    assert model(server).context_window() == 200
    assert model(server, context_window=999).context_window() == 999


def test_a_prompt_longer_than_the_window_is_refused_before_sending(server):
    server.models = [{"id": "qwen", "object": "model", "max_model_len": 64}]
    long = [{"role": "user", "content": "资料" * 200}]
    with pytest.raises(LLMServerError, match=r"does not fit the context window .*\(64 tokens\).*lower top_k"):
        model(server).generate(long, max_new_tokens=32)
    assert server.requests == []


def test_the_servers_own_context_error_is_one_clear_line(server):
    server.models = [{"id": "qwen", "object": "model"}]  # window unknown: no clamp, the server decides
    server.status, server.error_message = 400, "Requested tokens (5000) exceed context window of 2048"
    with pytest.raises(LLMServerError, match="longer than the model's context.*exceed context window of 2048"):
        model(server).generate(MESSAGES, max_new_tokens=32)


def test_a_context_error_only_a_plain_request_reports_is_found(server):
    server.models = [{"id": "qwen", "object": "model"}]
    server.status, server.error_message = 400, "This model's maximum context length is 2048 tokens."
    server.streamed_errors_close = True
    with pytest.raises(LLMServerError, match="longer than the model's context.*maximum context length is 2048"):
        model(server).generate(MESSAGES, max_new_tokens=32)
    assert [r.get("stream") for r in server.requests] == [True, None]


def test_a_wrong_key_is_named_as_such_without_echoing_it(server):
    with pytest.raises(LLMServerError, match="rejected the API key.*RAGBOT_LLM_API_KEY") as e:
        model(server, api_key="sk-wrong-123").generate(MESSAGES, max_new_tokens=8)
    assert "sk-wrong-123" not in str(e.value)


def test_a_model_the_server_does_not_serve_lists_those_it_does(server):
    m = OpenAIChatModel("llama-70b", server.url, api_key=KEY, retries=0)
    with pytest.raises(LLMServerError, match=r"does not serve model 'llama-70b'; it serves: qwen"):
        m.warm_up()


def test_no_server_at_the_url_says_so(server):
    url = server.url
    server.close()
    m = OpenAIChatModel("qwen", url, api_key=KEY, retries=0, connect_timeout_s=2)
    with pytest.raises(LLMServerError, match=f"no LLM server answers at {url}.*fix llm_base_url"):
        m.generate(MESSAGES, max_new_tokens=8)


def test_first_token_and_idle_timeouts_are_separate(server):
    server.first_delay = 1.0
    # a slow prefill within the first-token timeout is fine even with a short idle timeout
    assert model(server, first_token_timeout_s=3, idle_timeout_s=0.3).generate(MESSAGES, max_new_tokens=8)
    with pytest.raises(LLMServerError, match=r"sent nothing for 0.3 s before the first token.*llm_first_token_timeout_s"):
        model(server, first_token_timeout_s=0.3, idle_timeout_s=5).generate(MESSAGES, max_new_tokens=8)
    server.first_delay, server.gap = 0.0, 1.0
    with pytest.raises(LLMServerError, match=r"0.3 s between pieces after \d+ characters.*incomplete.*llm_timeout_s"):
        model(server, first_token_timeout_s=5, idle_timeout_s=0.3).generate(MESSAGES, max_new_tokens=8)


def test_a_server_that_dies_mid_stream_raises_after_the_partial_text(server):
    server.drop_after = 1
    got = []
    with pytest.raises(LLMServerError, match="after 8 characters.*incomplete"):
        for piece in model(server).stream(MESSAGES, max_new_tokens=8, temperature=0.0):
            got.append(piece)
    assert got == ["LoRA 只训练"]


def test_an_abandoned_or_timed_out_answer_frees_its_slot(server):
    server.pieces = ["一", "二", "三", "四"]
    server.gap = 0.2
    m = model(server, concurrency=1)
    passages = [ScoredChunk(Chunk(id="a", doc_id="d", text="一二三四。", source="a.md"), 1.0, "rerank")]
    stream = Generator(m).stream("数一数", passages)
    next(iter(stream))  # the first piece shown, then the user moves on
    stream = None  # noqa: F841  (dropped: the generator closes, the backend's slot is released)
    assert model(server, concurrency=1).generate(MESSAGES, max_new_tokens=8) == "一二三四"
    server.first_delay, server.gap = 1.0, 0.0
    with pytest.raises(LLMServerError, match="before the first token"):
        model(server, concurrency=1, first_token_timeout_s=0.3, retries=2).generate(MESSAGES, max_new_tokens=8)
    assert len(server.requests) == 3  # the timed-out request was not retried on top of the busy server
    server.first_delay = 0.0
    assert model(server, concurrency=1).generate(MESSAGES, max_new_tokens=8) == "一二三四"


def test_retries_only_before_the_first_token(server):
    server.fail_first = 2
    assert model(server, retries=2).generate(MESSAGES, max_new_tokens=8).startswith("LoRA")
    assert len(server.requests) == 3
    server.requests.clear()
    server.fail_first, server.drop_after = 0, 1  # fails after a piece: not retried (it would repeat the text)
    with pytest.raises(LLMServerError):
        model(server, retries=2).generate(MESSAGES, max_new_tokens=8)
    assert len(server.requests) == 1


def test_concurrency_is_limited_per_server(server):
    server.gap = 0.05
    m = model(server, concurrency=2)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(m.generate(MESSAGES, max_new_tokens=8)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 5 and all(r.startswith("LoRA") for r in results)
    assert server.max_in_flight == 2


def test_the_key_is_sent_but_never_shown(server):
    settings = Settings(llm="openai:qwen", llm_base_url=server.url, llm_api_key=KEY)
    m = OpenAIChatModel.from_settings(settings)
    m.generate(MESSAGES, max_new_tokens=8)
    assert server.headers[-1] == f"Bearer {KEY}"
    assert KEY not in repr(settings) and KEY not in repr(m) and KEY not in json.dumps(settings.to_dict())
    assert "llm_api_key" not in settings.to_dict()


def test_the_llm_setting_picks_the_backend_and_says_which(server):
    from ragbot.errors import ConfigError
    from ragbot.llm import backend, chat_model_from_settings, describe

    settings = Settings(llm="openai:qwen", llm_base_url=server.url, llm_api_key=KEY)
    assert backend(settings) == "openai" and isinstance(chat_model_from_settings(settings), OpenAIChatModel)
    assert describe(settings) == f"OpenAI-compatible server · qwen @ {server.url}"
    transformers = Settings(llm=BUNDLED_LLM)
    assert backend(transformers) == "transformers" and describe(transformers).startswith("transformers")
    with pytest.raises(ConfigError, match="serve it there .*--enable-lora"):
        chat_model_from_settings(settings.replace(adapter="/some/adapter"))
    with pytest.raises(ConfigError, match=r"llm_base_url \(''\) must be the server's http\(s\) URL"):
        Settings(llm="openai:qwen")
    with pytest.raises(ConfigError, match="names no model"):
        Settings(llm="openai:", llm_base_url=server.url)
    env = {"RAGBOT_LLM": "openai:qwen", "RAGBOT_LLM_BASE_URL": server.url, "RAGBOT_LLM_API_KEY": KEY,
           "RAGBOT_LLM_CONCURRENCY": "2", "RAGBOT_LLM_TIMEOUT_S": "30"}
    loaded = Settings.load(None, env=env)
    assert (loaded.llm_api_key, loaded.llm_concurrency, loaded.llm_timeout_s) == (KEY, 2, 30.0)


def test_prepare_check_says_whether_the_server_answers(server, tmp_path, monkeypatch, capsys):
    from ragbot.cli import main

    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path))
    monkeypatch.setenv("RAGBOT_LLM", "openai:qwen")
    monkeypatch.setenv("RAGBOT_LLM_BASE_URL", server.url)
    monkeypatch.setenv("RAGBOT_LLM_API_KEY", KEY)
    assert main(["prepare", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"OpenAI-compatible server · qwen @ {server.url}: served at {server.url} (context 4096 tokens)" in out
    assert KEY not in out
    monkeypatch.setenv("RAGBOT_LLM", "openai:llama-70b")
    assert main(["prepare", "--check"]) == 1
    assert "NOT AVAILABLE: the LLM server at" in capsys.readouterr().out
