"""Text embedders. Stages depend on the :class:`Embedder` protocol, so tests can pass a tiny fake;
:func:`embedder_from_settings` picks one from the ``embedder`` setting (a sentence-transformers model, or a server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ragbot.settings import Settings, embedder_identity


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


def embedder_key(settings: Settings) -> tuple:
    """The settings that make two embedders the same (a process keeps one per key)."""
    return (embedder_identity(settings), settings.embedder_base_url or settings.llm_base_url, settings.device)


def check(settings: Settings, *, prepare: bool = True) -> tuple[bool, str]:
    """``(ok, where it comes from / why not)`` for the configured embedder: a server is asked for one vector, a
    bundle is found (and with ``prepare``, built once). Used by ``ragbot prepare`` and ``--check``."""
    from ragbot.errors import RagbotError

    try:
        if settings.embedder.startswith(OpenAIEmbedder.SCHEME):
            emb = OpenAIEmbedder.from_settings(settings)
            return True, f"served at {emb.server.base_url} ({emb.dim} dimensions)"
        if settings.embedder.startswith(HashEmbedder.SCHEME):
            return True, f"hashing ({HashEmbedder.from_spec(settings.embedder).dim} dimensions; NOT semantic)"
        from ragbot.bundle import locate_model

        return True, locate_model(settings.embedder, settings.models_dir, build=prepare,
                                  allow_downloads=settings.allow_downloads)
    except RagbotError as e:
        return False, str(e)


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedder the ``embedder`` setting names, not loaded yet: ``openai:MODEL`` is a server
    (:class:`OpenAIEmbedder`), ``hash:DIM`` the hashing embedder for scale tests (:class:`HashEmbedder`), anything
    else a sentence-transformers model."""
    if settings.embedder.startswith(OpenAIEmbedder.SCHEME):
        return OpenAIEmbedder.from_settings(settings)
    if settings.embedder.startswith(HashEmbedder.SCHEME):
        return HashEmbedder.from_spec(settings.embedder)
    return SentenceTransformerEmbedder.from_settings(settings)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (vLLM, TEI, Ollama, llama.cpp's server), so
    ingest can scale out to an embedding server. Vectors are L2-normalised here, whatever the server returns."""

    SCHEME = "openai:"

    def __init__(self, model: str, base_url: str, *, api_key: str = "", batch_size: int = 64, query_prefix: str = "",
                 document_prefix: str = "", connect_timeout_s: float = 5.0, timeout_s: float = 120.0,
                 retries: int = 2, concurrency: int = 4, name: str = "") -> None:
        from ragbot.openai_server import OpenAIServer, semaphore

        self.name = name or self.SCHEME + model  # what the index manifest records (embedder_identity)
        self.server = OpenAIServer(model, base_url, api_key=api_key, connect_timeout_s=connect_timeout_s,
                                   read_timeout_s=timeout_s, setting="embedder", role="embedding")
        self.batch_size, self.retries = batch_size, retries
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self._slots = semaphore(self.server.base_url, concurrency)
        self._dim: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        return cls(settings.embedder[len(cls.SCHEME):].strip(), settings.embedder_base_url or settings.llm_base_url,
                   # the LLM server's key only for the LLM server: never sent to another host
                   api_key=settings.embedder_api_key or (settings.llm_api_key if settings.embedder_base_url in
                                                         ("", settings.llm_base_url) else ""),
                   batch_size=max(settings.embed_batch_size, 32), query_prefix=settings.embedder_query_prefix,
                   document_prefix=settings.embedder_document_prefix,
                   connect_timeout_s=settings.llm_connect_timeout_s,
                   timeout_s=settings.llm_first_token_timeout_s, retries=settings.llm_retries,
                   concurrency=settings.llm_concurrency, name=embedder_identity(settings))

    def __repr__(self) -> str:  # never the key
        return f"OpenAIEmbedder({self.name!r}, base_url={self.server.base_url!r})"

    def warm_up(self) -> None:
        """Embed one text: checks the server, the key and the model, and learns the dimension."""
        if self._dim is None:
            self._dim = int(self._embed(["ragbot"]).shape[1])

    @property
    def dim(self) -> int:
        self.warm_up()
        return self._dim

    def _embed(self, texts: list[str]) -> np.ndarray:
        from ragbot.openai_server import backoff, retryable

        for attempt in range(self.retries + 1):
            try:
                with self._slots:
                    response = self.server.client.embeddings.create(model=self.server.model, input=texts,
                                                                    encoding_format="float")
                break
            except Exception as e:
                if not retryable(e) or attempt == self.retries:
                    raise self.server.error(e) from None
                backoff(attempt)
        rows = sorted(response.data, key=lambda d: d.index)
        vectors = np.asarray([d.embedding for d in rows], dtype=np.float32)
        if vectors.shape[0] != len(texts):
            from ragbot.errors import LLMServerError

            raise LLMServerError(f"the embedding server at {self.server.base_url} returned {vectors.shape[0]} "
                                 f"vectors for {len(texts)} texts")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        texts = [self.document_prefix + t for t in texts]
        batches = range(0, len(texts), self.batch_size)
        if show_progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="embed", unit="batch")
        parts = [self._embed(texts[i:i + self.batch_size]) for i in batches]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([self.query_prefix + text])[0]


class HashEmbedder:
    """NOT SEMANTIC: character bigrams hashed into ``dim`` buckets (vectorised, deterministic across processes and
    machines), so store operations at a million chunks can be tested and timed without a model. Texts that share
    words get similar vectors, but recall on real questions is far below a trained embedder's: never use it for
    answers. ``embedder = "hash:384"``."""

    SCHEME = "hash:"

    def __init__(self, dim: int = 384) -> None:
        if dim < 8:
            raise ValueError(dim)
        self._dim = dim
        self.name = f"{self.SCHEME}{dim}"

    @classmethod
    def from_spec(cls, spec: str) -> HashEmbedder:
        from ragbot.errors import ConfigError

        try:
            return cls(int(spec[len(cls.SCHEME):]))
        except ValueError:
            raise ConfigError(f"embedder ({spec!r}) must be hash:DIM with DIM a whole number >= 8, e.g. hash:384") from None

    def warm_up(self) -> None:
        pass

    @property
    def dim(self) -> int:
        return self._dim

    def _vec(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        out = np.zeros(self._dim, dtype=np.float32)
        if len(codes) >= 2:
            mixed = (codes[:-1] * np.uint64(0x9E3779B1) + codes[1:] * np.uint64(0x85EBCA77)) & np.uint64(0xFFFFFFFF)
            out += np.bincount((mixed % np.uint64(self._dim)).astype(np.int64), minlength=self._dim).astype(np.float32)
        norm = float(np.linalg.norm(out))
        return out / norm if norm else out

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._vec(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)
