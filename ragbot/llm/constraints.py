"""Decoding constraints for citation markers, the same for every in-process backend (transformers, llama.cpp).

A small model goes wrong in a few ways that one look at the last generated tokens can forbid:

* :meth:`MarkerRules.allowed`: a citation marker names a given passage (after ``[`` only the digits
  1..k, after the digit only a closing bracket);
* :meth:`MarkerRules.banned_after`: no "（heading）" copied after a marker;
* :attr:`MarkerVocab.lead`: an answer never starts with a marker;
* :class:`EchoRule`: an answer never just says the question back.

The rules work on token ids and a ``decode`` function; each backend turns them into its own logits
processor (a torch one in :mod:`ragbot.llm.hf`, a numpy one in :mod:`ragbot.llm.llamacpp`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragbot.citations import BOUNDARY, CLOSE, OPEN, says_back
from ragbot.text import alnum, in_code


@dataclass(frozen=True)
class MarkerVocab:
    """Vocabulary ids the generation constraints need, from one decoding pass over the vocabulary."""

    lead: frozenset[int]  # open a marker after spaces ("[", " [1"): never an answer's first token
    closing: frozenset[int]  # end with a closing bracket: never followed by a parenthesis
    paren: frozenset[int]  # open a parenthesis
    opens: frozenset[int]  # just an opening bracket, after spaces or closing brackets: " [", "[", "]["
    chained: frozenset[int]  # the "][" kind of ``opens``: a marker right after another
    digits: tuple[int, ...]  # the tokens "1".."9" (index 0 is "1"), or empty when the tokenizer merges digits
    closes_first: frozenset[int]  # start with a closing bracket: "]", "]。", "]["
    word_end: frozenset[int]  # end with an ASCII letter, digit or "_": a bracket after them is code or maths
    asks: frozenset[int] = frozenset()  # end in a question mark ("？", "?", "？\n"; not "?." or "?)" of code)

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> MarkerVocab:
        """The sets, from the text of every token id (``texts[i]`` is token i decoded alone)."""
        open_, close = OPEN, CLOSE

        def ids(keep) -> frozenset[int]:
            return frozenset(i for i, t in enumerate(texts) if t and keep(t))

        def just_open(t: str) -> bool:
            t = t.strip(" ")
            return bool(t) and t[-1] in open_ and all(c in close for c in t[:-1])

        by_text = {t: i for i, t in enumerate(texts)}
        digits = tuple(by_text[str(d)] for d in range(1, 10)) if all(str(d) in by_text for d in range(1, 10)) else ()
        return cls(
            lead=ids(lambda t: t.lstrip().startswith(tuple(open_))),
            closing=ids(lambda t: t.rstrip().endswith(tuple(close))),
            paren=ids(lambda t: t.lstrip().startswith(("（", "("))),
            opens=ids(just_open), chained=ids(lambda t: just_open(t) and t.strip(" ")[0] in close),
            digits=digits, closes_first=ids(lambda t: t[0] in close),
            word_end=ids(lambda t: t[-1].isascii() and (t[-1].isalnum() or t[-1] == "_")),
            asks=ids(lambda t: t.rstrip().endswith(("？", "?"))))


class MarkerRules:
    """What may come next, given the tokens generated so far (prompt excluded).

    After an opening bracket that starts a marker (not after a word, as in ``E[X]`` or ``x[0]``, and not
    inside code) only the digits 1..``citable`` may follow, and after that digit only a closing bracket.
    The fine-tuned model otherwise wrote markers like "[6]" for five passages or "[1,2,3,0]", which
    cleaning had to remove. Single digits only, so ``citable`` is capped at 9; 0 turns the rule off.
    ``decode`` turns generated ids into text, for the code check (called only after a bracket).
    """

    def __init__(self, vocab: MarkerVocab, citable: int, decode: Callable[[list[int]], str]) -> None:
        self.vocab, self.decode = vocab, decode
        self.digits = list(vocab.digits[:max(0, min(citable, 9))])
        self._digit_set = set(self.digits)
        self.closes = sorted(vocab.closes_first)

    def _opener(self, generated: Sequence[int], pos: int) -> bool:
        """Whether generated[pos] (negative) is a bracket opening a citation marker."""
        if -pos > len(generated) or generated[pos] not in self.vocab.opens:
            return False
        if generated[pos] not in self.vocab.chained and len(generated) >= -pos + 1 and generated[pos - 1] in self.vocab.word_end:
            return False
        return not in_code(self.decode(list(generated[:len(generated) + pos + 1])))

    def allowed(self, generated: Sequence[int]) -> list[int] | None:
        """The only ids allowed next, or None when anything may follow."""
        if not self.digits or not generated:
            return None
        if self._opener(generated, -1):
            return self.digits
        if len(generated) >= 2 and generated[-1] in self._digit_set and self._opener(generated, -2):
            return self.closes
        return None

    def banned_after(self, last: int) -> frozenset[int]:
        """Ids that may not follow ``last``: a parenthesis right after a closing bracket."""
        return self.vocab.paren if last in self.vocab.closing else frozenset()


class EchoRule:
    """No answer that only says the question back.

    Asked "注意力为什么要除以根号 d？", the 0.5B base model (llama.cpp, greedy) replied with exactly that
    question. While the sentence being written is a copy of part of the question (markers, spaces and
    punctuation aside, 4+ characters: :func:`~ragbot.citations.says_back` with no minimum share), it may not
    end in a question mark; while the whole answer is a copy of most of the question (``says_back``), it may
    not end (``stops``: the end-of-generation ids and any other control token, which would end it unseen).
    Inside code nothing is banned. ``decode`` turns generated ids into text; only the last ``window`` ids
    are decoded, enough for a copy of the whole question. :class:`~ragbot.generation.Generator` refuses what
    still says the question back (a server's answer, which no rule of ours constrains).
    """

    def __init__(self, question: str, vocab: MarkerVocab, stops: frozenset[int],
                 decode: Callable[[list[int]], str]) -> None:
        self.question = question
        self.asks, self.stops, self.decode = vocab.asks, stops, decode
        self.window = 2 * len(question) + 16  # tokens: a copy of the question never takes more
        self.active = len(alnum(question)) >= 4  # a shorter question has no copy to forbid

    def banned(self, generated: Sequence[int]) -> frozenset[int]:
        """Ids that may not come next."""
        if not generated or not self.active:
            return frozenset()
        text = self.decode(list(generated[-self.window:]))
        if in_code(text):
            return frozenset()
        if len(generated) <= self.window and says_back(self.question, text):
            return self.asks | self.stops
        return self.asks if says_back(self.question, BOUNDARY.split(text)[-1], 0.0) else frozenset()
