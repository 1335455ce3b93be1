"""``ragbot finetune``: generate grounded-QA training data from indexed corpus text, then train a LoRA adapter.

Training data comes from corpus chunks only. Evaluation files are read for one purpose: to drop
any generated question that is a near-duplicate of an evaluation question.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragbot.settings import Settings

MIN_CHUNK_CHARS = 80


def build_dataset(settings: Settings, index_paths: Sequence[Path], out_dir: Path, *, held_out_files: Sequence[Path],
                  max_llm_chunks: int = 500, llm_questions_per_chunk: int = 2, seed: int = 0, batch_size: int = 8,
                  n_passages: int | None = None, refusal_ratio: float = 0.33, max_questions: int = 0,
                  max_method_share: float = 0.4, combined_share: float = 0.15, use_llm: bool = True,
                  chat_model: Any = None, embedder: Any = None,
                  progress: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Write ``questions.jsonl``, ``train.jsonl`` and a data card to ``out_dir``; return the card.

    Per index: questions from the chunks' structure, no structure question type above ``max_method_share``
    of the index's questions; questions from the LLM writer (about ``llm_questions_per_chunk`` sentences of each
    chunk) for the index's share of ``max_llm_chunks`` (shared out by index size; prose chunks with the fewest structure questions first);
    plus ``combined_share`` of two-part questions; near-duplicates of held-out questions dropped; at most
    ``max_questions`` in all (0 = no cap), shared out over the indexes by their size. Examples keep a question
    only where a sentence of its gold passage quotes the answer and retrieval puts the gold chunk in the top
    ``n_passages`` (``settings.top_k``), for every question source: one that retrieval misses would never reach
    the model. Every filter's count is in the card (``filters``, ``dropped``), with the refusal share.

    Yields measured over the bundled corpus (~190 chunks) with the shared one (~730): structure questions give
    ~730 pairs plus ~100 two-part ones, of which ~630 became answer examples; refusals for 0.33 of the
    single-part questions made 25% of all examples. The earlier LLM writer (two free-form Q/A pairs per
    generation) kept 58 of 918 questions, so that build had 905 examples; the sentence-conditioned writer
    (:class:`~ragbot.finetune.questions.QuestionWriter`) kept 5 of 8 on a sample, untested at scale. On a
    2-core CPU a batch of 8 generations took ~18-25 s. The card reports the real yields (``dropped``): where the
    examples fall short, raise ``max_llm_chunks``.
    """
    from ragbot.evaluation.runner import load_qa
    from ragbot.finetune.data import ExampleBuilder, near_duplicates
    from ragbot.finetune.questions import QuestionWriter, StructureQuestions, cjk_share, combine
    from ragbot.llm.hf import HFChatModel
    from ragbot.pipeline import RagPipeline

    start = time.perf_counter()
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_passages = n_passages or settings.top_k
    held_out = [item.question for f in held_out_files for item in load_qa(Path(f))]
    use_llm = use_llm and max_llm_chunks > 0
    if use_llm and chat_model is None:  # the question writer is the base model in transformers (batched generation)
        chat_model = HFChatModel.from_settings(settings.replace(llm=settings.transformers_llm("finetune data")))
    card: dict[str, Any] = {"seed": seed, "sources": {}, "filters": {}, "held_out_files": [str(f) for f in held_out_files]}
    pipes = []
    for index_path in index_paths:
        pipe = RagPipeline.from_settings(settings.replace(index_dir=Path(index_path)), with_llm=False, embedder=embedder)
        pipe.warm_up()
        embedder = pipe.embedder  # share the loaded model between indexes
        pipes.append(pipe)
    sizes = [len(p.store.chunks) for p in pipes]
    examples, all_pairs = [], []
    for index_path, pipe, size in zip(index_paths, pipes, sizes):
        chunks = sorted((c for c in pipe.store.chunks.values() if len(c.text) >= MIN_CHUNK_CHARS), key=lambda c: c.id)
        structure = StructureQuestions()
        found_pairs = structure.run(chunks)
        dropped: Counter[str] = Counter()
        written: list[Any] = []
        llm_chunks: list[Any] = []
        if use_llm and chat_model is not None:
            # the LLM adds most where structure found little: prose chunks with the fewest structure questions first
            per_chunk = Counter(p.chunk_id for p in found_pairs)
            llm_chunks = [c for c in chunks if cjk_share(c.text) >= structure.min_cjk]
            rng.shuffle(llm_chunks)
            llm_chunks = sorted(llm_chunks, key=lambda c: per_chunk[c.id])[: round(max_llm_chunks * size / sum(sizes))]
            writer = QuestionWriter(chat_model.generate_batch, batch_size=batch_size, per_chunk=llm_questions_per_chunk,
                                    progress=progress)
            written, rejected = writer.run(llm_chunks)
            dropped.update(rejected)
        # one question per text: duplicates (e.g. a term defined twice) would be over-weighted
        seen: set[str] = set()
        unique = [p for p in (*found_pairs, *written) if not (p.question in seen or seen.add(p.question))]
        dropped["duplicate_question"] = len(found_pairs) + len(written) - len(unique)
        found = dict(Counter(p.method for p in unique))
        # the share cap is for structure templates (a glossary yields hundreds of definitions); LLM questions vary
        pairs = balance(unique, rng, max_method_share, uncapped=("llm",))
        dropped["method_share_cap"] = len(unique) - len(pairs)
        n_combined = round(len(pairs) * combined_share / 2)
        pairs += combine(pairs, rng, compound=n_combined, comparisons=n_combined)
        if max_questions:
            capped = rng.sample(pairs, min(len(pairs), round(max_questions * size / sum(sizes))))
            dropped["max_questions_cap"] = len(pairs) - len(capped)
            pairs = capped
        dups = near_duplicates([p.question for p in pairs], held_out)
        dropped["near_duplicate_of_held_out"] = len(dups)
        kept = [p for i, p in enumerate(pairs) if i not in dups]
        builder = ExampleBuilder(lambda q, k, pipe=pipe: pipe.retrieve(q, k).final, pipe.store.chunks, n_passages=n_passages,
                                 refusal_ratio=refusal_ratio, max_passage_chars=settings.max_passage_chars,
                                 require_retrieved=True, seed=rng.randrange(1 << 30))
        built = builder.run(kept)
        for name in ("gold_missing", "not_retrievable", "quote_not_found", "too_few_distractors",
                     "refusal_skipped_topic_present"):
            dropped[name] = builder.stats.get(name, 0)
        examples += built
        all_pairs += kept
        card["sources"][str(index_path)] = {
            "files": sorted({c.source for c in chunks}), "chunks": len(chunks), "llm_chunks": len(llm_chunks),
            "pairs_found_by_method": found, "pairs_by_method": dict(Counter(p.method for p in kept)),
            "kept_pairs": len(kept), "examples": dict(builder.stats),
            "answers_by_method": dict(Counter(e.method for e in built if e.kind == "answer"))}
        card["filters"][str(index_path)] = {"dropped": dict(dropped), "near_duplicates_of_held_out": len(dups),
                                            "max_jaccard_to_held_out": round(max_jaccard([p.question for p in kept], held_out), 3),
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
    by_kind = Counter(e.kind for e in examples)
    card.update({
        "examples": len(examples), "by_kind": dict(by_kind),
        "refusal_share": round(by_kind["refusal"] / len(examples), 3) if examples else 0.0,
        "by_method": dict(Counter(e.method for e in examples)),
        "answers_by_method": dict(Counter(e.method for e in examples if e.kind == "answer")),
        "dropped": {name: sum(f["dropped"].get(name, 0) for f in card["filters"].values())
                    for name in dict.fromkeys(n for f in card["filters"].values() for n in f["dropped"])},
        "gold_position_counts": dict(sorted(Counter(e.gold_position for e in examples if e.gold_position).items())),
        "n_passages": n_passages, "max_passage_chars": settings.max_passage_chars, "refusal_ratio": refusal_ratio,
        "max_method_share": max_method_share, "combined_share": combined_share, "max_questions": max_questions,
        "near_duplicate_rule": "char 5-gram Jaccard >= 0.5", "target": "quoted supporting sentences, each cited",
        "max_llm_chunks": max_llm_chunks if use_llm else 0, "llm_questions_per_chunk": llm_questions_per_chunk,
        "seconds": round(time.perf_counter() - start, 1),
        "example_rows": _example_rows(examples, index_paths[0] if index_paths else None, card),
    })
    (out_dir / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "data_card.md").write_text(_card_markdown(card), encoding="utf-8")
    return card


def balance(pairs: list[Any], rng: random.Random, max_share: float, uncapped: Collection[str] = ()) -> list[Any]:
    """A random subset in which no method has more than ``max_share`` of the pairs (a glossary yields hundreds
    of definitions): each method keeps at most ``cap`` pairs, the largest cap for which that holds. Methods in
    ``uncapped`` (the LLM writer's varied questions) keep every pair and count towards the whole. Where no
    cap can satisfy it (fewer than ``1 / max_share`` methods), every pair is kept."""
    groups: dict[str, list[Any]] = {}
    for p in pairs:
        groups.setdefault(p.method, []).append(p)
    sizes = [len(g) for m, g in groups.items() if m not in uncapped]
    fixed = len(pairs) - sum(sizes)
    if not sizes or max_share * (len(sizes) + fixed) < 1:
        return list(pairs)

    def fits(cap: int) -> bool:
        return cap <= max_share * (sum(min(n, cap) for n in sizes) + fixed)

    lo, hi = 1, max(sizes)  # fits() holds on [1, c*] and fails above: find c*
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return [p for m in sorted(groups)
            for p in (groups[m] if len(groups[m]) <= lo or m in uncapped else rng.sample(groups[m], lo))]


def max_jaccard(questions: Sequence[str], held_out: Sequence[str]) -> float:
    """The highest char 5-gram Jaccard between any generated and any held-out question (reported in the card)."""
    from ragbot.finetune.data import char_ngrams, jaccard

    held = [char_ngrams(h) for h in held_out]
    return max((jaccard(char_ngrams(q), h) for q in questions for h in held), default=0.0)


def _example_rows(examples: Sequence[Any], first_index: Path | None, card: dict[str, Any]) -> list[dict[str, Any]]:
    """A few rows to show in the card, drawn from the first index's files only (the bundled corpus when
    the recipe runs as documented), so a shipped card quotes no text from other corpora: one answer per
    question source (up to 8), then 2 refusals."""
    files = set(card["sources"].get(str(first_index), {}).get("files", [])) if first_index is not None else set()
    rows = [e for e in examples if e.source in files] or list(examples)
    answers = list({e.method: e for e in reversed(rows) if e.kind == "answer"}.values())[::-1][:8]
    picked = answers + [e for e in rows if e.kind == "refusal"][:2]
    return [{"question": e.question, "target": e.target, "kind": e.kind, "method": e.method, "source": e.source}
            for e in picked]


def _card_markdown(card: dict[str, Any]) -> str:
    lines = ["# Fine-tuning data card", "",
             f"- examples: {card['examples']} ({card['by_kind']}); refusals {card['refusal_share']:.1%} of all "
             f"(target 15-25%; ~{card['refusal_ratio']:.0%} of single-part questions)",
             f"- answers by question source: {card['answers_by_method']}",
             f"- answer targets: {card['target']}",
             f"- passages per example: {card['n_passages']} (each at most {card['max_passage_chars']} characters, "
             "as at inference)",
             f"- no structure question type above {card['max_method_share']:.0%} of an index's structure questions; "
             f"{card['combined_share']:.0%} two-part questions; at most {card['max_questions'] or 'all'} questions; "
             f"LLM writer: {card['max_llm_chunks']} chunks, {card['llm_questions_per_chunk']} questions each",
             f"- dropped, by filter: {card['dropped']}",
             f"- gold passage positions: {card['gold_position_counts']}",
             f"- held-out question files (near-duplicates dropped, {card['near_duplicate_rule']}): "
             + ", ".join(card["held_out_files"]),
             f"- seed {card['seed']}; built in {card['seconds']} s", "", "## Sources", ""]
    for src, info in card["sources"].items():
        filters = card["filters"][src]
        lines.append(f"- `{src}`: {len(info['files'])} files, {info['chunks']} chunks ({info['llm_chunks']} to the LLM "
                     f"writer), pairs found {info['pairs_found_by_method']}, kept {info['kept_pairs']} "
                     f"{info['pairs_by_method']}, answers {info['answers_by_method']}, examples {info['examples']}; "
                     f"dropped {filters['dropped']}; max Jaccard to a held-out question "
                     f"{filters['max_jaccard_to_held_out']}")
    lines += ["", "## Example rows", ""]
    lines += [f"- **{r['question']}** → {r['target']} ({r['kind']}, {r['method']}, {r['source']})"
              for r in card["example_rows"]]
    return "\n".join(lines) + "\n"
