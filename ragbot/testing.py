"""Test doubles that ship with the package: the test suite and the web app's fake mode use these, and only these.

* :class:`HashingEmbedder` / :class:`FakeEmbedder`: character bigrams hashed into a small normalised vector
  (texts sharing words get similar vectors); deterministic, loads nothing.
* :class:`FakeChatModel`: a scripted chat model. Given a ``reply`` (a string, or a function of the messages)
  it returns that; without one it behaves like a copying model: its reply is the first sentence of the
  last message, cited ``[1]`` when the call allows citations (``citable`` > 0). It never looks at which
  prompt it was given, so changing a prompt cannot change what a test exercises without the test saying so.

Both follow the library's protocols (:class:`ragbot.embedder.Embedder`, :class:`ragbot.llm.ChatModel`).
The web app names them with :data:`FAKE_EMBEDDER` and :data:`FAKE_LLM`, so an index built with fakes is
refused by the real models (and the reverse) with the usual "re-ingest" message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ragbot.settings import REFUSAL
from ragbot.types import Message

FAKE_EMBEDDER = "ui-fake-embedder"
FAKE_LLM = "ui-fake-llm"


class HashingEmbedder:
    """Character bigrams hashed into a small normalised vector: texts sharing words get similar vectors.

    Follows :class:`ragbot.embedder.Embedder`; loads nothing and is deterministic.
    """

    def __init__(self, dim: int = 64, name: str = "hashing-embedder") -> None:
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self._dim, dtype=np.float32)
        for a, b in zip(text, text[1:]):
            v[int(hashlib.md5((a + b).encode()).hexdigest()[:8], 16) % self._dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self._dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)


class FakeEmbedder(HashingEmbedder):
    """The hashing embedder under a test name, recording what it was asked to embed (``calls``, ``embedded``)."""

    def __init__(self, dim: int = 64, name: str = "fake-embedder") -> None:
        super().__init__(dim, name)
        self.calls = 0
        self.embedded: list[str] = []

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        return super().embed_documents(texts)


Reply = str | Callable[[list[Message]], str]
_FIRST_SENTENCE = re.compile(r"[^。！？!?\n]*[。！？!?]")


def copy_first_sentence(messages: list[Message], citable: int = 0) -> str:
    """The copying model's reply: the first sentence of the last message (``[1]`` after it when it may cite),
    or the refusal phrase when that message holds no sentence."""
    found = _FIRST_SENTENCE.search(messages[-1]["content"]) if messages else None
    sentence = found.group(0).strip() if found else ""
    if not sentence:
        return REFUSAL
    return f"{sentence[:-1]} [1]{sentence[-1]}" if citable else sentence


class FakeChatModel:
    """A chat model that returns ``reply`` (a string, or ``reply(messages)``), or copies when ``reply`` is None.

    It records every conversation it was given (``messages``) and the ``citable`` of each call, and streams in
    pieces of ``piece_chars`` characters, so citation markers arrive split across pieces.
    """

    def __init__(self, reply: Reply | None = None, *, name: str = "fake-llm", piece_chars: int = 3) -> None:
        self.reply = reply
        self.name = name
        self.piece_chars = piece_chars
        self.messages: list[list[Message]] = []
        self.citable: list[int] = []

    def _text(self, messages: list[Message], citable: int) -> str:
        self.messages.append(messages)
        self.citable.append(citable)
        if self.reply is None:
            return copy_first_sentence(messages, citable)
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0) -> str:
        return self._text(messages, citable)

    def stream(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0) -> Iterator[str]:
        text = self._text(messages, citable)
        for i in range(0, len(text), self.piece_chars):
            yield text[i:i + self.piece_chars]
