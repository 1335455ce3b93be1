"""Synthetic questions written from corpus chunks: the only source of training data (never evaluation files).

Two writers:

* :class:`StructureQuestions` reads the Markdown structure of each chunk, at no model cost:
  definition lines (``**术语 (Term):** 定义…``), labelled fields under a heading (``**公式**：``,
  ``**优点**：``, ``**代表**：`` …), bullet lists under a caption ("X 包括哪些？"), declarative
  sentences ("X 是 Y"), and the opening sentences of a section. Each answer is a short span of the
  chunk with its Markdown removed: the style a grounded answer should have.
* :class:`QuestionWriter` shows the base LLM, in batches, a chunk and one of its sentences and asks for
  the question that sentence answers (``per_chunk`` sentences a chunk); the pair is (question, sentence),
  kept only if the question is about the chunk and does not restate the sentence. The training-data
  builder then keeps it only where the shown passage quotes the sentence and retrieval finds the chunk.

:func:`combine` then joins pairs into questions that need two answers (two questions about one
chunk, or "X 和 Y 有什么区别？" over two chunks), so the model also learns to cite more than one passage.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ragbot.text import sentences, support
from ragbot.types import Chunk


@dataclass(frozen=True)
class SyntheticQA:
    question: str
    answer: str
    chunk_id: str
    source: str
    method: str  # "definition", "field", "list", "sentence", "section", "code", "llm", "compound", "comparison"
    subject: str = ""  # what the question asks about (a term or topic), when the writer knows it
    # further (answer part, chunk id) pairs when the answer draws on more than one statement or chunk
    also: tuple[tuple[str, str], ...] = ()


WRITER_SYSTEM = "你是一名出题老师。"
# The writer is shown a chunk and one sentence of it, and asked for the question that sentence answers: a 0.5B
# model asked for free-form question+answer pairs (two per chunk, in a fixed layout) gave a usable pair for
# about 6% of its generations (the layout broken or echoed, questions about the instructions); one short
# question per sentence is a task it can do, and the answer is then a verbatim sentence of the chunk by
# construction (the quote the training target cites). The worked example is ours, not corpus text.
WRITER_PROMPT = (
    "下面是一段资料和其中的一句话。请提出一个中文问题，使这句话正好是它的答案。问题要具体、完整，不看资料也能明白问的是什么；"
    "不要照抄这句话，不要出现“资料”“这句话”等字眼；只输出问题本身。\n\n资料：\n{text}\n\n句子：{sentence}\n问题："
)
# worked examples, given as earlier turns of the conversation (a small model follows a shown turn better than a
# described format); ours, not corpus text
WRITER_EXAMPLES = (
    ("## 激活函数\nReLU 在正区间的梯度恒为 1，因此缓解了梯度消失。它在负区间输出 0。",
     "ReLU 在正区间的梯度恒为 1，因此缓解了梯度消失。", "ReLU 为什么能缓解梯度消失？"),
    ("## 分词\nBPE 从字符开始，反复合并语料中出现频次最高的相邻符号对，直到词表达到预定大小。",
     "BPE 从字符开始，反复合并语料中出现频次最高的相邻符号对，直到词表达到预定大小。", "BPE 分词是怎样构建词表的？"),
)
_META = ("资料", "上文", "本文", "文中", "这段", "以上", "这句话", "句子")
_LABEL = re.compile(r"^\s*(?:\*\*)?\s*问题\s*\d*\s*[:：]\s*(?:\*\*)?\s*")


def parse_question(output: str) -> str | None:
    """The question in a writer's output: its first line with a question mark, a ``问题：`` label removed, cut after
    the mark; None when there is none.

    >>> parse_question("问题：LoRA 为什么省显存？\\n因为……")
    'LoRA 为什么省显存？'
    >>> parse_question("**问题1：** 秩常取多少？还有别的吗？")
    '秩常取多少？'
    >>> parse_question("好的。") is None
    True
    """
    for line in output.splitlines():
        line = _LABEL.sub("", line.strip())
        at = min((i for i in (line.find("？"), line.find("?")) if i >= 0), default=-1)
        if at > 0:
            return line[: at + 1].strip()
    return None


def quotable_sentences(text: str, *, min_chars: int = 12, max_chars: int = 150) -> list[str]:
    """Sentences of ``text`` worth a question: Chinese prose of ``min_chars``..``max_chars`` characters with its
    Markdown removed, not a heading, a question, a table row or code."""
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(("#", "|", "```", "    ")) or "`" in line:
            continue
        for sent in sentences(plain(line)):
            sent = sent.strip()
            if min_chars <= len(sent) <= max_chars and cjk_share(sent) >= 0.3 and not sent.endswith(("？", "?", "：", ":")):
                found.append(sent)
    return found


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

    For up to ``per_chunk`` sentences of each chunk (:func:`quotable_sentences`, spread over the chunk) the LLM
    writes the question the sentence answers; the pair is (question, sentence). ``generate_batch(conversations)
    -> list[str]`` is any batched chat call (``HFChatModel.generate_batch``). Kept only when it parses
    (``unparseable``), passes :func:`acceptable`, does not restate its answer (``question_restates_answer``:
    most of the sentence's bigrams in the question) and asks about the sentence (``question_off_sentence``: a
    fifth of the question's bigrams in it at least). Measured on 8 chunks of the shared corpus: 5 of 8 kept
    before the last filter, some still loosely matched to their sentence.
    """

    def __init__(self, generate_batch: Callable[..., list[str]], batch_size: int = 8,
                 max_chars: int = 500, per_chunk: int = 2, max_new_tokens: int = 48,
                 progress: Callable[..., object] | None = None) -> None:
        self.generate_batch = generate_batch
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.per_chunk = per_chunk
        self.max_new_tokens = max_new_tokens
        self.progress = progress or (lambda it, **kw: it)

    def messages(self, chunk: Chunk, sentence: str) -> list[dict]:
        text = chunk.embedding_text()[: self.max_chars]
        turns = [{"role": "system", "content": WRITER_SYSTEM}]
        for example_text, example_sentence, question in WRITER_EXAMPLES:
            turns += [{"role": "user", "content": WRITER_PROMPT.format(text=example_text, sentence=example_sentence)},
                      {"role": "assistant", "content": question}]
        return turns + [{"role": "user", "content": WRITER_PROMPT.format(text=text, sentence=sentence)}]

    def tasks(self, chunks: Sequence[Chunk]) -> list[tuple[Chunk, str]]:
        out = []
        for chunk in chunks:
            found = quotable_sentences(chunk.text)
            step = max(1, len(found) // self.per_chunk)
            out += [(chunk, s) for s in found[::step][: self.per_chunk]]
        return out

    def run(self, chunks: Sequence[Chunk]) -> tuple[list[SyntheticQA], dict[str, int]]:
        pairs: list[SyntheticQA] = []
        rejected: dict[str, int] = {}
        tasks = self.tasks(chunks)
        batches = [tasks[i:i + self.batch_size] for i in range(0, len(tasks), self.batch_size)]
        for batch in self.progress(batches, desc="write questions", unit="batch"):
            outputs = self.generate_batch([self.messages(c, s) for c, s in batch], max_new_tokens=self.max_new_tokens)
            for (chunk, sentence), out in zip(batch, outputs):
                question = parse_question(out)
                reason = "unparseable" if question is None else acceptable(question, sentence, chunk.text)
                if reason is None and support(sentence, question) >= 0.7:
                    reason = "question_restates_answer"
                if reason is None and support(question, sentence) < 0.2:  # about something the sentence does not say
                    reason = "question_off_sentence"
                if reason:
                    rejected[reason] = rejected.get(reason, 0) + 1
                else:
                    pairs.append(SyntheticQA(question, sentence, chunk.id, chunk.source, "llm"))
        return pairs, rejected


# ---- plain text from Markdown ---------------------------------------------------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fff]")
_SEE_ALSO = re.compile(r"\s*[（(]\s*见\s*[\d.,，、\s]+[)）]")
_HEADING_NUMBER = re.compile(r"^[\s#]*(?:[A-Z]?\d+(?:\.\d+)*\.?(?=\s)|[一二三四五六七八九十]+[、.]|第.+?[章节部分]|附录[A-Z\d]*[：:.]?)\s*")


def plain(text: str) -> str:
    """Markdown emphasis, code ticks, links, list markers and "(见 5.3)" references removed; whitespace collapsed."""
    text = _SEE_ALSO.sub("", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) -> text
    text = re.sub(r"\s*[（(]?https?://[^\s)）]*[)）]?", "", text)
    text = re.sub(r"\*\*|__|`", "", text)
    text = re.sub(r"^\s*(?:[*\-+>]\s+|\d+[.、)]\s+|#+\s*)", "", text, flags=re.M)
    return re.sub(r"\s+", " ", text).strip()


def cjk_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(1 for c in letters if _CJK.match(c)) / len(letters) if letters else 0.0


def first_sentence(text: str, max_chars: int = 120) -> str:
    """The first sentence (up to 。！？), or the first clause before ``max_chars`` when it runs on."""
    text = plain(text)
    m = re.match(r".+?[。！？]", text)
    sentence = m.group(0) if m else text
    if len(sentence) > max_chars:
        cut = max(sentence.rfind(p, 0, max_chars) for p in "，；,;")
        sentence = sentence[:cut] + "。" if cut > 20 else ""
    return sentence.strip()


def lead(text: str, max_chars: int = 150, min_chars: int = 60) -> str:
    """The first sentence, followed by the next ones while the answer is shorter than ``min_chars`` and stays
    within ``max_chars``: a grounded answer should say as much as a good reference answer (~80 characters)."""
    out = first_sentence(text, max_chars)
    rest = plain(text)[len(out):] if out and plain(text).startswith(out) else ""
    while out and len(out) < min_chars and rest:
        nxt = first_sentence(rest, max_chars)
        if not nxt or len(out) + len(nxt) > max_chars or not re.search(r"[。！？]$", nxt):
            break
        out, rest = out + nxt, rest[len(nxt):].lstrip()
    return out


def topic_of(heading: str) -> str:
    """A heading without its numbering ("3.1 预训练任务" → "预训练任务", "附录C：Hugging Face 生态" → "Hugging Face 生态")."""
    return plain(_HEADING_NUMBER.sub("", heading)).strip(" ：:")


def term_forms(term: str) -> list[str]:
    """Ways to name a term: "Vector Database (向量数据库)" → ["Vector Database", "向量数据库", "向量数据库（Vector Database）"]."""
    term = plain(term).strip(" ：:")
    m = re.match(r"^(?P<head>[^（(]+?)\s*[（(](?P<inner>[^)）]+)[)）]\s*$", term)
    if not m:
        return [term]
    head, inner = m.group("head").strip(), m.group("inner").strip()
    cjk_parts = [p.strip() for p in re.split(r"[，,、;；]", inner) if _CJK.search(p) and len(p.strip()) <= 16]
    forms = [head]
    if cjk_parts and not _CJK.search(head):
        forms += [cjk_parts[-1], f"{cjk_parts[-1]}（{head}）"]
    elif _CJK.search(head) and re.search(r"[A-Za-z]{2,}", inner):
        forms += [f"{head}（{inner}）"]
    return forms


def _pick(options: Sequence[str], key: str) -> str:
    """One of ``options``, fixed by ``key`` (deterministic, no RNG state)."""
    return options[int(hashlib.md5(key.encode()).hexdigest(), 16) % len(options)]


def _join(items: Sequence[str]) -> str:
    return "、".join(items[:-1]) + "和" + items[-1] if len(items) > 1 else items[0]


def _clauses(parts: Iterable[str]) -> str:
    """Sentences joined into one with "；" (their own end punctuation dropped)."""
    return "；".join(p.strip().rstrip("。；;，,.") for p in parts if p.strip())


def _period(text: str) -> str:
    text = text.strip().rstrip("，,；;：:")
    return text if text.endswith(("。", "！", "？", ".", "!", "?")) else text + "。"


# ---- questions from document structure -----------------------------------------------------------------------

DEFINE_TEMPLATES = ("什么是{x}？", "{x}是什么？", "{x}指的是什么？", "请解释一下{x}。", "{x}是什么意思？", "简单介绍一下{x}。")

# field label (regex) → question templates about the heading's topic {x}
FIELD_TEMPLATES: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple((re.compile(p), t) for p, t in (
    (r"^(定义|含义|概念|是什么)$", DEFINE_TEMPLATES),
    (r"^(计算)?公式$|^计算方式$|^数学(表达|形式)$", ("{x}的公式是什么？", "{x}怎么计算？", "{x}的计算公式是怎样的？")),
    (r"^(代表|代表模型|典型模型|使用模型|应用模型|代表性模型)$", ("{x}有哪些代表模型？", "哪些模型使用了{x}？", "{x}的代表性模型是哪些？")),
    (r"^(变体|类型|分类|种类|常见类型|主要类型)$", ("{x}有哪些变体？", "{x}有哪些类型？", "{x}可以分为哪几类？")),
    (r"^(优点|优势|好处)$", ("{x}有什么优点？", "{x}的优势是什么？", "为什么要用{x}？")),
    (r"^(缺点|局限|局限性|劣势|问题|挑战)$", ("{x}有什么缺点？", "{x}有哪些局限？", "{x}存在什么问题？")),
    (r"^(作用|用途|目的|功能|核心功能|主要功能)$", ("{x}有什么作用？", "{x}是用来做什么的？", "{x}的主要功能是什么？")),
    (r"^(特点|特征|核心思想|思想|原理|核心原理|关键思想|直觉)$", ("{x}的核心思想是什么？", "{x}有什么特点？", "{x}的原理是什么？")),
    (r"^(应用|应用场景|场景|适用场景|使用场景)$", ("{x}有哪些应用场景？", "{x}适合用在什么场景？", "{x}可以应用在哪些地方？")),
    (r"^(步骤|流程|过程|训练流程|工作流程|实现步骤)$", ("{x}的流程是怎样的？", "{x}有哪些步骤？", "{x}是怎么进行的？")),
    (r"^(方法|策略|技术|常见方法|解决方法|解决方案|缓解方法)$", ("{x}有哪些方法？", "{x}常用什么方法？", "{x}可以怎么做？")),
    (r"^(典型)?(超)?参数(设置)?$|^典型值$|^常用配置$", ("{x}的典型参数怎么设？", "{x}常用的参数是多少？", "{x}的超参数一般取多少？")),
    (r"^(示例|例子|举例|例如)$", ("能举一个{x}的例子吗？", "{x}的例子是什么？")),
    (r"^(区别|对比|比较|与.+的区别)$", ("{x}和相关方法有什么区别？", "{x}与其他方法相比有什么不同？")),
))

_BOLD_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<bullet>[*\-+]\s+|\d+[.、)]\s*)?\*\*(?P<label>[^*\n]{1,60}?)\s*(?P<c1>[:：])?\s*\*\*"
    r"\s*(?P<c2>[:：]|\s-\s)?\s*(?P<rest>.*)$")
