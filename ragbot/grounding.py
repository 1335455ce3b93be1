"""The key-term gate: refuse before generation when no passage can answer.

:class:`KeyTermGate` refuses when the question names a Latin-script term (a model, method or library
name such as ``RWKV``, ``YaRN`` or ``FP8``) that occurs nowhere in the knowledge base: no passage can then
answer it, and a 0.5B model would otherwise invent an answer. Matching ignores case, spaces, hyphens
and underscores (``FlashAttention`` matches ``Flash Attention``). Citations are checked and corrected in
:mod:`ragbot.citations`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ragbot.text import squash

_TERM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z0-9]+)*")


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
        self._haystack = "\n".join(squash(t) for t in texts)

    def run(self, question: str) -> GateDecision:
        missing = tuple(t for t in key_terms(question) if squash(t) not in self._haystack)
        return GateDecision(bool(missing), missing)
