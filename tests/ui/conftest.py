"""Fixtures for the web app's tests: a temporary RAGBOT_HOME, a tiny corpus, and the app's fake models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"

DOCS = {
    "lora.md": "# LoRA\n\n## 原理\n\nLoRA 冻结预训练权重，只训练低秩矩阵 A 和 B，因此显存占用大幅减少。秩 r 常取 8。\n\n"
               "## 对比\n\n与全参数微调相比，LoRA 的可训练参数不到百分之一。\n",
    "adam.md": "# Adam\n\nAdam 优化器的默认 beta1 为 0.9，beta2 为 0.999。学习率常取 3e-4。\n",
    "unsafe.md": "# 安全测试\n\n恶意片段 <script>alert('x')</script> 与 <img src=x onerror=alert(1)> 都只能显示为文本。\n",
}
QA = [
    {"id": "t1", "question": "LoRA 的秩 r 常取多少？", "answer": "秩 r 常取 8。", "evidence": "秩 r 常取 8",
     "source": "lora.md", "type": "definition"},
    {"id": "t2", "question": "Adam 的 beta2 默认是多少？", "answer": "beta2 默认为 0.999。", "evidence": "beta2 为 0.999",
     "source": "adam.md", "type": "definition"},
    {"id": "t3", "question": "RWKV 是什么？", "answer": "资料中没有相关信息", "evidence": "", "source": "",
     "type": "unanswerable"},
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "qa.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QA), encoding="utf-8")
    return folder


@pytest.fixture
def app_env(tmp_path, monkeypatch, corpus):
    """RAGBOT_HOME in tmp, fake models on, the tiny corpus as the app's bundled corpus; returns the settings."""
    monkeypatch.chdir(tmp_path)  # no stray ragbot.toml
    monkeypatch.setenv("RAGBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAGBOT_UI_FAKE_MODELS", "1")
    monkeypatch.setenv("RAGBOT_UI_CORPUS", str(corpus))
    for var in ("RAGBOT_CONFIG", "RAGBOT_INDEX_DIR", "RAGBOT_RERANKER", "RAGBOT_UI_MAX_UPLOAD_MB",
                "RAGBOT_UI_MAX_UPLOAD_FILES"):
        monkeypatch.delenv(var, raising=False)
    from ui.resources import load_settings

    return load_settings()


@pytest.fixture
def indexed(app_env, corpus):
    """The tiny corpus ingested with the fake embedder."""
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline
    from ragbot.testing import FakeEmbedder

    s = app_env
    IngestPipeline(FakeEmbedder(name=s.embedder), Chunker(s.chunk_size, s.chunk_overlap, s.chunker)).run(
        [p for p in corpus.iterdir() if p.suffix == ".md"], s.index_path)
    return s


@pytest.fixture
def app(indexed):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def find_autolinks(markdown: str) -> list[str]:
    """What Streamlit's Markdown (remark-gfm) would turn into links in ``markdown`` (a superset, to be safe).

    remark-gfm finds bare ``http(s)://…``, ``www.…`` and e-mail addresses in the text *after* parsing,
    that is with backslash escapes already resolved, so they are resolved here first.
    """
    text = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)
    return re.findall(r"(?:https?://|www\.)[-.\w]+|[-.\w+]+@[-\w]+(?:\.[-\w]+)+", text, flags=re.IGNORECASE | re.ASCII)


@pytest.fixture
def autolinks():
    return find_autolinks