_BULLET = re.compile(r"^(?P<indent>\s*)(?:[*\-+]|\d+[.、)])\s+(?P<text>.+)$")
_PATTERNS = (
    # (pattern on a sentence, question templates): the subject x is what the question asks about
    (re.compile(r"^(?P<x>[^，。：:；（(]{2,24}?)(?:是指|指的是|是一种|是一个|是)(?P<y>[^，。]{4,}.*)$"),
     ("{x}是什么？", "什么是{x}？")),
    (re.compile(r"^(?P<x>[^，。：:；（(]{2,24}?)(?:用于|用来)(?P<y>.{4,})$"), ("{x}用于什么？", "{x}有什么用？")),
    (re.compile(r"^(?P<x>[^，。：:；]{4,30}?)(?:为|约为|达到|降到|提高到|下降到|只有)\s*(?P<y>[\d.,]+\s*(?:%|倍|个|步|层|维|亿|万|GB|MB|ms|秒)?)"),
     ("{x}是多少？",)),
    (re.compile(r"^(?:由于|因为)(?P<y>[^，]{4,40})，(?P<x>.{4,40}?)[。；]?$"), ("为什么{x}？",)),
)
_DEMONSTRATIVE = re.compile(r"^(这|它|其|该|此|我们|你|他们|以下|如下|另外|此外|同时|但|而|也|则|就|即|还|并|所以|因此)|则|(就是|就|也|都|还|才)$")
# a Chinese bold label that starts with a verb is a feature caption ("支持多种 PEFT 方法"), not a term
_CAPTION_VERB = re.compile(r"^(支持|与|和|安装|使用|提供|通过|实现|基于|配置|加载|高效|一键|自动|如何|怎样|为什么|可以|无缝)")
# a definition body that starts with one of these reads on directly from the term ("Trainer 提供了…")
_PREDICATE = ("是", "指", "即", "用于", "表示", "通过", "就是", "提供", "支持", "包含", "包括", "可以", "能够", "允许", "负责",
              "将", "把", "让", "使", "由", "基于", "采用", "使用")
