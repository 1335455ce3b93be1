"""Scoring functions for the evaluation: pure Python, no models, no I/O.

Conventions shared by every function here:

* A rate with nothing to count over (0/0: no refusals, no answerable questions, no latencies)
  is ``None``, never 0.0 or NaN. 0.0 would read as a real failure, and NaN is not valid JSON
  and silently poisons any average it enters. Reports print ``None`` as "n/a".
* A ROUGE score against an empty answer (or one that is only punctuation) is 0.0: an empty
  answer is a real, bad answer, not a missing measurement. An empty reference also gives 0.0,
  as in rouge-score.
* Evidence is a verbatim substring of a source document, and a passage "contains" it when it
  does so after both are normalised by :func:`normalize_ws`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragbot.citations import cited_sentences, is_refusal
from ragbot.text import support
from ragbot.types import Answer

_WHITESPACE = re.compile(r"\s+")
# ASCII letters/digits group into words; any other letter or digit (CJK, kana, Greek) is a token
# of its own. ``[^\W_]`` is "word character but not underscore", so punctuation, symbols and
# whitespace (Chinese, Western and full-width alike) never become tokens.
_CHAR_TOKEN = re.compile(r"[a-z0-9]+|[^\W_]")


# ---------------------------------------------------------------- evidence matching


def normalize_ws(text: str) -> str:
    """NFKC-normalise ``text`` and remove all whitespace.

    Chunk text is a slice of the decoded document, but PDF extraction and the chunker's
    stripping can change line breaks and spaces, and in Chinese text whitespace is layout, not
    content, so it is dropped entirely. NFKC folds full-width ASCII (``ＬｏＲＡ１２``) into
    half-width and the ideographic space into a plain one, so an evidence string typed with one
    width still matches a document that uses the other. Case is kept: the evidence is verbatim.
    """
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", text))


def contains_evidence(chunk_text: str, evidence: str) -> bool:
    """Whether ``chunk_text`` contains ``evidence``, ignoring whitespace and character width.

    Evidence that straddles a chunk boundary is in no single chunk and counts as a miss, so
    evidence strings should be a sentence or less.
    """
    needle = normalize_ws(evidence)
    if not needle:
        raise ValueError(
            f"evidence ({evidence!r}) is empty after removing whitespace; give each answerable "
            "question a verbatim sentence from its source (unanswerable ones are not matched)"
        )
    return needle in normalize_ws(chunk_text)


# ---------------------------------------------------------------- retrieval


def first_hit_rank(chunk_texts: Sequence[str], evidence: str) -> int | None:
    """1-based rank of the first chunk that contains ``evidence``; None when none does."""
    return next((rank for rank, text in enumerate(chunk_texts, start=1) if contains_evidence(text, evidence)), None)


def _check_ranks(ranks: Sequence[int | None]) -> None:
    bad = [r for r in ranks if r is not None and r < 1]
    if bad:
        raise ValueError(f"ranks {bad} are below 1; ranks are 1-based (None means not retrieved)")


def hit_at_k(ranks: Sequence[int | None], k: int) -> float | None:
    """Fraction of questions whose evidence was in the top ``k`` (None rank = not retrieved)."""
    if k < 1:
        raise ValueError(f"k ({k}) must be at least 1")
    _check_ranks(ranks)
    if not ranks:
        return None
    return sum(r is not None and r <= k for r in ranks) / len(ranks)


def mrr(ranks: Sequence[int | None]) -> float | None:
    """Mean reciprocal rank; a question whose evidence was not retrieved (None) scores 0."""
    _check_ranks(ranks)
    if not ranks:
        return None
    return sum(1 / r for r in ranks if r is not None) / len(ranks)


# ---------------------------------------------------------------- ROUGE


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float


def _score(overlap: int, n_ref: int, n_hyp: int) -> Score:
    """Precision, recall and F1 (beta = 1), with rouge-score's zero conventions."""
    precision = overlap / max(n_hyp, 1)
    recall = overlap / max(n_ref, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return Score(precision, recall, f1)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(ref_tokens: Sequence[str], hyp_tokens: Sequence[str], n: int) -> Score:
    """ROUGE-N: clipped n-gram overlap (a repeated n-gram counts at most as often as in the other side)."""
    if n < 1:
        raise ValueError(f"n ({n}) must be at least 1 (1 for unigrams, 2 for bigrams)")
    ref, hyp = _ngrams(ref_tokens, n), _ngrams(hyp_tokens, n)
    return _score(sum((ref & hyp).values()), sum(ref.values()), sum(hyp.values()))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, keeping one row of the DP table at a time."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b, start=1):
            row.append(prev[j - 1] + 1 if x == y else max(prev[j], row[j - 1]))
        prev = row
    return prev[-1]


def rouge_l(ref_tokens: Sequence[str], hyp_tokens: Sequence[str]) -> Score:
    """ROUGE-L: longest common subsequence over the whole text (no sentence splitting), as rouge-score's ``rougeL``."""
    return _score(_lcs_length(ref_tokens, hyp_tokens), len(ref_tokens), len(hyp_tokens))


def char_tokens(text: str) -> list[str]:
    """One token per CJK character; ASCII letters and digits as lower-cased words; no punctuation.

    Whitespace-splitting tokenisers (rouge-score's default) drop or merge Chinese entirely, so
    ROUGE must be computed on our own tokens. NFKC first, so full-width letters and digits match
    half-width ones.

    >>> char_tokens("LoRA 的秩 r=8。")
    ['lora', '的', '秩', 'r', '8']
    """
    return _CHAR_TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def word_tokens(text: str) -> list[str]:
    """Jieba words (precise mode), NFKC-normalised and lower-cased, without punctuation or whitespace.

    A second view next to :func:`char_tokens`: character n-grams reward partial word matches,
    word n-grams only whole terms. Jieba keeps tokens like ``0.9`` and ``c++`` whole.
    """
    import jieba

    jieba.setLogLevel(60)  # silence the dictionary-loading banner
    words = (w.strip().lower() for w in jieba.lcut(unicodedata.normalize("NFKC", text)))
    return [w for w in words if any(ch.isalnum() for ch in w)]


def rouge_scores(reference: str, hypothesis: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 on character and word tokens.

    Keys: ``rouge1_char``, ``rouge2_char``, ``rougeL_char``, ``rouge1_word``, ``rouge2_word``,
    ``rougeL_word``. An empty (or punctuation-only) hypothesis or reference scores 0.0.
    """
    scores = {}
    for view, tokenize in (("char", char_tokens), ("word", word_tokens)):
        ref, hyp = tokenize(reference), tokenize(hypothesis)
        scores[f"rouge1_{view}"] = rouge_n(ref, hyp, 1).f1
        scores[f"rouge2_{view}"] = rouge_n(ref, hyp, 2).f1
        scores[f"rougeL_{view}"] = rouge_l(ref, hyp).f1
    return scores


# ---------------------------------------------------------------- refusals


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class RefusalMetrics:
    """How well the system refuses exactly the unanswerable questions.

    ``precision``: refusals that were right; ``recall``: unanswerable questions refused;
    ``false_refusal_rate``: answerable questions refused. Each is None when its denominator is 0.
    """

    n_answerable: int
    n_unanswerable: int
    n_refused: int
    true_refusals: int
    false_refusals: int
    precision: float | None
    recall: float | None
    false_refusal_rate: float | None


def refusal_metrics(predicted_refused: Sequence[bool], should_refuse: Sequence[bool]) -> RefusalMetrics:
    """Refusal precision/recall (refusing is the positive class) and the false refusal rate."""
    if len(predicted_refused) != len(should_refuse):
        raise ValueError(
            f"predicted_refused has {len(predicted_refused)} entries but should_refuse has "
            f"{len(should_refuse)}; pass one of each per question, in the same order"
        )
    pairs = list(zip(predicted_refused, should_refuse))
    n_unanswerable = sum(should for _, should in pairs)
    n_refused = sum(refused for refused, _ in pairs)
    true_refusals = sum(refused and should for refused, should in pairs)
    false_refusals = n_refused - true_refusals
    n_answerable = len(pairs) - n_unanswerable
    return RefusalMetrics(
        n_answerable=n_answerable,
        n_unanswerable=n_unanswerable,
        n_refused=n_refused,
        true_refusals=true_refusals,
        false_refusals=false_refusals,
        precision=_rate(true_refusals, n_refused),
        recall=_rate(true_refusals, n_unanswerable),
        false_refusal_rate=_rate(false_refusals, n_answerable),
    )


# ---------------------------------------------------------------- citations


@dataclass(frozen=True)
class CitationRecord:
    """One answer's citations: the texts of the passages it cites and the question's evidence.

    ``evidence`` may be empty only for unanswerable questions; ``invalid_markers`` counts the
    markers generation removed because they named no given passage.
    """

    cited_texts: tuple[str, ...]
    evidence: str
    invalid_markers: int = 0
    answerable: bool = True

    def __post_init__(self) -> None:
        if self.answerable and not normalize_ws(self.evidence):
            raise ValueError(
                f"evidence ({self.evidence!r}) is empty for an answerable question; give its verbatim source sentence"
            )
        if self.invalid_markers < 0:
            raise ValueError(f"invalid_markers ({self.invalid_markers}) must be >= 0")

    @classmethod
    def from_answer(cls, answer: Answer, evidence: str, answerable: bool) -> CitationRecord:
        return cls(tuple(c.chunk.text for c in answer.citations), evidence, answer.invalid_markers, answerable)


@dataclass(frozen=True)
class CitationMetrics:
    """Citation quality on answerable questions, plus invalid markers over all answers.

    ``citation_precision``: cited passages (on answerable questions) that contain the evidence.
    ``supported_rate``: answerable questions with at least one such citation; a refused or
    uncited answer counts as unsupported, so this is an end-to-end "answer backed by its source"
    rate. Both are lower bounds: a passage can support an answer without the exact evidence string.
    """

    n_answerable: int
    n_citations: int
    valid_citations: int
    supported_answers: int
    invalid_markers: int
    citation_precision: float | None
    supported_rate: float | None


def citation_metrics(records: Sequence[CitationRecord]) -> CitationMetrics:
    """Aggregate :class:`CitationRecord` s; unanswerable questions only add their invalid markers."""
    answerable = [r for r in records if r.answerable]
    valid = [sum(contains_evidence(text, r.evidence) for text in r.cited_texts) for r in answerable]
    n_citations = sum(len(r.cited_texts) for r in answerable)
    supported = sum(v > 0 for v in valid)
    return CitationMetrics(
        n_answerable=len(answerable),
        n_citations=n_citations,
        valid_citations=sum(valid),
        supported_answers=supported,
        invalid_markers=sum(r.invalid_markers for r in records),
        citation_precision=_rate(sum(valid), n_citations),
        supported_rate=_rate(supported, len(answerable)),
    )


def supported_sentences(answer: str, passages: Sequence[str], *, min_support: float = 0.6,
                        min_chars: int = 6) -> float | None:
    """Share of the answer's sentences that the passages it cites support; None when no sentence counts.

    ``answer`` is the cleaned answer (markers ``[n]``) and ``passages`` the texts of the passages the LLM was
    given, as it saw them (:func:`ragbot.prompt.shown_passages`), in prompt order: ``[n]`` is ``passages[n - 1]``.

    * The answer is split into sentences by :func:`ragbot.citations.cited_sentences` (a marker right after a
      full stop belongs to that sentence). A sentence counts when it has ``min_chars`` or more characters once
      its markers are removed and it is stripped (punctuation counts, markers and surrounding spaces do not).
    * Each counted sentence is checked against the passages **it** cites; a sentence citing none against the
      passages the answer cites anywhere; when the answer cites nothing, against all given passages (so an
      answer with no passages at all supports nothing: 0.0). Numbers naming no given passage are ignored.
    * It is supported when at least ``min_support`` of its character bigrams occur in those passages together
      (:func:`ragbot.text.support` on their texts joined by line breaks).

    A refusal (:func:`ragbot.citations.is_refusal`), an empty answer, or one whose sentences are all shorter
    than ``min_chars`` gives None: it claims nothing to check.

    >>> supported_sentences("LoRA 只训练低秩矩阵 [1]。它还能把显存降到零 [1]。", ["LoRA 冻结权重，只训练低秩矩阵。"])
    0.5
    >>> supported_sentences("资料中没有相关信息", ["LoRA 冻结权重。"]) is None
    True
    """
    if is_refusal(answer):
        return None
    split = cited_sentences(answer)
    valid = range(1, len(passages) + 1)
    cited_by_answer = sorted({n for _, numbers in split for n in numbers if n in valid})
    counted = [(claim, [n for n in numbers if n in valid]) for claim, numbers in split if len(claim) >= min_chars]
    if not counted:
        return None

    def source(numbers: Sequence[int]) -> str:
        chosen = numbers or cited_by_answer or valid
        # joined, the last letter of one passage and the first of the next make one bigram that neither holds;
        # it counts only for a sentence holding exactly that pair, rare enough to keep text.support as it is
        return "\n".join(passages[n - 1] for n in chosen)

    supported = sum(support(claim, source(numbers)) >= min_support for claim, numbers in counted)
    return supported / len(counted)


# ---------------------------------------------------------------- latency


def percentiles(values_ms: Sequence[float]) -> dict[str, float | None]:
    """p50 and p95 with linear interpolation (numpy's default); both None when there are no values."""
    if len(values_ms) == 0:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values_ms, dtype=float), [50, 95])
    return {"p50": float(p50), "p95": float(p95)}
