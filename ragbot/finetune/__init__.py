"""``ragbot finetune``: generate grounded-QA training data from indexed corpus text, then train a LoRA adapter.

Training data comes from corpus chunks only. Evaluation files are read for one purpose: to drop
any generated question that is a near-duplicate of an evaluation question.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragbot.settings import Settings

MIN_CHUNK_CHARS = 80


def build_dataset(settings: Settings, index_paths: Sequence[Path], out_dir: Path, *, held_out_files: Sequence[Path],
                  max_llm_chunks: int = 400, seed: int = 0, batch_size: int = 8, n_passages: int = 5,
                  refusal_ratio: float = 0.3, window_chars: int = 200, use_llm: bool = True, chat_model: Any = None, embedder: Any = None,
                  progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Write ``questions.jsonl``, ``train.jsonl`` and a data card to ``out_dir``; return the card."""
    from ragbot.evaluation.runner import load_qa
    from ragbot.finetune.data import ExampleBuilder, near_duplicates
    from ragbot.finetune.questions import QuestionWriter, section_questions, sentence_questions, structural_questions
    from ragbot.generation import HFChatModel
    from ragbot.pipeline import RagPipeline

    start = time.perf_counter()
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_out = [item.question for f in held_out_files for item in load_qa(Path(f))]
    use_llm = use_llm and max_llm_chunks > 0
    chat_model = chat_model or (HFChatModel.from_settings(settings) if use_llm else None)
    card: dict[str, Any] = {"seed": seed, "sources": {}, "filters": {}, "held_out_files": [str(f) for f in held_out_files]}
    examples, all_pairs = [], []
    for index_path in index_paths:
        s = settings.replace(index_dir=Path(index_path))
        pipe = RagPipeline.from_settings(s, with_llm=False, embedder=embedder)
        pipe.warm_up()
        embedder = pipe.embedder  # share the loaded model between indexes
        chunks = sorted((c for c in pipe.store.chunks.values() if len(c.text) >= MIN_CHUNK_CHARS), key=lambda c: c.id)
        pairs = structural_questions(chunks) + sentence_questions(chunks) + section_questions(chunks)
        rejected: dict[str, int] = {}
        if use_llm and chat_model is not None and max_llm_chunks > 0:
            sample = rng.sample(chunks, min(max_llm_chunks, len(chunks)))
            writer = QuestionWriter(chat_model.generate_batch, batch_size=batch_size, progress=progress)
            llm_pairs, rejected = writer.run(sample)
            pairs += llm_pairs
        # one question per text: duplicates (e.g. a term defined twice) would be over-weighted
        seen: set[str] = set()
        pairs = [p for p in pairs if not (p.question in seen or seen.add(p.question))]
        dups = near_duplicates([p.question for p in pairs], held_out)
        kept = [p for i, p in enumerate(pairs) if i not in dups]
        builder = ExampleBuilder(lambda q, k, pipe=pipe: pipe.retrieve(q, k).final, pipe.store.chunks, n_passages=n_passages,
                                 refusal_ratio=refusal_ratio, max_passage_chars=s.max_passage_chars,
                                 window_chars=window_chars,
                                 seed=rng.randrange(1 << 30))
        built = builder.run(kept)
        examples += built
        all_pairs += kept
        card["sources"][str(index_path)] = {
            "files": sorted({c.source for c in chunks}), "chunks": len(chunks),
            "pairs_by_method": dict(Counter(p.method for p in pairs)), "kept_pairs": len(kept),
            "examples": dict(builder.stats)}
        card["filters"][str(index_path)] = {"llm_pair_rejections": rejected, "near_duplicates_of_held_out": len(dups),
                                            "near_duplicate_examples": [
                                                {"generated": pairs[i].question, "held_out": h, "jaccard": round(j, 3)}
                                                for i, (h, j) in list(dups.items())[:10]]}
    rng.shuffle(examples)
    with open(out_dir / "questions.jsonl", "w", encoding="utf-8") as f:
        for p in all_pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    with open(out_dir / "train.jsonl", "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    card.update({
        "examples": len(examples), "by_kind": dict(Counter(e.kind for e in examples)),
        "by_method": dict(Counter(e.method for e in examples)),
        "gold_position_counts": dict(sorted(Counter(e.gold_position for e in examples if e.gold_position).items())),
        "n_passages": n_passages, "window_chars": window_chars, "refusal_ratio": refusal_ratio, "near_duplicate_rule": "char 5-gram Jaccard >= 0.5",
        "max_llm_chunks_per_index": max_llm_chunks if use_llm else 0, "seconds": round(time.perf_counter() - start, 1),
        "example_rows": [{"question": e.question, "target": e.target, "kind": e.kind, "source": e.source}
                         for e in examples[:8]],
    })
    (out_dir / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "data_card.md").write_text(_card_markdown(card), encoding="utf-8")
    return card


def _card_markdown(card: dict[str, Any]) -> str:
    lines = ["# Fine-tuning data card", "",
             f"- examples: {card['examples']} ({card['by_kind']}), by question source: {card['by_method']}",
             f"- passages per example: {card['n_passages']}; refusal examples for ~{card['refusal_ratio']:.0%} of questions",
             f"- gold passage positions: {card['gold_position_counts']}",
             f"- held-out question files (near-duplicates dropped, {card['near_duplicate_rule']}): "
             + ", ".join(card["held_out_files"]),
             f"- seed {card['seed']}; built in {card['seconds']} s", "", "## Sources", ""]
    for src, info in card["sources"].items():
        lines.append(f"- `{src}`: {len(info['files'])} files, {info['chunks']} chunks, pairs {info['pairs_by_method']}, "
                     f"kept {info['kept_pairs']}, examples {info['examples']}; filters {card['filters'][src]['llm_pair_rejections']}, "
                     f"near-duplicates dropped {card['filters'][src]['near_duplicates_of_held_out']}")
    lines += ["", "## Example rows", ""]
    lines += [f"- **{r['question']}** → {r['target']} ({r['kind']}, {r['source']})" for r in card["example_rows"]]
    return "\n".join(lines) + "\n"
