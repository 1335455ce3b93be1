"""``ragbot`` command line: parses arguments and calls the library. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ragbot.errors import ConfigError, RagbotError


def _settings(args: argparse.Namespace, **extra):
    from ragbot.settings import Settings

    overrides = {"index_dir": getattr(args, "index", None), "top_k": getattr(args, "top_k", None), **extra}
    return Settings.load(getattr(args, "config", None), **overrides)


def _kb(settings):
    from ingest.pipeline import tqdm_progress
    from ragbot.kb import KnowledgeBase

    return KnowledgeBase(settings, progress=tqdm_progress)


def _print_report(report, verbose: bool = False) -> int:
    print(report.summary(verbose=verbose))
    if not report.ok:
        print("Nothing could be ingested: fix the files listed above (or give other paths).", file=sys.stderr)
        return 1
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = _settings(args)
    report = _kb(settings).ingest([Path(p) for p in args.paths], prune=args.prune, rebuild=args.rebuild,
                                  force=args.force)
    return _print_report(report, args.verbose)


def cmd_ask(args: argparse.Namespace) -> int:
    from ragbot.pipeline import RagPipeline

    pipeline = RagPipeline.from_settings(_settings(args))
    pipeline.warm_up()
    stream = pipeline.ask_stream(args.question, args.top_k)
    if args.json:
        print(json.dumps(stream.answer.to_dict(), ensure_ascii=False, indent=2))
    else:
        _render(stream, sys.stdout)
    return 0


def _render(stream, out) -> None:
    """Print an answer: streamed as it is generated on a terminal, whole otherwise; then its sources.

    When the final text differs from what was streamed (a refusal, or citations added by alignment) the
    streamed lines are erased and the final text printed in their place, so the markers on screen and the
    sources listed under them always agree and a refusal is printed once.
    """
    answer = stream.answer if not out.isatty() else None
    if answer is None:
        for piece in stream:
            out.write(piece)
            out.flush()
        answer = stream.answer
        if stream.rewritten:
            _erase(stream.shown, out)
            out.write(answer.text)
        out.write("\n")
    else:
        out.write(answer.text + "\n")
    if answer.finish_reason == "length" and not answer.refused:
        out.write("（回答达到长度上限 max_new_tokens，被截断）\n")
    if answer.refused:
        if answer.refused_by.startswith("gate:"):
            out.write(f"（知识库中没有出现：{answer.refused_by[5:].strip()}）\n")
        elif answer.refused_by == "echo":
            out.write("（模型只重复了问题，没有回答；可以换个问法再问）\n")
    elif answer.citations:
        out.write("\n来源：\n")
        for c in answer.citations:
            page = f" 第{c.chunk.page}页" if c.chunk.page else ""
            heading = f" · {c.chunk.heading}" if c.chunk.heading_path else ""
            out.write(f"  [{c.n}] {c.chunk.source}{page}{heading}\n")
    elif answer.passages:
        out.write("（这个回答没有引用资料：没有一段资料能支持它，请谨慎对待）\n")
    out.flush()
    t = answer.timings_ms
    print(f"(检索 {t.get('retrieval_ms', 0):.0f} ms，首字 {t.get('first_token_ms', 0):.0f} ms，"
          f"生成 {t.get('generate_ms', 0) / 1000:.1f} s)", file=sys.stderr)


def _erase(shown: str, out) -> None:
    """Move the cursor back over ``shown`` (just printed) and clear it; if it scrolled off the screen, start
    a fresh line instead (the final text then follows what was streamed)."""
    import shutil
    import unicodedata

    cols, height = shutil.get_terminal_size()

    def width(line: str) -> int:
        return sum(0 if unicodedata.combining(c) or c == "\u200b" else 2 if unicodedata.east_asian_width(c) in "WF" else 1
                   for c in line)

    rows = sum(max(1, -(-width(line) // cols)) for line in shown.split("\n"))
    if rows >= height:
        out.write("\n")
        return
    out.write(("\x1b[%dA" % (rows - 1) if rows > 1 else "") + "\r\x1b[J")


def cmd_chat(args: argparse.Namespace) -> int:
    from ragbot.pipeline import RagPipeline
    from ragbot.rewrite import Conversation

    pipeline = RagPipeline.from_settings(_settings(args))
    interactive = sys.stdin.isatty()
    if interactive:
        print("正在加载模型…", file=sys.stderr)
    pipeline.warm_up()
    conversation = Conversation(pipeline.chat_model)
    if interactive:
        import readline  # noqa: F401  (line editing and ↑/↓ history for input())

        print("输入问题后回车；可以接着追问。/new 开始新对话，/exit 或 Ctrl-D 退出。", file=sys.stderr)
    while True:
        try:
            line = input("问> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:
            break
        question = line.strip()
        if not question:
            continue
        if question in ("/exit", "/quit"):
            break
        if question in ("/new", "/reset"):
            conversation.reset()
            print("（新对话）", file=sys.stderr)
            continue
        if not interactive and not args.json:
            print(f"问：{question}", flush=True)
        try:
            pipeline.check_question(question)
            rewrite = conversation.standalone(question)
            stream = pipeline.ask_stream(rewrite.question, args.top_k)
            if args.json:
                print(json.dumps({**stream.answer.to_dict(), "asked": question}, ensure_ascii=False), flush=True)
            else:
                if rewrite.changed:
                    print(f"（按上文理解为：{rewrite.question}）")
                _render(stream, sys.stdout)
                print()
            conversation.add(rewrite, stream.answer)
        except RagbotError as e:  # a bad question ends neither the conversation nor the script
            print(f"error: {e}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    import datetime as dt

    from ragbot.store import IndexStore

    settings = _settings(args)
    path = settings.index_path
    if args.index_command == "rollback":
        with IndexStore.writer_lock(path, settings.lock_timeout_s):
            before = IndexStore.current_version(path)
            target = IndexStore.rollback(path, args.to)
        print(f"index at {path}: live version is now {target.name} ({target.files} files, {target.chunks} chunks); "
              f"was {before} (kept: `ragbot index rollback --to {before}` undoes this)")
        return 0
    if args.index_command == "reingest":
        return _print_report(_kb(settings).reingest_all(force=args.force))
    if args.index_command == "remove":
        return _remove(settings, args.paths)
    if args.index_command == "compact":
        return _compact(settings)
    if args.index_command == "export":
        return _export(settings, args)
    versions = IndexStore.versions(path)
    if not versions:
        print(f"no index at {path}")
        return 1
    for v in versions:
        when = dt.datetime.fromtimestamp(v.created_at).strftime("%Y-%m-%d %H:%M:%S")
        state = (f"DAMAGED: {v.error}" if v.error else
                 f"{v.files} files, {v.chunks} chunks, {v.segments} segment(s), {v.removed_rows} removed rows")
        print(f"{'*' if v.current else ' '} {v.name}  {when}  {state}")
    return 0


def _compact(settings) -> int:
    """Rewrite the index's segments without their removed rows (and merge small ones), then publish."""
    from ragbot.kb import KnowledgeBase

    reports = KnowledgeBase(settings).compact()
    for path, r in reports:
        print(f"compacted {path}: {r.segments_before} -> {r.segments_after} segment(s), {r.removed_rows_dropped} "
              f"removed rows dropped, {r.seconds:.1f} s")
    return 0


