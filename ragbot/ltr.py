"""A learned-to-rank reranker: logistic regression over cheap query–passage features.

Why not a cross-encoder: no Chinese cross-encoder exists offline, and on 2 CPU cores even e5-small
as a cross-encoder costs ~1 s for 20 passages, against a 150 ms budget for retrieval + rerank. The
features here cost microseconds and add what rank fusion ignores: dense and BM25 scores (not
just ranks, scaled within each query so they do not depend on the embedder), how much of the question's vocabulary (IDF-weighted) the passage and its headings
cover, and whether the question's Latin-script terms (names, acronyms) occur in the passage.

The weights are learned from synthetic questions generated from the corpus (``ragbot finetune
data`` writes them), never from evaluation questions; see ``bench/train_reranker.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragbot.errors import ConfigError
from ragbot.grounding import key_terms
from ragbot.store import IndexStore, bm25_tokens
from ragbot.text import squash, support
from ragbot.types import Retrieval, ScoredChunk

FEATURES = ("rrf", "dense_rel", "dense_recip_rank", "bm25_rel", "bm25_recip_rank", "idf_coverage", "heading_coverage",
            "key_term_coverage", "bigram_coverage", "log_length")
SHIPPED = Path(__file__).resolve().parent / "assets" / "reranker" / "ltr.json"


class FeatureExtractor:
    """Features of (question, candidate) pairs, given the stage outputs of one retrieval.

    ``rrf_k`` is the fusion constant the candidates were scored with: their fusion score is multiplied by it,
    so the feature sits near 1 for a top hit whatever the constant (the shipped weights were fit with 60).
    """

    def __init__(self, store: IndexStore, rrf_k: int = 60) -> None:
        self.store = store
        self.rrf_k = rrf_k

    def idf(self, terms: Sequence[str]) -> dict[str, float]:
        """BM25's (Lucene) idf of each term over the live chunks; an unknown term gets the highest."""
        n = max(1, len(self.store))
        return {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in self.store.doc_freq(terms).items()}

    def run(self, retrieval: Retrieval, candidates: Sequence[ScoredChunk]) -> np.ndarray:
        q = retrieval.query
        q_tokens = list(dict.fromkeys(bm25_tokens(q)))
        weights = self.idf(q_tokens)
        total = sum(weights.values()) or 1.0
        terms = [squash(t) for t in key_terms(q)]
        # scores relative to this query's best and worst candidates: raw cosines differ by embedder
        # (e5's sit in a narrow 0.8-0.9 band), so only their spread within one query is transferable
        d_scores = [h.score for h in retrieval.dense]
        d_lo, d_span = (min(d_scores), (max(d_scores) - min(d_scores)) or 1.0) if d_scores else (0.0, 1.0)
        dense = {h.chunk.id: ((h.score - d_lo) / d_span, i) for i, h in enumerate(retrieval.dense)}
        bm25 = {h.chunk.id: (h.score, i) for i, h in enumerate(retrieval.bm25)}
        top_bm25 = retrieval.bm25[0].score if retrieval.bm25 else 1.0
        rows = []
        held = self.store.terms_of([h.chunk.id for h in candidates], q_tokens)  # from the postings
        for hit in candidates:
            c = hit.chunk
            toks = held.get(c.id, set())
            head = set(bm25_tokens(c.heading)) if c.heading_path else set()
            d_score, d_rank = dense.get(c.id, (None, None))
            b_score, b_rank = bm25.get(c.id, (0.0, None))
            text = squash(c.text)
            rows.append([
                hit.score * self.rrf_k,  # RRF scores sit near 1/rrf_k; rescale for the regression
                d_score if d_score is not None else 0.0,
                1.0 / (1 + d_rank) if d_rank is not None else 0.0,
                b_score / top_bm25 if top_bm25 > 0 else 0.0,
                1.0 / (1 + b_rank) if b_rank is not None else 0.0,
                sum(w for t, w in weights.items() if t in toks) / total,
                sum(w for t, w in weights.items() if t in head) / total,
                (sum(1 for t in terms if t in text) / len(terms)) if terms else 1.0,
                support(q, c.text),
                math.log(1 + len(c.text)),
            ])
        return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class LTRModel:
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    features: tuple[str, ...] = FEATURES

    def score(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.weights) + self.bias

    def save(self, path: Path, **info) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "mean": list(self.mean), "scale": list(self.scale), **info}
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: Path) -> LTRModel:
        """The model saved at ``path``; a missing, unreadable or mismatched file raises :class:`ConfigError`
        naming the file and the fix (the ``reranker`` setting, or retraining)."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
            model = cls(tuple(d["weights"]), d["bias"], tuple(d["mean"]), tuple(d["scale"]), tuple(d["features"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"reranker model {path} cannot be read ({type(e).__name__}: {e}); set reranker to "
                              "'ltr' (the shipped model), 'none', or 'ltr:<model.json>' written by "
                              "bench/train_reranker.py") from None
        if model.features != FEATURES:
            raise ConfigError(f"reranker model {path} was trained on features {list(model.features)}, this ragbot "
                              f"computes {list(FEATURES)}; retrain it with bench/train_reranker.py")
        return model


def fit(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> LTRModel:
    """Standardise, then an L2 logistic regression (scikit-learn) with balanced classes."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=1000).fit((x - mean) / scale, y)
    return LTRModel(tuple(clf.coef_[0].tolist()), float(clf.intercept_[0]), tuple(mean.tolist()), tuple(scale.tolist()))


class LTRReranker:
    """``LTRReranker(store, model).rerank(retrieval, top_k)``: reorders the fused candidates."""

    name = "ltr"

    def __init__(self, store: IndexStore, model_path: Path = SHIPPED, rrf_k: int = 60) -> None:
        self.store = store
        self.model_path = Path(model_path)
        self.rrf_k = rrf_k
        self._model: LTRModel | None = None
        self._features: FeatureExtractor | None = None

    def warm_up(self) -> None:
        if self._model is None:
            self._model = LTRModel.load(self.model_path)
            self._features = FeatureExtractor(self.store, self.rrf_k)

    def rerank(self, retrieval: Retrieval, top_k: int) -> list[ScoredChunk]:
        self.warm_up()
        hits = list(retrieval.fused)
        if not hits:
            return []
        scores = self._model.score(self._features.run(retrieval, hits))
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [ScoredChunk(hits[i].chunk, float(scores[i]), "rerank") for i in order]
