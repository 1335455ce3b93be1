from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import fakes`


@pytest.fixture
def settings(tmp_path):
    from ragbot.settings import Settings

    return Settings(home=tmp_path / "home", embedder="fake-embedder", llm="fake-llm")


@pytest.fixture
def fake_embedder():
    from fakes import FakeEmbedder

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
