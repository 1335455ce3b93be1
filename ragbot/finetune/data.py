"""RAFT-style training examples in the exact prompt format the generator uses at inference.

For each synthetic (question, answer, gold chunk):

* an *answer* example: the gold chunk among distractor chunks retrieved for the question, at the rank
  retrieval gives it (or a random position: ``positions``), and the target ``answer [k]`` citing the gold
  passage number k (a question answered by two statements or chunks gets ``A [i]；B [j]。``);
* with probability ``refusal_ratio``, a *refusal* example: the same question with the gold chunk
  (and any passage that supports the answer) withheld, and the target ``资料中没有相关信息``.

Questions that are near-duplicates (character 5-gram Jaccard ≥ 0.5) of any evaluation question are
dropped before anything else, so no evaluation question reaches training even by paraphrase.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ragbot.errors import ConfigError
from ragbot.finetune.questions import SyntheticQA, question_subject
from ragbot.grounding import key_terms
from ragbot.prompt import build_messages, focus_start
from ragbot.settings import REFUSAL
from ragbot.text import alnum, squash, support
from ragbot.types import Chunk, ScoredChunk


@dataclass(frozen=True)
class TrainingExample:
    messages: list[dict[str, str]]  # system + user, exactly as the generator builds them
    target: str  # the assistant reply to learn
    kind: str  # "answer" or "refusal"
    gold_position: int | None  # 1-based passage number of the gold chunk; None for refusals
    question: str
    chunk_id: str
    source: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def char_ngrams(text: str, n: int = 5) -> set[str]:
    chars = alnum(text)
    return {chars[i:i + n] for i in range(max(1, len(chars) - n + 1))} if chars else set()


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def near_duplicates(questions: Sequence[str], held_out: Iterable[str], threshold: float = 0.5,
                    n: int = 5) -> dict[int, tuple[str, float]]:
    """Indices of ``questions`` whose char n-gram Jaccard with some held-out question is ≥ threshold."""
    held = [(q, char_ngrams(q, n)) for q in held_out]
    found = {}
    for i, q in enumerate(questions):
        grams = char_ngrams(q, n)
        best = max(((h, jaccard(grams, hg)) for h, hg in held), key=lambda x: x[1], default=("", 0.0))
        if best[1] >= threshold:
            found[i] = best
    return found


def subjects(pair: SyntheticQA) -> list[str]:
    """What the question asks about, in forms to look for in a passage: the writer's subject (with and without
    its parenthesis, and what the parenthesis holds), the subject of a template question, and Latin key terms."""
    found = [pair.subject, question_subject(pair.question), *key_terms(pair.question)]
    out = []
    for s in found:
        out += [s, re.sub(r"\s*[（(].*?[)）]\s*", "", s), *re.findall(r"[（(]([^)）]+)[)）]", s)]
    return [t for t in dict.fromkeys(squash(x, markdown=True) for x in out) if len(t) >= 2]


def answer_start(text: str, answer: str, size: int) -> int:
    """Where a ``size``-character window of ``text`` that holds ``answer`` should start: a little before the first
    place where a clause of the answer (or the longest tail of one: "X指…" adds the term) occurs verbatim."""
    found = []
    for clause in re.split(r"[，。；：！？,;:!?]+", re.sub(r"\s*\[\d+\]", "", answer)):
        for i in range(max(0, len(clause.strip()) - 3)):
            at = text.find(clause.strip()[i:])
            if at >= 0:
                found.append(at)
                break
    if not found:
        return focus_start(text, answer, size)
    return max(0, min(min(found) - size // 10, len(text) - size))


def cite(answer: str, n: int) -> str:
    """``答案。`` → ``答案 [n]。`` (the marker goes before the closing punctuation, as the prompt asks)."""
    answer = re.sub(r"\s*\[\d+\]", "", answer).strip()
    body = answer.rstrip("。！？；.!?")
    return f"{body} [{n}]{answer[len(body):] or '。'}"


def cite_parts(parts: Sequence[tuple[str, int]]) -> str:
    """Several cited statements as one answer: ``A [1]；B [3]。``."""
    cited = [cite(text, n) for text, n in parts]
    return "；".join(c.rstrip("。！？；.!?") for c in cited[:-1]) + ("；" if len(cited) > 1 else "") + cited[-1]


@dataclass
class ExampleBuilder:
    """Turns synthetic pairs into training examples; ``retrieve(question, k)`` supplies hard distractors.

    Passages are shown exactly as the generator shows them (``build_messages``, each focused on the
    question in ``max_passage_chars``), except that a long gold chunk whose question-focused window
    misses the answer is cut to the window that holds it: the example must contain its answer.
    """

    retrieve: Callable[[str, int], Sequence[ScoredChunk]]
    chunks: dict[str, Chunk]
    n_passages: int = 4
    refusal_ratio: float = 0.25
    max_passage_chars: int = 600
    positions: str = "retrieved"  # where gold passages stand: "retrieved" (their retrieval rank) or "random"
    seed: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in ("retrieved", "random"):
            raise ConfigError(f"positions ({self.positions!r}) must be 'retrieved' or 'random'")

    def run(self, pairs: Sequence[SyntheticQA]) -> list[TrainingExample]:
        rng = random.Random(self.seed)
        examples = []
        for pair in pairs:
            parts = [(pair.answer, pair.chunk_id), *pair.also]
            gold_ids = list(dict.fromkeys(cid for _, cid in parts))
            golds = [self.chunks.get(cid) for cid in gold_ids]
            if any(g is None for g in golds) or len(gold_ids) > self.n_passages:
                self._count("gold_missing")
                continue
            # distractors: retrieved for this question, minus anything that would also answer it
            ranked = list(self.retrieve(pair.question, self.n_passages * 4))
            candidates = [h for h in ranked if h.chunk.id not in gold_ids]
            distractors = [h for h in candidates if max(support(text, h.chunk.text) for text, _ in parts) < 0.6]
            if len(distractors) < self.n_passages:
                self._count("too_few_distractors")
                continue
            at = self._positions(gold_ids, ranked, distractors, rng)
            passages = [self._show(h.chunk) for h in distractors[: self.n_passages - len(gold_ids)]]
            for cid, gold in sorted(zip(gold_ids, golds), key=lambda x: at[x[0]]):
                answer = " ".join(text for text, c in parts if c == cid)
                passages.insert(at[cid] - 1, self._show(gold, pair.question, answer))
            target = cite_parts([(text, at[cid]) for text, cid in parts])
            examples.append(self._example(pair, passages, target, "answer", at[pair.chunk_id]))
            if pair.also or rng.random() >= self.refusal_ratio:
                continue
            # a refusal is only right if no passage mentions what the question asks about
            terms = subjects(pair)
            silent = [h for h in distractors if not any(t in squash(h.chunk.text, markdown=True) for t in terms)]
            if not terms or len(silent) < self.n_passages:
                self._count("refusal_skipped_topic_present")
                continue
            withheld = [self._show(h.chunk) for h in silent[: self.n_passages]]
            rng.shuffle(withheld)
            examples.append(self._example(pair, withheld, REFUSAL, "refusal", None))
        return examples

    def _positions(self, gold_ids: list[str], ranked: Sequence[ScoredChunk], distractors: Sequence[ScoredChunk],
                   rng: random.Random) -> dict[str, int]:
        """1-based passage number of each gold chunk.

        ``"retrieved"``: where retrieval ranks it among the passages the prompt would show (the answering
        distractors left out), so the model learns the retriever's real prior (a gold chunk is first ~70% of
        the time); a gold chunk retrieval misses goes to a random free place. ``"random"``: anywhere.
        """
        n = self.n_passages
        free = list(range(1, n + 1))
        at: dict[str, int] = {}
        if self.positions == "retrieved":
            allowed = {h.chunk.id for h in distractors} | set(gold_ids)
            shown = [h.chunk.id for h in ranked if h.chunk.id in allowed][:n]
            at = {cid: shown.index(cid) + 1 for cid in gold_ids if cid in shown}
            free = [k for k in free if k not in at.values()]
        missing = [cid for cid in gold_ids if cid not in at]
        return {**at, **dict(zip(missing, rng.sample(free, len(missing))))}

    def _show(self, chunk: Chunk, question: str = "", answer: str = "") -> ScoredChunk:
        """The chunk as a passage; a gold chunk is cut to the window holding its answer where the prompt's
        question-focused window would miss it."""
        text, size = chunk.text, self.max_passage_chars
        if answer and len(text) > size:
            shown = text[focus_start(text, question, size):][:size]
            if support(answer, shown) < support(answer, text):  # the question's window cuts into the answer
                start = answer_start(text, answer, size)
                text = text[start:start + size]
        return ScoredChunk(replace(chunk, text=text), 1.0, "gold" if answer else "distractor")

    def _example(self, pair: SyntheticQA, passages: list[ScoredChunk], target: str, kind: str,
                 k: int | None) -> TrainingExample:
        self._count(kind)
        messages = build_messages(pair.question, passages, "grounded", self.max_passage_chars)
        return TrainingExample(messages, target, kind, k, pair.question, pair.chunk_id, pair.source, pair.method)

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
