"""Arena votes (ragbot/evaluation/arena/votes.py): the record, the SQLite store, the CSV export, blind sides."""

import csv
import io
import random
import sqlite3
import threading
import time

import numpy as np
import pytest

from ragbot.errors import RagbotError
from ragbot.evaluation.arena import CSV_COLUMNS, Vote, VoteStore, assign_sides


def v(left, right, vote, voter="human", **meta):
    return Vote(f"{left} 还是 {right}？", left, right, f"{left}的回答", f"{right}的回答", vote, voter, meta)


def games(left, right, vote, n):
    return [v(left, right, vote) for _ in range(n)]


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
