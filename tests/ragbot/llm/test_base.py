"""What every LLM backend shares (ragbot/llm/base.py)."""

from ragbot.llm.base import degenerate


def test_degenerate_loops_and_marker_runs_are_detected():
    assert degenerate([1, 2, 3], "答案 [1] [2] [3] [4]")
    assert degenerate([1, 2, 3], "【1】【2】【3】【4】")
    assert not degenerate([1, 2, 3], "答案 [1][2]。")
    loop = [5, 6, 7, 8, 9, 10, 11, 12] * 3
    assert degenerate([1, 2] + loop, "")
    assert not degenerate(list(range(40)), "普通的回答")