# an answer that stops where a formula or list was cut off says nothing
_DANGLING = re.compile(r"(为|是|如下|如|：|:|包括|公式|所示)[。.]?$")
_LIST_NOUN = re.compile(r"(?:以下是|以下|如下|主要有|包括|分为|有以下)(?:几个|几种|几类|一些)?(?P<noun>[^：:，。]{2,24}?)[：:]\s*$")


@dataclass
class StructureQuestions:
    """``StructureQuestions().run(chunks)`` → question/answer pairs read off each chunk's Markdown structure.

    Each chunk gives at most ``per_chunk`` pairs (definitions and fields first), so long glossaries do
    not crowd out prose. Phrasings vary per question but are fixed by the text (deterministic).
    """

    per_chunk: int = 5
    min_cjk: float = 0.3  # chunks that are mostly English (the corpus has translations) give no questions
    max_answer_chars: int = 150

    def run(self, chunks: Iterable[Chunk]) -> list[SyntheticQA]:
        out: list[SyntheticQA] = []
        for chunk in chunks:
            prose = cjk_share(chunk.text) >= self.min_cjk  # code is mostly Latin: its Chinese comments still count
            found = (*self.definitions(chunk), *self.fields(chunk), *self.lists(chunk), *self.sentences(chunk),
                     *self.section(chunk)) if prose else ()
            pairs = [p for p in (*found, *self.code(chunk)) if self._ok(p)]
            seen: set[str] = set()
            pairs = [p for p in pairs if not (p.question in seen or seen.add(p.question))]
            out += pairs[: self.per_chunk]
        return out

    def _ok(self, pair: SyntheticQA) -> bool:
        return (8 <= len(pair.answer) <= self.max_answer_chars + 40 and 4 <= len(pair.question) <= 60
                and not _DANGLING.search(pair.answer) and "？的" not in pair.question)

    def _topic(self, chunk: Chunk) -> str:
        return topic_of(chunk.heading_path[-1]) if chunk.heading_path else ""

    def _qa(self, chunk: Chunk, question: str, answer: str, method: str, subject: str) -> SyntheticQA:
        return SyntheticQA(question, _period(answer), chunk.id, chunk.source, method, subject)

    def definitions(self, chunk: Chunk) -> list[SyntheticQA]:
        """``**Term (英文):** definition`` lines, the body on the same or the next line."""
        out = []
        lines = chunk.text.splitlines()
        for i, line in enumerate(lines):
            m = _BOLD_LINE.match(line)
            if not m or not (m.group("c1") or m.group("c2")):
                continue
            label = m.group("label").strip()
            if (not re.search(r"[A-Za-z]{2,}", label) or _field_templates(label) or re.match(r"[\d第]", label)
                    or _CAPTION_VERB.match(label)):
                continue
            body = m.group("rest").strip() or (lines[i + 1].strip() if i + 1 < len(lines) else "")
            body = lead(body, self.max_answer_chars)
            if len(body) < 4 or not _CJK.search(body) or body.startswith(("```", "|", "见")):
                continue
            forms = term_forms(label)
            term = _pick(forms, label + chunk.id)
            question = _pick(DEFINE_TEMPLATES, term + chunk.id).format(x=term)
            out.append(self._qa(chunk, question, _define(term, body), "definition", term))
        return out

    def fields(self, chunk: Chunk) -> list[SyntheticQA]:
        """``**公式**：…``, ``**优点**：`` + a list, … under a heading: questions about the heading's topic."""
        topic = self._topic(chunk)
        if not topic or len(topic) > 30:
            return []
        out = []
        lines = chunk.text.splitlines()
        for i, line in enumerate(lines):
            m = _BOLD_LINE.match(line)
            if not m or m.group("indent"):
                continue
            templates = _field_templates(m.group("label").strip())
            if not templates:
                continue
            body = _field_body(m.group("rest"), lines[i + 1:], self.max_answer_chars, formula="公式" in templates[0])
            if not body:
                continue
            name = _pick(term_forms(topic), topic)
            question = _pick(templates, topic + m.group("label") + chunk.id).format(x=name)
            if templates is DEFINE_TEMPLATES:
                body = _define(name, body)
            out.append(self._qa(chunk, question, body, "field", name))
        return out

    def lists(self, chunk: Chunk) -> list[SyntheticQA]:
        """A caption ("以下是几个主要挑战：", ``**核心功能:**``) followed by bullets → "…有哪些？" answered by the items."""
        topic = self._topic(chunk)
        out = []
        lines = [ln for ln in chunk.text.splitlines() if ln.strip()]
        for i, line in enumerate(lines):
            caption = plain(line)
            if (_BULLET.match(line) or not caption.endswith(("：", ":")) or i + 2 >= len(lines)
                    or line.lstrip().startswith("#") or re.search(r"[？?]", caption)):
                continue
            bold = _BOLD_LINE.match(line)
            if bold and _field_templates(bold.group("label").strip()):
                continue  # a field: fields() asks about it
            items = _items(lines[i + 1:])
            if len(items) < 2:
                continue
            noun_m = _LIST_NOUN.search(caption)
            if not noun_m and not bold:
                continue  # a sentence that ends in a colon names no list topic we can ask about
            noun = noun_m.group("noun").strip() if noun_m else plain(bold.group("label")).strip("：: ")
            if not 3 <= len(noun) <= 24 or not _CJK.search(noun) or re.search(r"(可能|会|能|要|应|需要|是|有|如下)$", noun):
                continue
            if topic and topic not in noun and len(noun) < 6:
                noun = f"{topic}的{noun}" if not noun.startswith(topic) else noun
            question = _pick(("{x}有哪些？", "{x}包括哪些？", "{x}主要有哪些？"), noun + chunk.id).format(x=noun)
            names = [n for n, _ in items]
            if all(n and len(n) <= 20 for n in names):
                answer = f"{noun}包括{_join(names[:8])}"
            else:
                answer = _clauses(d for _, d in items[:3])
            if len(answer) <= self.max_answer_chars + 40:
                out.append(self._qa(chunk, question, answer, "list", noun))
        return out

    def sentences(self, chunk: Chunk, per_chunk: int = 2) -> list[SyntheticQA]:
        """Declarative sentences ("X 是 Y" → "X是什么？", "X 为 0.9" → "X是多少？"); the sentence is the answer."""
        out = []
        pieces = [p for p in sentences(chunk.text, ends="。！？；") if p.strip()]
        for i, raw in enumerate(pieces):
            sentence = plain(raw)
            if not 10 <= len(sentence) <= self.max_answer_chars or "```" in raw or "|" in sentence:
                continue
            for pattern, templates in _PATTERNS:
                m = pattern.match(sentence)
                x = m.group("x").strip() if m else ""
                if m and not _DEMONSTRATIVE.search(x) and _CJK.search(x) and len(x) >= 3:
                    question = (templates[0] if "的" in x else _pick(templates, sentence)).format(x=x)
                    topic = self._topic(chunk)
                    if len(x) <= 5 and not re.search(r"[A-Za-z]{2,}", x) and topic and x not in topic:
                        question = f"{topic}中，{question}"  # "常用范围是什么？" needs its context
                    nxt = plain(pieces[i + 1]) if i + 1 < len(pieces) and "```" not in pieces[i + 1] else ""
                    if len(sentence) < 60 and nxt.endswith("。") and len(sentence) + len(nxt) <= self.max_answer_chars:
                        sentence += nxt  # a short statement with the sentence that explains it
                    out.append(self._qa(chunk, question, sentence, "sentence", x))
                    break
            if len(out) >= per_chunk:
                break
        return out

    def section(self, chunk: Chunk) -> list[SyntheticQA]:
        """"介绍一下{heading}。" for a chunk that starts a section with prose; its first sentence answers it."""
        topic = self._topic(chunk)
        if not chunk.text.lstrip().startswith("#") or not 2 <= len(topic) <= 20:
            return []
        body = [ln for ln in chunk.text.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "```", "|", "*", "-"))]
        if not body or _BOLD_LINE.match(body[0]):
            return []
        answer = lead(body[0], self.max_answer_chars)
        if len(answer) < 15 or support(topic, answer) < 0.3:
            return []  # the opening sentence is not about the heading
        templates = ("介绍一下{x}。", "{x}是什么？", "{x}讲的是什么？", "关于{x}有什么要点？")
        return [self._qa(chunk, _pick(templates, topic + chunk.id).format(x=topic), answer, "section", topic)]

    def code(self, chunk: Chunk) -> list[SyntheticQA]:
        """``code  # 中文注释`` lines in a code block: "在{topic}的代码里，{注释}是怎么写的？"."""
        topic = self._topic(chunk)
        out = []
        for m in re.finditer(r"^[ \t]*(?P<code>[^#\n]{6,80}?)[ \t]+#[ \t]*(?P<comment>[^\n]{4,30})$", chunk.text, re.M):
            comment, code = m.group("comment").strip(), m.group("code").strip()
            if (not _CJK.search(comment) or not topic or "```" in code or not re.search(r"[=(]", code)
                    or re.match(r"(print|return|def|class|from|import|if|for|else)\b", code) or re.match(r"[\d(（]", comment)):
                continue
            question = _pick(("{t}的代码里，{c}是怎么写的？", "在{t}中，{c}对应哪行代码？"), comment + chunk.id).format(
                t=topic, c=comment)
            out.append(self._qa(chunk, question, f"{comment}：{m.group('code').strip()}", "code", topic))
            break
        return out


