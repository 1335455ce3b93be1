"""Rerankers: reorder the fused candidates with a model that reads the question and passage together."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ragbot.settings import Settings
from ragbot.store import IndexStore
from ragbot.types import Retrieval, ScoredChunk


class Reranker(Protocol):
    """Reorders the fused candidates of a retrieval (it may use every stage's scores) and keeps ``top_k``."""

    name: str

    def rerank(self, retrieval: Retrieval, top_k: int) -> list[ScoredChunk]: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` (hub id or local folder), e.g. ``BAAI/bge-reranker-base``.

    >>> rr = CrossEncoderReranker("BAAI/bge-reranker-base", models_dir)  # doctest: +SKIP
    >>> rr.rerank(pipeline.retrieve("什么是 LoRA？", 20), top_k=5)  # doctest: +SKIP
    """

    def __init__(self, spec: str, models_dir, *, device: str = "auto", allow_downloads: bool = False,
                 batch_size: int = 16) -> None:
        self.name = f"cross-encoder:{spec}"
        self.spec, self.models_dir, self.device = spec, models_dir, device
        self.allow_downloads, self.batch_size = allow_downloads, batch_size
        self._model = None

    def warm_up(self) -> None:
        if self._model is None:
            from sentence_transformers import CrossEncoder

            from ragbot.bundle import resolve_model
            from ragbot.embedder import resolve_device

            path = resolve_model(self.spec, self.models_dir, allow_downloads=self.allow_downloads)
            self._model = CrossEncoder(path, device=resolve_device(self.device))

    def rerank(self, retrieval: Retrieval, top_k: int) -> list[ScoredChunk]:
        hits = retrieval.fused
        if not hits:
            return []
        self.warm_up()
        ranked = self._model.rank(retrieval.query, [h.chunk.embedding_text() for h in hits], top_k=top_k,
                                  batch_size=self.batch_size, show_progress_bar=False)
        return [ScoredChunk(hits[r["corpus_id"]].chunk, float(r["score"]), "rerank") for r in ranked]


def make_reranker(settings: Settings, store: IndexStore | None) -> Reranker | None:
    """The reranker a setting names, or None for ``none`` (fusion order is kept)."""
    from ragbot.errors import ConfigError

    spec = settings.reranker
    if spec in ("", "none") or store is None:
        return None
    if spec == "ltr" or spec.startswith("ltr:"):
        from ragbot.ltr import SHIPPED, LTRReranker

        return LTRReranker(store, Path(spec[4:]) if spec.startswith("ltr:") else SHIPPED, rrf_k=settings.rrf_k)
    if spec.startswith("cross-encoder:"):
        return CrossEncoderReranker(spec.split(":", 1)[1], settings.models_dir, device=settings.device,
                                    allow_downloads=settings.allow_downloads)
    raise ConfigError(f"reranker {spec!r} is not known; use 'none', 'ltr' (or 'ltr:<model.json>') "
                      "or 'cross-encoder:<hub id or local path>'")
