"""RAFT-style training examples in the exact prompt format the generator uses at inference.

For each synthetic (question, answer, gold chunk):

* an *answer* example: the gold chunk among distractor chunks retrieved for the question, at the rank
  retrieval gives it (or a random position: ``positions``). The target *quotes* the gold passage as the
  prompt shows it: the sentence(s) that support the writer's answer (:func:`quote_answer`), Markdown
  removed, each followed by the gold passage's marker ``[k]`` (a question answered by two chunks quotes
  both: ``A [i]；B [j]。``). The writer's answer only says where to look; the model learns to say what
  the passage says and cite it. A pair whose answer no shown sentence supports is dropped
  (``quote_not_found``), and, with ``require_retrieved``, one whose gold chunk retrieval does not put in
  the top ``n_passages`` (``not_retrievable``): at inference the model would never see it.
* refusal examples for about ``refusal_ratio`` of the single-part questions: the same question with the
  gold chunk (and any passage that supports the answer) withheld, and the target ``资料中没有相关信息``.

Distractors are what retrieval returns for the question, minus any passage that supports the answer;
at least one comes from the gold chunk's document or section where such a chunk exists (a hard
distractor: same topic, no answer).

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
from ragbot.finetune.questions import SyntheticQA, chunk_distance, plain, question_subject
from ragbot.grounding import key_terms
from ragbot.prompt import build_messages, focus, focus_start
from ragbot.settings import REFUSAL
from ragbot.text import alnum, bigrams, sentence_spans, squash, support
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


def quotable(text: str) -> str:
    """Passage text as a target may quote it: Markdown removed (:func:`~ragbot.finetune.questions.plain`) and any
    ``[n]`` of the source dropped (in a target it would read as a citation). A quote is checked to be a substring
    of ``quotable(passage)``: the same function applied to both.

    >>> quotable("- **LoRA** 只训练 `A` 和 `B` [3]。")
    'LoRA 只训练 A 和 B。'
    """
    return re.sub(r"\s*\[\d+\]", "", plain(text)).strip()


def trim_clauses(sentence: str, answer: str, min_chars: int = 8, min_share: float = 0.2) -> str:
    """``sentence`` without its leading and trailing clauses that share (almost) nothing with ``answer`` (less than
    ``min_share`` of their bigrams occur in it); the whole sentence when that would leave under ``min_chars``.

    >>> trim_clauses("在本章中，注意力用点积计算权重，并对值加权求和。", "注意力用点积计算权重。")
    '注意力用点积计算权重'
    """
    clauses: list[str] = []
    for c in re.split(r"(?<=[，,；;：:])", sentence):
        if clauses and not bigrams(c):  # "如 s, λ, α": a clause too short to judge goes with the one before
            clauses[-1] += c
        elif c:
            clauses.append(c)
    keep = [support(c, answer) >= min_share for c in clauses]
    if True not in keep:
        return sentence
    first, last = keep.index(True), len(keep) - keep[::-1].index(True)
    trimmed = "".join(clauses[first:last]).strip().rstrip("，,；;：: ")
    return trimmed if len(trimmed) >= min_chars else sentence


def quote_answer(passage: str, answer: str, question: str = "", *, min_support: float = 0.6,
                 max_sentences: int = 6) -> list[str] | None:
    """The sentences of ``passage`` that say what ``answer`` says, as an answer target quotes them, in passage order;
    None when together they hold less than ``min_support`` of the answer's character bigrams.

    Bigrams the answer shares with ``question`` are left out when at least four others remain: an answer restates
    its subject ("量化指降低模型权重的精度"), and the quote need only hold what the answer adds to the question.

    Sentences (:func:`ragbot.text.sentence_spans`, never across a line; heading lines left out, the prompt shows
    the heading above the passage) are taken greedily by how many of the answer's bigrams they add, while one
    adds at least a tenth of them (and two), at most ``max_sentences``: a list answer takes its items, a
    definition one sentence. Each is :func:`quotable` and trimmed to the clauses that answer (:func:`trim_clauses`),
    so it is verbatim in ``quotable(passage)``.

    >>> quote_answer("## LoRA\\n**LoRA** 冻结预训练权重，只训练低秩矩阵。秩常取 8。", "LoRA 只训练低秩矩阵。")
    ['LoRA 冻结预训练权重，只训练低秩矩阵。']
    >>> quote_answer("卷积网络用局部连接。", "LoRA 只训练低秩矩阵。") is None
    True
    """
    need = bigrams(answer)
    if len(need - bigrams(question)) >= 4:
        need -= bigrams(question)
    if not need:
        return None
    whole = quotable(passage)
    found = []
    for start, end in sentence_spans(passage):
        raw = passage[start:end]
        if raw.lstrip().startswith("#"):
            continue
        span = trim_clauses(quotable(raw).strip("… "), answer)
        if bigrams(span) & need and span in whole:
            found.append((start, span))
    chosen: list[tuple[int, str]] = []
    covered: set[str] = set()
    while found and len(chosen) < max_sentences:
        gain, at, span = max(((len(bigrams(sp) & need - covered), -at, sp) for at, sp in found))
        if gain < max(2, len(need) / 10):
            break
        chosen.append((-at, span))
        covered |= bigrams(span) & need
    if len(covered) < min_support * len(need):
        return None
    return [span for _, span in sorted(chosen)]


@dataclass
class ExampleBuilder:
    """Turns synthetic pairs into training examples; ``retrieve(question, k)`` supplies hard distractors.

    Passages are shown exactly as the generator shows them (``build_messages``, each focused on the
    question in ``max_passage_chars``), except that a long gold chunk whose question-focused window
    misses the answer is cut to the window that holds it: the example must contain its answer.
    ``require_retrieved`` drops a pair whose gold chunks are not all in retrieval's top ``n_passages``
    (``build_dataset`` turns it on). ``stats`` counts examples by kind and pairs by the filter that dropped them.
    """

    retrieve: Callable[[str, int], Sequence[ScoredChunk]]
    chunks: dict[str, Chunk]
    n_passages: int = 4
    refusal_ratio: float = 0.25  # share of single-part questions that also get a refusal example
    max_passage_chars: int = 600
    positions: str = "retrieved"  # where gold passages stand: "retrieved" (their retrieval rank) or "random"
    require_retrieved: bool = False
    seed: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in ("retrieved", "random"):
            raise ConfigError(f"positions ({self.positions!r}) must be 'retrieved' or 'random'")
        self._by_doc: dict[str, list[Chunk]] = {}
        for c in self.chunks.values():
            self._by_doc.setdefault(c.doc_id, []).append(c)

    def run(self, pairs: Sequence[SyntheticQA]) -> list[TrainingExample]:
        rng = random.Random(self.seed)
        examples = []
        owed = 0  # refusals drawn but skipped (topic present): the next single-part questions make them up
        for pair in pairs:
            parts = [(pair.answer, pair.chunk_id), *pair.also]
            gold_ids = list(dict.fromkeys(cid for _, cid in parts))
            golds = [self.chunks.get(cid) for cid in gold_ids]
            if any(g is None for g in golds) or len(gold_ids) > self.n_passages:
                self._count("gold_missing")
                continue
            ranked = list(self.retrieve(pair.question, self.n_passages * 4))
            if self.require_retrieved and not set(gold_ids) <= {h.chunk.id for h in ranked[: self.n_passages]}:
                self._count("not_retrievable")
                continue
            shown = {cid: self._show(gold, pair.question, " ".join(text for text, c in parts if c == cid))
                     for cid, gold in zip(gold_ids, golds)}
            quotes = self._quotes(parts, shown, pair.question)
            if quotes is None:
                self._count("quote_not_found")
                continue
            # distractors: retrieved for this question, minus anything that would also answer it
            said = [text for text, _ in parts] + [q for q, _ in quotes]
            candidates = [h for h in ranked if h.chunk.id not in gold_ids]
            distractors = [h for h in candidates if max(support(text, h.chunk.text) for text in said) < 0.6]
            if len(distractors) < self.n_passages:
                self._count("too_few_distractors")
                continue
            distractors = self._with_kin(distractors, golds, said)
            at = self._positions(gold_ids, ranked, distractors, rng)
            passages = [self._show(h.chunk) for h in distractors[: self.n_passages - len(gold_ids)]]
            for cid in sorted(gold_ids, key=at.__getitem__):
                passages.insert(at[cid] - 1, shown[cid])
            target = cite_parts([(quote, at[cid]) for quote, cid in quotes])
            examples.append(self._example(pair, passages, target, "answer", at[pair.chunk_id]))
            if pair.also:
                continue
            due = rng.random() < self.refusal_ratio
            if not (due or owed):
                continue
            owed += due
            # a refusal is only right if no passage mentions what the question asks about
            terms = subjects(pair)
            silent = [h for h in distractors if not any(t in squash(h.chunk.text, markdown=True) for t in terms)]
            if not terms or len(silent) < self.n_passages:
                self._count("refusal_skipped_topic_present")
                continue
            withheld = [self._show(h.chunk) for h in silent[: self.n_passages]]
            rng.shuffle(withheld)
            examples.append(self._example(pair, withheld, REFUSAL, "refusal", None))
            owed -= 1
        return examples

    def _quotes(self, parts: Sequence[tuple[str, str]], shown: dict[str, ScoredChunk],
                question: str) -> list[tuple[str, str]] | None:
        """(quote, chunk id) for each part's supporting sentences in its gold passage as the prompt shows it
        (focused on the question), or None when some part has none."""
        quotes: list[tuple[str, str]] = []
        for text, cid in parts:
            found = quote_answer(focus(shown[cid].chunk.text, question, self.max_passage_chars), text, question)
            if found is None:
                return None
            quotes += [(q, cid) for q in found if (q, cid) not in quotes]
        return quotes

    def _with_kin(self, distractors: list[ScoredChunk], golds: Sequence[Chunk],
                  said: Sequence[str]) -> list[ScoredChunk]:
        """``distractors`` with one from a gold chunk's document or section among those shown (the last place), where
        one exists: from further down the retrieved list, else the nearest chunk of the document that does not
        answer. Such a passage is on the question's topic, so the model must read for the answer, not the topic."""
        m = self.n_passages - len(golds)

        def kin(c: Chunk) -> bool:
            return any(c.doc_id == g.doc_id or (g.heading_path and c.heading_path == g.heading_path) for g in golds)

        if m < 1 or any(kin(h.chunk) for h in distractors[:m]):
            return distractors
        found = next((h for h in distractors[m:] if kin(h.chunk)), None)
        if found is None:
            gold_ids = {g.id for g in golds}
            near = sorted((c for g in golds for c in self._by_doc.get(g.doc_id, ()) if c.id not in gold_ids),
                          key=lambda c: (c.heading_path != golds[0].heading_path,
                                         min(chunk_distance(c.id, g.id) for g in golds), c.id))
            found = next((ScoredChunk(c, 0.0, "sibling") for c in near
                          if max(support(text, c.text) for text in said) < 0.6), None)
        if found is None:
            return distractors
        self._count("hard_distractor_added")
        rest = [h for h in distractors if h.chunk.id != found.chunk.id]
        return rest[: m - 1] + [found] + rest[m - 1:]

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
