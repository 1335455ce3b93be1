"""What every LLM backend offers ragbot: the :class:`ChatModel` protocol, and the loop check they share.

A backend takes chat messages and returns text, whole or streamed; a stream may end by returning why it
stopped (``"length"``: cut at ``max_new_tokens``), which the answer records. ``citable`` > 0 asks it to let a
citation marker name only passages 1..citable where it can constrain decoding (the transformers
backend does, with a logits processor); the :class:`~ragbot.generation.Generator` cleans markers
afterwards in any case, so a backend that cannot constrain stays correct. ``question`` likewise asks that the
reply not just say the question back (:class:`~ragbot.llm.constraints.EchoRule`); a server cannot be asked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Protocol

from ragbot.prompt import ZWSP
from ragbot.types import Message


class ChatModel(Protocol):
    """A chat LLM: messages in, text out (whole or streamed)."""

    def generate(self, messages: list[Message], *, max_new_tokens: int, temperature: float, citable: int = 0,
                 question: str = "") -> str: ...

    def stream(self, messages: list[Message], *, max_new_tokens: int, temperature: float,
               citable: int = 0, question: str = "") -> Iterator[str]: ...


_MARKER_RUN = re.compile(r"(?:\s*[\[【［]\s*\d{1,3}\s*[\]】］]){4,}\s*$")


def degenerate(token_ids: Sequence[int], text_tail: str, ngram: int = 8, repeats: int = 3) -> bool:
    """True when generation has fallen into a loop: the last ``ngram`` tokens occurred ``repeats`` times,
    or the text ends in a run of four or more citation markers ("[1] [2] [3] [4] ...").

    Small models do both on questions they cannot answer; stopping early saves seconds of useless decoding.
    """
    if _MARKER_RUN.search(text_tail):
        return True
    if len(token_ids) < ngram * repeats:
        return False
    tail = tuple(token_ids[-ngram:])
    hits = sum(1 for i in range(len(token_ids) - ngram + 1) if tuple(token_ids[i:i + ngram]) == tail)
    return hits >= repeats


def control_pattern(tokens) -> re.Pattern[str]:
    """A pattern for the control-token strings ``tokens`` (``<|im_end|>``, ``<tool_call>``, ``[INST]``), longest
    first; one-character tokens are left out (an insertion cannot break them)."""
    kept = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, kept)) or r"(?!)")  # (?!) matches nothing


def neutralize_controls(messages: list[Message], controls: re.Pattern[str]) -> list[Message]:
    """``messages`` with every match of ``controls`` broken by a zero-width space after its first character.

    The chat template then places the only control tokens in the prompt; without this, a document's
    ``<tool_call>`` or ``<|im_start|>`` would be tokenised as the real special token.
    """
    def brk(m: re.Match[str]) -> str:
        return m[0][0] + ZWSP + m[0][1:]

    return [{**m, "content": controls.sub(brk, m["content"])} for m in messages]
