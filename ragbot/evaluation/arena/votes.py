"""Arena votes: what one blind comparison records, the SQLite file that keeps them, and their CSV export.

A vote compares two answers to one question, shown side by side without their variant names:
the left one is "A", the right one "B". :func:`assign_sides` picks the sides at random so a
voter cannot learn that one variant always sits on the left.

``vote`` is ``"a"`` (left wins), ``"b"`` (right wins), ``"tie"`` or ``"both_bad"``. The store keeps
``both_bad`` apart from ``tie`` so a "both bad" rate can be reported, although the ratings count
it as a tie (see :mod:`ragbot.evaluation.arena.ratings`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

from ragbot.errors import RagbotError

VOTES = ("a", "b", "tie", "both_bad")
HUMAN = "human"
JUDGE_PREFIX = "judge:"
SCHEMA_VERSION = 1
CSV_COLUMNS = ("id", "created_at", "question", "variant_a", "variant_b", "answer_a", "answer_b", "vote", "voter",
               "meta")

# Score of the LEFT variant for each vote value; the right one gets 1 minus it. both_bad is a tie (see module doc).
_LEFT_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass(frozen=True)
class Vote:
    """One blind comparison: ``variant_a`` was shown on the left as "A", ``variant_b`` on the right as "B".

    ``voter`` is ``"human"`` or ``"judge:<name>"`` (an LLM judge, e.g. ``"judge:qwen2.5-0.5b"``), so
    human and machine votes can be rated separately. ``meta`` is anything JSON can hold that
    helps to audit a vote later (passages shown, seed, settings). ``id`` and ``created_at`` are
    filled in by :meth:`VoteStore.add`; ``created_at`` given here is kept (for imports).

    >>> Vote("什么是LoRA？", "bm25", "hybrid", "答案甲", "答案乙", "b").left_score
    0.0
    """

    question: str
    variant_a: str
    variant_b: str
    answer_a: str
    answer_b: str
    vote: str
    voter: str = HUMAN
    meta: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.vote not in VOTES:
            raise ValueError(f"vote {self.vote!r} is not one of {', '.join(map(repr, VOTES))}")
        for name in ("variant_a", "variant_b"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} ({value!r}) must be a non-empty variant name")
        if self.variant_a == self.variant_b:
            raise ValueError(f"variant_a and variant_b are both {self.variant_a!r}; a vote compares two "
                             "different variants (use assign_sides to pick them)")
        if self.voter != HUMAN and not (self.voter.startswith(JUDGE_PREFIX) and len(self.voter) > len(JUDGE_PREFIX)):
            raise ValueError(f"voter {self.voter!r} must be {HUMAN!r} or {JUDGE_PREFIX!r} followed by the judge's "
                             f"name, e.g. 'judge:qwen2.5-0.5b'")
        try:
            json.dumps(dict(self.meta))
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta cannot be stored as JSON ({e}); keep it to str, numbers, lists and dicts") from None

    @property
    def machine(self) -> bool:
        """Whether an LLM judge, not a person, cast this vote."""
        return self.voter != HUMAN

    @property
    def left_score(self) -> float:
        """What ``variant_a`` scored: 1 for a win, 0 for a loss, 0.5 for a tie or both_bad."""
        return _LEFT_SCORE[self.vote]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,               -- UTC, ISO 8601
    question   TEXT NOT NULL,
    variant_a  TEXT NOT NULL,               -- shown on the left as "A"
    variant_b  TEXT NOT NULL,               -- shown on the right as "B"
    answer_a   TEXT NOT NULL,
    answer_b   TEXT NOT NULL,
    vote       TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'both_bad')),
    voter      TEXT NOT NULL,               -- 'human' or 'judge:<name>'
    meta       TEXT,                        -- JSON object, NULL when empty
    CHECK (variant_a <> variant_b)
);
CREATE INDEX IF NOT EXISTS votes_voter ON votes (voter);
"""


