"""Presenting evaluation results: the terminal comparison table, charts, and the run history in SQLite."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ragbot.evaluation.summary import HISTORY, LATENCY_STAGES, QUALITY_CHART, TABLE, metric


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def comparison_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Metrics as rows, variants as columns; ``*`` marks the best variant of each row (ties all marked)."""
    variants = list(summaries)
    rows = [["metric", *variants]]
    for key in TABLE:
        values = [summaries[v].get(key) for v in variants]
        present = [x for x in values if x is not None]
        if not present:
            continue
        best = max(present) if metric(key).higher else min(present)
        marked = len(variants) > 1 and len(set(present)) > 1
        rows.append([key, *(_fmt(x) + ("*" if marked and x == best else "") for x in values)])
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(* best per metric)"


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def save_charts(summaries: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """Bar charts: quality metrics per variant, and latency per stage (p50 with p95 whiskers).

    Built on :class:`matplotlib.figure.Figure` directly, not pyplot: pyplot keeps global state that is not
    thread-safe, and the web app runs evaluations in its server's threads.
    """
    import numpy as np
    from matplotlib.figure import Figure

    variants = list(summaries)
    width = 0.8 / max(1, len(variants))
    paths = []
    quality = [m for m in QUALITY_CHART if any(summaries[v].get(m) is not None for v in variants)]
    fig = Figure(figsize=(max(6, 1.6 * len(quality)), 4))
    ax = fig.subplots()
    x = np.arange(len(quality))
    for i, v in enumerate(variants):
        ax.bar(x + i * width, [summaries[v].get(m) or 0 for m in quality], width, label=v)
    ax.set_xticks(x + width * (len(variants) - 1) / 2, quality, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_title("Quality by variant")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "metrics.png")
    fig.savefig(paths[-1], dpi=110)

    stages = [s for s in LATENCY_STAGES if s != "generate_ms"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = np.arange(len(stages))
    for i, v in enumerate(variants):
        p50 = [summaries[v].get(f"{s}_p50") or 0 for s in stages]
        p95 = [summaries[v].get(f"{s}_p95") or 0 for s in stages]
        ax.bar(x + i * width, p50, width, yerr=[[0] * len(stages), [b - a for a, b in zip(p50, p95)]], capsize=3, label=v)
    ax.set_xticks(x + width * (len(variants) - 1) / 2, stages)
    ax.set_ylabel("ms (bar p50, whisker p95)")
    ax.set_title("Latency by stage")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    return paths


def git_commit(cwd: Path | None = None) -> str:
    """The short commit of the checkout ragbot runs from (``cwd`` defaults to this package's folder, so the web app
    and the CLI record the same commit wherever they were started), or "unknown"."""
    cwd = cwd if cwd is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def settings_hash(settings_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings_dict, sort_keys=True, default=str).encode()).hexdigest()[:12]


class History:
    """Evaluation runs in SQLite, so regressions can be listed over time (``ragbot eval --history``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS runs (
                run_id TEXT, created_at TEXT, git_commit TEXT, settings_hash TEXT, qa_file TEXT,
                variant TEXT, questions INTEGER, metrics TEXT, out_dir TEXT)""")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def record(self, run_id: str, commit: str, shash: str, qa_file: str, summaries: Mapping[str, Mapping[str, Any]],
               out_dir: str) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with self._connect() as db:
            db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)", [
                (run_id, now, commit, shash, qa_file, v, s.get("questions", 0), json.dumps(dict(s)), out_dir)
                for v, s in summaries.items()])

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT run_id, created_at, git_commit, settings_hash, qa_file, variant, questions, "
                              "metrics, out_dir FROM runs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        keys = ("run_id", "created_at", "git_commit", "settings_hash", "qa_file", "variant", "questions", "metrics",
                "out_dir")
        return [{**dict(zip(keys, r)), "metrics": json.loads(r[7])} for r in rows]

    def table(self, limit: int = 30) -> str:
        rows = self.runs(limit)
        if not rows:
            return f"no evaluation runs recorded in {self.path}"
        widths = [max(6, len(k)) for k in HISTORY]
        head = f"{'run':<16} {'when':<25} {'commit':<8} {'variant':<12} {'n':>3} " + " ".join(
            f"{k:>{w}}" for k, w in zip(HISTORY, widths))
        out = [head, "-" * len(head)]
        for r in rows:
            cols = " ".join(f"{_fmt(r['metrics'].get(k)):>{w}}" for k, w in zip(HISTORY, widths))
            out.append(f"{r['run_id']:<16} {r['created_at']:<25} {r['git_commit']:<8} {r['variant']:<12} "
                       f"{r['questions']:>3} {cols}")
        return "\n".join(out)
