"""RAFT-style training examples in the exact prompt format the generator uses at inference.

For each synthetic (question, answer, gold chunk):

* an *answer* example: the gold chunk among distractor chunks retrieved for the question, in a
  random position, and the target ``answer [k]`` citing the gold passage number k;
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

from ragbot.finetune.questions import SyntheticQA, support
from ragbot.generation import build_messages
from ragbot.grounding import key_terms
from ragbot.settings import REFUSAL
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
    chars = "".join(c for c in text.lower() if c.isalnum())
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


def _squash(text: str) -> str:
    return re.sub(r"[\s\-_*`]+", "", text.lower())


def subject(question: str) -> str:
    """What a template question asks about: "什么是X？" → X, "X是多少？" → X (empty when unknown)."""
    m = (re.match(r"^(?:什么是|请解释一下|简单介绍一下)(.+?)[？?。]$", question)
         or re.match(r"^(.+?)(?:是什么|用于什么|是多少|指的是什么)[？?]$", question))
    return re.sub(r"\s*[（(].*?[)）]\s*", "", m.group(1)).strip() if m else ""


def cite(answer: str, n: int) -> str:
    """``答案。`` → ``答案 [n]。`` (the marker goes before the closing punctuation, as the prompt asks)."""
    answer = re.sub(r"\s*\[\d+\]", "", answer).strip()
    body = answer.rstrip("。！？；.!?")
    return f"{body} [{n}]{answer[len(body):] or '。'}"


@dataclass
class ExampleBuilder:
    """Turns synthetic pairs into training examples; ``retrieve(question, k)`` supplies hard distractors."""

    retrieve: Callable[[str, int], Sequence[ScoredChunk]]
    chunks: dict[str, Chunk]
    n_passages: int = 4
    refusal_ratio: float = 0.25
    max_passage_chars: int = 600
    window_chars: int = 0  # 0 = whole chunks
    seed: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def run(self, pairs: Sequence[SyntheticQA]) -> list[TrainingExample]:
        rng = random.Random(self.seed)
        examples = []
        for pair in pairs:
            gold = self.chunks.get(pair.chunk_id)
            if gold is None:
                self._count("gold_missing")
                continue
            # distractors: retrieved for this question, minus anything that would also answer it
            candidates = [h for h in self.retrieve(pair.question, self.n_passages * 4) if h.chunk.id != gold.id]
            distractors = [h for h in candidates if support(pair.answer, h.chunk.text) < 0.6]
            if len(distractors) < self.n_passages:
                self._count("too_few_distractors")
                continue
            k = rng.randint(1, self.n_passages)
            passages = [self._window(h.chunk, "") for h in distractors[: self.n_passages - 1]]
            passages.insert(k - 1, self._window(gold, pair.answer))
            examples.append(self._example(pair, passages, cite(pair.answer, k), "answer", k))
            if rng.random() < self.refusal_ratio:
                # a refusal is only right if no passage mentions what the question asks about
                subjects = [_squash(t) for t in [*key_terms(pair.question), subject(pair.question)] if t]
                silent = [h for h in distractors if not any(t in _squash(h.chunk.text) for t in subjects)]
                if len(silent) < self.n_passages:
                    self._count("refusal_skipped_topic_present")
                    continue
                withheld = [self._window(h.chunk, "") for h in silent[: self.n_passages]]
                rng.shuffle(withheld)
                examples.append(self._example(pair, withheld, REFUSAL, "refusal", None))
        return examples

    def _window(self, chunk: Chunk, answer: str) -> ScoredChunk:
        """At most ``window_chars`` of the chunk, placed to include the answer when it is quoted from it.

        Training cost grows with prompt length (a CPU step on ~650 tokens took ~15 s); a window keeps
        examples short while the gold passage still holds its answer.
        """
        text = chunk.text
        if self.window_chars and len(text) > self.window_chars:
            core = re.sub(r"\s*\[\d+\]", "", answer).strip().rstrip("。；")[:60]
            at = text.find(core) if core else -1
            start = max(0, min(at - self.window_chars // 4, len(text) - self.window_chars)) if at >= 0 else 0
            text = text[start:start + self.window_chars]
        return ScoredChunk(replace(chunk, text=text), 1.0, "gold" if answer else "distractor")

    def _example(self, pair: SyntheticQA, passages: list[ScoredChunk], target: str, kind: str,
                 k: int | None) -> TrainingExample:
        self._count(kind)
        messages = build_messages(pair.question, passages, "grounded", self.max_passage_chars)
        return TrainingExample(messages, target, kind, k, pair.question, pair.chunk_id, pair.source, pair.method)

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