def chunk_distance(a: str, b: str) -> int:
    """How many chunks apart two chunk ids of one document are (ids end in their position: ``<doc>-0042``)."""
    try:
        return abs(int(a.rsplit("-", 1)[1]) - int(b.rsplit("-", 1)[1]))
    except (IndexError, ValueError):
        return 1 << 30


def _field_templates(label: str) -> tuple[str, ...] | None:
    label = plain(label).strip(" ：:")
    return next((t for p, t in FIELD_TEMPLATES if p.search(label)), None)


def _define(term: str, body: str) -> str:
    """"X" + definition as one sentence: "X是…" unless the body already reads on from the term."""
    if body.startswith(term):
        return body
    if body.startswith(_PREDICATE):
        return term + body
    if body.startswith(("一种", "一个", "一类", "一组", "一项")):
        return f"{term}是{body}"
    if not _CJK.match(body):  # a formula or code first: "Leaky ReLU：f(x) = max(αx, x)，…"
        return f"{term}：{body}"
    return f"{term}指{body}"


def question_subject(question: str) -> str:
    """What a definition question asks about: "什么是X？" → X, "X是什么意思？" → X (empty when no template fits)."""
    m = (re.match(r"^(?:什么是|请解释一下|简单介绍一下|介绍一下)(.+?)[？?。]$", question)
         or re.match(r"^(.+?)(?:是什么意思|是什么|用于什么|有什么用|是多少|指的是什么|讲的是什么)[？?]$", question))
    return m.group(1).strip() if m else ""


