"""Train the learned-to-rank reranker (ragbot/ltr.py) on synthetic questions, then compare it with fusion alone.

Training questions come from ``ragbot finetune data`` (questions.jsonl: generated from corpus chunks,
near-duplicates of evaluation questions already removed). Labels: a candidate is relevant when it is
the chunk the question was written from, or contains most of the answer's character bigrams.

    python bench/train_reranker.py --data data/ft-data --index data/index --index data/index-shared \\
        [--eval-qa ../shared/eval/dev_qa.jsonl --eval-index data/index-shared] [--out ragbot/assets/reranker/ltr.json]

The evaluation file, if given, is only scored (before/after); it never feeds the fit.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.evaluation.metrics import first_hit_rank, hit_at_k, mrr  # noqa: E402
from ragbot.finetune.questions import support  # noqa: E402
from ragbot.ltr import SHIPPED, FEATURES, FeatureExtractor, LTRReranker, fit  # noqa: E402
from ragbot.pipeline import RagPipeline  # noqa: E402
from ragbot.settings import Settings  # noqa: E402


def open_pipeline(settings: Settings, index: Path, embedder=None) -> RagPipeline:
    pipe = RagPipeline.from_settings(settings.replace(index_dir=index, reranker="none"), with_llm=False,
                                     embedder=embedder)
    pipe.warm_up()
    return pipe


def collect(pipes: list[RagPipeline], questions: list[dict], depth: int):
    xs, ys, groups = [], [], []
    extractors = {id(p): FeatureExtractor(p.store, p.settings.rrf_k) for p in pipes}
    for gi, q in enumerate(questions):
        pipe = next((p for p in pipes if q["chunk_id"] in p.store.chunks), None)
        if pipe is None:
            continue
        retrieval = pipe.retrieve(q["question"], depth)
        cands = list(retrieval.fused)
        labels = [int(c.chunk.id == q["chunk_id"] or support(q["answer"], c.chunk.text) >= 0.8) for c in cands]
        if not any(labels) or all(labels):
            continue  # nothing to learn from a list with no positive (retrieval missed) or no negative
        xs.append(extractors[id(pipe)].run(retrieval, cands))
        ys += labels
        groups += [gi] * len(cands)
    return np.concatenate(xs), np.asarray(ys), np.asarray(groups)


def score_eval(pipe: RagPipeline, reranker: LTRReranker | None, qa_path: Path, depth: int) -> dict[str, float]:
    rows = [json.loads(line) for line in qa_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ranks, lat = [], []
    for r in rows:
        if r.get("type") == "unanswerable":
            continue
        t = time.perf_counter()
        retrieval = pipe.retrieve(r["question"], depth)
        final = reranker.rerank(retrieval, 10) if reranker else list(retrieval.fused[:10])
        lat.append((time.perf_counter() - t) * 1000)
        ranks.append(first_hit_rank([h.chunk.text for h in final], r["evidence"]))
    return {"hit@1": hit_at_k(ranks, 1), "hit@5": hit_at_k(ranks, 5), "mrr": mrr(ranks),
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with questions.jsonl from `ragbot finetune data`")
    ap.add_argument("--index", action="append", required=True, help="indexes the questions were drawn from")
    ap.add_argument("--eval-qa", help="held-out Q&A to score before/after (never used for fitting)")
    ap.add_argument("--eval-index", help="index for --eval-qa")
    ap.add_argument("--out", default=str(SHIPPED))
    ap.add_argument("--depth", type=int, default=20, help="fused candidates per question (rerank_candidates)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    settings = Settings.load()
    pipes = []
    for index in args.index:
        pipes.append(open_pipeline(settings, Path(index), pipes[0].embedder if pipes else None))
    questions = [json.loads(line) for line in (Path(args.data) / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    random.Random(args.seed).shuffle(questions)
    cut = int(len(questions) * 0.8)
    x, y, g = collect(pipes, questions[:cut], args.depth)
    model = fit(x, y)
    xv, yv, gv = collect(pipes, questions[cut:], args.depth)

    def synthetic_mrr(scores, ys, gs, column=None):
        rr = []
        for gi in np.unique(gs):
            idx = np.where(gs == gi)[0]
            order = idx[np.argsort(-scores[idx], kind="stable")]
            rank = next(i for i, j in enumerate(order, 1) if ys[j])
            rr.append(1 / rank)
        return float(np.mean(rr))

    fused_mrr = synthetic_mrr(xv[:, FEATURES.index("rrf")], yv, gv)
    ltr_mrr = synthetic_mrr(model.score(xv), yv, gv)
    print(f"synthetic questions: {cut} train ({len(np.unique(g))} usable), {len(questions) - cut} validation "
          f"({len(np.unique(gv))} usable); validation MRR fused {fused_mrr:.3f} -> ltr {ltr_mrr:.3f}")
    print("weights:", {f: round(w, 3) for f, w in zip(FEATURES, model.weights)})
    model.save(Path(args.out), trained_on=str(Path(args.data) / "questions.jsonl"), train_questions=int(len(np.unique(g))),
               synthetic_validation={"fused_mrr": fused_mrr, "ltr_mrr": ltr_mrr})
    print(f"saved {args.out}")
    if args.eval_qa and args.eval_index:
        pipe = next((p for p in pipes if str(p.settings.index_path) == str(Path(args.eval_index))), None)
        pipe = pipe or open_pipeline(settings, Path(args.eval_index), pipes[0].embedder)
        before = score_eval(pipe, None, Path(args.eval_qa), args.depth)
        after = score_eval(pipe, LTRReranker(pipe.store, Path(args.out)), Path(args.eval_qa), args.depth)
        print(f"held-out {args.eval_qa}: fusion {before}\n{'':>{len('held-out ' + args.eval_qa)}}  ltr    {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
