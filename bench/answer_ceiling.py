"""How far could a perfect quote-and-cite answerer go, with the passages a variant retrieved? No model runs.

For every answerable question whose evidence is in a passage the variant gave its LLM (as the prompt showed it),
the answer is replaced by text quoted from that passage and cited as the fine-tuning targets are
(``ragbot.finetune.data``: ``quotable``, ``cite``), then scored as `ragbot eval` scores answers (ROUGE-L on
characters, against the reference answer); every other question keeps the variant's own answer and score:

* ``evidence``: the evidence span itself;
* ``sentences``: the fine-tuning target for that evidence (``quote_answer``: the passage's sentences that hold
  it, trimmed to the clauses that answer; the evidence span where it finds none);
* ``closest``: the passage's one sentence closest to the reference (peeks at the reference: a bound, no method).

    RAGBOT_HOME=data python bench/answer_ceiling.py data/eval/<run>/records.jsonl [--variant ragbot] [--json]

The fine-tuned answerer's target is the base's ROUGE-L + 0.05 (issue 14); if ``sentences`` does not reach it,
no quote-and-cite answerer can, whatever its training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.evaluation.metrics import contains_evidence, rouge_scores  # noqa: E402
from ragbot.finetune.data import cite, cite_parts, quotable, quote_answer  # noqa: E402
from ragbot.prompt import focus  # noqa: E402
from ragbot.text import sentence_spans  # noqa: E402


def ceilings(records: list[dict], top_k: int = 5, max_passage_chars: int = 300) -> dict[str, float]:
    """Mean ROUGE-L (char) of the variant's answers, and of each replacement above. Passages are taken as the
    prompt showed them (focused on the question); quotes are made and cited as the fine-tuning targets are."""
    scores: dict[str, list[float]] = {"answers": [], "evidence": [], "sentences": [], "closest": []}
    replaced = 0
    for r in records:
        own = r["rouge"]["rougeL_char"]
        scores["answers"].append(own)
        shown = [focus(h["text"], r["question"], max_passage_chars) for h in r["hits"][:top_k]]
        at = next((n for n, text in enumerate(shown, 1) if contains_evidence(text, r["evidence"])),
                  None) if r["evidence"] else None
        if at is None:
            for key in ("evidence", "sentences", "closest"):
                scores[key].append(own)
            continue
        replaced += 1
        passage = shown[at - 1]

        def score(answer: str) -> float:
            return rouge_scores(r["reference"], answer)["rougeL_char"]

        evidence = cite(quotable(r["evidence"]), at)
        quotes = quote_answer(passage, r["evidence"], r["question"])
        scores["evidence"].append(score(evidence))
        scores["sentences"].append(score(cite_parts([(q, at) for q in quotes]) if quotes else evidence))
        scores["closest"].append(max(score(cite(quotable(passage[s:e]), at)) for s, e in sentence_spans(passage)))
    out = {k: round(statistics.mean(v), 4) for k, v in scores.items()}
    out["questions"], out["replaced"] = len(records), replaced
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path, help="records.jsonl of a `ragbot eval` run")
    ap.add_argument("--variant", default="ragbot")
    ap.add_argument("--top-k", type=int, default=5, help="passages the LLM was given (the run's top_k)")
    ap.add_argument("--max-passage-chars", type=int, default=300, help="the run's max_passage_chars")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    records = [r for r in map(json.loads, args.records.read_text(encoding="utf-8").splitlines())
               if r["variant"] == args.variant]
    if not records:
        print(f"no records of variant {args.variant!r} in {args.records}", file=sys.stderr)
        return 2
    result = ceilings(records, args.top_k, args.max_passage_chars)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.variant}: {result['questions']} questions, {result['replaced']} answers replaced by quotes")
        for key in ("answers", "evidence", "sentences", "closest"):
            print(f"  ROUGE-L (char) {key:>9}: {result[key]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
