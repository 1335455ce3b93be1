"""How an evaluation runs, in one place: :func:`evaluate` is what ``ragbot eval`` and the web app's ROUGE tab call.

Every variant answers the same questions; retrieval, answers, refusals, citations and latency are
measured per question (:class:`Record`) and summarised per variant (:class:`~ragbot.evaluation.summary.Summary`).
Models are shared between variants where their settings agree (:class:`~ragbot.models.ModelCache`), so
adding a variant costs its answers only. A run writes records.jsonl, summary.json, summary.csv and charts
to its folder and one row per variant to the history database (``ragbot eval --history``).
"""

from __future__ import annotations

import datetime as dt
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ragbot.errors import ConfigError
from ragbot.evaluation import metrics as M
from ragbot.evaluation.summary import HIT_KS, LATENCY_STAGES, ROUGE_KEYS, Summary
from ragbot.prompt import shown_passages
from ragbot.settings import Settings
from ragbot.variants import Variant, variant_index_path

RETRIEVAL_DEPTH = 10


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    answer: str
    evidence: str = ""
    source: str = ""
    type: str = ""

    @property
    def answerable(self) -> bool:
        return self.type != "unanswerable"


def load_qa(path: Path, limit: int | None = None) -> list[QAItem]:
    """Read a Q&A JSONL file (``id, question, answer, evidence, source, type``), naming the bad line when one is off."""
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item = QAItem(str(row["id"]), row["question"], row["answer"], row.get("evidence", "") or "",
                              row.get("source", "") or "", row.get("type", "") or "")
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{path}:{n} is not a Q&A record ({type(e).__name__}: {e}); "
                                  "each line needs id, question, answer (and evidence, source, type)") from None
            if item.answerable and not item.evidence.strip():
                raise ConfigError(f"{path}:{n} (id {item.id}) is answerable but has no evidence; "
                                  "set type to 'unanswerable' or add the verbatim evidence")
            items.append(item)
    if not items:
        raise ConfigError(f"{path} holds no questions")
    return items[:limit] if limit else items


