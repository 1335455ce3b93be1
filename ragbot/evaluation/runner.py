"""``ragbot eval``: run variants side by side on held-out Q&A and measure retrieval, answers, refusals, citations, latency.

Every variant answers the same questions. Models are shared between variants where their
settings agree (one embedder, one LLM per adapter), so adding a variant costs its answers only.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import ConfigError
from ragbot.evaluation import metrics as M
from ragbot.settings import Settings
from ragbot.variants import Variant, variant_index_path

RETRIEVAL_DEPTH = 10
LATENCY_KEYS = ("retrieval_ms", "first_token_ms", "generate_ms", "total_ms")


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
    """One question answered by one variant."""

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
    hits: list[dict[str, Any]] = field(default_factory=list)
    evidence_rank: int | None = None
    invalid_markers: int = 0
    aligned_citations: int = 0
    repointed_citations: int = 0
    raw_answer: str = ""  # the model's text before citation cleaning, alignment and re-pointing
    rouge: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str = ""


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """All metrics of one variant (rates are None where undefined, e.g. no unanswerable questions)."""
    ok = [r for r in records if not r.error]
    answerable = [r for r in ok if r.type != "unanswerable"]
    out: dict[str, Any] = {"questions": len(records), "errors": len(records) - len(ok)}
    retrieved = [r for r in answerable if r.hits]
    if retrieved:
        for k in (1, 3, 5, 10):
            out[f"hit@{k}"] = M.hit_at_k([r.evidence_rank for r in retrieved], k)
        out["mrr"] = M.mrr([r.evidence_rank for r in retrieved])
    for key in ("rouge1_char", "rouge2_char", "rougeL_char", "rouge1_word", "rouge2_word", "rougeL_word"):
        values = [r.rouge[key] for r in ok if key in r.rouge]
        out[key] = sum(values) / len(values) if values else None
        ans = [r.rouge[key] for r in answerable if key in r.rouge]
        out[key + "_answerable"] = sum(ans) / len(ans) if ans else None
    refusal = M.refusal_metrics([r.refused for r in ok], [r.type == "unanswerable" for r in ok])
    out.update({"refusal_precision": refusal.precision, "refusal_recall": refusal.recall,
                "false_refusal_rate": refusal.false_refusal_rate})
    cites = M.citation_metrics([M.CitationRecord(tuple(c["text"] for c in r.citations), r.evidence,
                                                 r.invalid_markers, r.type != "unanswerable") for r in ok])
    out.update({"citation_precision": cites.citation_precision, "answers_with_valid_citation": cites.supported_rate,
                "invalid_markers": cites.invalid_markers,
                "aligned_citations": sum(r.aligned_citations for r in ok),
                "repointed_citations": sum(r.repointed_citations for r in ok)})
    for key in LATENCY_KEYS:
        values = [r.timings_ms[key] for r in ok if key in r.timings_ms]
        p = M.percentiles(values)
        out[f"{key}_p50"], out[f"{key}_p95"] = p["p50"], p["p95"]
    return out


class EvalRunner:
    """``EvalRunner(settings, variants).run(items)`` → records and a summary per variant.

    ``pipeline_factory(settings, retrieval)`` builds a pipeline (tests pass fakes); by default
    real pipelines share one embedder and one LLM per (model, adapter, precision).
    """

    def __init__(self, settings: Settings, variants: Sequence[Variant],
                 pipeline_factory: Callable[[Settings, bool], Any] | None = None,
                 progress: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.variants = list(variants)
        self.pipeline_factory = pipeline_factory or SharedModels().pipeline
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
        base = dict(variant=variant, id=item.id, question=item.question, type=item.type, reference=item.answer,
                    evidence=item.evidence)
        try:
            retrieval = pipeline.retrieve(item.question, max(RETRIEVAL_DEPTH, vs.top_k))
            answer = pipeline.ask(item.question, vs.top_k, retrieval=retrieval)
        except Exception as e:  # one broken question must not end a long evaluation
            return Record(**base, error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
        ranking = [h.chunk.text for h in retrieval.final[:RETRIEVAL_DEPTH]]
        rank = M.first_hit_rank(ranking, item.evidence) if item.answerable and ranking else None
        return Record(
            **base, answer=answer.text, refused=answer.refused, refused_by=answer.refused_by,
            citations=[{"n": c.n, "chunk_id": c.chunk.id, "source": c.chunk.source, "page": c.chunk.page,
                        "text": c.chunk.text} for c in answer.citations],
            hits=[{"chunk_id": h.chunk.id, "source": h.chunk.source, "page": h.chunk.page, "score": h.score,
                   "text": h.chunk.text} for h in retrieval.final[:RETRIEVAL_DEPTH]],
            evidence_rank=rank, invalid_markers=answer.invalid_markers, aligned_citations=answer.aligned_citations,
            repointed_citations=answer.repointed_citations, raw_answer=answer.raw_text,
            rouge=M.rouge_scores(item.answer, answer.text), timings_ms=dict(answer.timings_ms),
        )


class SharedModels:
    """Builds real pipelines, loading each model once however many variants use it."""

    def __init__(self) -> None:
        self._embedders: dict[tuple, Any] = {}
        self._llms: dict[tuple, Any] = {}

    def pipeline(self, settings: Settings, retrieval: bool) -> Any:
        from ragbot.embedder import SentenceTransformerEmbedder
        from ragbot.generation import HFChatModel
        from ragbot.pipeline import RagPipeline

        ekey = (settings.embedder, settings.device)
        lkey = (settings.llm, settings.adapter, settings.llm_precision, settings.device)
        if ekey not in self._embedders:
            self._embedders[ekey] = SentenceTransformerEmbedder.from_settings(settings)
        if lkey not in self._llms:
            self._llms[lkey] = HFChatModel.from_settings(settings)
        pipeline = RagPipeline.from_settings(settings, retrieval=retrieval, chat_model=self._llms[lkey],
                                             embedder=self._embedders[ekey])
        pipeline.warm_up()
        return pipeline


def ensure_variant_indexes(base: Settings, variants: Sequence[Variant], progress=None,
                           embedder_factory: Callable[[Settings], Any] | None = None) -> list[str]:
    """Build the extra indexes that variants with other chunking need, from the main index's files."""
    from ingest.pipeline import IngestPipeline
    from ragbot.embedder import SentenceTransformerEmbedder
    from ragbot.store import IndexStore

    built = []
    main = IndexStore.load(base.index_path)
    files = [Path(name) for name in main.manifest.sources()]
    for variant in variants:
        vs = variant.settings(base)
        path = variant_index_path(base, vs)
        if not variant.retrieval or path == base.index_path or IndexStore.exists(path):
            continue
        embedder = (embedder_factory or SentenceTransformerEmbedder.from_settings)(vs)
        IngestPipeline.from_settings(vs, embedder, progress).run(files, path)
        built.append(str(path))
    return built


def write_outputs(results: dict[str, list[Record]], summaries: dict[str, dict[str, Any]], out_dir: Path,
                  meta: dict[str, Any]) -> list[Path]:
    """records.jsonl, summary.json, summary.csv and charts (when matplotlib is installed)."""
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with open(out_dir / "records.jsonl", "w", encoding="utf-8") as f:
        for records in results.values():
            for r in records:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    written.append(out_dir / "records.jsonl")
    (out_dir / "summary.json").write_text(json.dumps({"meta": meta, "variants": summaries}, ensure_ascii=False,
                                                     indent=2), encoding="utf-8")
    written.append(out_dir / "summary.json")
    keys = list(next(iter(summaries.values())).keys()) if summaries else []
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", *summaries])
        for key in keys:
            writer.writerow([key, *(summaries[v].get(key) for v in summaries)])
    written.append(out_dir / "summary.csv")
    try:
        from ragbot.evaluation.report import save_charts
    except ImportError:
        return written
    return written + save_charts(summaries, out_dir)
