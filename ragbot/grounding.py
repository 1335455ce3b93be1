"""Two deterministic guards around the LLM, for a small model that follows instructions loosely.

* :class:`KeyTermGate` refuses before generation when the question names a Latin-script term
  (a model, method or library name such as ``RWKV``, ``YaRN`` or ``FP8``) that occurs nowhere in
  the knowledge base: no passage can then answer it, and a 0.5B model would otherwise invent an
  answer. Matching ignores case, spaces, hyphens and underscores (``FlashAttention`` matches
  ``Flash Attention``).
* :func:`align_citations` adds a citation to answer sentences that have none, pointing at the given
  passage that shares the most character bigrams with the sentence (if it shares enough).
* :func:`repoint_citations` moves a citation whose passage hardly supports its sentence to the passage
  that clearly does (the small model often copies a sentence from one passage and cites its neighbour).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ragbot.types import ScoredChunk

_TERM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z0-9]+)*")


def _squash(text: str) -> str:
    return re.sub(r"[\s\-_]+", "", text.lower())


def key_terms(question: str) -> list[str]:
    """Latin-script words of two or more characters in the question (acronyms, names, identifiers)."""
    return [t for t in dict.fromkeys(_TERM.findall(question)) if len(t) >= 2]


@dataclass(frozen=True)
class GateDecision:
    refuse: bool
    missing_terms: tuple[str, ...] = ()


class KeyTermGate:
    """``KeyTermGate(texts).run(question)`` → refuse when a key term of the question is absent from every text."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._haystack = "\n".join(_squash(t) for t in texts)

    def run(self, question: str) -> GateDecision:
        missing = tuple(t for t in key_terms(question) if _squash(t) not in self._haystack)
        return GateDecision(bool(missing), missing)


_SENTENCE = re.compile(r"[^。！？；!?\n]*[。！？；!?]+|[^。！？；!?\n]+")
_CITED = re.compile(r"\[(\d+)\]")


def _bigrams(text: str) -> set[str]:
    chars = [c for c in text.lower() if c.isalnum()]
    return {a + b for a, b in zip(chars, chars[1:])}


def align_citations(answer: str, passages: Sequence[ScoredChunk], min_overlap: float = 0.5) -> tuple[str, int]:
    """Append ``[n]`` to uncited sentences whose bigrams mostly (≥ ``min_overlap``) occur in passage n.

    Returns the new text and the number of citations added. Sentences that already cite, or that
    no passage supports well enough, are left as they are; line breaks are kept.
    """
    if not passages:
        return answer, 0
    grams = [_bigrams(p.chunk.text) for p in passages]
    added = 0
    lines = []
    for line in answer.split("\n"):
        out = []
        for m in _SENTENCE.finditer(line):
            sentence = m.group(0)
            sg = _bigrams(sentence)
            if _CITED.search(sentence) or len(sg) < 4:
                out.append(sentence)
                continue
            scores = [len(sg & g) / len(sg) for g in grams]
            best = max(range(len(scores)), key=scores.__getitem__)
            if scores[best] >= min_overlap:
                body = sentence.rstrip("。！？；!? ")
                out.append(f"{body} [{best + 1}]{sentence[len(body):]}")
                added += 1
            else:
                out.append(sentence)
        lines.append("".join(out))
    return "\n".join(lines), added


_BOUNDARY = re.compile(r"[。！？；!?\n]")


def _claim_before(text: str, pos: int) -> str:
    """The sentence a marker at ``pos`` cites: the text back to the previous sentence boundary, or the
    previous sentence when the marker follows its full stop (``……。[2]``)."""
    head = re.sub(r"(?:\s*\[\d+\])+\s*$", "", text[:pos])
    head = head.rstrip("。！？；!? ")
    starts = [m.end() for m in _BOUNDARY.finditer(head)]
    return _CITED.sub("", head[starts[-1] if starts else 0:])


def repoint_citations(answer: str, passages: Sequence[ScoredChunk], *, min_support: float = 0.6,
                      margin: float = 0.25) -> tuple[str, int]:
    """Re-point ``[k]`` to ``[j]`` when passage j holds ≥ ``min_support`` of its sentence's character bigrams
    and at least ``margin`` more than passage k does. Returns the new text and how many markers moved.

    A sentence drawing on two passages keeps both citations: each supports part of it, so neither
    falls ``margin`` behind. A marker repeated by the move (``[2][2]``) is written once.
    """
    if not passages:
        return answer, 0
    grams = [_bigrams(p.chunk.text) for p in passages]
    moved = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal moved
        k = int(m.group(1))
        sg = _bigrams(_claim_before(m.string, m.start()))
        if not 1 <= k <= len(passages) or len(sg) < 4:
            return m.group(0)
        scores = [len(sg & g) / len(sg) for g in grams]
        best = max(range(len(scores)), key=scores.__getitem__)
        if scores[best] >= min_support and scores[best] - scores[k - 1] >= margin:
            moved += 1
            return f"[{best + 1}]"
        return m.group(0)

    text = _CITED.sub(repl, answer)
    return re.sub(r"(\[\d+\])(?:\s*\1)+", r"\1", text), moved
