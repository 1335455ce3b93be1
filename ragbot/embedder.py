"""Text embedders. Stages depend on the :class:`Embedder` protocol, so tests can pass a tiny fake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ragbot.settings import Settings


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors; documents and queries may be encoded differently."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """Any sentence-transformers model: the bundled e5 rebuild, a local folder or a hub id.

    Models with ``query``/``passage`` (or ``document``) prompts, like e5, get them applied; for
    others the texts are encoded as they are.

    >>> emb = SentenceTransformerEmbedder("bundle:multilingual-e5-small", models_dir)  # doctest: +SKIP
    >>> emb.embed_query("什么是 LoRA？").shape  # doctest: +SKIP
    (384,)
    """

    def __init__(self, spec: str, models_dir, *, device: str = "auto", batch_size: int = 16,
                 allow_downloads: bool = False, num_threads: int = 0) -> None:
        self.name = spec
        self.models_dir = models_dir
        self.device = device
        self.batch_size = batch_size
        self.allow_downloads = allow_downloads
        self.num_threads = num_threads
        self._model = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SentenceTransformerEmbedder:
        return cls(settings.embedder, settings.models_dir, device=settings.device, batch_size=settings.embed_batch_size,
                   allow_downloads=settings.allow_downloads, num_threads=settings.num_threads)

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import torch
        from sentence_transformers import SentenceTransformer

        from ragbot.bundle import resolve_model

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        path = resolve_model(self.name, self.models_dir, allow_downloads=self.allow_downloads)
        self._model = SentenceTransformer(path, device=resolve_device(self.device),
                                          model_kwargs={"dtype": torch.float32})
        prompts = self._model.prompts or {}
        self._query_prompt = "query" if "query" in prompts else None
        self._doc_prompt = next((p for p in ("passage", "document") if p in prompts), None)

    @property
    def dim(self) -> int:
        self.warm_up()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(get_dim())

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.warm_up()
        return self._model.encode(list(texts), prompt_name=self._doc_prompt, batch_size=self.batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=show_progress).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        self.warm_up()
        return self._model.encode([text], prompt_name=self._query_prompt, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)[0]