def _export(settings, args: argparse.Namespace) -> int:
    """Copy the index into Milvus (nothing is embedded again) as a new index folder; say how to use it."""
    from ingest.pipeline import tqdm_progress
    from ragbot import milvus
    from ragbot.store import IndexStore

    milvus.milvus_uri(args.to)  # a bad URI is a one-line error before anything is read
    out = Path(args.out).expanduser() if args.out else settings.index_path.with_name(settings.index_path.name + "-milvus")
    if IndexStore.exists(out):
        raise ConfigError(f"{out} already holds an index; give another --out, or remove it first")
    with IndexStore.writer_lock(out, settings.lock_timeout_s):
        target = milvus.export(IndexStore.load(settings.index_path), args.to, out, progress=tqdm_progress)
    print(f"exported {len(target)} chunks of {len(target.manifest.files)} files to {args.to} (collection "
          f"{target.collection}); use it with: RAGBOT_STORE={args.to} RAGBOT_INDEX_DIR={out} ragbot ask ...")
    return 0


def _remove(settings, paths: list[str]) -> int:
    """Remove files (by path, as listed by ingest) from every index; names not in the index are reported."""
    from ragbot.store import IndexStore

    held = IndexStore.load(settings.index_path).manifest.files
    doc_ids, unknown = [], []
    for p in paths:
        doc_id = str(Path(p).resolve())
        (doc_ids if doc_id in held else unknown).append(doc_id if doc_id in held else p)
    for p in unknown:
        print(f"not in the index: {p} (ragbot index versions lists the index; give the path you ingested)",
              file=sys.stderr)
    if not doc_ids:
        return 1
    removed = _kb(settings).delete(doc_ids, remove_uploads=False)
    print(f"removed {len(doc_ids)} file(s), {removed} chunks, from {settings.index_path} (and its variant indexes)")
    return 1 if unknown else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from ragbot import embedder, llm

    settings = _settings(args)
    results = {"embedder": (settings.embedder, *embedder.check(settings, prepare=not args.check)),
               "llm": (llm.describe(settings), *llm.check(settings, prepare=not args.check))}
    for role, (what, ok, where) in results.items():
        print(f"{role:<9} {what}: {where if ok else 'NOT AVAILABLE: ' + where}")
    print(f"{'reranker':<9} {settings.reranker}")
    return 0 if all(ok for _, ok, _ in results.values()) else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from ingest.pipeline import tqdm_progress
    from ragbot import variants as V
    from ragbot.evaluation.report import History, comparison_table
    from ragbot.evaluation.runner import evaluate, load_qa

    settings = _settings(args)
    if args.history:
        print(History(settings.home / "eval_history.db").table())
        return 0
    if not args.qa:
        raise ConfigError("give a Q&A file: ragbot eval QA.jsonl [--variant NAME ...] (or --history)")
    items = load_qa(Path(args.qa), args.limit)
    config = Path(args.config) if getattr(args, "config", None) else None
    chosen = V.resolve(args.variant or ["ragbot"], settings, config)
    run = evaluate(settings, chosen, items, qa_file=str(args.qa), progress=tqdm_progress,
                   out_dir=Path(args.out) if args.out else None, source="cli", config_file=config)
    for path in run.built_indexes:
        print(f"built variant index {path}")
    print(comparison_table(run.summaries))
    written = sorted(p.name for p in run.out_dir.iterdir())
    print(f"\n{len(items)} questions x {len(chosen)} variants; {run.errors} errors. Wrote {', '.join(written)} to {run.out_dir}")
    return 0


DEFAULT_HELD_OUT = ("corpus/qa.jsonl", "../shared/eval/dev_qa.jsonl")


def cmd_finetune_data(args: argparse.Namespace) -> int:
    from ingest.pipeline import tqdm_progress
    from ragbot.finetune import build_dataset

    settings = _settings(args)
    held_out = [Path(p) for p in (args.held_out or [p for p in DEFAULT_HELD_OUT if Path(p).exists()])]
    indexes = [Path(p) for p in args.indexes] if args.indexes else [settings.index_path]
    card = build_dataset(settings, indexes, Path(args.out), held_out_files=held_out, max_llm_chunks=args.llm_chunks,
                         llm_questions_per_chunk=args.llm_questions, seed=args.seed, n_passages=args.passages,
                         refusal_ratio=args.refusal_ratio, max_questions=args.max_questions,
                         max_method_share=args.max_method_share, combined_share=args.combined_share,
                         progress=tqdm_progress)
    print(f"{card['examples']} examples {card['by_kind']} (refusals {card['refusal_share']:.0%}) written to {args.out} "
          f"(data card: data_card.md); held-out questions checked: {', '.join(map(str, held_out)) or 'none'}")
    return 0


def cmd_finetune_export(args: argparse.Namespace) -> int:
    from ragbot.finetune.train import export_adapter
    from ragbot.variants import SHIPPED_ADAPTER

    settings = _settings(args)
    out = Path(args.out) if args.out else SHIPPED_ADAPTER
    written = export_adapter(Path(args.adapter), out, base_model=settings.transformers_llm("finetune export"))
    size = sum(p.stat().st_size for p in written) / 1e6
    print(f"adapter exported to {out} ({size:.1f} MB: {', '.join(p.name for p in written)})")
    return 0


