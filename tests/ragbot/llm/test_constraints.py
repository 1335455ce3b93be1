"""The decoding rules shared by the in-process backends (ragbot/llm/constraints.py): here the echo rule, on a
character vocabulary (the marker rules are tested through each backend's logits processor)."""

from __future__ import annotations

from ragbot.llm.constraints import EchoRule, MarkerVocab

# one token per character, plus a few multi-character tokens a real vocabulary has
VOCAB = list("注意力为什么要除以根号d因是方差，。") + ["？", "?", "？\n", " [", "1", "]", "<end>", " "]
IDS = {t: i for i, t in enumerate(VOCAB)}
STOP = IDS["<end>"]


def rule(question: str = "注意力为什么要除以根号 d？") -> EchoRule:
    decode = lambda ids: "".join("" if i == STOP else VOCAB[i] for i in ids)  # noqa: E731
    return EchoRule(question, MarkerVocab.from_texts(VOCAB), frozenset({STOP}), decode)


def banned(r: EchoRule, text: list[str]) -> set[str]:
    return {VOCAB[i] for i in r.banned([IDS[t] for t in text])}


ASKS = {"？", "?", "？\n"}


def test_an_answer_that_only_copies_the_question_can_neither_ask_nor_end():
    copy = list("注意力为什么要除以根号") + [" ", "d"]
    assert banned(rule(), copy) == ASKS | {"<end>"}
    assert banned(rule(), copy + [" [", "1", "]"]) == ASKS | {"<end>"}  # a marker does not make it an answer
    assert banned(rule(), list("为什么要除")) == ASKS | {"<end>"}  # any part of the question


def test_an_answer_that_says_something_is_left_alone():
    r = rule()
    assert banned(r, list("注意力")) == set()  # under 4 characters: too short to call a copy
    assert banned(r, list("注意力为什么要除以根号") + [" ", "d", "，", "因"]) == set()  # it goes on
    assert banned(r, list("因为方差")) == set()  # not the question's text
    # a later sentence that copies the question may not ask it, but the answer may end
    assert banned(r, list("是方差。为什么要除")) == ASKS
    assert banned(r, list("是方差。")) == set()
    assert banned(rule(""), list("为什么要除")) == set()  # no question given: no rule
    assert banned(rule("d？"), list("d")) == set()


def test_only_the_last_window_of_tokens_is_decoded():
    seen: list[int] = []

    def decode(ids):
        seen.append(len(ids))
        return "".join(VOCAB[i] for i in ids)

    r = EchoRule("为什么要除以根号", MarkerVocab.from_texts(VOCAB), frozenset({STOP}), decode)
    long = [IDS["是"], IDS["。"]] * 250 + [IDS[c] for c in "为什么要除"]
    assert {VOCAB[i] for i in r.banned(long)} == ASKS  # far from the start: it may end, not ask
    assert seen == [EchoRule.WINDOW]
    assert r.banned([IDS["是"]] * 500 + [IDS[c] for c in "为什么要除"]) == frozenset()  # one long sentence