def _field_body(rest: str, following: Sequence[str], max_chars: int, formula: bool = False) -> str:
    """A field's content: the rest of its line, else the code or list lines that follow it."""
    if plain(rest):
        return lead(rest, max_chars) or plain(rest)[:max_chars]
    block: list[str] = []
    in_code = False
    for line in following:
        if line.strip().startswith("```"):
            if in_code:
                break
            in_code = True
            continue
        if not line.strip():
            if block and not in_code:
                break
            continue
        if not in_code and _BOLD_LINE.match(line) and not _BULLET.match(line):
            break
        block.append(line)
    if not block:
        return ""
    if in_code:  # a formula: its first lines without comments (a code block under another label is no answer)
        if not formula:
            return ""
        code = [re.sub(r"\s+#.*$", "", ln).strip() for ln in block if ln.strip() and not ln.strip().startswith("#")]
        text = _clauses(code[:3])
        return text if len(text) <= max_chars else ""
    items = _items(block)
    if items and all(n for n, _ in items):
        return _join([n for n, _ in items[:8]])
    return _clauses(d for _, d in items[:3])[:max_chars] if items else first_sentence(" ".join(block), max_chars)


def _items(lines: Sequence[str]) -> list[tuple[str, str]]:
    """The bullets at the start of ``lines`` as (name, description): name is the bold or "名称：" part, if any."""
    items = []
    base_indent = None
    for line in lines:
        m = _BULLET.match(line)
        if not m:
            break
        indent = len(m.group("indent"))
        base_indent = indent if base_indent is None else base_indent
        if indent > base_indent:
            continue  # sub-bullets belong to the item above
        bold = _BOLD_LINE.match(line)
        text = plain(m.group("text"))
        if bold:
            name = plain(bold.group("label")).strip(" ：:")
            desc = plain(bold.group("rest")) or name
        else:
            parts = re.split(r"[：:]", text, maxsplit=1)
            name, desc = (parts[0].strip(), parts[1].strip()) if len(parts) == 2 and len(parts[0]) <= 20 else ("", text)
        items.append((name, first_sentence(desc, 80) or desc[:80]))
    return items


