"""Arena ratings (ragbot/evaluation/arena/ratings.py): online Elo, Bradley-Terry with bootstrap intervals, win rates."""

import math
import time

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit

from ragbot.evaluation.arena import (
    LEADERBOARD_COLUMNS,
    Vote,
    bootstrap_ci,
    bradley_terry,
    leaderboard,
    online_elo,
    win_rate_matrix,
)
from ragbot.evaluation.arena.ratings import _bootstrap_ratings

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
