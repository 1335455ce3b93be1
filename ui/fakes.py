"""Stand-in models for tests and demos: ``RAGBOT_UI_FAKE_MODELS=1`` makes the app use these.

They follow the same protocols as the real models (:class:`ragbot.embedder.Embedder`,
:class:`ragbot.generation.ChatModel`), load nothing and answer instantly, so the app's pages can
be tested with ``streamlit.testing.v1.AppTest`` in milliseconds. The index they build is recorded
under the embedder name ``ui-fake-embedder``: opening a real index with fakes (or the reverse)
fails with the usual "re-ingest" message instead of mixing vectors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator


from ragbot.settings import REFUSAL
from ragbot.testing import HashingEmbedder

FAKE_EMBEDDER = "ui-fake-embedder"
FAKE_LLM = "ui-fake-llm"


class FakeEmbedder(HashingEmbedder):
    """The package's hashing embedder under the app's fake-embedder name."""

    def __init__(self, dim: int = 64, name: str = FAKE_EMBEDDER) -> None:
        super().__init__(dim, name)


class FakeChatModel:
    """Answers like a perfect extractive model: the first sentence of passage [1], cited.

    It recognises the app's other prompts too: a question-rewrite prompt gets the follow-up with
    its pronoun replaced by the previous question's first key term, and a judge prompt gets "1".
    """

    name = FAKE_LLM

    def generate(self, messages: list[dict[str, str]], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0) -> str:
        return self._reply(messages)

    def stream(self, messages: list[dict[str, str]], *, max_new_tokens: int = 256,
               temperature: float = 0.0, citable: int = 0) -> Iterator[str]:
        text = self._reply(messages)
        for i in range(0, len(text), 2):
            yield text[i:i + 2]

    @staticmethod
    def _reply(messages: list[dict[str, str]]) -> str:
        from ragbot.arena import JUDGE_SYSTEM
        from ragbot.generation import GROUNDED_SYSTEM
        from ragbot.rewrite import REWRITE_SYSTEM, key_terms

        system, user = messages[0]["content"], messages[-1]["content"]
        if system == JUDGE_SYSTEM:
            return "1"
        if system == REWRITE_SYSTEM:
            question = user.rsplit("追问：", 1)[-1].split("\n", 1)[0].strip()
            previous = [line[3:] for line in user.splitlines() if line.startswith("用户：")]
            terms = key_terms(previous[-1]) if previous else []
            return question.replace("它", terms[0], 1) if terms and "它" in question else question
        if system == GROUNDED_SYSTEM:  # passage 1's first sentence, cited (wherever the prompt puts the passages)
            first_passage = re.search(r"(?m)^\[1\][^\n]*\n", user)
            if first_passage is None:
                return REFUSAL
            passage = re.split(r"\n\n\[2\]|\n</资料>|\n\n问题：", user[first_passage.end():], maxsplit=1)[0]
            body = " ".join(line for line in passage.splitlines() if line.strip() and not line.startswith("#"))
            first = re.split(r"(?<=[。！？!?])", body.strip(), maxsplit=1)[0].strip()
            return f"{first} [1]" if first else REFUSAL
        if "上下文：" in user:  # the plain prompt with passages
            context = user.split("上下文：\n", 1)[1].split("\n\n问题：", 1)[0]
            return re.split(r"(?<=[。！？!?])", context.strip(), maxsplit=1)[0]
        return "这是不查资料、直接由模型给出的回答。"
