"""Benchmark ragbot on this machine: ingest per stage, retrieval(+rerank) latency, LLM first-token time and decode speed.

    RAGBOT_HOME=data python bench/bench_pipeline.py --corpus ../shared/corpus --qa ../shared/eval/dev_qa.jsonl

Models must be prepared already (``ragbot prepare``); the ingest runs into a fresh temporary index.
Decode speed is printed beside its memory-bandwidth bound: each generated token reads every weight
of the linear layers once, so tokens/s ≤ measured bandwidth / bytes of those weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.pipeline import IngestPipeline  # noqa: E402
from ragbot.embedder import SentenceTransformerEmbedder  # noqa: E402
from ragbot.llm.hf import HFChatModel  # noqa: E402
from ragbot.prompt import build_messages  # noqa: E402
from ragbot.pipeline import RagPipeline  # noqa: E402
from ragbot.settings import Settings  # noqa: E402


def memory_bandwidth_gbs(size_mb: int = 512, repeats: int = 5) -> float:
    """Read bandwidth from summing a large array (best of several runs)."""
    a = np.ones(size_mb * (1 << 20) // 8)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t) / 1e9)
    return best


def weight_bytes_per_token(model) -> int:
    """Bytes of linear-layer weights read per decoded token (int8 packed weights count 1 byte each)."""
    import torch

    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
        elif type(module).__name__ == "Linear" and hasattr(module, "weight") and callable(module.weight):
            w = module.weight()  # dynamic-quantised Linear: packed int8 weights
            total += w.numel() * w.element_size()
    return total


def gguf_bytes_per_token(path) -> int:
    """Bytes of a GGUF model's weights read per decoded token: every tensor, less the token embedding table
    (one row of it is read) unless the output matrix is tied to it (no ``output.weight``: then it is read whole)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="../shared/corpus")
    ap.add_argument("--qa", default="../shared/eval/dev_qa.jsonl")
    ap.add_argument("--questions", type=int, default=40, help="questions for the latency run")
    ap.add_argument("--generate", type=int, default=5, help="questions for the LLM timing run")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    settings = Settings.load()
    out: dict = {"settings": {k: settings.to_dict()[k] for k in ("embedder", "llm", "reranker", "llm_precision",
                                                                 "chunk_size", "chunk_overlap", "top_k")}}

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        embedder = SentenceTransformerEmbedder.from_settings(settings)
        embedder.warm_up()
        load_s = time.perf_counter() - t
        report = IngestPipeline.from_settings(settings, embedder).run([Path(args.corpus)], Path(tmp) / "index")
        out["ingest_seconds"] = {"embedder_load": round(load_s, 1), **{k: round(v, 1) for k, v in report.seconds.items()}}
        out["ingest_chunks"] = report.chunks_total
        print(f"ingest {args.corpus}: {report.chunks_total} chunks; seconds {out['ingest_seconds']}", flush=True)

        s = settings.replace(index_dir=Path(tmp) / "index")
        questions = [json.loads(line)["question"] for line in Path(args.qa).read_text(encoding="utf-8").splitlines()
                     if line.strip()][: args.questions]
        for reranker in ("none", settings.reranker) if settings.reranker != "none" else ("none",):
            pipe = RagPipeline.from_settings(s.replace(reranker=reranker), with_llm=False, embedder=embedder)
            pipe.warm_up()
            pipe.retrieve(questions[0])
            lat = []
            for q in questions:
                t = time.perf_counter()
                pipe.retrieve(q)
                lat.append((time.perf_counter() - t) * 1000)
            out[f"retrieval_ms[{reranker}]"] = {"p50": round(float(np.percentile(lat, 50)), 1),
                                                "p95": round(float(np.percentile(lat, 95)), 1)}
            print(f"retrieval + rerank ({reranker}) over {len(lat)} questions: {out[f'retrieval_ms[{reranker}]']}",
                  flush=True)

        chat = HFChatModel.from_settings(settings.replace(llm=settings.transformers_llm("bench_pipeline.py")))
        t = time.perf_counter()
        chat.warm_up()
        out["llm_load_s"] = round(time.perf_counter() - t, 1)
        ttft, decode, prompt_tokens = [], [], []
        for q in questions[: args.generate]:
            messages = build_messages(q, pipe.retrieve(q).final, settings.prompt, settings.max_passage_chars)
            prompt_tokens.append(chat.count_tokens(messages))
            t0 = time.perf_counter()
            times = []
            for _ in chat.stream(messages, max_new_tokens=args.max_new_tokens):
                times.append(time.perf_counter())
            ttft.append((times[0] - t0) * 1000)
            if len(times) > 4:
                decode.append((len(times) - 1) / (times[-1] - times[0]))
        bw = memory_bandwidth_gbs()
        wbytes = weight_bytes_per_token(chat.model)
        out["llm"] = {"precision": chat.precision_used, "prompt_tokens_mean": round(float(np.mean(prompt_tokens))),
                      "first_token_ms_p50": round(float(np.percentile(ttft, 50))),
                      "decode_tok_s_median": round(float(np.median(decode)), 1) if decode else None,
                      "weights_read_per_token_mb": round(wbytes / 1e6), "memory_bandwidth_gb_s": round(bw, 1),
                      "decode_bound_tok_s": round(bw * 1e9 / wbytes, 1)}
        print(f"LLM: {out['llm']}", flush=True)
    print(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