def combine(pairs: Sequence[SyntheticQA], rng: random.Random, *, compound: int, comparisons: int) -> list[SyntheticQA]:
    """Questions with two answers: ``compound`` "Q1Q2" pairs from one chunk, ``comparisons`` "X和Y有什么区别？" pairs.

    A comparison joins two definitions that stand next to each other in a document (the same chunk or the
    next one), each part cited to its own chunk.
    """
    out: list[SyntheticQA] = []
    by_chunk: dict[str, list[SyntheticQA]] = {}
    for p in pairs:
        if p.method != "llm" and not p.also:
            by_chunk.setdefault(p.chunk_id, []).append(p)
    multi = sorted((ps for ps in by_chunk.values() if len(ps) >= 2), key=lambda ps: ps[0].chunk_id)
    for ps in rng.sample(multi, min(compound, len(multi))):
        a, b = rng.sample(ps, 2)
        if not a.question.endswith(("？", "?")) or support(a.answer, b.answer) > 0.5:
            continue
        out.append(SyntheticQA(a.question + b.question, a.answer, a.chunk_id, a.source, "compound", a.subject,
                               ((b.answer, b.chunk_id),)))
    definitions: dict[str, list[SyntheticQA]] = {}
    for p in pairs:
        if p.method == "definition" and p.subject:
            definitions.setdefault(p.source, []).append(p)
    candidates = []
    for ps in definitions.values():
        ps = sorted(ps, key=lambda p: p.chunk_id)
        candidates += [(a, b) for a, b in zip(ps, ps[1:]) if chunk_distance(a.chunk_id, b.chunk_id) <= 1
                       and a.subject != b.subject]
    for a, b in rng.sample(candidates, min(comparisons, len(candidates))):
        x, y = a.subject, b.subject
        template = _pick(("{x}和{y}有什么区别？", "{x}与{y}有什么不同？", "比较一下{x}和{y}。"), x + y)
        out.append(SyntheticQA(template.format(x=x, y=y), a.answer, a.chunk_id, a.source, "comparison", x,
                               ((b.answer, b.chunk_id),)))
    return out
