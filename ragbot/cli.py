"""``ragbot`` command line: parses arguments and calls the library. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ragbot.errors import RagbotError


def _settings(args: argparse.Namespace, **extra):
    from ragbot.settings import Settings

    overrides = {"index_dir": getattr(args, "index", None), "top_k": getattr(args, "top_k", None), **extra}
    return Settings.load(getattr(args, "config", None), **overrides)


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.chunking import Chunker
    from ingest.pipeline import IngestPipeline, tqdm_progress
    from ragbot.embedder import SentenceTransformerEmbedder

    settings = _settings(args)
    pipeline = IngestPipeline(SentenceTransformerEmbedder.from_settings(settings),
                              Chunker(settings.chunk_size, settings.chunk_overlap, settings.chunker),
                              progress=tqdm_progress)
    report = pipeline.run([Path(p) for p in args.paths], settings.index_path, prune=args.prune, rebuild=args.rebuild)
    print(report.summary())
    if not report.ok:
        print("Nothing could be ingested: fix the files listed above (or give other paths).", file=sys.stderr)
        return 1
    return 0


def answer_to_json(answer) -> dict:
    """The ``--json`` shape of an answer (also used by the evaluation records)."""
    def cite(c):
        return {"n": c.n, "chunk_id": c.chunk.id, "source": c.chunk.source, "page": c.chunk.page,
                "heading": c.chunk.heading, "text": c.chunk.text}

    return {
        "question": answer.question,
        "answer": answer.text,
        "refused": answer.refused,
        "citations": [cite(c) for c in answer.citations],
        "hits": [{"chunk_id": h.chunk.id, "source": h.chunk.source, "page": h.chunk.page, "heading": h.chunk.heading,
                  "score": h.score, "stage": h.stage, "text": h.chunk.text} for h in answer.passages],
        "invalid_citation_markers": answer.invalid_markers,
        "timings_ms": {k: round(v, 1) for k, v in answer.timings_ms.items()},
    }


def cmd_ask(args: argparse.Namespace) -> int:
    from ragbot.pipeline import RagPipeline
    from ragbot.types import Answer

    settings = _settings(args)
    pipeline = RagPipeline.from_settings(settings)
    pipeline.warm_up()
    answer = None
    stream_to_terminal = not args.json and sys.stdout.isatty()
    for item in pipeline.ask_stream(args.question, args.top_k):
        if isinstance(item, Answer):
            answer = item
        elif stream_to_terminal:
            print(item, end="", flush=True)
    assert answer is not None
    if args.json:
        print(json.dumps(answer_to_json(answer), ensure_ascii=False, indent=2))
        return 0
    if stream_to_terminal:
        print("\n")
    if answer.refused:
        print(answer.text)
    else:
        if not stream_to_terminal:
            print(answer.text + "\n")
        print("来源：")
        for c in answer.citations:
            page = f" 第{c.chunk.page}页" if c.chunk.page else ""
            heading = f" · {c.chunk.heading}" if c.chunk.heading_path else ""
            print(f"  [{c.n}] {c.chunk.source}{page}{heading}")
    t = answer.timings_ms
    print(f"\n(检索 {t.get('retrieval_ms', 0):.0f} ms，首字 {t.get('first_token_ms', 0):.0f} ms，"
          f"生成 {t.get('generate_ms', 0) / 1000:.1f} s)", file=sys.stderr)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from ragbot.bundle import resolve_model

    settings = _settings(args)
    for spec in (settings.embedder, settings.llm):
        print(f"{spec} -> {resolve_model(spec, settings.models_dir, allow_downloads=settings.allow_downloads)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragbot", description="Local, private question answering over your documents.")
    parser.add_argument("--config", help="settings file (TOML); default ./ragbot.toml or $RAGBOT_CONFIG")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="add .md/.txt/.pdf files or folders to the index (only changes are re-embedded)")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--prune", action="store_true", help="remove files that no longer exist under the given folders")
    p.add_argument("--rebuild", action="store_true", help="start a new index (needed after changing embedder or chunking)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer a question from the index, with citations")
    p.add_argument("question")
    p.add_argument("--index", help="index folder (default: <home>/index)")
    p.add_argument("--top-k", type=int, default=None, help="passages given to the LLM (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("prepare", help="build the offline model bundle now (otherwise done on first use)")
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