class VoteStore:
    """Votes in one SQLite file, in WAL mode, each committed the moment it is added.

    Every call opens its own short-lived connection rather than sharing one behind a lock.
    Streamlit runs each browser session in its own thread, and the same file may also be open
    in a second app process or a script; a lock would only serialise one process, while
    SQLite's file locking serialises them all. In WAL mode readers never block the writer and
    the writer never blocks readers, and ``timeout`` makes a second writer wait instead of
    failing with "database is locked". Opening a connection costs well under a millisecond,
    nothing next to a click. Each write is its own committed transaction, so a vote survives a
    crash or restart of the app the moment :meth:`add` returns.

    The file and its tables are created when the store is opened; a file written by a newer
    ragbot (a higher schema version) is refused rather than misread.
    """

    def __init__(self, path: Path | str, *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so what is one transaction is visible here.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def _init_schema(self) -> None:
        with self._connect() as conn:
            # WAL is a property of the file: set once, every later connection uses it.
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RagbotError(f"could not put the vote database {self.path} in WAL mode (got {mode!r}); "
                                  "keep it on a local disk, not a network or in-memory file system")
            conn.execute("BEGIN IMMEDIATE")  # two sessions opening a new file at once must not both insert a version
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                if row[0] is None:
                    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if row[0] is not None and row[0] > SCHEMA_VERSION:
            raise RagbotError(f"vote database {self.path} has schema version {row[0]}, newer than this ragbot "
                              f"understands ({SCHEMA_VERSION}); upgrade ragbot or choose another vote file")

    def add(self, vote: Vote) -> int:
        """Store ``vote`` (committed before returning) and return its id."""
        if not isinstance(vote, Vote):
            raise TypeError(f"add() takes a Vote, not {type(vote).__name__}")
        created = vote.created_at or datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        meta = json.dumps(dict(vote.meta), ensure_ascii=False) if vote.meta else None
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO votes (created_at, question, variant_a, variant_b, answer_a, answer_b, vote, voter, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (created, vote.question, vote.variant_a, vote.variant_b, vote.answer_a, vote.answer_b, vote.vote,
                 vote.voter, meta),
            )  # autocommit mode: the INSERT is committed when execute returns
            return int(cur.lastrowid)

    def list(self, machine: bool | None = None) -> list[Vote]:
        """All votes in the order they were cast; ``machine=False`` only human votes, ``True`` only LLM-judge votes."""
        where, args = _voter_filter(machine)
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, created_at, question, variant_a, variant_b, answer_a, answer_b, vote, voter, meta "
                f"FROM votes {where} ORDER BY id", args,
            ).fetchall()
        return [Vote(question=q, variant_a=va, variant_b=vb, answer_a=aa, answer_b=ab, vote=v, voter=who,
                     meta=json.loads(meta) if meta else {}, id=i, created_at=at)
                for i, at, q, va, vb, aa, ab, v, who, meta in rows]

    def count(self, machine: bool | None = None) -> int:
        """How many votes are stored (filtered like :meth:`list`)."""
        where, args = _voter_filter(machine)
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM votes {where}", args).fetchone()[0])

    def export_csv(self, path_or_buffer: Path | str | IO[str], machine: bool | None = None) -> int:
        """Write the votes as CSV (columns :data:`CSV_COLUMNS`, ``meta`` as JSON) and return how many rows.

        A path is written as UTF-8 with a byte-order mark, so Excel shows the Chinese text
        correctly; a text buffer (``io.StringIO`` for a download button) gets the plain text.
        """
        votes = self.list(machine)
        if isinstance(path_or_buffer, (str, Path)):
            with open(path_or_buffer, "w", encoding="utf-8-sig", newline="") as f:
                return _write_csv(votes, f)
        return _write_csv(votes, path_or_buffer)


def _voter_filter(machine: bool | None) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause and its arguments for :meth:`VoteStore.list` and :meth:`VoteStore.count`."""
    if machine is None:
        return "", ()
    return ("WHERE voter <> ?" if machine else "WHERE voter = ?"), (HUMAN,)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell that a spreadsheet shows as text, never runs as a formula.

    Questions and answers come from users, documents and models: a cell starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return is read by Excel or LibreOffice as a formula
    (``=HYPERLINK(...)``, DDE), so it gets a leading ``'`` (the usual defence against CSV injection).

    >>> csv_cell("=1+1"), csv_cell("LoRA"), csv_cell(3)
    ("'=1+1", 'LoRA', '3')
    """
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write_csv(votes: Sequence[Vote], f: IO[str]) -> int:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for v in votes:
        writer.writerow([csv_cell(x) for x in (
            v.id, v.created_at, v.question, v.variant_a, v.variant_b, v.answer_a, v.answer_b, v.vote, v.voter,
            json.dumps(dict(v.meta), ensure_ascii=False) if v.meta else "")])
    return len(votes)


class _Random(Protocol):
    def random(self) -> float: ...


def assign_sides(variant_x: str, variant_y: str, rng: _Random) -> tuple[str, str]:
    """``(left, right)``: the two variants in random order, so neither always sits on the same side.

    ``rng`` is anything with a ``random()`` method returning a float in [0, 1):
    ``numpy.random.default_rng()`` or ``random.Random()``; pass a seeded one to reproduce a session.
    """
    if variant_x == variant_y:
        raise ValueError(f"both variants are {variant_x!r}; an arena round needs two different variants")
    return (variant_x, variant_y) if rng.random() < 0.5 else (variant_y, variant_x)
