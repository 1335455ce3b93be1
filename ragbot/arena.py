"""The Elo arena: blind pairwise votes between system variants, where they are stored, and what they add up to.

A vote compares two answers to one question, shown side by side without their variant names:
the left one is "A", the right one "B". :func:`assign_sides` picks the sides at random so a
voter cannot learn that one variant always sits on the left, and :func:`judge_pair` lets an LLM
vote too, asking twice with the answers swapped so that its preference for a position cancels.

Conventions shared by every rating function here:

* Votes are :class:`Vote` objects; ``vote`` is ``"a"`` (left wins), ``"b"`` (right wins),
  ``"tie"`` or ``"both_bad"``.
* ``"both_bad"`` counts as a tie for ratings. It says nothing about which variant is better,
  only that neither was good enough, and rating it as a tie is what public arenas do. The
  store keeps the distinction, so a "both bad" rate can still be reported from the votes.
* A tie is half a win for each side, in Elo (score 0.5) and in Bradley-Terry (half a win each way).
* Ratings are on the Elo scale: a ``scale`` (400) point gap means the higher one wins with odds
  ``base`` (10) to 1.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from ragbot.errors import MissingExtraError, RagbotError
from ragbot.settings import REFUSAL

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

VOTES = ("a", "b", "tie", "both_bad")
HUMAN = "human"
JUDGE_PREFIX = "judge:"
SCHEMA_VERSION = 1
CSV_COLUMNS = ("id", "created_at", "question", "variant_a", "variant_b", "answer_a", "answer_b", "vote", "voter",
               "meta")
LEADERBOARD_COLUMNS = ("variant", "elo", "bt", "ci_low", "ci_high", "games", "wins", "losses", "ties")

# Score of the LEFT variant for each vote value; the right one gets 1 minus it. both_bad is a tie (see module doc).
_LEFT_SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}

ChatFn = Callable[[list[dict[str, str]]], str]


# ---------------------------------------------------------------- votes and their storage


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
        where, args = "", ()
        if machine is not None:
            where, args = ("WHERE voter <> ?" if machine else "WHERE voter = ?"), (HUMAN,)
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
        where, args = "", ()
        if machine is not None:
            where, args = ("WHERE voter <> ?" if machine else "WHERE voter = ?"), (HUMAN,)
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


# ---------------------------------------------------------------- ratings


def online_elo(votes: Iterable[Vote], k: float = 32.0, initial: float = 1500.0, scale: float = 400.0,
               base: float = 10.0) -> dict[str, float]:
    """Classic Elo, updated one vote at a time in the order given (use the store's order: oldest first).

    Expected score of A against B is ``1 / (1 + base ** ((R_B - R_A) / scale))``; after the vote
    A gains ``k * (S_A - E_A)`` and B loses the same, so the mean rating stays ``initial``. A tie
    and ``both_bad`` score 0.5 each. Elo depends on the order of the votes and never settles
    (recent votes weigh more), which is why the leaderboard sorts by :func:`bradley_terry`.
    """
    _check_scale(scale, base)
    if k <= 0:
        raise ValueError(f"k ({k}) must be positive (32 is usual)")
    ratings: dict[str, float] = {}
    for v in votes:
        ra = ratings.setdefault(v.variant_a, float(initial))
        rb = ratings.setdefault(v.variant_b, float(initial))
        expected_a = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        delta = k * (v.left_score - expected_a)
        ratings[v.variant_a] = ra + delta
        ratings[v.variant_b] = rb - delta
    return ratings


def bradley_terry(votes: Iterable[Vote], *, initial: float = 1500.0, scale: float = 400.0, base: float = 10.0,
                  prior_sd: float = 1000.0, anchor: str | None = None) -> dict[str, float]:
    """Maximum-a-posteriori Bradley-Terry ratings on the Elo scale: the order-free answer to "who is better".

    The model: A beats B with probability ``1 / (1 + base ** ((R_B - R_A) / scale))``, the same
    curve Elo uses, fitted to all votes at once with ``scipy.optimize.minimize``. A tie (or
    both_bad) counts as half a win each way.

    A Gaussian prior with standard deviation ``prior_sd`` Elo points on every rating keeps the
    fit finite when a variant wins (or loses) every game, where the pure maximum-likelihood
    rating is infinite. With the default 1000 points it is weak: at 30 wins to 10 it moves the
    gap by about 0.4 points; a variant that wins 10 of 10 lands about 850 points ahead instead of
    infinitely far. It also keeps apart variants that never met any other (a disconnected
    comparison graph) at the anchor instead of anywhere.

    Only rating differences are identified, so the scale is anchored: the mean rating is
    ``initial`` (1500), or, when ``anchor`` names a variant (e.g. the baseline), that variant is
    ``initial`` and the others read as points above or below it.
    """
    variants, left, right, score = _encode(votes)
    if not variants:
        return {}
    wins = _win_counts(left, right, score, len(variants))[None]
    theta = _fit_bt(wins, _prior_precision(scale, base, prior_sd))
    ratings = _to_elo(theta, variants, initial, scale, base, anchor)[0]
    return dict(zip(variants, ratings.tolist()))


def bootstrap_ci(votes: Iterable[Vote], n: int = 1000, seed: int = 0, alpha: float = 0.05, *,
                 initial: float = 1500.0, scale: float = 400.0, base: float = 10.0, prior_sd: float = 1000.0,
                 anchor: str | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap ``(low, high)`` interval of each :func:`bradley_terry` rating (95% by default).

    Each of the ``n`` replicates resamples the votes with replacement and refits; the same
    ``seed`` gives the same intervals. It is fast because resampling only changes how often each
    vote counts: the replicates' win-count tables come from one matrix product, and all ``n``
    fits are solved as one separable problem in one ``scipy.optimize.minimize`` call
    (about 0.1 s for 200 votes, 3 variants, n=1000).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha ({alpha}) must be between 0 and 1 (0.05 gives a 95% interval)")
    variants, ratings = _bootstrap_ratings(votes, n, seed, initial=initial, scale=scale, base=base,
                                           prior_sd=prior_sd, anchor=anchor)
    if not variants:
        return {}
    low, high = np.quantile(ratings, [alpha / 2, 1 - alpha / 2], axis=0)
    return {v: (float(lo), float(hi)) for v, lo, hi in zip(variants, low, high)}


def win_rate_matrix(votes: Iterable[Vote]) -> pd.DataFrame:
    """How often the row variant beat the column variant (ties count half); NaN where the two never met.

    Rows and columns are the variants in alphabetical order; ``m.loc[x, y] + m.loc[y, x] == 1``
    wherever the pair met.
    """
    pd = _import_pandas()
    variants, left, right, score = _encode(votes)
    wins = _win_counts(left, right, score, len(variants))
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins / games, np.nan)
    return pd.DataFrame(rate, index=pd.Index(variants, name="winner"), columns=pd.Index(variants, name="loser"))


def leaderboard(votes: Iterable[Vote], k: float = 32.0, initial: float = 1500.0, n_boot: int = 1000,
                seed: int = 0, *, alpha: float = 0.05, prior_sd: float = 1000.0,
                anchor: str | None = None) -> pd.DataFrame:
    """One row per variant: online Elo, Bradley-Terry rating with its bootstrap interval, and the game counts.

    Columns :data:`LEADERBOARD_COLUMNS`, sorted by ``bt`` (best first). ``ties`` counts ties and
    both_bad votes. ``n_boot=0`` skips the bootstrap and leaves ``ci_low``/``ci_high`` NaN.
    """
    pd = _import_pandas()
    votes = list(votes)
    if n_boot < 0:
        raise ValueError(f"n_boot ({n_boot}) must be >= 0 (0 skips the confidence intervals)")
    elo = online_elo(votes, k=k, initial=initial)
    bt = bradley_terry(votes, initial=initial, prior_sd=prior_sd, anchor=anchor)
    ci = bootstrap_ci(votes, n=n_boot, seed=seed, alpha=alpha, initial=initial, prior_sd=prior_sd,
                      anchor=anchor) if n_boot else {}
    rows = []
    for name in bt:
        won = sum(1 for v in votes if (v.vote == "a" and v.variant_a == name) or (v.vote == "b" and v.variant_b == name))
        lost = sum(1 for v in votes if (v.vote == "b" and v.variant_a == name) or (v.vote == "a" and v.variant_b == name))
        tied = sum(1 for v in votes if v.left_score == 0.5 and name in (v.variant_a, v.variant_b))
        low, high = ci.get(name, (math.nan, math.nan))
        rows.append((name, elo[name], bt[name], low, high, won + lost + tied, won, lost, tied))
    df = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    return df.sort_values("bt", ascending=False, kind="stable").reset_index(drop=True)


def ratings_chart(leaderboard_df: pd.DataFrame) -> Figure:
    """Each variant's Bradley-Terry rating as a point with its interval as an error bar, best at the top.

    Built on a bare ``matplotlib.figure.Figure`` with the Agg canvas, not pyplot: pyplot keeps
    global figure state that leaks across Streamlit reruns and sessions. Show it with
    ``st.pyplot(fig)`` or save it with ``fig.savefig``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("matplotlib is not installed: pip install 'ragbot[ui]'") from None
    missing = {"variant", "bt", "ci_low", "ci_high"} - set(leaderboard_df.columns)
    if missing:
        raise ValueError(f"leaderboard_df lacks column(s) {', '.join(sorted(missing))}; pass leaderboard(votes)")
    df = leaderboard_df.sort_values("bt", ascending=True, kind="stable")  # barh-style: last row drawn at the top
    fig = Figure(figsize=(6.0, 0.5 * len(df) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if df.empty:
        ax.text(0.5, 0.5, "no votes yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    y = np.arange(len(df))
    bt = df["bt"].to_numpy(float)
    # An interval always contains its estimate, but clip so a NaN or odd interval never draws a negative bar.
    err = np.vstack([np.clip(bt - df["ci_low"].to_numpy(float), 0, None),
                     np.clip(df["ci_high"].to_numpy(float) - bt, 0, None)])
    ax.errorbar(bt, y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
    ax.set_yticks(y, df["variant"].astype(str).tolist())
    ax.set_xlabel("Bradley-Terry rating (Elo scale) with bootstrap interval")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.5 / max(len(df), 1))
    return fig


# ---------------------------------------------------------------- rating internals


def _check_scale(scale: float, base: float) -> None:
    if scale <= 0:
        raise ValueError(f"scale ({scale}) must be positive (400 is the Elo convention)")
    if base <= 1:
        raise ValueError(f"base ({base}) must be greater than 1 (10 is the Elo convention)")


def _prior_precision(scale: float, base: float, prior_sd: float) -> float:
    """The prior's precision in natural-log units of strength, where one unit is ``scale / ln(base)`` Elo points."""
    _check_scale(scale, base)
    if not prior_sd > 0:
        raise ValueError(f"prior_sd ({prior_sd}) must be positive Elo points (1000 is a weak prior)")
    return (scale / math.log(base) / prior_sd) ** 2


def _encode(votes: Iterable[Vote]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Variant names (sorted) and, per vote, the left and right variant's index and the left's score."""
    votes = list(votes)
    variants = sorted({v.variant_a for v in votes} | {v.variant_b for v in votes})
    index = {name: i for i, name in enumerate(variants)}
    left = np.array([index[v.variant_a] for v in votes], dtype=np.intp)
    right = np.array([index[v.variant_b] for v in votes], dtype=np.intp)
    score = np.array([v.left_score for v in votes], dtype=float)
    return variants, left, right, score


def _win_counts(left: np.ndarray, right: np.ndarray, score: np.ndarray, m: int) -> np.ndarray:
    """``W[i, j]``: wins of variant i over variant j, a tie adding a half to both ``W[i, j]`` and ``W[j, i]``."""
    wins = np.zeros((m, m))
    np.add.at(wins, (left, right), score)
    np.add.at(wins, (right, left), 1.0 - score)
    return wins


def _fit_bt(wins: np.ndarray, precision: float) -> np.ndarray:
    """Strengths ``theta`` (natural-log units) for ``r`` independent win tables ``wins`` of shape (r, m, m).

    Minimises, for every table at once, ``-sum W_ij log sigmoid(theta_i - theta_j) + precision/2 |theta|^2``.
    The tables share no parameters, so the sum of their objectives is minimised exactly where each
    one is, and L-BFGS stops only when every gradient component (every table's) is below ``gtol``.
    Starting from zero keeps every iterate's strengths summing to zero per table (the likelihood
    gradient sums to zero), so the flat direction that only the weak prior pins down never slows it.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    r, m, _ = wins.shape

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = x.reshape(r, m)
        diff = theta[:, :, None] - theta[:, None, :]
        nll = float(np.sum(wins * np.logaddexp(0.0, -diff)) + 0.5 * precision * np.sum(theta * theta))
        pull = wins * expit(-diff)  # d nll / d diff_ij = -pull_ij
        grad = pull.sum(axis=1) - pull.sum(axis=2) + precision * theta
        return nll, grad.ravel()

    result = minimize(objective, np.zeros(r * m), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-8, "ftol": 0.0, "maxiter": 10_000, "maxcor": 20})
    _, grad = objective(result.x)
    worst = float(np.max(np.abs(grad))) if grad.size else 0.0
    if worst > 1e-4:
        raise RuntimeError(f"Bradley-Terry fit did not converge ({result.message}; largest gradient {worst:.2g})")
    return result.x.reshape(r, m)


def _to_elo(theta: np.ndarray, variants: list[str], initial: float, scale: float, base: float,
            anchor: str | None) -> np.ndarray:
    """Strengths (r, m) to Elo-scale ratings, anchored on the mean or on the ``anchor`` variant."""
    if anchor is None:
        centre = theta.mean(axis=1, keepdims=True)
    elif anchor in variants:
        centre = theta[:, [variants.index(anchor)]]
    else:
        raise ValueError(f"anchor {anchor!r} is not a variant in these votes; use one of {', '.join(variants)} "
                         "or None to anchor the mean")
    return initial + (theta - centre) * (scale / math.log(base))


def _bootstrap_ratings(votes: Iterable[Vote], n: int, seed: int, *, initial: float = 1500.0, scale: float = 400.0,
                       base: float = 10.0, prior_sd: float = 1000.0,
                       anchor: str | None = None) -> tuple[list[str], np.ndarray]:
    """Variant names and the (n, m) Bradley-Terry ratings of ``n`` bootstrap replicates.

    Replicate ``b`` uses votes ``numpy.random.default_rng(seed).integers(0, len(votes), (n, len(votes)))[b]``.
    A variant that a replicate happens to leave out entirely sits at the prior's centre in it.
    """
    if n < 1:
        raise ValueError(f"n ({n}) must be at least 1 bootstrap replicate (1000 is usual)")
    variants, left, right, score = _encode(votes)
    if not variants:
        return variants, np.zeros((n, 0))
    m, n_votes = len(variants), len(score)
    draws = np.random.default_rng(seed).integers(0, n_votes, size=(n, n_votes))
    # times[b, v]: how often replicate b drew vote v
    times = np.bincount((draws + n_votes * np.arange(n)[:, None]).ravel(), minlength=n * n_votes)
    times = times.reshape(n, n_votes).astype(float)
    # what one drawing of each vote adds to each cell of the (flattened) win table
    per_vote = np.zeros((n_votes, m * m))
    rows = np.arange(n_votes)
    np.add.at(per_vote, (rows, left * m + right), score)
    np.add.at(per_vote, (rows, right * m + left), 1.0 - score)
    wins = (times @ per_vote).reshape(n, m, m)
    theta = _fit_bt(wins, _prior_precision(scale, base, prior_sd))
    return variants, _to_elo(theta, variants, initial, scale, base, anchor)


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise MissingExtraError("pandas is not installed: pip install 'ragbot[ui]'") from None
    return pandas


# ---------------------------------------------------------------- LLM judge

JUDGE_SYSTEM = (
    "你是一名公正、严谨的评审。你要依据给定的资料，比较同一个问题的两个回答，判断哪一个更有资料依据。"
    "评判标准：\n"
    "1. 回答中的事实必须能在资料中找到依据，编造或与资料矛盾的内容要扣分。\n"
    "2. 回答要切题，回答了问题。\n"
    f"3. 如果资料中没有能回答问题的内容，那么如实说明“{REFUSAL}”的回答更好。\n"
    "不要因为回答更长、或者出现的位置在前，就认为它更好。"
)


def judge_prompt(question: str, passages_text: str, answer_1: str, answer_2: str) -> list[dict[str, str]]:
    """Chat messages asking an LLM which of two answers the passages support better; it should reply 1, 2 or 平."""
    user = (
        f"资料：\n{passages_text}\n\n"
        f"问题：{question}\n\n"
        f"【回答1】\n{answer_1}\n\n"
        f"【回答2】\n{answer_2}\n\n"
        "哪个回答更有资料依据？只输出一个字：回答1更好输出 1，回答2更好输出 2，两者相当输出 平。"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_DECOR = re.compile(r"[\s*`'\"“”‘’「」『』【】\[\]()（）<>《》。.,，、!！:：;；]")
_TIE_WORDS = ("平局", "平手", "平", "tie", "相当", "一样好", "不相上下", "差不多")
# A verdict at the start, unless it begins a list of both answers ("回答1和回答2都…", "1、2都不好").
_LEADING = re.compile(r"^(?:最终)?(?:答案|回答|结论|判断|裁决|结果|verdict|answer)?(?:是|为)?(?:回答|答案)?([12])"
                      r"(?![0-9]|和|与|跟|及|或|回答|答案)")
_DIGIT = re.compile(r"(?<![0-9])([12])(?![0-9])")


def parse_verdict(text: str) -> Literal["1", "2", "tie"] | None:
    """The judge's verdict in ``text``: ``"1"``, ``"2"``, ``"tie"``, or None when it cannot be told.

    Small models rarely reply with the bare character they were asked for, so after folding
    full-width characters and dropping punctuation and markdown this accepts, in order: the bare
    verdict (``"1"``, ``"**2**"``, ``"平局"``); a verdict at the start (``"回答2更好，因为…"``,
    ``"结论：1"``); and otherwise the one verdict the text names (``"我认为回答1更有依据"``). Text that
    names both answers' numbers, or a number and a tie, without a verdict at the start is ambiguous: None.
    """
    core = _DECOR.sub("", unicodedata.normalize("NFKC", text or "")).lower()
    if not core:
        return None
    if core in ("1", "2"):
        return core  # type: ignore[return-value]
    if core in _TIE_WORDS:
        return "tie"
    lead = _LEADING.match(core)
    if lead:
        return lead.group(1)  # type: ignore[return-value]
    if core.startswith(_TIE_WORDS):
        return "tie"
    found = set(_DIGIT.findall(core)) | ({"tie"} if any(w in core for w in _TIE_WORDS) else set())
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]


def judge_pair(chat_fn: ChatFn, question: str, passages_text: str, answer_a: str, answer_b: str) -> str:
    """Ask ``chat_fn`` twice, with the answers in both orders, and return ``"a"``, ``"b"`` or ``"tie"``.

    LLM judges favour a position (often the first answer). Asking with A first and then with
    B first, and keeping a verdict only when both orders agree, cancels that bias: a judge
    that always says "1" produces one vote for each side, which is a tie. A reply that cannot
    be parsed is a tie too, so a confused judge never moves the ratings. ``chat_fn`` takes chat
    messages and returns the reply text, e.g. ``lambda m: model.generate(m, max_new_tokens=8, temperature=0.0)``.
    """
    first = parse_verdict(chat_fn(judge_prompt(question, passages_text, answer_a, answer_b)))
    second = parse_verdict(chat_fn(judge_prompt(question, passages_text, answer_b, answer_a)))
    as_sides = ({"1": "a", "2": "b", "tie": "tie"}.get(first or ""),
                {"1": "b", "2": "a", "tie": "tie"}.get(second or ""))
    return as_sides[0] if as_sides[0] is not None and as_sides[0] == as_sides[1] else "tie"
