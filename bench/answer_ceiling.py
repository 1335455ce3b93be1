"""How far could a perfect quote-and-cite answerer go, with the passages a variant retrieved? No model runs.

For every answerable question whose evidence is in a passage the variant gave its LLM, the answer is replaced
by text taken from that passage, then scored as `ragbot eval` scores answers (ROUGE-L on characters, against
the reference answer); every other question keeps the variant's own answer and score:

* ``evidence``: the evidence span itself, quoted and cited;
* ``sentences``: the passage's sentence(s) holding the evidence (what the fine-tuning targets quote);
* ``closest``: the passage's one sentence closest to the reference (peeks at the reference: a bound, no method).

    RAGBOT_HOME=data python bench/answer_ceiling.py data/eval/<run>/records.jsonl [--variant ragbot] [--json]

The fine-tuned answerer's target is the base's ROUGE-L + 0.05 (issue 14); if ``sentences`` does not reach it,
no quote-and-cite answerer can, whatever its training.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.evaluation.metrics import contains_evidence, rouge_scores  # noqa: E402
from ragbot.text import sentence_spans, support  # noqa: E402

_MARKUP = re.compile(r"[`*#>]")


def ceilings(records: list[dict], top_k: int = 5) -> dict[str, float]:
    """Mean ROUGE-L (char) of the variant's answers, and of each replacement above."""
    scores: dict[str, list[float]] = {"answers": [], "evidence": [], "sentences": [], "closest": []}
    replaced = 0
    for r in records:
        own = r["rouge"]["rougeL_char"]
        scores["answers"].append(own)
        given = r["hits"][:top_k]
        passage = next((h for h in given if contains_evidence(h["text"], r["evidence"])), None) if r["evidence"] else None
        if passage is None:
            for key in ("evidence", "sentences", "closest"):
                scores[key].append(own)
            continue
        replaced += 1
        text = _MARKUP.sub("", passage["text"])
        evidence = _MARKUP.sub("", r["evidence"])
        sentences = [text[s:e].strip() for s, e in sentence_spans(text)] or [text]
        holding = [s for s in sentences if support(s, evidence) > 0.5 or support(evidence, s) > 0.5] or sentences[:1]

        def score(answer: str) -> float:
            return rouge_scores(r["reference"], answer + " [1]")["rougeL_char"]

        scores["evidence"].append(score(evidence))
        scores["sentences"].append(score("".join(holding)))
        scores["closest"].append(max(score(s) for s in sentences))
    out = {k: round(statistics.mean(v), 4) for k, v in scores.items()}
    out["questions"], out["replaced"] = len(records), replaced
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", type=Path, help="records.jsonl of a `ragbot eval` run")
    ap.add_argument("--variant", default="ragbot")
    ap.add_argument("--top-k", type=int, default=5, help="passages the LLM was given (the run's top_k)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    records = [r for r in map(json.loads, args.records.read_text(encoding="utf-8").splitlines())
               if r["variant"] == args.variant]
    if not records:
        print(f"no records of variant {args.variant!r} in {args.records}", file=sys.stderr)
        return 2
    result = ceilings(records, args.top_k)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.variant}: {result['questions']} questions, {result['replaced']} answers replaced by quotes")
        for key in ("answers", "evidence", "sentences", "closest"):
            print(f"  ROUGE-L (char) {key:>9}: {result[key]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
