"""Fakes for unit tests: a deterministic character-bigram embedder and a scripted chat model."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np


class FakeEmbedder:
    """Hashes character bigrams into a small vector: texts sharing words get similar vectors."""

    def __init__(self, dim: int = 64, name: str = "fake-embedder") -> None:
        self.name = name
        self._dim = dim
        self.calls = 0
        self.embedded: list[str] = []

    @property
    def dim(self) -> int:
        return self._dim

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self._dim, dtype=np.float32)
        for a, b in zip(text, text[1:]):
            h = int(hashlib.md5((a + b).encode()).hexdigest()[:8], 16)
            v[h % self._dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        self.embedded.extend(texts)
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self._dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)


class FakeChatModel:
    """Returns a scripted reply (or one computed from the messages) and records what it was asked."""

    def __init__(self, reply="根据资料，答案如下 [1]。") -> None:
        self.reply = reply
        self.messages: list[list[dict]] = []

    def _text(self, messages) -> str:
        self.messages.append(messages)
        return self.reply(messages) if callable(self.reply) else self.reply

    def generate(self, messages, *, max_new_tokens: int = 256, temperature: float = 0.0) -> str:
        return self._text(messages)

    def stream(self, messages, *, max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        text = self._text(messages)
        for i in range(0, len(text), 3):  # small pieces, so markers get split across deltas
            yield text[i:i + 3]
