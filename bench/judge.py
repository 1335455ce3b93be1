"""Automatic pairwise judge over an evaluation run: which of two variants answered each question better?

The local LLM compares the two answers against the passages the first variant retrieved, twice with
the answers' positions swapped (ragbot.arena.judge_pair); a disagreement counts as a tie.

    RAGBOT_HOME=data python bench/judge.py data/eval/<run>/records.jsonl --a finetuned --b ragbot [--votes data/votes.db]

Prints wins / losses / ties and the win rate of A over B (ties counted half); with --votes the
verdicts are also stored as machine votes in the arena database.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.evaluation.arena import Vote, VoteStore, judge_pair  # noqa: E402
from ragbot.llm.hf import HFChatModel  # noqa: E402
from ragbot.settings import Settings  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", help="records.jsonl of a `ragbot eval` run with both variants")
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--votes", help="also store the verdicts in this arena database")
    ap.add_argument("--passages", type=int, default=3, help="passages shown to the judge")
    args = ap.parse_args()

    rows = [json.loads(line) for line in Path(args.records).read_text(encoding="utf-8").splitlines() if line.strip()]
    by = {(r["variant"], r["id"]): r for r in rows}
    ids = [r["id"] for r in rows if r["variant"] == args.a and (args.b, r["id"]) in by]
    if not ids:
        raise SystemExit(f"no question answered by both {args.a!r} and {args.b!r} in {args.records}")
    settings = Settings.load(adapter="")  # the judge is the base model, whatever the default answerer is
    model = HFChatModel.from_settings(settings.replace(llm=settings.transformers_llm("bench/judge.py")))

    def chat(messages):
        return model.generate(messages, max_new_tokens=8)

    store = VoteStore(Path(args.votes)) if args.votes else None
    tally = {"a": 0, "b": 0, "tie": 0}
    for qid in ids:
        ra, rb = by[(args.a, qid)], by[(args.b, qid)]
        passages = "\n\n".join(f"[{i}] {h['text']}" for i, h in enumerate(ra["hits"][: args.passages], 1))
        verdict = judge_pair(chat, ra["question"], passages, ra["answer"], rb["answer"])
        tally[verdict] += 1
        if store is not None:
            store.add(Vote(ra["question"], args.a, args.b, ra["answer"], rb["answer"], verdict, voter="judge:local-llm",
                           meta={"id": qid, "records": str(args.records)}))
        print(f"{qid}: {verdict}", flush=True)
    n = len(ids)
    rate = (tally["a"] + 0.5 * tally["tie"]) / n
    print(f"\n{args.a} vs {args.b} over {n} questions: {tally['a']} wins, {tally['b']} losses, {tally['tie']} ties; "
          f"win rate of {args.a} (ties half) = {rate:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
