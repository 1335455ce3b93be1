import csv
import io
import math
import random
import sqlite3
import threading
import time

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from ragbot.arena import (
    CSV_COLUMNS,
    LEADERBOARD_COLUMNS,
    Vote,
    VoteStore,
    _bootstrap_ratings,
    assign_sides,
    bootstrap_ci,
    bradley_terry,
    judge_pair,
    judge_prompt,
    leaderboard,
    online_elo,
    parse_verdict,
    ratings_chart,
    win_rate_matrix,
)
from ragbot.errors import RagbotError

ELO_UNIT = 400 / math.log(10)  # Elo points per natural-log unit of Bradley-Terry strength


def v(left, right, vote, voter="human", **meta):
    return Vote(f"{left} 还是 {right}？", left, right, f"{left}的回答", f"{right}的回答", vote, voter, meta)


def games(left, right, vote, n):
    return [v(left, right, vote) for _ in range(n)]


def synthetic(strengths_elo, n_votes, seed):
    """Votes between random pairs, the winner drawn from the Bradley-Terry model with known strengths."""
    rng = np.random.default_rng(seed)
    names = list(strengths_elo)
    out = []
    for _ in range(n_votes):
        i, j = rng.choice(len(names), size=2, replace=False)
        p_left = expit((strengths_elo[names[i]] - strengths_elo[names[j]]) / ELO_UNIT)
        out.append(v(names[i], names[j], "a" if rng.random() < p_left else "b"))
    return out


# ---------------------------------------------------------------- Vote


def test_unknown_vote_value_is_rejected_naming_value_and_choices():
    with pytest.raises(ValueError, match=r"vote 'left' is not one of 'a', 'b', 'tie', 'both_bad'"):
        v("x", "y", "left")


def test_same_variant_on_both_sides_is_rejected():
    with pytest.raises(ValueError, match=r"variant_a and variant_b are both 'x'"):
        v("x", "x", "a")


@pytest.mark.parametrize("voter", ["judge:", "gpt", ""])
def test_voter_must_be_human_or_named_judge(voter):
    with pytest.raises(ValueError, match="judge:<|followed by the judge's name"):
        v("x", "y", "a", voter=voter)


def test_meta_must_be_json():
    with pytest.raises(ValueError, match="meta cannot be stored as JSON"):
        v("x", "y", "a", seed=object())


def test_left_score_and_machine_flag():
    assert [v("x", "y", o).left_score for o in ("a", "b", "tie", "both_bad")] == [1.0, 0.0, 0.5, 0.5]
    assert v("x", "y", "a", voter="judge:qwen").machine and not v("x", "y", "a").machine


# ---------------------------------------------------------------- VoteStore


def test_database_is_in_wal_mode_with_schema_version(tmp_path):
    path = tmp_path / "arena" / "votes.sqlite"
    VoteStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    conn.close()


def test_votes_persist_across_store_instances(tmp_path):
    path = tmp_path / "votes.sqlite"
    store = VoteStore(path)
    first = store.add(v("bm25", "hybrid", "b", passages=["[1] LoRA 是低秩适配"], seed=7))
    second = store.add(v("hybrid", "bm25", "both_bad", voter="judge:qwen"))
    assert (first, second) == (1, 2)

    reopened = VoteStore(path)
    votes = reopened.list()
    assert reopened.count() == 2 and [x.id for x in votes] == [1, 2]
    assert votes[0].meta == {"passages": ["[1] LoRA 是低秩适配"], "seed": 7}
    assert votes[0].variant_a == "bm25" and votes[0].answer_b == "hybrid的回答" and votes[0].vote == "b"
    assert votes[0].created_at.endswith("+00:00")  # UTC, ISO 8601
    assert votes[1].meta == {} and votes[1].voter == "judge:qwen"


