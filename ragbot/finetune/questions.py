"""Synthetic questions written from corpus chunks: the only source of training data (never evaluation files).

Two writers:

* :class:`QuestionWriter` asks the base LLM, in batches, to write a question and a short answer
  about one chunk; a pair is kept only if the answer is supported by the chunk (most of its
  character bigrams occur in it) and the question is about the chunk.
* :func:`structural_questions` turns definition-like lines (``**术语 (Term):** 定义…``) into
  "什么是术语？" questions whose answer is the definition, at no model cost.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ragbot.types import Chunk


@dataclass(frozen=True)
class SyntheticQA:
    question: str
    answer: str
    chunk_id: str
    source: str
    method: str  # "llm" or "definition"


WRITER_SYSTEM = "你是一名出题老师，根据给定的资料出题。"
WRITER_PROMPT = (
    "阅读下面的资料，提出一个能直接用资料中的具体内容回答的中文问题，并写出简短的答案（一两句话，使用资料中的原话）。\n"
    "问题不要出现“资料”“上文”等字眼。\n\n资料：\n{text}\n\n只按如下格式输出：\n问题：……\n答案：……"
)

_QA = re.compile(r"问题[:：]\s*(?P<q>.+?)\s*答案[:：]\s*(?P<a>.+)", re.S)
_META = ("资料", "上文", "本文", "文中", "这段", "以上")


def _bigrams(text: str) -> set[str]:
    chars = [c for c in text.lower() if c.isalnum()]
    return {a + b for a, b in zip(chars, chars[1:])}


def support(text: str, source: str) -> float:
    """Fraction of the character bigrams of ``text`` that occur in ``source`` (0 when text has none)."""
    grams = _bigrams(text)
    return len(grams & _bigrams(source)) / len(grams) if grams else 0.0


def parse_qa(output: str) -> tuple[str, str] | None:
    m = _QA.search(output)
    if not m:
        return None
    question = m.group("q").strip().split("\n")[0].strip()
    if not question.endswith(("？", "?")) and "？" in question:
        question = question[: question.index("？") + 1]
    answer = m.group("a").strip().split("\n\n")[0].strip()
    return question, answer


def acceptable(question: str, answer: str, chunk_text: str, *, min_answer_support: float = 0.6,
               min_question_support: float = 0.3) -> str | None:
    """None when the pair is usable, else the name of the filter that rejects it (recorded in the data card)."""
    if not (6 <= len(question) <= 80) or not question.rstrip().endswith(("？", "?")):
        return "question_form"
    if any(w in question for w in _META):
        return "question_meta"
    if not (4 <= len(answer) <= 300):
        return "answer_length"
    if support(answer, chunk_text) < min_answer_support:
        return "answer_unsupported"
    if support(question, chunk_text) < min_question_support:
        return "question_off_topic"
    return None


class QuestionWriter:
    """``QuestionWriter(generate_batch).run(chunks)`` → (pairs, rejection counts).

    ``generate_batch(conversations) -> list[str]`` is any batched chat call (``HFChatModel.generate_batch``).
    """

    def __init__(self, generate_batch: Callable[[list[list[dict]]], list[str]], batch_size: int = 8,
                 max_chars: int = 500, progress: Callable[..., object] | None = None) -> None:
        self.generate_batch = generate_batch
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.progress = progress or (lambda it, **kw: it)

    def messages(self, chunk: Chunk) -> list[dict]:
        return [{"role": "system", "content": WRITER_SYSTEM},
                {"role": "user", "content": WRITER_PROMPT.format(text=chunk.embedding_text()[: self.max_chars])}]

    def run(self, chunks: Sequence[Chunk]) -> tuple[list[SyntheticQA], dict[str, int]]:
        pairs: list[SyntheticQA] = []
        rejected: dict[str, int] = {}
        batches = [chunks[i:i + self.batch_size] for i in range(0, len(chunks), self.batch_size)]
        for batch in self.progress(batches, desc="write questions", unit="batch"):
            outputs = self.generate_batch([self.messages(c) for c in batch])
            for chunk, out in zip(batch, outputs):
                parsed = parse_qa(out)
                reason = "unparseable" if parsed is None else acceptable(parsed[0], parsed[1], chunk.text)
                if reason:
                    rejected[reason] = rejected.get(reason, 0) + 1
                    continue
                pairs.append(SyntheticQA(parsed[0], parsed[1], chunk.id, chunk.source, "llm"))
        return pairs, rejected


_DEFINITION = re.compile(
    r"^\s*(?:[*-]\s+)?\*\*(?P<term>[^*\n]{1,40}?)\*\*\s*[:：]?\s*(?:\*\*)?\s*[:：]?\s*(?P<body>[^\n]{8,200})", re.M)


def structural_questions(chunks: Iterable[Chunk]) -> list[SyntheticQA]:
    """"什么是 X？" for every ``**X:** definition`` line; the first sentence of the definition is the answer."""
    out = []
    for chunk in chunks:
        for m in _DEFINITION.finditer(chunk.text):
            term = re.sub(r"[:：]\s*$", "", m.group("term").strip()).strip()
            body = m.group("body").strip().lstrip("*:： ")
            first = re.split(r"(?<=[。！？])", body)[0].strip()
            # Defined terms here carry a Latin name ("张量 (Tensor)", "LoRA"); Chinese-only bold labels are
            # mostly section captions ("目的", "风险", "改进") whose "definition" is not one.
            if (not re.search(r"[A-Za-z]{2,}", term) or re.match(r"[\d第]", term) or len(first) < 6
                    or not re.match(r"[\w\u4e00-\u9fff`]", first) or first.startswith("```")):
                continue
            answer = first if first.startswith(term) else (
                f"{term}{first}" if first.startswith(("用于", "指", "是", "表示", "即", "通过")) else f"{term}是{first}")
            out.append(SyntheticQA(_vary(term, chunk.id), answer, chunk.id, chunk.source, "definition"))
    return out


_DEFINE_TEMPLATES = ("什么是{x}？", "{x}是什么？", "请解释一下{x}。", "{x}指的是什么？", "简单介绍一下{x}。")


def _vary(term: str, key: str) -> str:
    """A definition question in one of several phrasings, fixed per chunk (deterministic, no RNG state)."""
    return _DEFINE_TEMPLATES[int(hashlib.md5(f"{term}|{key}".encode()).hexdigest(), 16) % len(_DEFINE_TEMPLATES)].format(x=term)


_HEADING_NUMBER = re.compile(r"^[\s#]*(?:[\d.]+|[一二三四五六七八九十]+[、.]|第.+?[章节])\s*")


def section_questions(chunks: Iterable[Chunk]) -> list[SyntheticQA]:
    """"{heading}有什么特点？" for a chunk that starts a section; the first sentences of its body answer it."""
    out = []
    for chunk in chunks:
        if not chunk.heading_path or not chunk.text.lstrip().startswith("#"):
            continue
        topic = _HEADING_NUMBER.sub("", chunk.heading_path[-1]).strip()
        body = "\n".join(line for line in chunk.text.splitlines() if line.strip() and not line.lstrip().startswith(("#", "```", "|")))
        sentences = [x.strip() for x in re.split(r"(?<=[。！？])", _MARKUP.sub("", body)) if len(x.strip()) >= 8]
        if not (2 <= len(topic) <= 20) or not sentences or "```" in chunk.text[:200]:
            continue
        answer = "".join(sentences[:2])[:160]
        template = ("{x}有什么特点？", "介绍一下{x}。", "关于{x}，资料里是怎么说的？")[len(out) % 3].replace("资料里", "文中")
        out.append(SyntheticQA(template.format(x=topic), answer, chunk.id, chunk.source, "section"))
    return out


_SENTENCE_END = re.compile(r"(?<=[。！？；])|\n+")
_MARKUP = re.compile(r"\*\*|`|^[#>*\-\d.\s]+", re.M)
_PATTERNS = (
    # (pattern on a sentence, question template): the subject x is what the question asks about
    (re.compile(r"^(?P<x>[^，。：:；（(]{2,24}?)(?:是指|指的是|是一种|是一个|是)(?P<y>[^，。]{4,}.*)$"), "{x}是什么？"),
    (re.compile(r"^(?P<x>[^，。：:；（(]{2,24}?)(?:用于|用来)(?P<y>.{4,})$"), "{x}用于什么？"),
    (re.compile(r"^(?P<x>[^，。：:；]{4,30}?)(?:为|约为|达到|降到|提高到|下降到|只有)\s*(?P<y>[\d.,]+\s*(?:%|倍|个|步|层|维|亿|万|GB|MB|ms|秒)?)"),
     "{x}是多少？"),
)


def sentence_questions(chunks: Iterable[Chunk], per_chunk: int = 2) -> list[SyntheticQA]:
    """Questions from declarative sentences ("X 是 Y" → "X是什么？", "X 为 0.9" → "X是多少？"); the sentence is the answer."""
    out = []
    for chunk in chunks:
        found = 0
        for raw in _SENTENCE_END.split(chunk.text):
            sentence = _MARKUP.sub("", raw).strip()
            if not 10 <= len(sentence) <= 120 or "```" in raw or "|" in sentence:
                continue
            for pattern, template in _PATTERNS:
                m = pattern.match(sentence)
                if m and not re.search(r"^(这|它|其|该|此|我们|你|他们|以下|如下)", m.group("x")):
                    out.append(SyntheticQA(template.format(x=m.group("x").strip()), sentence, chunk.id, chunk.source,
                                           "sentence"))
                    found += 1
                    break
            if found >= per_chunk:
                break
    return out
