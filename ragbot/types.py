"""The data that flows between ragbot's stages: frozen dataclasses, nothing else.

Library objects (LangChain documents, FAISS arrays, transformers outputs) are converted into
these at the edge of each stage, so stages and tests only ever see these types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": text}``."""


@dataclass(frozen=True)
class Chunk:
    """A piece of one source file, small enough to embed and to quote as a passage.

    ``text`` is always ``document_text[start:end]`` of the decoded file (or page, for PDFs),
    so a citation can be shown and highlighted in its context.
    """

    id: str
    doc_id: str
    text: str
    source: str
    page: int | None = None
    heading_path: tuple[str, ...] = ()
    start: int = 0
    end: int = 0
    content_hash: str = ""

    @property
    def heading(self) -> str:
        return " > ".join(self.heading_path)

    def embedding_text(self) -> str:
        """What the embedder and BM25 see: the heading path gives a short chunk its context."""
        return f"{self.heading}\n{self.text}" if self.heading_path else self.text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["heading_path"] = list(self.heading_path)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**{**d, "heading_path": tuple(d.get("heading_path", ()))})


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk with the score one stage gave it; ``stage`` names that stage (dense, bm25, fused, rerank)."""

    chunk: Chunk
    score: float
    stage: str


@dataclass(frozen=True)
class Citation:
    """Passage number ``n`` (1-based, as shown to the LLM) and the chunk it refers to."""

    n: int
    chunk: Chunk


@dataclass(frozen=True)
class Retrieval:
    """Everything the retrieval stages produced for one question, kept for the debug view and evaluation."""

    query: str
    dense: tuple[ScoredChunk, ...] = ()
    bm25: tuple[ScoredChunk, ...] = ()
    fused: tuple[ScoredChunk, ...] = ()
    reranked: tuple[ScoredChunk, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> tuple[ScoredChunk, ...]:
        return self.reranked or self.fused or self.dense or self.bm25


@dataclass(frozen=True)
class Answer:
    """A generated answer after citation cleaning.

    ``raw_text`` is what the LLM wrote; ``text`` has invalid citation markers removed
    (``invalid_markers`` counts them) and is exactly the refusal phrase when ``refused``.
    ``passages`` are the numbered passages the LLM was given: citation n is ``passages[n - 1]``.
    """

    question: str
    text: str
    refused: bool
    citations: tuple[Citation, ...]
    passages: tuple[ScoredChunk, ...]
    raw_text: str = ""
    invalid_markers: int = 0
    aligned_citations: int = 0  # citations added by lexical alignment because the model gave none
    repointed_citations: int = 0  # citations moved to the passage that supports their sentence
    refused_by: str = ""  # "model", "echo" (it only said the question back), or "gate: <missing terms>" (before generation)
    finish_reason: str = ""  # why generation stopped: "stop", "length" (cut at max_new_tokens), "loop"; "" unknown
    retrieval: Retrieval | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON-ready data: ``ragbot ask --json`` prints it and every evaluation record holds it.

        ``citations`` are the passages the answer cites, ``hits`` every passage the LLM was given (in
        prompt order, with the score and stage that ranked it); ``raw_answer`` is the model's text before
        citation cleaning, re-pointing and alignment. Timings are rounded to 0.1 ms.
        """
        def where(c: Chunk) -> dict[str, Any]:
            return {"chunk_id": c.id, "source": c.source, "page": c.page, "heading": c.heading}

        return {
            "question": self.question,
            "answer": self.text,
            "refused": self.refused,
            "refused_by": self.refused_by,
            "citations": [{"n": c.n, **where(c.chunk), "text": c.chunk.text} for c in self.citations],
            "hits": [{**where(h.chunk), "score": h.score, "stage": h.stage, "text": h.chunk.text} for h in self.passages],
            "raw_answer": self.raw_text,
            "invalid_citation_markers": self.invalid_markers,
            "aligned_citations": self.aligned_citations,
            "repointed_citations": self.repointed_citations,
            "finish_reason": self.finish_reason,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }
