"""Presenting evaluation results: the terminal comparison table, charts, and the run history in SQLite."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

# metric → True when higher is better (used to mark the best variant)
TABLE_METRICS: dict[str, bool] = {
    "hit@1": True, "hit@3": True, "hit@5": True, "hit@10": True, "mrr": True,
    "rouge1_char": True, "rouge2_char": True, "rougeL_char": True, "rougeL_char_answerable": True,
    "rouge1_word": True, "rougeL_word": True,
    "refusal_precision": True, "refusal_recall": True, "false_refusal_rate": False,
    "citation_precision": True, "answers_with_valid_citation": True, "invalid_markers": False,
    "retrieval_ms_p50": False, "retrieval_ms_p95": False, "first_token_ms_p50": False, "total_ms_p50": False,
    "total_ms_p95": False, "errors": False,
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Metrics as rows, variants as columns; ``*`` marks the best variant of each row (ties all marked)."""
    variants = list(summaries)
    rows = [["metric", *variants]]
    for metric, higher in TABLE_METRICS.items():
        values = [summaries[v].get(metric) for v in variants]
        present = [x for x in values if x is not None]
        if not present:
            continue
        best = max(present) if higher else min(present)
        marked = len(variants) > 1 and len(set(present)) > 1
        rows.append([metric, *(_fmt(x) + ("*" if marked and x == best else "") for x in values)])
    widths = [max(_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n(* best per metric)"


def _width(text: str) -> int:
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def save_charts(summaries: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Bar charts: quality metrics per variant, and latency per stage (p50 with p95 whiskers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summaries)
    paths = []
    quality = [m for m in ("hit@5", "mrr", "rougeL_char", "refusal_recall", "false_refusal_rate", "citation_precision")
               if any(summaries[v].get(m) is not None for v in variants)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(quality)), 4))
    width = 0.8 / max(1, len(variants))
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
    plt.close(fig)

    stages = ["retrieval_ms", "first_token_ms", "total_ms"]
    fig, ax = plt.subplots(figsize=(7, 4))
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
    plt.close(fig)
    return paths


def git_commit(cwd: Path | None = None) -> str:
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

    def record(self, run_id: str, commit: str, shash: str, qa_file: str, summaries: dict[str, dict[str, Any]],
               out_dir: str) -> None:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        with self._connect() as db:
            db.executemany("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)", [
                (run_id, now, commit, shash, qa_file, v, s.get("questions", 0), json.dumps(s), out_dir)
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
        head = f"{'run':<16} {'when':<25} {'commit':<8} {'variant':<12} {'n':>3} {'hit@5':>6} {'MRR':>6} {'RL-char':>7} {'refR':>5} {'FRR':>5} {'cite':>5}"
        out = [head, "-" * len(head)]
        for r in rows:
            m = r["metrics"]
            cols = [_fmt(m.get(k)) for k in ("hit@5", "mrr", "rougeL_char", "refusal_recall", "false_refusal_rate",
                                             "citation_precision")]
            out.append(f"{r['run_id']:<16} {r['created_at']:<25} {r['git_commit']:<8} {r['variant']:<12} "
                       f"{r['questions']:>3} {cols[0]:>6} {cols[1]:>6} {cols[2]:>7} {cols[3]:>5} {cols[4]:>5} {cols[5]:>5}")
        return "\n".join(out)
