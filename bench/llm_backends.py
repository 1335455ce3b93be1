"""LLM backends side by side on the same prompts: transformers int8, transformers bf16 (where the CPU has bf16
instructions) and llama.cpp on the bundled Q4_K_M GGUF.

    RAGBOT_HOME=data python bench/llm_backends.py --index data/index-shared --qa ../shared/eval/dev_qa.jsonl --json

Retrieval runs once; every backend then answers the same messages (the grounded prompt of each question,
``max_new_tokens`` from the settings, greedy). Per backend: time to first token (p50/p95), decode tokens/s
(median over answers; tokens counted with the bundled tokenizer, which all three share), seconds per answer,
and the decode bound: measured memory bandwidth / bytes of weights read per token (the linear layers' weights
for transformers; for llama.cpp every GGUF tensor but the token embedding table, of which one row is read,
as the GGUF keeps the output matrix apart from it).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_pipeline import gguf_bytes_per_token, memory_bandwidth_gbs, weight_bytes_per_token  # noqa: E402
from ragbot.finetune.train import cpu_has_bf16  # noqa: E402
from ragbot.llm import chat_model_from_settings  # noqa: E402
from ragbot.pipeline import RagPipeline  # noqa: E402
from ragbot.prompt import build_messages  # noqa: E402
from ragbot.settings import BUNDLED_LLM, LLAMACPP_LLM, Settings  # noqa: E402


def backends(settings: Settings, only: list[str]) -> dict[str, Settings]:
    """The backends to compare, by name."""
    found = {"transformers-int8": settings.replace(llm=BUNDLED_LLM, llm_precision="int8")}
    if cpu_has_bf16():
        found["transformers-bf16"] = settings.replace(llm=BUNDLED_LLM, llm_precision="bf16")
    found["llamacpp"] = settings.replace(llm=LLAMACPP_LLM)  # the bundle requantised to IQ4_NL
    if "llamacpp-q4_k_m" in only:  # the bundled GGUF as it is (mostly Q5_0: see bundled_cpu_gguf)
        from ragbot.llm.llamacpp import bundled_gguf

        found["llamacpp-q4_k_m"] = settings.replace(llm=f"llamacpp:{bundled_gguf(settings.models_dir)}")
    return {k: v for k, v in found.items() if not only or k in only}


def run_backend(name: str, settings: Settings, prompts: list[list[dict]], count) -> dict:
    model = chat_model_from_settings(settings)
    t = time.perf_counter()
    model.warm_up()
    load_s = time.perf_counter() - t
    model.generate(prompts[0], max_new_tokens=4)  # first-call costs (allocations, threads) out of the timings
    ttft, decode, total, tokens, texts = [], [], [], [], []
    for i, messages in enumerate(prompts):
        t0 = time.perf_counter()
        stamps, pieces = [], []
        for piece in model.stream(messages, max_new_tokens=settings.max_new_tokens, temperature=0.0,
                                  citable=settings.top_k):
            stamps.append(time.perf_counter())
            pieces.append(piece)
        end = time.perf_counter()
        text = "".join(pieces)
        n = count(text)
        texts.append(text)
        tokens.append(n)
        total.append(end - t0)
        if stamps:
            ttft.append((stamps[0] - t0) * 1000)
            if n > 4 and stamps[-1] > stamps[0]:
                decode.append((n - 1) / (stamps[-1] - stamps[0]))
        print(f"  {name} {i + 1}/{len(prompts)}: {n} tokens, first {ttft[-1] if stamps else 0:.0f} ms, "
              f"{total[-1]:.1f} s", file=sys.stderr, flush=True)
    if name.startswith("llamacpp"):
        weights = gguf_bytes_per_token(model.path)
    else:
        weights = weight_bytes_per_token(model.model)
    out = {"load_s": round(load_s, 1), "first_token_ms_p50": round(float(np.percentile(ttft, 50))),
           "first_token_ms_p95": round(float(np.percentile(ttft, 95))),
           "decode_tok_s_median": round(float(np.median(decode)), 1) if decode else None,
           "seconds_per_answer_mean": round(float(np.mean(total)), 2), "tokens_mean": round(float(np.mean(tokens)), 1),
           "weights_read_per_token_mb": round(weights / 1e6)}
    del model
    gc.collect()
    return out, texts


def run_server(settings: Settings, prompts: list[list[dict]], count, concurrency: int) -> dict:
    """llama.cpp's OpenAI-compatible server on the bundled GGUF, asked ``concurrency`` questions at a time over
    the ``openai:`` backend: every answer, throughput and latency (the server decodes one request at a time)."""
    import os
    import socket
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from ragbot.llm.llamacpp import resolve_gguf
    from ragbot.llm.remote import OpenAIChatModel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gguf = resolve_gguf("bundle", settings.models_dir)
    threads = str(settings.num_threads or len(os.sched_getaffinity(0)))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "qwen",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", threads, "--n_threads_batch",
                             threads, "--interrupt_requests", "false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        model = OpenAIChatModel("qwen", f"http://127.0.0.1:{port}/v1", concurrency=concurrency, retries=0)
        for _ in range(240):
            try:
                model.served()
                break
            except Exception:
                time.sleep(0.5)
        model.generate(prompts[0], max_new_tokens=4)

        def ask(messages):
            t = time.perf_counter()
            text = model.generate(messages, max_new_tokens=settings.max_new_tokens, temperature=0.0)
            return time.perf_counter() - t, count(text), text

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(ask, prompts))
        wall = time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()
    latency = [r[0] for r in results]
    return {"concurrency": concurrency, "answered": sum(1 for r in results if r[2]), "asked": len(prompts),
            "wall_s": round(wall, 1), "answers_per_min": round(len(prompts) / wall * 60, 1),
            "output_tok_s": round(sum(r[1] for r in results) / wall, 1),
            "latency_s_p50": round(float(np.percentile(latency, 50)), 1),
            "latency_s_p95": round(float(np.percentile(latency, 95)), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, help="index to retrieve from (default: the settings' index)")
    ap.add_argument("--qa", default="../shared/eval/dev_qa.jsonl")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--backend", action="append", default=[],
                    help="only these (repeatable): transformers-int8, transformers-bf16, llamacpp, and llamacpp-q4_k_m "
                         "(the bundled GGUF as it is; only when named)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--server", type=int, default=4, metavar="N",
                    help="also ask llama.cpp's OpenAI-compatible server N questions at a time (0: skip)")
    args = ap.parse_args()
    settings = Settings.load(index_dir=args.index)
    rows = [json.loads(line) for line in Path(args.qa).read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [r["question"] for r in rows if r.get("type") != "unanswerable"][: args.questions]
    pipe = RagPipeline.from_settings(settings, with_llm=False)
    pipe.warm_up()
    prompts = [build_messages(q, pipe.retrieve(q).final, settings.prompt, settings.max_passage_chars)
               for q in questions]
    from transformers import AutoTokenizer

    from ragbot.bundle import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(BUNDLED_LLM, settings.models_dir))
    prompt_tokens = [len(tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"])
                     for m in prompts]

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    bw = memory_bandwidth_gbs()
    out = {"questions": len(prompts), "prompt_tokens_mean": round(float(np.mean(prompt_tokens))),
           "max_new_tokens": settings.max_new_tokens, "memory_bandwidth_gb_s": round(bw, 1),
           "cpu_bf16": cpu_has_bf16(), "threads": settings.num_threads or "default", "backends": {}}
    answers = {}
    for name, s in backends(settings, args.backend).items():
        print(f"{name} ...", file=sys.stderr, flush=True)
        result, answers[name] = run_backend(name, s, prompts, count)
        result["decode_bound_tok_s"] = round(bw * 1e9 / (result["weights_read_per_token_mb"] * 1e6), 1)
        if result["decode_tok_s_median"]:
            result["decode_share_of_bound"] = round(result["decode_tok_s_median"] / result["decode_bound_tok_s"], 2)
        out["backends"][name] = result
        print(f"{name}: {result}", file=sys.stderr, flush=True)
    if args.server:
        print(f"llama_cpp.server, {args.server} at a time ...", file=sys.stderr, flush=True)
        out["server"] = run_server(settings, prompts, count, args.server)
        print(f"server: {out['server']}", file=sys.stderr, flush=True)
    names = list(answers)
    if len(names) > 1:
        base = names[0]
        out["same_answer_as_" + base] = {n: sum(a == b for a, b in zip(answers[base], answers[n])) for n in names[1:]}
        ref = out["backends"][base]["decode_tok_s_median"]
        out["decode_speedup_vs_" + base] = {n: round(out["backends"][n]["decode_tok_s_median"] / ref, 2)
                                            for n in names[1:] if ref and out["backends"][n]["decode_tok_s_median"]}
    print(json.dumps(out, ensure_ascii=False, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
