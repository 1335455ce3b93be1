"""The Elo tab's logic (ui/arena.py): blind rounds, votes, machine judging, the leaderboard table."""

from __future__ import annotations

import random

import pytest

from ragbot.evaluation.arena import VoteStore
from ragbot.settings import REFUSAL
from ragbot.types import Answer, Chunk, ScoredChunk
from ui.arena import cast_vote, csv_bytes, judge_name, judge_passages, judge_rounds, leaderboard_frame, new_round


def answer_fn(variant, question):
    chunk = Chunk(f"{variant}-1", "/d", f"{variant} 的资料", "d.md")
    return Answer(question, f"{variant} 的回答", False, (), (ScoredChunk(chunk, 1.0, "fused"),))


def test_round_is_blind_until_voted(tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    sides = set()
    for seed in range(20):
        rnd = new_round("问题？", "ragbot", "naive", answer_fn, random.Random(seed))
        sides.add(rnd.left)
        assert rnd.answer_a == f"{rnd.left} 的回答" and not rnd.revealed
    assert sides == {"ragbot", "naive"}  # both sides get both variants
    done = cast_vote(store, rnd, "b")
    assert done.revealed and done.vote_id == 1
    stored = store.list()[0]
    assert (stored.variant_a, stored.variant_b, stored.vote, stored.voter) == (rnd.left, rnd.right, "b", "human")
    with pytest.raises(ValueError, match="already has a vote"):
        cast_vote(store, done, "a")


def test_judge_votes_are_machine_votes(tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    asked = []

    def chat(messages):
        asked.append(messages)
        return "1"  # always the first position: the swap turns this into ties

    votes = judge_rounds(store, ["q1", "q2"], "ragbot", "naive", answer_fn, chat, "judge:qwen", random.Random(0))
    assert [v.vote for v in votes] == ["tie", "tie"] and len(asked) == 4
    assert store.count(True) == 2 and store.count(False) == 0
    assert "ragbot 的资料" in asked[0][1]["content"] and "naive 的资料" in asked[0][1]["content"]


def test_leaderboard_frame_and_csv(tmp_path):
    store = VoteStore(tmp_path / "votes.db")
    for vote in ("a", "a", "b", "tie"):
        cast_vote(store, new_round("q", "ragbot", "llm-only", answer_fn, random.Random(1)), vote)
    board = leaderboard_frame(store.list(), k=32, initial=1500, n_boot=50)
    assert list(board.columns)[:3] == ["名次", "方案", "在线 Elo"] and set(board["方案"]) == {"ragbot", "llm-only"}
    assert board["对局"].tolist() == [4, 4]
    data = csv_bytes(store, None)
    assert data.startswith("\ufeff".encode()) and data.decode("utf-8-sig").count("\n") == 5


def test_helpers(app_env):
    assert judge_name(app_env) == "judge:ui-fake-llm"
    assert judge_name(app_env.replace(llm="bundle:qwen2.5-coder-0.5b-instruct")) == "judge:qwen2.5-coder-0.5b-instruct"
    a, b = answer_fn("x", "q"), answer_fn("x", "q")
    assert judge_passages([a, b]).count("[") == 1  # the same passage once
    assert REFUSAL  # imported for symmetry with the app


def test_ratings_chart_draws_one_point_per_variant_best_on_top():
    import io

    from ragbot.evaluation.arena import Vote, leaderboard
    from ui.arena import ratings_chart

    def vote(left, right, result):
        return Vote(f"{left} 还是 {right}？", left, right, "甲", "乙", result, "human", {})

    votes = [vote("a", "b", "a")] * 6 + [vote("b", "c", "a")] * 5 + [vote("a", "c", "a")] * 4 + [vote("c", "b", "a")]
    df = leaderboard(votes, n_boot=50)
    fig = ratings_chart(df)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(df["variant"])[::-1] == ["c", "b", "a"]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert ratings_chart(leaderboard([])).axes  # an empty arena still renders