def cmd_finetune_train(args: argparse.Namespace) -> int:
    from ragbot.bundle import resolve_model
    from ragbot.finetune.train import LoraTrainer, TrainConfig

    settings = _settings(args)
    config = TrainConfig(rank=args.rank, alpha=args.alpha, top_layers=args.top_layers, learning_rate=args.lr, epochs=args.epochs,
                         max_length=args.max_length, grad_accum=args.grad_accum, max_examples=args.max_examples,
                         seed=args.seed, precision=args.precision, target_modules=tuple(args.target_modules.split(",")),
                         cache_prompt=not args.no_cache)
    base = resolve_model(settings.transformers_llm("finetune train"), settings.models_dir,
                         allow_downloads=settings.allow_downloads)
    result = LoraTrainer(base, config, device=settings.device).run(Path(args.data), Path(args.out),
                                                                    resume=not args.no_resume)
    print(f"adapter written to {result.out_dir}: {result.train_examples} train / {result.val_examples} val examples, "
          f"{result.steps} steps in {result.seconds / 60:.1f} min on {result.device} ({result.precision_reason}; "
          f"frozen-layer cache {result.cache_seconds / 60:.1f} min of it); val loss per epoch {result.val_loss}")
    print(f"use it: RAGBOT_ADAPTER={result.out_dir} ragbot ask ...   or   ragbot eval QA.jsonl --variant finetuned")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ragbot.finetune.train import TrainConfig  # the recipe's defaults (a light import: no torch)

    parser = argparse.ArgumentParser(prog="ragbot", description="Local, private question answering over your documents.")
    parser.add_argument("--config", help="settings file (TOML); default ./ragbot.toml or $RAGBOT_CONFIG")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="add .md/.txt/.pdf files or folders to the index (only changes are re-embedded)")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--prune", action="store_true", help="remove files that no longer exist under the given folders")
    p.add_argument("--rebuild", action="store_true", help="start a new index (needed after changing embedder or chunking)")
    p.add_argument("--force", action="store_true",
                   help="publish a rebuild or prune even when it drops every file or more than half of them")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the encoding detected for each text file")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("index", help="list versions, roll back, remove files, re-ingest everything")
    isub = p.add_subparsers(dest="index_command", required=True)
    for name, text in (("versions", "list the versions kept on disk (* = live)"),
                       ("rollback", "make the previous version (or --to VERSION) live again"),
                       ("remove", "remove files from the index and its variant indexes (the files stay on disk)"),
                       ("reingest", "rebuild the index from every file it lists (variant indexes are rebuilt on use)"),
                       ("compact", "rewrite the index as one segment without removed chunks (and its variant "
                                   "indexes); above ann_min_chunks the result is searched approximately"),
                       ("export", "copy the index into Milvus (--to milvus:PATH.db or milvus://HOST:PORT) as a new "
                                  "index folder, without embedding again")):
        q = isub.add_parser(name, help=text)
        q.add_argument("--index", help="index folder (default: <home>/index)")
        if name == "rollback":
            q.add_argument("--to", help="version name from `ragbot index versions` (default: the one before the live one)")
        if name == "remove":
            q.add_argument("paths", nargs="+", help="files as they were ingested")
        if name == "reingest":
            q.add_argument("--force", action="store_true", help="publish even when most files are gone from disk")
        if name == "export":
            q.add_argument("--to", required=True, help="milvus:PATH.db (Milvus Lite) or milvus://HOST:PORT")
            q.add_argument("--out", help="the new index folder (default: the index folder's name + -milvus)")
        q.set_defaults(func=cmd_index)

    p = sub.add_parser("ask", help="answer a question from the index, with citations")
    p.add_argument("question")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--top-k", type=int, default=None, help="passages given to the LLM (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="ask questions in a row, with follow-ups (one per line when input is not a terminal)")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--top-k", type=int, default=None, help="passages given to the LLM (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object per question (JSON lines)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("eval", help="evaluate variants side by side on a Q&A JSONL file")
    p.add_argument("qa", nargs="?", help="JSONL with id, question, answer, evidence, source, type")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--variant", action="append", help="variant to run (repeatable; default: ragbot). "
                   "Built in: ragbot, naive, no-rerank, llm-only, finetuned")
    p.add_argument("--out", help="output folder (default: <home>/eval/<run id>)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--history", action="store_true", help="list past runs instead")
    p.set_defaults(func=cmd_eval)

    ft = sub.add_parser("finetune", help="generate training data from the corpus and train a LoRA adapter")
    ftsub = ft.add_subparsers(dest="finetune_command", required=True)
    p = ftsub.add_parser("data", help="write RAFT-style training examples generated from indexed chunks")
    p.add_argument("--index", action="append", dest="indexes",
                   help="index folder to draw chunks from (repeatable; default: <home>/index)")
    p.add_argument("--out", required=True, help="output folder for train.jsonl and the data card")
    p.add_argument("--held-out", action="append", help="evaluation Q&A file whose questions must not be near-duplicated "
                   f"(repeatable; default: {', '.join(DEFAULT_HELD_OUT)} where present)")
    p.add_argument("--llm-chunks", type=int, default=500, help="chunks given to the LLM question writer over all "
                   "indexes, shared out by index size (0: structure-derived questions only)")
    p.add_argument("--llm-questions", type=int, default=2,
                   help="sentences per chunk the LLM writes a question for (one generation each)")
    p.add_argument("--passages", type=int, default=None,
                   help="passages per training example (gold + distractors; default: top_k, as at inference)")
    p.add_argument("--refusal-ratio", type=float, default=0.33,
                   help="share of single-part questions that also get a refusal example (~22%% of all examples)")
    p.add_argument("--max-questions", type=int, default=0, help="at most this many questions in all (0 = all found)")
    p.add_argument("--max-method-share", type=float, default=0.4,
                   help="no structure question type (definition, field, list, ...) above this share of an index's "
                   "structure questions")
    p.add_argument("--combined-share", type=float, default=0.15,
                   help="share of two-part questions (two facts of a chunk, or 'X 和 Y 有什么区别？')")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_finetune_data)
    p = ftsub.add_parser("train", help="train a LoRA adapter on the generated data (GPU when present)")
    p.add_argument("--data", required=True, help="folder written by `ragbot finetune data`")
    p.add_argument("--out", required=True, help="adapter output folder")
    p.add_argument("--rank", type=int, default=TrainConfig.rank)
    p.add_argument("--alpha", type=int, default=TrainConfig.alpha)
    p.add_argument("--top-layers", type=int, default=TrainConfig.top_layers, help="LoRA in the last N decoder layers only (0 = all)")
    p.add_argument("--target-modules", default=",".join(TrainConfig.target_modules),
                   help="comma-separated linear layers that get LoRA (default: attention and MLP)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on GPUs and on CPUs with bf16 instructions (AVX512-BF16/AMX), else fp32")
    p.add_argument("--lr", type=float, default=TrainConfig.learning_rate)
    p.add_argument("--epochs", type=float, default=TrainConfig.epochs)
    p.add_argument("--max-length", type=int, default=TrainConfig.max_length,
                   help="longest example in tokens (longer ones are skipped)")
    p.add_argument("--grad-accum", type=int, default=TrainConfig.grad_accum)
    p.add_argument("--max-examples", type=int, default=0, help="train on a random slice (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore checkpoints of an interrupted run")
    p.add_argument("--no-cache", action="store_true",
                   help="run every layer every epoch instead of caching the frozen layers' output (slower, same result)")
    p.set_defaults(func=cmd_finetune_train)
    p = ftsub.add_parser("export", help="copy a trained adapter into the repo's shipped form (bf16 weights, portable config)")
    p.add_argument("--adapter", required=True, help="folder written by `ragbot finetune train`")
    p.add_argument("--out", help="destination (default: ragbot/assets/adapter, which the `finetuned` variant uses)")
    p.set_defaults(func=cmd_finetune_export)

    p = sub.add_parser("prepare", help="build the offline model bundle now (otherwise done on first use); "
                                      "print each configured model, its backend and where it comes from")
    p.add_argument("--check", action="store_true",
                   help="only check: build nothing, ask a configured LLM server whether it answers")
    p.set_defaults(func=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RagbotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
