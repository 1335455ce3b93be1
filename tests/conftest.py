from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path):
    from ragbot.settings import Settings

    return Settings(home=tmp_path / "home", embedder="fake-embedder", llm="fake-llm")


@pytest.fixture
def indexed(tmp_path, settings):
    """Settings whose index holds two tiny documents (LoRA, Adam), built with the fake embedder."""
    from ragbot.testing import FakeEmbedder
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lora.md").write_text("# LoRA\n\nLoRA 冻结预训练权重，只训练低秩矩阵 A 和 B，秩 r 常取 8。\n", encoding="utf-8")
    (docs / "adam.md").write_text("# Adam\n\nAdam 优化器的默认 beta1 为 0.9，beta2 为 0.999。\n", encoding="utf-8")
    IngestPipeline(FakeEmbedder(), Chunker(settings.chunk_size, settings.chunk_overlap)).run([docs], settings.index_path)
    return settings


@pytest.fixture
def fake_embedder():
    from ragbot.testing import FakeEmbedder

    return FakeEmbedder()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


# ---- real offline models, prepared once and shared by every integration test -------------------------------
@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Where the bundled models are built: $RAGBOT_TEST_MODELS, else the repo's data/models (shared with scripts/run.sh)."""
    import os

    return Path(os.environ.get("RAGBOT_TEST_MODELS", ROOT / "data" / "models"))


@pytest.fixture(scope="session")
def e5_folder(models_dir) -> Path:
    from ragbot.bundle import prepare_bundled

    return prepare_bundled("multilingual-e5-small", models_dir, show_progress=False)


@pytest.fixture(scope="session")
def real_embedder(models_dir, e5_folder):
    from ragbot.embedder import SentenceTransformerEmbedder
    from ragbot.settings import BUNDLED_EMBEDDER

    embedder = SentenceTransformerEmbedder(BUNDLED_EMBEDDER, models_dir, device="cpu")
    embedder.warm_up()
    return embedder


@pytest.fixture(scope="session")
def real_chat_model(models_dir):
    from ragbot.llm.hf import HFChatModel
    from ragbot.settings import BUNDLED_LLM

    model = HFChatModel(BUNDLED_LLM, models_dir, device="cpu")
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, real_embedder):
    """The bundled corpus/ ingested once with the real embedder (~20 s on 2 cores)."""
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline
    from ragbot.settings import Settings

    index = tmp_path_factory.mktemp("sample") / "index"
    defaults = Settings(home=index.parent)
    report = IngestPipeline(real_embedder, Chunker(defaults.chunk_size, defaults.chunk_overlap)).run([ROOT / "corpus"], index)
    assert report.ok and not report.failed, report.summary()
    return index


@pytest.fixture(scope="session")
def sample_qa():
    import json

    return [json.loads(line) for line in (ROOT / "corpus" / "qa.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
