"""Fakes for unit tests: a deterministic character-bigram embedder and a scripted chat model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ragbot.testing import HashingEmbedder


class FakeEmbedder(HashingEmbedder):
    """The package's hashing embedder, recording what it was asked to embed."""

    def __init__(self, dim: int = 64, name: str = "fake-embedder") -> None:
        super().__init__(dim, name)
        self.calls = 0
        self.embedded: list[str] = []

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        return super().embed_documents(texts)


class FakeChatModel:
    """Returns a scripted reply (or one computed from the messages) and records what it was asked."""

    def __init__(self, reply="根据资料，答案如下 [1]。") -> None:
        self.reply = reply
        self.messages: list[list[dict]] = []
        self.citable: list[int] = []  # the ``citable`` each stream call got

    def _text(self, messages) -> str:
        self.messages.append(messages)
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate(self, messages, *, max_new_tokens: int = 256, temperature: float = 0.0, citable: int = 0) -> str:
        return self._text(messages)

    def stream(self, messages, *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0) -> Iterator[str]:
        self.citable.append(citable)
        text = self._text(messages)
        for i in range(0, len(text), 3):  # small pieces, so markers get split across deltas
            yield text[i:i + 3]
