"""What the app loads once and shares between reruns and browser sessions: settings, models, pipelines.

Streamlit reruns the whole script on every click, so nothing heavy may happen at the top level.
:func:`get_models` is the server's one :class:`ragbot.models.ModelCache` (the same cache ``ragbot eval``
uses): it loads each model once, so variants that agree on a model share it, and
:meth:`~ragbot.models.ModelCache.store` opens each index version once (keyed only by index path and version: the
sidebar, the document list and every pipeline share it). :func:`get_pipeline` caches a
:class:`~ragbot.pipeline.RagPipeline` per variant settings and index version, built on that
shared store: changing the temperature or the reranker builds a new (cheap) pipeline but does
not read the index again. ``top_k`` is passed per question and is not
part of any key: changing it builds nothing. A new index version (an upload, a deletion, ``ragbot
ingest`` from the CLI) gives new keys, so the next question sees it. :func:`get_jobs` is the one
registry of knowledge-base jobs (:mod:`ui.jobs`).

Fake models for tests: with ``RAGBOT_UI_FAKE_MODELS=1`` the app uses the stand-ins of :mod:`ragbot.testing`
instead of the real embedder and LLM (and records indexes under the fake embedder's name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from ragbot.models import ModelCache
from ragbot.settings import Settings

FAKE_ENV = "RAGBOT_UI_FAKE_MODELS"
PRELOAD_ENV = "RAGBOT_UI_PRELOAD"  # "0" to load models on the first question instead of at start
REPO_ROOT = Path(__file__).resolve().parent.parent


def fake_models_enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(FAKE_ENV, "").lower() in ("1", "true", "yes", "on")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """``Settings.load()`` (``ragbot.toml`` and ``RAGBOT_*``), with the fake models' names when they are on."""
    settings = Settings.load(env=env)
    if fake_models_enabled(env):
        from ragbot.testing import FAKE_EMBEDDER, FAKE_LLM

        reranker = "none" if settings.reranker.startswith("cross-encoder:") else settings.reranker  # no model in fakes
        settings = settings.replace(embedder=FAKE_EMBEDDER, llm=FAKE_LLM, reranker=reranker)
    return settings


def reranker_spec(settings: Settings) -> str:
    """The reranker the sidebar's switch turns on: the configured one, else the shipped learned-to-rank model."""
    if settings.reranker not in ("", "none"):
        return settings.reranker
    try:
        from ragbot.ltr import SHIPPED
    except ImportError:
        return ""
    return "ltr" if SHIPPED.is_file() else ""


VARIANT_DESCRIPTIONS = {  # the built-in variants, in the UI's language (others show their own description)
    "ragbot": "默认流程：向量 + BM25 混合检索、有依据的提示词、拒答闸门、引用校验",
    "naive": "教科书式 RAG：固定 512 字切块、只用向量检索 top-5、普通提示词",
    "no-rerank": "默认流程，但不做重排",
    "llm-only": "只用大模型本身回答，不检索资料（基线）",
    "finetuned": "默认流程 + 随附的 LoRA 微调适配器",
    "llamacpp": "默认流程，大模型由 llama.cpp 运行（量化为 IQ4_NL）",
    "transformers": "默认流程，大模型由 transformers 运行（CPU 上 int8，GPU 上 bf16）",
}


def describe(variant: Any) -> str:
    return VARIANT_DESCRIPTIONS.get(variant.name, variant.description)


def corpus_dir() -> Path | None:
    """The bundled sample corpus (``corpus/`` next to the app), if this checkout has it."""
    path = Path(os.environ.get("RAGBOT_UI_CORPUS", REPO_ROOT / "corpus"))
    return path if path.is_dir() else None


@st.cache_resource(show_spinner=False)
def get_models(fake: bool) -> ModelCache:
    """The server's one :class:`~ragbot.models.ModelCache`: every session shares its models and indexes."""
    return ModelCache(fake=fake)


@st.cache_resource(show_spinner=False)
def get_jobs() -> Any:
    """The server's one :class:`ui.jobs.JobRegistry`: every session sees the same running jobs."""
    from ui.jobs import JobRegistry

    return JobRegistry()


def index_version(index_path: Path) -> str:
    """The name of the live index version ('' when there is none): changes whenever the index is saved."""
    from ragbot.store import IndexStore

    return IndexStore.current_version(Path(index_path))


def pipeline_key(settings: Settings) -> str:
    """The settings a pipeline depends on, as a string (top_k is passed per question, so it is left out)."""
    d = settings.to_dict()
    d.pop("top_k", None)
    return json.dumps(d, sort_keys=True, default=str)


def get_store(index_path: Path) -> Any:
    """The live index at ``index_path``, opened once per version for every session (:meth:`ModelCache.store`)."""
    return get_models(fake_models_enabled()).store(index_path)


@st.cache_resource(show_spinner="正在加载模型和知识库索引（只在第一次需要）…", max_entries=8)
def _cached_pipeline(key: str, version: str, retrieval: bool, fake: bool, _settings: Settings) -> Any:
    return get_models(fake).pipeline(_settings, retrieval)


def get_pipeline(settings: Settings, retrieval: bool = True) -> Any:
    version = index_version(settings.index_path) if retrieval else ""
    return _cached_pipeline(pipeline_key(settings), version, retrieval, fake_models_enabled(), settings)


def clear_pipelines() -> None:
    """Forget cached pipelines (after the knowledge base changed); models stay loaded."""
    _cached_pipeline.clear()
