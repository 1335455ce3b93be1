"""Small text helpers that the guards, the reranker, the training-data writers and the web app share.

Two notions of "the same words" run through ragbot, both cheap and language-agnostic (no tokenizer):

* **character bigrams** (:func:`bigrams`, :func:`support`): Chinese has no spaces, so two neighbouring
  letters or digits are the smallest unit that says what a sentence is about. Case, spaces and
  punctuation are ignored.
* **squashed text** (:func:`squash`): a term matches however it is spaced or hyphenated
  (``FlashAttention`` in ``Flash Attention``, ``Self-RAG`` in ``self rag``).

:func:`sentence_spans` / :func:`sentences` split at Chinese and Western end marks, never across a line.
"""

from __future__ import annotations

import re
from functools import lru_cache

SENTENCE_ENDS = "。！？；!?"
"""What ends a sentence by default: Chinese full stop, exclamation, question mark and semicolon, and ASCII ``!?``."""


def alnum(text: str) -> str:
    """The letters and digits of ``text``, lowercased (CJK characters count as letters).

    >>> alnum("LoRA 冻结预训练权重，r=8。")
    'lora冻结预训练权重r8'
    """
    return "".join(c for c in text.lower() if c.isalnum())


def bigrams(text: str) -> set[str]:
    """The character bigrams of :func:`alnum` ``(text)``: neighbours once spaces and punctuation are dropped.

    >>> sorted(bigrams("Lo-RA 秩"))
    ['a秩', 'lo', 'or', 'ra']
    >>> bigrams("秩") == bigrams("，。") == set()
    True
    """
    chars = alnum(text)
    return {a + b for a, b in zip(chars, chars[1:])}


def support(text: str, source: str) -> float:
    """Fraction of the character bigrams of ``text`` that occur in ``source`` (0 when ``text`` has none).

    >>> support("LoRA 只训练低秩矩阵", "LoRA 冻结预训练权重，只训练低秩矩阵。")
    1.0
    >>> support("量化", "LoRA 冻结预训练权重"), support("。", "。")
    (0.0, 0.0)
    """
    grams = bigrams(text)
    return len(grams & bigrams(source)) / len(grams) if grams else 0.0


def squash(text: str, *, markdown: bool = False) -> str:
    """``text`` lowercased without whitespace, hyphens and underscores, for spacing-blind substring tests.

    ``markdown=True`` also drops ``*`` and backticks, for matching plain text against raw Markdown chunk text
    (``**向量数据库**``, ```top_k```): the training-data builder looks for a question's subject that way. The key-term
    gate and the reranker's key-term feature keep them (the shipped reranker was trained on that feature), and a
    Latin-script key term never holds them anyway.

    >>> squash("Flash  Attention-2 (FA_2)")
    'flashattention2(fa2)'
    >>> squash("**向量 数据库** `top_k`"), squash("**向量 数据库** `top_k`", markdown=True)
    ('**向量数据库**`topk`', '向量数据库topk')
    """
    return re.sub(r"[\s\-_*`]+" if markdown else r"[\s\-_]+", "", text.lower())


@lru_cache(maxsize=8)
def _sentence_pattern(ends: str) -> re.Pattern[str]:
    e = re.escape(ends)
    # a run up to and including its end marks, or the rest of a line that has none
    return re.compile(f"[^{e}\\n]*[{e}]+|[^{e}\\n]+")


def sentence_spans(text: str, ends: str = SENTENCE_ENDS) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of the sentences of ``text``, in order.

    A sentence runs up to and including its end marks (a run such as ``？！`` stays with it); the text after
    the last mark of a line is a sentence too. Line breaks end a sentence and belong to none, so the spans
    and the line breaks together cover ``text`` exactly; spaces stay inside the sentences, and a line that
    starts with an end mark gives a sentence of marks alone. ``ends`` are the characters that end a sentence
    (:data:`SENTENCE_ENDS` unless a caller needs another set).

    >>> text = "LoRA 很省显存！对吗？！\\n秩常取 8。"
    >>> [text[s:e] for s, e in sentence_spans(text)]
    ['LoRA 很省显存！', '对吗？！', '秩常取 8。']
    >>> sentence_spans("a; b", ends=SENTENCE_ENDS + ";")
    [(0, 2), (2, 4)]
    """
    return [m.span() for m in _sentence_pattern(ends).finditer(text)]


def sentences(text: str, ends: str = SENTENCE_ENDS) -> list[str]:
    """The sentences of :func:`sentence_spans`, as strings (joined, they give ``text`` without its line breaks).

    >>> sentences("它是什么？是 LoRA。没有句号")
    ['它是什么？', '是 LoRA。', '没有句号']
    >>> sentences("")
    []
    """
    return [text[s:e] for s, e in sentence_spans(text, ends)]


def in_code(text: str) -> bool:
    """Whether the end of ``text`` is inside a Markdown code fence or an inline code span: brackets there are
    code (``x[0]``, ``[1,2,3]``), never citation markers."""
    if text.count("```") % 2:
        return True
    return text.replace("```", "").count("`") % 2 == 1
