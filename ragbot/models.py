"""One cache of loaded models and opened indexes, shared by everything in a process that answers questions.

``ragbot eval`` runs several variants that agree on most models; the web app serves several browser
sessions and reruns its script on every click. Both get their pipelines from one :class:`ModelCache`,
which loads each model once: one embedder per (model, device), one LLM per (model, adapter, precision,
device), one cross-encoder per (model, device), and one opened index per (path, live version).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragbot.settings import Settings

if TYPE_CHECKING:
    from ragbot.embedder import Embedder
    from ragbot.llm import ChatModel
    from ragbot.pipeline import RagPipeline
    from ragbot.store import IndexStore


class ModelCache:
    """Loads each model once, however many variants and sessions use it.

    Each model loads under its own lock, so two threads asking at once load it once, and ingesting (the
    embedder) never waits for the LLM to load. With ``fake=True`` the models are the deterministic stand-ins
    of :mod:`ragbot.testing` (the web app's fake mode for tests and demos).
    """

    def __init__(self, *, fake: bool = False) -> None:
        self.fake = fake
        self._embedders: dict[tuple, Any] = {}
        self._llms: dict[tuple, Any] = {}
        self._rerankers: dict[tuple, Any] = {}
        self._stores: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._preloading = False
        self.preload_error = ""

    def _get(self, cache: dict[tuple, Any], key: tuple, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if key in cache:
                return cache[key]
            key_lock = self._key_locks.setdefault((id(cache), *key), threading.Lock())
        with key_lock:
            with self._lock:
                if key in cache:
                    return cache[key]
            model = factory()
            with self._lock:
                cache[key] = model
            return model

    def embedder(self, settings: Settings) -> Embedder:
        def load() -> Any:
            if self.fake:
                from ragbot.testing import HashingEmbedder

                return HashingEmbedder(name=settings.embedder)
            from ragbot.embedder import embedder_from_settings

            model = embedder_from_settings(settings)
            model.warm_up()
            return model

        from ragbot.embedder import embedder_key

        return self._get(self._embedders, embedder_key(settings), load)

    def chat_model(self, settings: Settings) -> ChatModel:
        def load() -> Any:
            if self.fake:
                from ragbot.testing import FakeChatModel

                return FakeChatModel(name=settings.llm)
            from ragbot.llm import chat_model_from_settings

            model = chat_model_from_settings(settings)
            model.warm_up()
            return model

        from ragbot.llm import cache_key

        return self._get(self._llms, cache_key(settings), load)

    def preload(self, settings: Settings) -> None:
        """Load the default embedder and LLM in a background thread (once), so the first question does not wait."""
        with self._lock:
            if self._preloading:
                return
            self._preloading = True

        def work() -> None:
            try:
                self.embedder(settings)
                self.chat_model(settings)
            except Exception as e:  # shown by the caller; the first question will raise it properly
                self.preload_error = f"{type(e).__name__}: {e}"

        threading.Thread(target=work, name="ragbot-preload", daemon=True).start()

    def store(self, index_path: Path) -> IndexStore:
        """The live version of the index at ``index_path``, read once per version and shared.

        Only the newest version of each index stays here; pipelines still on an older one keep theirs.
        """
        from ragbot.store import IndexStore

        path = Path(index_path).resolve()
        key = (str(path), IndexStore.current_version(path))

        def load() -> Any:
            # the live version may already be newer than the name read above, if an ingest published just
            # now: harmless, the next call reads the new name and opens that one
            store = IndexStore.load(path)
            with self._lock:
                for old in [k for k in self._stores if k[0] == key[0]]:
                    del self._stores[old]
            return store

        return self._get(self._stores, key, load)

    def pipeline(self, settings: Settings, retrieval: bool = True) -> RagPipeline:
        """A warmed-up pipeline on the shared models and the shared index (also evaluation's ``pipeline_factory``)."""
        from ragbot.pipeline import RagPipeline
        from ragbot.rerank import CrossEncoderReranker

        store = self.store(settings.index_path) if retrieval else None
        pipeline = RagPipeline.from_settings(settings, retrieval=retrieval, chat_model=self.chat_model(settings),
                                             embedder=self.embedder(settings) if retrieval else None, store=store)
        if isinstance(pipeline.reranker, CrossEncoderReranker):
            # a cross-encoder is a model: share one; store-bound rerankers (ltr) stay with their pipeline
            fresh = pipeline.reranker

            def load() -> Any:
                fresh.warm_up()
                return fresh

            pipeline.reranker = self._get(self._rerankers, (fresh.name, settings.device), load)
        pipeline.warm_up()
        return pipeline

    def loaded(self) -> list[str]:
        """The models loaded so far, by name (an adapter after its base model)."""
        with self._lock:
            return ([k[0] for k in self._embedders] + [k[0] + (f" + {k[1]}" if k[1] else "") for k in self._llms]
                    + [k[0] for k in self._rerankers])