@dataclass(frozen=True)
class Record:
    """One question answered by one variant: the question's reference data, the answer as
    :meth:`Answer.to_dict <ragbot.types.Answer.to_dict>` gives it, and what was measured on it."""

    variant: str
    id: str
    question: str
    type: str
    reference: str
    evidence: str
    answer: str = ""
    refused: bool = False
    refused_by: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    hits: list[dict[str, Any]] = field(default_factory=list)  # the passages the LLM was given
    raw_answer: str = ""  # the model's text before citation cleaning, alignment and re-pointing
    invalid_citation_markers: int = 0
    aligned_citations: int = 0
    repointed_citations: int = 0
    finish_reason: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)  # chunk ids retrieved, RETRIEVAL_DEPTH deep
    evidence_rank: int | None = None
    rouge: dict[str, float] = field(default_factory=dict)
    # share of the answer's sentences its passages support (metrics.supported_sentences, on the passages as the
    # LLM saw them, which the record does not keep); None for a refusal, and in records of older versions
    supported_sentences: float | None = None
    error: str = ""

    @property
    def answerable(self) -> bool:
        return self.type != "unanswerable"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """A record read back from records.jsonl (fields of older versions are mapped or dropped)."""
        d = dict(d)
        if "invalid_markers" in d:
            d.setdefault("invalid_citation_markers", d.pop("invalid_markers"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def summarize(records: Sequence[Record]) -> Summary:
    """All metrics of one variant (rates are None where undefined, e.g. no unanswerable questions)."""
    ok = [r for r in records if not r.error]
    answerable = [r for r in ok if r.answerable]
    out: dict[str, Any] = {"questions": len(records), "errors": len(records) - len(ok)}
    retrieved = [r for r in answerable if r.ranking]
    if retrieved:
        for k in HIT_KS:
            out[f"hit@{k}"] = M.hit_at_k([r.evidence_rank for r in retrieved], k)
        out["mrr"] = M.mrr([r.evidence_rank for r in retrieved])
    for key in ROUGE_KEYS:
        values = [r.rouge[key] for r in ok if key in r.rouge]
        out[key] = sum(values) / len(values) if values else None
        ans = [r.rouge[key] for r in answerable if key in r.rouge]
        out[key + "_answerable"] = sum(ans) / len(ans) if ans else None
    refusal = M.refusal_metrics([r.refused for r in ok], [not r.answerable for r in ok])
    out.update({"refusal_precision": refusal.precision, "refusal_recall": refusal.recall,
                "false_refusal_rate": refusal.false_refusal_rate})
    cites = M.citation_metrics([M.CitationRecord(tuple(c["text"] for c in r.citations), r.evidence,
                                                 r.invalid_citation_markers, r.answerable) for r in ok])
    out.update({"citation_precision": cites.citation_precision, "answers_with_valid_citation": cites.supported_rate,
                "invalid_markers": cites.invalid_markers,
                "aligned_citations": sum(r.aligned_citations for r in ok),
                "repointed_citations": sum(r.repointed_citations for r in ok)})
    supported = [r.supported_sentences for r in ok if r.supported_sentences is not None]
    out["supported_sentences"] = sum(supported) / len(supported) if supported else None
    for key in LATENCY_STAGES:
        values = [r.timings_ms[key] for r in ok if key in r.timings_ms]
        p = M.percentiles(values)
        out[f"{key}_p50"], out[f"{key}_p95"] = p["p50"], p["p95"]
    return Summary(out)


PipelineFactory = Callable[[Settings, bool], Any]


class EvalRunner:
    """``EvalRunner(settings, variants, pipeline_factory).run(items)`` → records per variant.

    ``pipeline_factory(settings, retrieval)`` builds a ready pipeline (:meth:`ModelCache.pipeline
    <ragbot.models.ModelCache.pipeline>`; tests pass fakes through a fake-mode cache).
    """

    def __init__(self, settings: Settings, variants: Sequence[Variant], pipeline_factory: PipelineFactory,
                 progress: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.variants = list(variants)
        self.pipeline_factory = pipeline_factory
        self.progress = progress or (lambda it, **kw: it)

    def run(self, items: Sequence[QAItem]) -> dict[str, list[Record]]:
        results: dict[str, list[Record]] = {}
        for variant in self.variants:
            vs = variant.settings(self.settings)
            if variant.retrieval:
                vs = vs.replace(index_dir=variant_index_path(self.settings, vs))
            pipeline = self.pipeline_factory(vs, variant.retrieval)
            results[variant.name] = [self._one(variant.name, pipeline, item, vs)
                                     for item in self.progress(items, desc=variant.name, unit="q")]
        return results

    @staticmethod
    def _one(variant: str, pipeline: Any, item: QAItem, vs: Settings) -> Record:
        base = dict(variant=variant, id=item.id, type=item.type, reference=item.answer, evidence=item.evidence)
        try:
            retrieval = pipeline.retrieve(item.question, max(RETRIEVAL_DEPTH, vs.top_k))
            answer = pipeline.ask(item.question, vs.top_k, retrieval=retrieval)
        except Exception as e:  # one broken question must not end a long evaluation
            return Record(**base, question=item.question,
                          error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        ranking = retrieval.final[:RETRIEVAL_DEPTH]
        rank = M.first_hit_rank([h.chunk.text for h in ranking], item.evidence) if item.answerable and ranking else None
        shown = shown_passages(answer.passages, answer.question, vs.prompt, vs.max_passage_chars)
        return Record(**base, **answer.to_dict(), ranking=[h.chunk.id for h in ranking], evidence_rank=rank,
                      rouge=M.rouge_scores(item.answer, answer.text),
                      supported_sentences=M.supported_sentences(answer.text, shown))


@dataclass(frozen=True)
class EvalRun:
    """A finished evaluation: where it was written, its summary per variant, its records, and how it ran."""

    run_id: str
    out_dir: Path
    summaries: dict[str, Summary]
    records: list[Record]
    meta: dict[str, Any]
    built_indexes: tuple[Path, ...] = ()  # variant indexes this run had to build first

    @property
    def errors(self) -> int:
        return sum(s.get("errors", 0) for s in self.summaries.values())


def new_run_id(eval_root: Path) -> str:
    """A run id from the time (``20261206-141503``), made unique among the runs in ``eval_root``."""
    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    n, candidate = 1, run_id
    while (eval_root / candidate).exists():
        n += 1
        candidate = f"{run_id}-{n}"
    return candidate


def evaluate(settings: Settings, variants: Sequence[Variant], items: Sequence[QAItem], *, qa_file: str,
             models: Any = None, progress: Callable[..., Any] | None = None, out_dir: Path | None = None,
             source: str = "cli", config_file: Path | None = None) -> EvalRun:
    """Build the variant indexes that are missing, answer every question with every variant, write the outputs
    to ``out_dir`` (default ``<home>/eval/<run id>``) and record the run in ``<home>/eval_history.db``.

    ``models`` is a :class:`~ragbot.models.ModelCache` (the web app passes its own, so nothing loads twice);
    ``source`` ("cli", "ui") is kept in the run's metadata.
    """
    from ragbot.evaluation.report import History, git_commit, settings_hash
    from ragbot.kb import KnowledgeBase
    from ragbot.models import ModelCache

    models = models if models is not None else ModelCache()
    kb = KnowledgeBase(settings, embedder_for=models.embedder, progress=progress, config_file=config_file)
    built = kb.ensure_variant_indexes(variants)
    results = EvalRunner(settings, variants, models.pipeline, progress).run(items)
    summaries = {name: summarize(records) for name, records in results.items()}
    eval_root = settings.home / "eval"
    run_id = new_run_id(eval_root)
    out_dir = Path(out_dir) if out_dir is not None else eval_root / run_id
    meta = {"run_id": run_id, "qa_file": qa_file, "questions": len(items), "git_commit": git_commit(),
            "settings": settings.to_dict(), "variants": {v.name: v.overrides for v in variants}, "source": source}
    records = [r for rs in results.values() for r in rs]
    write_outputs(records, summaries, out_dir, meta)
    History(settings.home / "eval_history.db").record(run_id, meta["git_commit"], settings_hash(meta), qa_file,
                                                      summaries, str(out_dir))
    return EvalRun(run_id, out_dir, summaries, records, meta, tuple(built))


def load_run(out_dir: Path) -> EvalRun:
    """A finished run from its output folder (``summary.json`` and ``records.jsonl``)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    records = [Record.from_dict(json.loads(line))
               for line in (out_dir / "records.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    meta = summary.get("meta", {})
    return EvalRun(meta.get("run_id", out_dir.name), out_dir,
                   {name: Summary.from_dict(s) for name, s in summary["variants"].items()}, records, meta)


def write_outputs(records: Sequence[Record], summaries: dict[str, Summary], out_dir: Path,
                  meta: dict[str, Any]) -> list[Path]:
    """records.jsonl, summary.json, summary.csv and charts (when matplotlib is installed)."""
    import csv

    from ragbot.evaluation.summary import METRICS

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "records.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    (out_dir / "summary.json").write_text(json.dumps({"meta": meta, "variants": {v: s.to_dict() for v, s in summaries.items()}},
                                                     ensure_ascii=False, indent=2), encoding="utf-8")
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", *summaries])
        for key in METRICS:
            if any(key in s for s in summaries.values()):
                writer.writerow([key, *(summaries[v][key] for v in summaries)])
    written = [out_dir / "records.jsonl", out_dir / "summary.json", out_dir / "summary.csv"]
    from ragbot.evaluation.report import save_charts

    try:
        return written + save_charts(summaries, out_dir)
    except ImportError:  # matplotlib is in the eval and ui extras
        return written
