"""The LLM judge (ragbot/evaluation/arena/judge.py): its prompt, verdict parsing and position-bias cancelling."""

import pytest

from ragbot.evaluation.arena import Vote, judge_pair, judge_prompt, parse_verdict


MARK = "【有依据】"


def marker_judge(messages):
    """Prefers whichever answer contains MARK, wherever it is shown."""
    user = messages[-1]["content"]
    return "1" if user.index(MARK) < user.index("【回答2】") else "2"


class Recorder:
    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def __call__(self, messages):
        self.calls.append(messages)
        return self.replies.pop(0)


def test_judge_prompt_is_chinese_and_contains_everything():
    messages = judge_prompt("什么是LoRA？", "[1] LoRA 是低秩适配。", "答一", "答二")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "什么是LoRA？" in user and "[1] LoRA 是低秩适配。" in user
    assert user.index("答一") < user.index("【回答2】") < user.index("答二")
    assert "平" in user and "资料" in messages[0]["content"]


@pytest.mark.parametrize("text, verdict", [
    ("1", "1"), (" 2\n", "2"), ("**2**", "2"), ("２", "2"), ("平", "tie"), ("平局。", "tie"), ("Tie", "tie"),
    ("回答2更好，因为回答1编造了内容", "2"), ("结论：1", "1"), ("我认为回答1更有依据。", "1"),
    ("两者相当", "tie"), ("", None), ("我不知道", None), ("回答1和回答2各有优点", None), ("12", None),
    ("1、2都不好", None), ("1。回答1引用了资料", "1"),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("marked, expected", [("a", "a"), ("b", "b")])
def test_judge_pair_maps_swapped_positions_back_to_sides(marked, expected):
    answer_a = "LoRA 冻结原权重" + (MARK if marked == "a" else "")
    answer_b = "LoRA 是一种数据库" + (MARK if marked == "b" else "")
    calls = []

    def chat(messages):
        calls.append(messages[-1]["content"])
        return marker_judge(messages)

    assert judge_pair(chat, "什么是LoRA？", "[1] ……", answer_a, answer_b) == expected
    assert len(calls) == 2
    assert calls[0].index(answer_a) < calls[0].index(answer_b)  # A shown first,
    assert calls[1].index(answer_b) < calls[1].index(answer_a)  # then B first


def test_judge_pair_position_biased_judge_gives_tie():
    assert judge_pair(Recorder(["1", "1"]), "q", "p", "a", "b") == "tie"
    assert judge_pair(Recorder(["2", "2"]), "q", "p", "a", "b") == "tie"


def test_judge_pair_agreement_and_ties():
    assert judge_pair(Recorder(["1", "2"]), "q", "p", "x", "y") == "a"
    assert judge_pair(Recorder(["2", "1"]), "q", "p", "x", "y") == "b"
    assert judge_pair(Recorder(["平", "平"]), "q", "p", "x", "y") == "tie"
    assert judge_pair(Recorder(["1", "平"]), "q", "p", "x", "y") == "tie"


def test_judge_pair_unparseable_reply_is_tie():
    assert judge_pair(Recorder(["我不确定", "嗯"]), "q", "p", "x", "y") == "tie"
    assert judge_pair(Recorder(["1", "无法判断"]), "q", "p", "x", "y") == "tie"
