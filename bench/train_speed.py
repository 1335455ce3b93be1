"""Seconds per training epoch: today's trainer against each step of the fast path, on the same examples, in one run.

    RAGBOT_HOME=data python bench/train_speed.py --data data/ft-data --examples 64 [--json out.json]

Modes (each trains a fresh LoRA from the same seed on the same examples: forward, backward, an optimizer step
every ``--grad-accum`` examples):

* ``today``: the trainer before the fast path, as ``scripts/train_adapter.sh`` ran it: LoRA (dropout 0.05) in the
  top 6 layers, every layer runs, only answer positions are projected onto the vocabulary;
* ``stock``: the stock causal-LM loss (every position's logits) with the new LoRA shape (top ``--top-layers``);
* ``answer-only``: the same LoRA, only answer positions projected (:func:`ragbot.finetune.prefix.full_answer_loss`);
* ``cached``: the same LoRA, the frozen layers' output read from the cache, only the top layers run
  (:func:`ragbot.finetune.prefix.cached_answer_loss`); the one-off cache build is timed apart and also shown
  spread over ``--epochs`` epochs.

All in the precision training picks on this machine (:func:`ragbot.finetune.train.choose_precision`); the cached
mode is also timed in fp32 on the first ``--fp32-examples`` examples, beside the same examples in bf16, where the
CPU has bf16 instructions. The CPU's flags are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragbot.bundle import resolve_model  # noqa: E402
from ragbot.finetune.train import TrainConfig, choose_precision, encode_example, load_examples  # noqa: E402
from ragbot.settings import Settings  # noqa: E402


def lora(base: str, dtype, top_layers: int, dropout: float, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    n = model.config.num_hidden_layers
    return get_peft_model(model, LoraConfig(r=TrainConfig.rank, lora_alpha=TrainConfig.alpha, lora_dropout=dropout,
                                            target_modules=list(TrainConfig.target_modules),
                                            layers_to_transform=list(range(n - top_layers, n)), task_type="CAUSAL_LM"))


def epoch(model, rows, loss_fn, grad_accum: int) -> list[float]:
    """Seconds per example (forward, backward, and the optimizer step when one falls on it)."""
    import torch

    from ragbot.finetune.prefix import pad_batch

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    times = []
    for i, row in enumerate(rows):
        t = time.perf_counter()
        batch = pad_batch([row], pad_id=0)
        n_items = sum(1 for x in row["labels"][1:] if x != -100) * grad_accum
        (loss_fn(model, batch, n_items)).backward()
        if (i + 1) % grad_accum == 0 or i == len(rows) - 1:
            opt.step()
            opt.zero_grad()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="folder with train.jsonl (ragbot finetune data)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--top-layers", type=int, default=TrainConfig.top_layers)
    ap.add_argument("--grad-accum", type=int, default=TrainConfig.grad_accum)
    ap.add_argument("--epochs", type=float, default=TrainConfig.epochs, help="to spread the cache build over")
    ap.add_argument("--modes", default="today,stock,answer-only,cached")
    ap.add_argument("--fp32-examples", type=int, default=16, help="0 = skip the precision comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import tempfile

    import torch

    from ragbot.finetune.prefix import PrefixCache, cached_answer_loss, first_adapted_layer, full_answer_loss

    settings = Settings.load()
    base = resolve_model(settings.transformers_llm("train_speed.py"), settings.models_dir, allow_downloads=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    rows = random.Random(args.seed).sample(load_examples(Path(args.data)), args.examples)
    encoded = [e for r in rows if (e := encode_example(tok, r["messages"], r["target"], TrainConfig.max_length))]
    precision, why = choose_precision("cpu")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tokens = sum(len(e["input_ids"]) for e in encoded)
    answer = sum(sum(1 for x in e["labels"] if x != -100) for e in encoded)
    print(f"{len(encoded)} examples, {tokens / len(encoded):.0f} tokens each on average ({answer / len(encoded):.0f} answer "
          f"tokens); {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"precision {precision} ({why})", flush=True)

    def stock(model, batch, n_items):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    results: dict[str, dict] = {}

    def run_cached(dt, subset):
        model = lora(base, dt, args.top_layers, 0.0, args.seed)
        start = first_adapted_layer(model)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            cached = PrefixCache(Path(tmp)).run(model, subset, start)
            build = time.perf_counter() - t
        times = epoch(model, cached, lambda m, b, n: cached_answer_loss(m, b, start, n), args.grad_accum)
        return build, times

    for mode in args.modes.split(","):
        if mode == "cached":
            build, times = run_cached(dtype, encoded)
            results[mode] = {"epoch_s": sum(times), "per_example_s": times, "cache_build_s": build,
                             "epoch_with_build_s": sum(times) + build / args.epochs}
        else:
            top, dropout = (6, 0.05) if mode == "today" else (args.top_layers, 0.0)
            model = lora(base, dtype, top, dropout, args.seed)
            fn = stock if mode == "stock" else full_answer_loss
            times = epoch(model, encoded, fn, args.grad_accum)
            results[mode] = {"epoch_s": sum(times), "per_example_s": times}
            del model
        print(f"{mode:12s} {results[mode]['epoch_s']:8.1f} s/epoch"
              + (f"  (+ cache build {results[mode]['cache_build_s']:.1f} s once)" if mode == "cached" else ""), flush=True)

    if args.fp32_examples and precision == "bf16" and "cached" in results:
        subset = encoded[: args.fp32_examples]
        build32, times32 = run_cached(torch.float32, subset)
        bf16_same = sum(results["cached"]["per_example_s"][: len(subset)])
        results["cached-fp32"] = {"examples": len(subset), "epoch_s": sum(times32), "cache_build_s": build32,
                                  "bf16_epoch_same_examples_s": bf16_same}
        print(f"precision on the first {len(subset)} examples, cached epoch: fp32 {sum(times32):.1f} s vs bf16 "
              f"{bf16_same:.1f} s ({sum(times32) / bf16_same:.2f}x); cache build fp32 {build32:.1f} s", flush=True)

    print("\nratios (seconds per epoch, same examples, this run):")
    for a, b in (("today", "cached"), ("stock", "answer-only"), ("answer-only", "cached"), ("stock", "cached")):
        if a in results and b in results:
            r = results[a]["epoch_s"] / results[b]["epoch_s"]
            line = f"  {a} / {b}: {r:.2f}x"
            if b == "cached":
                line += f"  (counting the cache build over {args.epochs:g} epochs: " \
                        f"{results[a]['epoch_s'] / results[b]['epoch_with_build_s']:.2f}x)"
            print(line)
    if args.json:
        summary = {"precision": precision, "why": why, "examples": len(encoded), "mean_tokens": tokens / len(encoded),
                   "top_layers": args.top_layers, "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
