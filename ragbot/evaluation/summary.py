"""The metrics an evaluation reports, defined once: their names, labels, direction and grouping.

Every table, chart and history view (``ragbot eval``, the web app's ROUGE tab, ``--history``) reads
:data:`METRICS` and a :class:`Summary`; nothing else spells a metric name. A name that is not here
raises :class:`KeyError` naming the known ones, so a typo fails loudly instead of showing "n/a".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ROUGE_KEYS = ("rouge1_char", "rouge2_char", "rougeL_char", "rouge1_word", "rouge2_word", "rougeL_word")
HIT_KS = (1, 3, 5, 10)
LATENCY_STAGES = ("retrieval_ms", "first_token_ms", "generate_ms", "total_ms")


@dataclass(frozen=True)
class Metric:
    """One reported number: ``key`` as written in summary.json and the history, a Chinese ``label`` for the web
    app, whether ``higher`` is better (marks the best variant), and whether it is a ``count`` (shown whole)."""

    key: str
    label: str
    higher: bool = True
    count: bool = False


def _metrics() -> dict[str, Metric]:
    out = [Metric("questions", "题数", count=True), Metric("errors", "出错题数", higher=False, count=True)]
    out += [Metric(f"hit@{k}", f"命中@{k}") for k in HIT_KS] + [Metric("mrr", "MRR")]
    names = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
    for key in ROUGE_KEYS:
        kind, unit = key.split("_")
        label = f"{names[kind]}（{'字' if unit == 'char' else '词'}"
        out += [Metric(key, label + "）"), Metric(key + "_answerable", label + "，可答题）")]
    out += [Metric("refusal_precision", "拒答精确率"), Metric("refusal_recall", "拒答召回率"),
            Metric("false_refusal_rate", "误拒率", higher=False),
            Metric("citation_precision", "引用精确率"), Metric("answers_with_valid_citation", "有效引用占比"),
            Metric("supported_sentences", "有据句子占比"),
            Metric("invalid_markers", "无效引用标记", higher=False, count=True),
            Metric("aligned_citations", "补充的引用", count=True),
            Metric("repointed_citations", "改正出处的引用", count=True)]
    stage = {"retrieval_ms": "检索", "first_token_ms": "首字", "generate_ms": "生成", "total_ms": "总耗时"}
    for key in LATENCY_STAGES:
        out += [Metric(f"{key}_{p}", f"{stage[key]} {p} (ms)", higher=False) for p in ("p50", "p95")]
    return {m.key: m for m in out}


METRICS: dict[str, Metric] = _metrics()
"""Every metric, in report order."""

TABLE = ("hit@1", "hit@3", "hit@5", "hit@10", "mrr", "rouge1_char", "rouge2_char", "rougeL_char",
         "rougeL_char_answerable", "rouge1_word", "rougeL_word", "refusal_precision", "refusal_recall",
         "false_refusal_rate", "citation_precision", "answers_with_valid_citation", "supported_sentences",
         "invalid_markers", "retrieval_ms_p50", "retrieval_ms_p95", "first_token_ms_p50", "total_ms_p50",
         "total_ms_p95", "errors")
"""The rows of the comparison table (terminal and web app), in order."""

CHART_GROUPS = {
    "ROUGE": ("rouge1_char", "rouge2_char", "rougeL_char", "rougeL_word"),
    "检索": ("hit@1", "hit@3", "hit@5", "mrr"),
    "拒答与引用": ("refusal_precision", "refusal_recall", "false_refusal_rate", "citation_precision",
              "supported_sentences"),
    "延迟 (ms)": ("retrieval_ms_p50", "first_token_ms_p50", "total_ms_p50"),
}
QUALITY_CHART = ("hit@5", "mrr", "rougeL_char", "refusal_recall", "false_refusal_rate", "citation_precision",
                 "supported_sentences")
HISTORY = ("hit@5", "mrr", "rougeL_char", "refusal_recall", "false_refusal_rate", "citation_precision",
           "supported_sentences")
"""The columns of ``ragbot eval --history`` (the web app's list of past runs adds ``rouge1_char`` and latency)."""
HISTORY_UI = ("rougeL_char", "rouge1_char", "hit@5", "mrr", "refusal_recall", "citation_precision",
              "supported_sentences", "total_ms_p50")


def metric(key: str) -> Metric:
    """The :class:`Metric` named ``key``; an unknown name raises :class:`KeyError` listing the known ones."""
    try:
        return METRICS[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(METRICS)}") from None


for _group in (TABLE, QUALITY_CHART, HISTORY, HISTORY_UI, *CHART_GROUPS.values()):
    for _key in _group:
        metric(_key)  # every list above names real metrics (checked at import)


@dataclass(frozen=True)
class Summary(Mapping[str, Any]):
    """One variant's results: a read-only mapping from metric key (:data:`METRICS`) to value.

    A rate with nothing to count over is None ("n/a"). ``summary["hit@5"]`` and ``summary.get("mrr")``
    accept known metric names only (a typo raises); iteration gives the metrics present, in report order.
    """

    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.values:
            metric(key)

    def __getitem__(self, key: str) -> Any:
        metric(key)
        return self.values.get(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        value = self[key]
        return default if value is None else value

    def __iter__(self) -> Iterator[str]:
        return (k for k in METRICS if k in self.values)

    def __len__(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {k: self.values[k] for k in self}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """A summary read back from summary.json or the history (keys this version does not know are dropped)."""
        return cls({k: v for k, v in d.items() if k in METRICS})