def test_list_and_count_filter_human_and_machine_votes(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    store.add(v("x", "y", "a"))
    store.add(v("x", "y", "b", voter="judge:qwen"))
    store.add(v("y", "x", "tie"))
    assert [x.vote for x in store.list(machine=False)] == ["a", "tie"]
    assert [x.voter for x in store.list(machine=True)] == ["judge:qwen"]
    assert (store.count(), store.count(machine=False), store.count(machine=True)) == (3, 2, 1)


def test_given_created_at_is_kept(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    store.add(Vote("q", "x", "y", "", "", "a", created_at="2024-05-01T08:00:00+00:00"))
    assert store.list()[0].created_at == "2024-05-01T08:00:00+00:00"


def test_export_csv_to_buffer_and_path(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    store.add(v("x", "y", "a", seed=3))
    store.add(v("y", "x", "tie"))
    buffer = io.StringIO()
    assert store.export_csv(buffer) == 2
    rows = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1][:9] == ["1", rows[1][1], "x 还是 y？", "x", "y", "x的回答", "y的回答", "a", "human"]
    assert rows[1][9] == '{"seed": 3}' and rows[2][7] == "tie" and rows[2][9] == ""

    path = tmp_path / "votes.csv"
    store.export_csv(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        assert list(csv.reader(f)) == rows


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\",\"点我\")", "+1+2", "-2+3", "@SUM(A1)", "\tX", "\r=1"])
def test_export_csv_neutralises_formulas(tmp_path, text):
    store = VoteStore(tmp_path / "votes.sqlite")
    store.add(Vote(text, "x", "y", text, "正常的回答", "a", voter="human"))
    buffer = io.StringIO()
    store.export_csv(buffer)
    row = list(csv.reader(io.StringIO(buffer.getvalue())))[1]
    assert row[2] == row[5] == "'" + text  # shown as text in a spreadsheet, the content still all there
    assert row[6] == "正常的回答" and row[0] == "1"


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "votes.sqlite"
    VoteStore(path)

    def session(n):
        store = VoteStore(path)  # as each Streamlit session would
        for i in range(25):
            store.add(v("x", "y", "ab"[(n + i) % 2]))

    threads = [threading.Thread(target=session, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert VoteStore(path).count() == 100


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "votes.sqlite"
    VoteStore(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(RagbotError, match="schema version 99.*upgrade ragbot"):
        VoteStore(path)


def test_add_rejects_non_votes(tmp_path):
    with pytest.raises(TypeError, match="takes a Vote, not dict"):
        VoteStore(tmp_path / "votes.sqlite").add({"vote": "a"})


# ---------------------------------------------------------------- sides


def test_assign_sides_is_random_and_seeded():
    sides = [assign_sides("x", "y", random.Random(s)) for s in range(200)]
    assert set(sides) == {("x", "y"), ("y", "x")}
    left_x = sum(s == ("x", "y") for s in sides)
    assert 70 < left_x < 130
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [assign_sides("x", "y", rng1) for _ in range(20)] == [assign_sides("x", "y", rng2) for _ in range(20)]
    with pytest.raises(ValueError, match="both variants are 'x'"):
        assign_sides("x", "x", random.Random(0))


# ---------------------------------------------------------------- Elo


def test_online_elo_hand_computed_sequence():
    votes = [v("x", "y", "a"), v("y", "z", "tie"), v("z", "x", "b")]
    # 1. x beats y at equal ratings: E = 0.5, x +16 -> 1516, y -> 1484.
    assert online_elo(votes[:1]) == {"x": 1516.0, "y": 1484.0}
    # 2. y (1484) ties z (1500): E_y = 1/(1 + 10^(16/400)) = 0.47699041270243772,
    #    y gains 32 * (0.5 - E_y) = 0.73630679352199288 -> y 1484.7363067935220, z 1499.2636932064780.
    # 3. x (1516) on the right beats z (1499.2637): E_z = 1/(1 + 10^(16.7363/400)) = 0.47593313079241468,
    #    z loses 32 * E_z = 15.229860185357270 -> z 1484.0338330211207, x 1531.2298601853573.
    elo = online_elo(votes)
    assert elo["x"] == pytest.approx(1531.2298601853573, abs=1e-9)
    assert elo["y"] == pytest.approx(1484.7363067935220, abs=1e-9)
    assert elo["z"] == pytest.approx(1484.0338330211207, abs=1e-9)
    assert sum(elo.values()) == pytest.approx(4500)


def test_online_elo_depends_on_order_and_k():
    assert online_elo([v("x", "y", "a")], k=16, initial=1000) == {"x": 1008.0, "y": 992.0}
    forward = online_elo([v("x", "y", "a"), v("x", "y", "b")])
    backward = online_elo([v("x", "y", "b"), v("x", "y", "a")])
    assert forward["x"] < 1500 < backward["x"]  # the later vote weighs more


def test_elo_tie_and_both_bad_are_the_same_half_point():
    assert online_elo([v("x", "y", "tie")]) == {"x": 1500.0, "y": 1500.0}
    before = [v("x", "y", "a")]
    tie = online_elo(before + [v("x", "y", "tie")])
    both_bad = online_elo(before + [v("x", "y", "both_bad")])
    assert tie == both_bad
    assert tie["x"] == pytest.approx(1516 + 32 * (0.5 - 1 / (1 + 10 ** (-32 / 400))))


def test_rating_arguments_are_validated():
    with pytest.raises(ValueError, match=r"k \(0\) must be positive"):
        online_elo([], k=0)
    with pytest.raises(ValueError, match=r"base \(1\) must be greater than 1"):
        bradley_terry([v("x", "y", "a")], base=1)
    with pytest.raises(ValueError, match="anchor 'w' is not a variant"):
        bradley_terry([v("x", "y", "a")], anchor="w")


# ---------------------------------------------------------------- Bradley-Terry


def _two_player_gap(wins, losses, prior_sd=1000.0):
    """Independent check: the posterior mode of the gap d (log units) solves a one-dimensional equation.

    With ratings +d/2 and -d/2 (the prior centres them), d/dd of the negative log posterior is
    ``-wins * sigmoid(-d) + losses * sigmoid(d) + precision * d / 2``.
    """
    precision = (ELO_UNIT / prior_sd) ** 2
    d = brentq(lambda d: -wins * expit(-d) + losses * expit(d) + precision * d / 2, -30, 30, xtol=1e-14)
    return d * ELO_UNIT


def test_bt_two_players_matches_empirical_win_rate():
    votes = games("x", "y", "a", 18) + games("y", "x", "b", 12) + games("x", "y", "b", 6) + games("y", "x", "a", 4)
    bt = bradley_terry(votes)  # x won 30 of 40, p = 0.75
    gap = bt["x"] - bt["y"]
    assert gap == pytest.approx(400 * math.log10(0.75 / 0.25), abs=1.0)  # 190.85, up to the prior
    assert gap == pytest.approx(_two_player_gap(30, 10), abs=1e-4)
    assert gap < 400 * math.log10(3)  # the prior shrinks, never stretches
    assert (bt["x"] + bt["y"]) / 2 == pytest.approx(1500)


def test_bt_ties_count_half_a_win_each_way():
    votes = games("x", "y", "a", 10) + games("x", "y", "tie", 6) + games("y", "x", "both_bad", 4)
    gap = bradley_terry(votes)["x"] - bradley_terry(votes)["y"]  # 10 + 5 of 20, p = 0.75
    assert gap == pytest.approx(_two_player_gap(15, 5), abs=1e-4)


def test_bt_is_finite_when_one_variant_wins_everything():
    bt = bradley_terry(games("x", "y", "a", 10))
    gap = bt["x"] - bt["y"]
    assert math.isfinite(gap) and gap == pytest.approx(_two_player_gap(10, 0), abs=1e-3)
    assert 800 < gap < 900  # the documented "about 850 points"
    assert bradley_terry(games("x", "y", "a", 10), prior_sd=200)["x"] - 1500 < gap / 2  # a stronger prior pulls in


def test_bt_recovers_known_strengths():
    truth = {"good": 200.0, "mid": 0.0, "bad": -200.0}
    bt = bradley_terry(synthetic(truth, 900, seed=11))
    assert sorted(bt, key=bt.get, reverse=True) == ["good", "mid", "bad"]
    for name, elo in truth.items():
        assert bt[name] == pytest.approx(1500 + elo, abs=60)
    assert sum(bt.values()) / 3 == pytest.approx(1500)


def test_bt_anchor_variant_sits_at_initial():
    votes = synthetic({"a": 100.0, "b": 0.0, "c": -50.0}, 200, seed=2)
    mean_anchored = bradley_terry(votes)
    anchored = bradley_terry(votes, anchor="b", initial=1000)
    assert anchored["b"] == 1000
    assert anchored["a"] - anchored["c"] == pytest.approx(mean_anchored["a"] - mean_anchored["c"])


def test_empty_votes_give_empty_results():
    assert online_elo([]) == bradley_terry([]) == bootstrap_ci([]) == {}
    assert win_rate_matrix([]).empty and leaderboard([]).empty


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    votes = synthetic({"a": 150.0, "b": 0.0, "c": -100.0}, 200, seed=4)
    bt = bradley_terry(votes)
    ci = bootstrap_ci(votes, n=300, seed=1)
    for name, (low, high) in ci.items():
        assert low < bt[name] < high
        assert high - low < 200
    assert bootstrap_ci(votes, n=300, seed=1) == ci
    assert bootstrap_ci(votes, n=300, seed=2) != ci
    narrow = bootstrap_ci(votes, n=300, seed=1, alpha=0.5)
    assert all(ci[k][0] < narrow[k][0] < narrow[k][1] < ci[k][1] for k in ci)


def test_bootstrap_replicates_equal_separate_fits_of_resampled_votes():
    votes = synthetic({"a": 150.0, "b": 0.0, "c": -100.0}, 60, seed=5) + [v("a", "c", "tie"), v("b", "c", "both_bad")]
    variants, ratings = _bootstrap_ratings(votes, 5, seed=9)
    draws = np.random.default_rng(9).integers(0, len(votes), size=(5, len(votes)))
    for b in range(5):
        separate = bradley_terry([votes[i] for i in draws[b]])
        assert ratings[b] == pytest.approx([separate[name] for name in variants], abs=1e-3)


def test_bootstrap_is_fast():
    votes = synthetic({"a": 150.0, "b": 0.0, "c": -100.0}, 200, seed=6)
    bootstrap_ci(votes, n=10)
    start = time.perf_counter()
    bootstrap_ci(votes, n=1000, seed=0)
    assert time.perf_counter() - start < 3.0  # ~0.1 s here; the budget is 1 s, slack for a loaded CI machine


# ---------------------------------------------------------------- tables and chart


def test_win_rate_matrix_hand_case():
    votes = [v("x", "y", "a"), v("y", "x", "b"), v("y", "x", "a"), v("x", "z", "tie"), v("z", "x", "both_bad")]
    m = win_rate_matrix(votes)
    assert list(m.index) == list(m.columns) == ["x", "y", "z"]
    assert m.loc["x", "y"] == pytest.approx(2 / 3) and m.loc["y", "x"] == pytest.approx(1 / 3)
    assert m.loc["x", "z"] == 0.5 and m.loc["z", "x"] == 0.5
    assert np.isnan(m.loc["y", "z"]) and np.isnan(m.loc["z", "y"]) and np.isnan(m.loc["x", "x"])


def test_leaderboard_columns_counts_and_order():
    votes = (games("x", "y", "a", 5) + games("y", "x", "a", 2) + games("z", "y", "a", 3)
             + [v("x", "z", "tie"), v("z", "x", "both_bad")])
    df = leaderboard(votes, n_boot=200, seed=0)
    assert tuple(df.columns) == LEADERBOARD_COLUMNS
    bt = bradley_terry(votes)
    assert list(df["variant"]) == sorted(bt, key=bt.get, reverse=True) and df["variant"].iloc[-1] == "y"
    assert df["bt"].is_monotonic_decreasing and df.set_index("variant")["bt"].to_dict() == pytest.approx(bt)
    row = df.set_index("variant").loc["x"]
    assert (row.games, row.wins, row.losses, row.ties) == (9, 5, 2, 2)
    row = df.set_index("variant").loc["y"]
    assert (row.games, row.wins, row.losses, row.ties) == (10, 2, 8, 0)
    assert (df["ci_low"] <= df["bt"]).all() and (df["bt"] <= df["ci_high"]).all()
    assert df.set_index("variant")["elo"].to_dict() == pytest.approx(online_elo(votes))
    assert leaderboard(votes, n_boot=0)["ci_low"].isna().all()


def test_ratings_chart_draws_one_point_per_variant_best_on_top():
    df = leaderboard(synthetic({"a": 150.0, "b": 0.0, "c": -100.0}, 120, seed=7), n_boot=100)
    fig = ratings_chart(df)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(df["variant"])[::-1]
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert ratings_chart(leaderboard([])).axes  # an empty arena still renders


# ---------------------------------------------------------------- judge

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
