"""The question-answering pipeline, top to bottom: retrieve → rerank → generate (cite or refuse)."""

from __future__ import annotations

import time
from dataclasses import replace

from ragbot.embedder import Embedder, embedder_from_settings
from ragbot.errors import ConfigError, QuestionTooLongError
from ragbot.generation import AnswerStream, Generator
from ragbot.grounding import KeyTermGate
from ragbot.llm import ChatModel, chat_model_from_settings
from ragbot.rerank import Reranker, make_reranker
from ragbot.retrieval import BM25Retriever, DenseRetriever, HybridRetriever
from ragbot.settings import REFUSAL, Settings
from ragbot.store import IndexSpec, IndexStore, bm25_tokens
from ragbot.types import Answer, Retrieval, ScoredChunk


class RagPipeline:
    """``RagPipeline.from_settings(settings).ask("问题")`` → :class:`Answer`.

    ``store`` and ``embedder`` are None (and so is ``retriever``) when the variant does not retrieve at all
    (the ``llm-only`` baseline); ``chat_model`` is None for a retrieval-only pipeline (``with_llm=False``).
    """

    def __init__(self, settings: Settings, store: IndexStore | None, embedder: Embedder | None,
                 chat_model: ChatModel | None, reranker: Reranker | None = None) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.chat_model = chat_model
        self.reranker = reranker
        self.retriever = None
        if store is not None and embedder is not None:
            self.retriever = HybridRetriever(
                DenseRetriever(store, embedder), BM25Retriever(store) if settings.use_bm25 else None,
                dense_k=settings.dense_k, bm25_k=settings.bm25_k, rrf_k=settings.rrf_k,
            )
        self.generator = None
        if chat_model is not None:
            self.generator = Generator(chat_model, style=settings.prompt, max_new_tokens=settings.max_new_tokens,
                                       temperature=settings.temperature, max_passage_chars=settings.max_passage_chars,
                                       align_citations=settings.align_citations,
                                       repoint_citations=settings.repoint_citations,
                                       valid_markers=settings.valid_markers)
        self._gate: KeyTermGate | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, with_llm: bool = True, retrieval: bool = True,
                      chat_model: ChatModel | None = None, embedder: Embedder | None = None,
                      store: IndexStore | None = None) -> RagPipeline:
        """Open the index (checking it matches the settings) and set up the stages; models load on first use.

        ``store`` is an index the caller already opened (the web app opens each version once and shares it).
        """
        if retrieval:
            expect = IndexSpec.from_settings(settings)  # the dimension is checked in warm_up, once the embedder is loaded
            if store is None:
                store = IndexStore.load(settings.index_path, expect=expect)
            else:
                store.check(settings.index_path, expect)
            store.nprobe = settings.nprobe
            embedder = embedder or embedder_from_settings(settings)
        else:
            store = None
        if with_llm and chat_model is None:
            chat_model = chat_model_from_settings(settings)
        return cls(settings, store, embedder, chat_model, make_reranker(settings, store))

    def warm_up(self) -> None:
        """Load every model now (otherwise the first question pays for it)."""
        for stage in (self.embedder, self.chat_model, self.reranker):
            if stage is not None and hasattr(stage, "warm_up"):
                stage.warm_up()
        if self.store is not None:
            bm25_tokens("预热")  # jieba loads its dictionary on first use (~1 s)
            _ = self.gate
        if self.embedder is not None and self.store is not None:
            self.store.check(self.settings.index_path, IndexSpec.from_settings(self.settings, self.embedder.dim))

    def check_question(self, question: str) -> None:
        """:func:`check_question` with this pipeline's ``max_question_chars``."""
        check_question(question, self.settings.max_question_chars)

    def retrieve(self, question: str, top_k: int | None = None) -> Retrieval:
        """Candidates from every stage; ``.final`` holds the top-k passages for the prompt."""
        self.check_question(question)
        top_k = top_k or self.settings.top_k
        if self.retriever is None:
            return Retrieval(question)
        t = time.perf_counter()
        n_candidates = max(top_k, self.settings.rerank_candidates) if self.reranker else top_k
        result = self.retriever.run(question, n_candidates)
        timings = dict(result.timings_ms)
        reranked: tuple[ScoredChunk, ...] = ()
        if self.reranker is not None:
            t_rr = time.perf_counter()
            reranked = tuple(self.reranker.rerank(result, top_k))
            timings["rerank_ms"] = (time.perf_counter() - t_rr) * 1000
        timings["retrieval_ms"] = (time.perf_counter() - t) * 1000
        return replace(result, reranked=reranked, timings_ms=timings)

    @property
    def gate(self) -> KeyTermGate | None:
        """The key-term refusal gate over the whole knowledge base (built on first use)."""
        if self._gate is None and self.store is not None and self.settings.refusal_gate:
            self._gate = KeyTermGate([self.store.gate_text()])  # stored at ingest, not rebuilt here
        return self._gate

    def ask_stream(self, question: str, top_k: int | None = None,
                   retrieval: Retrieval | None = None) -> AnswerStream:
        """The answer's text as it is generated (iterate), then the final :class:`Answer` (``.answer``).

        ``retrieval`` may be passed when the caller already retrieved (evaluation ranks 10 deep,
        the app shows the candidates); its top ``top_k`` passages go to the LLM. A bad question
        (:meth:`check_question`) or a pipeline without an LLM raises here, before anything is generated.
        """
        if self.generator is None:
            raise RuntimeError("this pipeline was opened without an LLM (with_llm=False)")
        self.check_question(question)
        top_k = top_k or self.settings.top_k
        retrieval = retrieval if retrieval is not None else self.retrieve(question, top_k)
        passages = retrieval.final[:top_k]
        decision = self.gate.run(question) if self.gate is not None else None
        if decision is not None and decision.refuse:
            timings = {**retrieval.timings_ms, "generate_ms": 0.0, "total_ms": retrieval.timings_ms.get("retrieval_ms", 0.0)}
            return AnswerStream.of(Answer(question, REFUSAL, True, (), tuple(passages),
                                          refused_by="gate: " + ", ".join(decision.missing_terms),
                                          retrieval=retrieval, timings_ms=timings), shown=REFUSAL)

        def with_retrieval(answer: Answer) -> Answer:
            timings = {**retrieval.timings_ms, **answer.timings_ms}
            timings["total_ms"] = timings.get("retrieval_ms", 0.0) + timings.get("generate_ms", 0.0)
            return replace(answer, retrieval=retrieval, timings_ms=timings)

        return self.generator.stream(question, passages).then(with_retrieval)

    def ask(self, question: str, top_k: int | None = None, retrieval: Retrieval | None = None) -> Answer:
        return self.ask_stream(question, top_k, retrieval).answer


def check_question(question: str, limit: int) -> None:
    """Refuse an empty question, or one longer than ``limit`` characters (it would crowd the passages
    out of the prompt and slow every stage), with a message that says what to do. The web app calls
    this before it loads any model."""
    n = len(question.strip())
    if not n:
        raise ConfigError("the question is empty; type a question to ask")
    if n > limit:
        raise QuestionTooLongError(f"the question has {n} characters, more than max_question_chars ({limit}); "
                                   "shorten it or raise max_question_chars", length=n, limit=limit)
