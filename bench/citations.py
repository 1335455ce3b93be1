"""Citation quality of an evaluation run with and without citation re-pointing, from the same generations.

Each record keeps the model's raw text and the passages it was given (the top ``--top-k`` hits), so the
answer can be finalised again both ways without generating anything:

    python bench/citations.py data/eval/<run>/records.jsonl [--top-k 5]

Prints, per variant: citation precision (share of citations whose passage contains the evidence),
answers with a correct citation, and how many markers re-pointing moved.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.evaluation import metrics as M  # noqa: E402
from ragbot.generation import finalize  # noqa: E402
from ragbot.types import Chunk, ScoredChunk  # noqa: E402


def passages(record: dict, top_k: int) -> list[ScoredChunk]:
    return [ScoredChunk(Chunk(h["chunk_id"], "", h["text"], h["source"], h.get("page")), h["score"], "fused")
            for h in record["hits"][:top_k]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", help="records.jsonl of a `ragbot eval` run")
    ap.add_argument("--top-k", type=int, default=5, help="passages the answerer was given (the settings' top_k)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.records).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("error"):
            by_variant[r["variant"]].append(r)
    if not any("raw_answer" in r for r in rows):
        raise SystemExit(f"{args.records} has no raw_answer fields; rerun `ragbot eval` with this version")
    print(f"{'variant':<14} {'re-point':<9} {'cit.prec':>8} {'correct':>8} {'moved':>6}")
    for variant, records in by_variant.items():
        for repoint in (False, True):
            cites, moved = [], 0
            for r in records:
                if r["refused_by"].startswith("gate"):  # refused before generation: no raw text to finalise
                    answer_cites: tuple[str, ...] = ()
                else:
                    answer = finalize(r["question"], r["raw_answer"], passages(r, args.top_k), repoint=repoint)
                    answer_cites, moved = tuple(c.chunk.text for c in answer.citations), moved + answer.repointed_citations
                answerable = r["type"] != "unanswerable"
                cites.append(M.CitationRecord(answer_cites, r["evidence"] if answerable else "", 0, answerable))
            m = M.citation_metrics(cites)
            print(f"{variant:<14} {'on' if repoint else 'off':<9} {m.citation_precision or 0:>8.3f} "
                  f"{m.supported_rate or 0:>8.3f} {moved:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
