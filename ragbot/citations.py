"""Citation markers: how an answer cites its passages, and how that is checked, cleaned and corrected.

The model sees the passages numbered [1]..[n] and cites them as ``[n]``. Whatever it writes:

* :func:`clean_citations` normalises every marker (``[1,2]``, ``【3】``, ``[资料1]``, ``[1-3]``) to ``[n]``
  and drops numbers that name no given passage (counted as ``invalid``); brackets inside code (a fenced
  block or an inline span) are code, not markers, and stay as written;
* a citation whose passage hardly holds its sentence moves to the passage that clearly does
  (the small model often copies a sentence from one passage and cites its neighbour);
* :func:`align_citations` gives the sentences of an answer that cites nothing the passage they
  were taken from, when one clearly holds them.

:class:`CitationStreamFilter` does the first two while the answer streams, so the text a user
sees as it is generated is the text of the final answer (only alignment, which needs the whole
answer, can add markers at the end). :func:`repoint_citations` runs the same filter over a
finished text. :func:`cited_sentences`, :func:`claims_by_citation` and :func:`support_spans` say which
answer sentences cite a passage and which of the passage's sentences support them, for showing a source
(and for the evaluation's supported-sentences metric).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ragbot.settings import REFUSAL
from ragbot.text import alnum, bigrams, in_code, sentence_spans, sentences
from ragbot.types import ScoredChunk

OPEN, CLOSE = "[【［", "]】］"  # brackets a marker may use: ASCII, Chinese lenticular, full-width
# [1]  [1,2]  [1][2]  【1】  ［1］  [资料1]  [1-3]
MARKER = re.compile(r"[\[【［]\s*(?:资料|来源|passage\s*)?\s*(\d{1,3}(?:\s*(?:[,，、;；]|-|–|~)\s*\d{1,3})*)\s*[\]】］]")
CITED = re.compile(r"\[(\d+)\]")  # a marker after cleaning
_LEAD_MARKER = re.compile(r"([ \t]*)(" + MARKER.pattern + ")")
BOUNDARY = re.compile(r"[。！？；!?\n]")  # where a sentence (or a line) ends


@dataclass(frozen=True)
class CleanResult:
    text: str
    cited: tuple[int, ...]  # valid passage numbers in order of first appearance
    invalid: int  # markers (or numbers inside a marker) that named no given passage


def clean_citations(text: str, n_passages: int) -> CleanResult:
    """Normalise citation markers to ``[n]`` and drop numbers outside 1..n_passages."""
    cited: list[int] = []
    invalid = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal invalid
        if in_code(text[:m.start(2)]):  # code (``[1,2,3]`` in a snippet) stays as written
            return m.group(0)
        lead, numbers = m.group(1), _expand(m.group(3))  # group 2 is the whole marker, 3 its numbers
        valid = [n for n in numbers if 1 <= n <= n_passages]
        invalid += len(numbers) - len(valid)
        for n in valid:
            if n not in cited:
                cited.append(n)
        kept = "".join(f"[{n}]" for n in dict.fromkeys(valid))
        return lead + kept if kept else ""  # a removed marker takes the space before it along

    cleaned = _LEAD_MARKER.sub(repl, text)
    return CleanResult(cleaned.strip(), tuple(cited), invalid)


def _expand(group: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*[,，、;；]\s*", group):
        bounds = re.split(r"\s*[-–~]\s*", part)
        if len(bounds) == 2 and bounds[0] and bounds[1] and int(bounds[1]) - int(bounds[0]) in range(0, 10):
            numbers.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        else:
            numbers.extend(int(b) for b in bounds if b)
    return numbers


def is_refusal(text: str) -> bool:
    """The model refused when its answer starts with the refusal phrase (a short preface is tolerated)."""
    head = re.sub(r"[\s*#>“”\"'：:，,。]", "", text)[:24]
    return REFUSAL in head or "资料中没有相关的信息" in head or "资料中未提及" in head


def cites_nothing(text: str) -> bool:
    """Whether a cleaned answer is empty once its markers are removed (a bare "[1]" is no answer)."""
    return not CITED.sub("", text).strip()


_OPEN_MARKER = re.compile(r"[\[【［]\s*\d{0,3}\s*$")  # a marker cut off at the end of a reply


def says_back(question: str, answer: str, min_share: float = 0.5) -> bool:
    """Whether ``answer`` only repeats the question: markers aside, its letters and digits occur in a row in the
    question's and make at least ``min_share`` of them (and 4 or more). A short answer that is one word of the
    question ("Adam" to "Adam 和 SGD 哪个更常用？") is not a repeat.

    >>> says_back("注意力为什么要除以根号 d？", "**注意力为什么要除以根号 d** 【1】！")
    True
    >>> says_back("注意力为什么要除以根号 d？", "注意力为什么要除以根号 d：防止方差过大 [1]。")
    False
    >>> says_back("Adam 和 SGD 哪个更常用？", "Adam [1]。")
    False
    """
    said, asked = alnum(_OPEN_MARKER.sub("", MARKER.sub("", answer))), alnum(question)
    return len(said) >= max(4, min_share * len(asked)) and said in asked


# ---------------------------------------------------------------- moving a citation to the passage that holds its claim


def _claim_before(text: str, pos: int) -> str:
    """The sentence a marker at ``pos`` cites: the text back to the previous sentence boundary, or the
    previous sentence when the marker follows its full stop (``……。[2]``)."""
    head = re.sub(r"(?:\s*\[\d+\])+\s*$", "", text[:pos])
    head = head.rstrip("。！？；!? ")
    starts = [m.end() for m in BOUNDARY.finditer(head)]
    return CITED.sub("", head[starts[-1] if starts else 0:])


class _Repointer:
    """Re-points ``[k]`` to ``[j]`` when passage j holds ≥ ``min_support`` of its sentence's character bigrams and
    at least ``margin`` more than passage k does.

    A sentence drawing on two passages keeps both citations: each supports part of it, so neither falls
    ``margin`` behind. Sentences with fewer than four bigrams are too short to judge and keep their marker.
    """

    def __init__(self, passages: Sequence[ScoredChunk], min_support: float = 0.6, margin: float = 0.25) -> None:
        self.grams = [bigrams(p.chunk.text) for p in passages]
        self.min_support, self.margin = min_support, margin

    def target(self, claim: str, k: int) -> int:
        sg = bigrams(claim)
        if not 1 <= k <= len(self.grams) or len(sg) < 4:
            return k
        scores = [len(sg & g) / len(sg) for g in self.grams]
        best = max(range(len(scores)), key=scores.__getitem__)
        if scores[best] >= self.min_support and scores[best] - scores[k - 1] >= self.margin:
            return best + 1
        return k


class CitationStreamFilter:
    """Streams text through, holding back a possible marker until it is complete, then cleaning it and, when
    ``passages`` are given, re-pointing it (:class:`_Repointer`); spaces are held until the next character,
    so a dropped marker takes the space before it along, as in :func:`clean_citations`.

    ``feed`` returns what is safe to show now; ``flush`` returns the rest at the end. ``text`` is everything
    shown, ``invalid`` the numbers dropped, ``repointed`` the markers moved.
    """

    def __init__(self, n_passages: int, passages: Sequence[ScoredChunk] | None = None) -> None:
        self.n = n_passages
        self._repointer = _Repointer(passages) if passages else None
        self._pending = ""  # an unfinished marker, with the spaces before it
        self._lead = 0  # how many of those spaces
        self._spaces = ""  # spaces not shown yet: they go with a marker that may be dropped
        self._shown: list[str] = []
        self.invalid = 0
        self.repointed = 0

    @property
    def text(self) -> str:
        return "".join(self._shown)

    def feed(self, delta: str) -> str:
        out: list[str] = []
        for ch in delta:
            if self._pending:
                self._pending += ch
                if ch in CLOSE:
                    out.append(self._marker(self._pending, "".join(self._shown) + "".join(out)))
                    self._pending = ""
                elif len(self._pending) > 16 + self._lead or ch == "\n":
                    out.append(self._pending)
                    self._pending = ""
            elif ch in OPEN:
                self._pending, self._lead, self._spaces = self._spaces + ch, len(self._spaces), ""
            elif ch in " \t":
                self._spaces += ch
            else:
                out.append(self._spaces + ch)
                self._spaces = ""
        shown = "".join(out)
        self._shown.append(shown)
        return shown

    def flush(self) -> str:
        rest, self._pending, self._spaces = self._pending + self._spaces, "", ""
        self._shown.append(rest)
        return rest

    def _marker(self, pending: str, before: str) -> str:
        """What to show for a complete bracketed run ``pending`` (its leading spaces included) after ``before``."""
        body = pending.lstrip(" \t")
        lead = pending[:len(pending) - len(body)]
        marker = MARKER.fullmatch(body)
        if marker is None or in_code(before + lead):  # code (``[1,2,3]`` in a snippet) stays as written
            return pending
        numbers = _expand(marker.group(1))
        valid = [n for n in numbers if 1 <= n <= self.n]
        self.invalid += len(numbers) - len(valid)
        out = ""
        for n in dict.fromkeys(valid):
            if self._repointer is not None:
                moved = self._repointer.target(_claim_before(before, len(before)), n)
                self.repointed += moved != n
                n = moved
            if not re.search(rf"\[{n}\]\s*$", before + out):  # a marker repeated by the move is written once
                out += f"[{n}]"
        return lead + out if out else ""


def repoint_citations(answer: str, passages: Sequence[ScoredChunk]) -> tuple[str, int]:
    """``answer`` (already cleaned) with each citation moved to the passage that holds its sentence, and how many
    moved: the streaming filter's rule (:class:`CitationStreamFilter`), run over the whole text."""
    if not passages:
        return answer, 0
    filt = CitationStreamFilter(len(passages), passages)
    text = filt.feed(answer) + filt.flush()
    return text, filt.repointed


