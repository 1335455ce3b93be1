"""The decoding rules shared by the in-process backends (ragbot/llm/constraints.py): here the echo rule, on a
character vocabulary (the marker rules are tested through each backend's logits processor)."""

from __future__ import annotations

from ragbot.llm.constraints import EchoRule, MarkerVocab

# one token per character, plus a few multi-character tokens a real vocabulary has
VOCAB = (list("注意力为什么要除以根号d因是方差，。！*`x") + ["？", "?", "？\n", "?.", "?)", " [", "【", "1", "]", "】", "\n",
                                                       "<end>", "<ctl>", " "])
IDS = {t: i for i, t in enumerate(VOCAB)}
STOPS = frozenset({IDS["<end>"], IDS["<ctl>"]})
QUESTION = "注意力为什么要除以根号 d？"


def decode(ids):
    return "".join("" if i in STOPS else VOCAB[i] for i in ids)


def rule(question: str = QUESTION) -> EchoRule:
    return EchoRule(question, MarkerVocab.from_texts(VOCAB), STOPS, decode)


def banned(r: EchoRule, text: list[str]) -> set[str]:
    return {VOCAB[i] for i in r.banned([IDS[t] for t in text])}


ASKS = {"？", "?", "？\n"}  # tokens that end in a question mark; "?." and "?)" are code
COPY = list("注意力为什么要除以根号") + [" ", "d"]


def test_an_answer_that_copies_the_question_can_neither_ask_nor_end():
    assert banned(rule(), COPY) == ASKS | {"<end>", "<ctl>"}
    # markers, markdown and punctuation do not make it an answer
    for extra in ([" [", "1", "]"], ["【", "1", "】"], ["。"], ["！"], ["\n"], [" [", "1", "]", "\n"]):
        assert banned(rule(), COPY + extra) == ASKS | {"<end>", "<ctl>"}, extra
    assert banned(rule(), ["*", "*"] + COPY + ["*", "*"]) == ASKS | {"<end>", "<ctl>"}


def test_a_copy_of_part_of_the_question_may_not_ask_it():
    r = rule()
    assert banned(r, list("为什么要除")) == ASKS  # under half of the question: it may still end
    assert banned(r, list("是方差。为什么要除")) == ASKS  # a later sentence


def test_an_answer_that_says_something_is_left_alone():
    r = rule()
    assert banned(r, list("注意力")) == set()  # under 4 characters: too short to call a copy
    assert banned(r, COPY + ["，", "因"]) == set()  # it goes on
    assert banned(r, list("因为方差")) == set()  # not the question's text
    assert banned(r, list("是方差。")) == set()
    assert banned(r, ["`"] + COPY) == set()  # inside code, "?" is code
    assert banned(rule(""), list("为什么要除")) == set()  # no question given: no rule
    assert banned(rule("d？"), list("d")) == set()


def test_only_a_window_as_long_as_a_copy_of_the_question_is_decoded():
    seen: list[int] = []

    def counting(ids):
        seen.append(len(ids))
        return decode(ids)

    r = EchoRule(QUESTION, MarkerVocab.from_texts(VOCAB), STOPS, counting)
    long = [IDS["是"], IDS["。"]] * 250 + [IDS[c] for c in "为什么要除以根号"]
    assert {VOCAB[i] for i in r.banned(long)} == ASKS  # far from the start: it may end, not ask
    assert seen == [r.window] and r.window < 100
    assert r.banned([IDS["是"]] * 500 + [IDS[c] for c in "为什么要除"]) == frozenset()  # one long sentence
