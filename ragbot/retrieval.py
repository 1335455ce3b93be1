"""Candidate retrieval: dense (FAISS), sparse (BM25 over jieba words), fused with reciprocal rank fusion."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ragbot.embedder import Embedder
from ragbot.store import IndexStore, bm25_tokens
from ragbot.types import Retrieval, ScoredChunk


class DenseRetriever:
    """Nearest chunks to the query embedding (inner product of normalised vectors = cosine)."""

    def __init__(self, store: IndexStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    def run(self, query: str, k: int) -> list[ScoredChunk]:
        vector = self.embedder.embed_query(query)
        return [ScoredChunk(c, s, "dense") for c, s in self.store.search_dense(vector[None, :], k)[0]]


class BM25Retriever:
    """Keyword retrieval: catches exact terms (names, numbers, code identifiers) that embeddings blur."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store

    def run(self, query: str, k: int) -> list[ScoredChunk]:
        return [ScoredChunk(c, s, "bm25") for c, s in self.store.search_bm25(bm25_tokens(query), k)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[ScoredChunk]], k: int = 60) -> list[ScoredChunk]:
    """Fuse ranked lists by ``sum(1 / (k + rank))`` (rank from 1); ties keep first-seen order.

    RRF needs no score calibration between BM25 and cosine, which live on unrelated scales.
    """
    scores: dict[str, float] = {}
    chunks = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + 1.0 / (k + rank)
            chunks.setdefault(hit.chunk.id, hit.chunk)
    order = sorted(scores, key=lambda cid: -scores[cid])  # sorted() is stable: first-seen wins ties
    return [ScoredChunk(chunks[cid], scores[cid], "fused") for cid in order]


class HybridRetriever:
    """Dense and BM25 candidates fused with RRF; ``run`` returns every stage's list for inspection."""

    def __init__(self, dense: DenseRetriever, bm25: BM25Retriever | None, *, dense_k: int = 30, bm25_k: int = 30,
                 rrf_k: int = 60) -> None:
        self.dense = dense
        self.bm25 = bm25
        self.dense_k, self.bm25_k, self.rrf_k = dense_k, bm25_k, rrf_k

    def run(self, query: str, k: int) -> Retrieval:
        timings = {}
        t = time.perf_counter()
        dense = self.dense.run(query, self.dense_k)
        timings["dense_ms"] = (time.perf_counter() - t) * 1000
        sparse: list[ScoredChunk] = []
        if self.bm25 is not None:
            t = time.perf_counter()
            sparse = self.bm25.run(query, self.bm25_k)
            timings["bm25_ms"] = (time.perf_counter() - t) * 1000
            fused = reciprocal_rank_fusion([dense, sparse], self.rrf_k)[:k]
        else:
            fused = [ScoredChunk(h.chunk, h.score, "fused") for h in dense[:k]]
        return Retrieval(query, tuple(dense), tuple(sparse), tuple(fused), (), timings)