def align_citations(answer: str, passages: Sequence[ScoredChunk], min_overlap: float = 0.5) -> tuple[str, int]:
    """Append ``[n]`` to uncited sentences whose bigrams mostly (≥ ``min_overlap``) occur in passage n.

    Returns the new text and the number of citations added. Sentences that already cite, or that
    no passage supports well enough, are left as they are; line breaks are kept.
    """
    if not passages:
        return answer, 0
    grams = [bigrams(p.chunk.text) for p in passages]
    added = 0
    lines: list[str] = []
    for line in answer.split("\n"):
        if "```" in line or in_code("\n".join(lines) + "\n"):  # code blocks are quoted as they are
            lines.append(line)
            continue
        out: list[str] = []
        for sentence in sentences(line):
            sg = bigrams(sentence)
            if CITED.search(sentence) or len(sg) < 4 or in_code("".join(out) + sentence):
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


# ---------------------------------------------------------------- showing what a citation rests on

_ANSWER_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+|\n|$)(?:\s*\[\d{1,3}\])*")


def cited_sentences(answer_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """The sentences of a cleaned answer, each with its markers removed and the passage numbers it cites.

    A marker right after the sentence's full stop ("…显存。[1]") belongs to that sentence; a sentence that is
    empty once its markers are removed is left out.

    >>> cited_sentences("LoRA 省显存 [1]。秩常取 8。[2][1] 完")
    [('LoRA 省显存 。', (1,)), ('秩常取 8。', (2, 1)), ('完', ())]
    """
    out = []
    for m in _ANSWER_SENTENCE.finditer(answer_text or ""):
        sentence = m.group(0)
        claim = CITED.sub("", sentence).strip()
        if claim:
            out.append((claim, tuple(dict.fromkeys(int(x) for x in CITED.findall(sentence)))))
    return out


def claims_by_citation(answer_text: str) -> dict[int, list[str]]:
    """For each ``n``, the answer sentences that cite ``[n]`` (markers removed; :func:`cited_sentences`)."""
    out: dict[int, list[str]] = {}
    for claim, numbers in cited_sentences(answer_text):
        for n in numbers:
            out.setdefault(n, []).append(claim)
    return out


def support_spans(chunk_text: str, claims: Sequence[str], max_spans: int = 2,
                  min_score: float = 0.15) -> list[tuple[int, int]]:
    """Offsets of the chunk's sentences that overlap most with ``claims`` (Dice on character bigrams), in text order."""
    claim_bigrams = set().union(*(bigrams(c) for c in claims)) if claims else set()
    if not claim_bigrams:
        return []
    scored = []
    for s, e in sentence_spans(chunk_text, ends="。！？；!?;"):
        sentence = chunk_text[s:e]
        sent = bigrams(sentence)
        if not sent or sentence.lstrip().startswith("#"):  # a heading repeats the topic, it supports nothing
            continue
        score = 2 * len(sent & claim_bigrams) / (len(sent) + len(claim_bigrams))
        if score >= min_score:
            scored.append((score, s + len(sentence) - len(sentence.lstrip()), s + len(sentence.rstrip())))
    best = sorted(scored, key=lambda x: -x[0])[:max_spans]
    best = [b for b in best if b[0] >= best[0][0] * 0.6]  # a second sentence only when it is nearly as good
    return sorted((s, e) for _, s, e in best)
