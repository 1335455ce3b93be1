"""LoRA fine-tuning of the answerer with peft and the transformers ``Trainer``.

The loss covers only the answer tokens: the prompt (instructions, passages, question) is masked
with -100, so the model learns what to say given passages, not to reproduce them. LoRA sits in the top
``top_layers`` decoder layers; the layers below are frozen, so by default (``cache_prompt``) their output is
computed once per example and cached on disk (:mod:`ragbot.finetune.prefix`), and every epoch runs only
the adapted layers, projecting only answer positions onto the vocabulary. Precision follows the hardware,
detected at run time (:func:`choose_precision`): bf16 on GPUs and on CPUs with AVX512-BF16 or AMX, fp32 on
other CPUs (bf16 is emulated there and slower than fp32); the LoRA weights stay fp32. Checkpoints (and the
cache's shards) let an interrupted run resume; the output folder holds the adapter, the training settings
and the data card together.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    rank: int = 8
    alpha: int = 16
    # no dropout: on this CPU dropout on the LoRA inputs cost ~25% of a step (a copy of every adapted input)
    dropout: float = 0.0
    # attention and MLP: on a CPU the backward pass runs through these layers' MLPs anyway, so LoRA there is cheap
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    precision: str = "auto"  # auto (bf16 on GPUs and on CPUs with bf16 instructions, else fp32), bf16, fp32
    # LoRA only in the last N decoder layers (0 = all); the layers below are frozen. 3 keeps the recipe (~1,550
    # examples, 2 epochs) near 90 min on a 2-core CPU with bf16 (cache ~2.2 s, epoch ~0.75 s per 1k-token example)
    top_layers: int = 3
    cache_prompt: bool = True  # run the frozen layers once and train the top ones from their cached output
    learning_rate: float = 2e-4
    epochs: float = 2.0
    max_length: int = 1280
    batch_size: int = 1
    grad_accum: int = 8
    warmup_ratio: float = 0.05
    val_fraction: float = 0.1
    seed: int = 0
    max_examples: int = 0  # 0 = all; a quick run can train on a slice
    log_every: int = 5  # optimizer steps between loss logs
    # Sequences are padded to a multiple of this (tensor-core friendly shapes on GPUs). On this CPU, padding
    # to 64 vs none measured the same step time (3.6 vs 3.4 s for ~950 tokens).
    pad_to_multiple: int = 8

    def __post_init__(self) -> None:
        if self.top_layers < 0:
            raise ConfigError(f"top_layers ({self.top_layers}) must be >= 0 (0 = all layers)")
        for name in ("rank", "alpha", "max_length", "batch_size", "grad_accum", "pad_to_multiple"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be at least 1")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"learning_rate ({self.learning_rate}) must be in (0, 1)")
        if not 0 <= self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction ({self.val_fraction}) must be in [0, 0.5)")
        if self.epochs <= 0:
            raise ConfigError(f"epochs ({self.epochs}) must be > 0")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision ({self.precision!r}) must be one of auto, bf16, fp32")


def encode_example(tokenizer: Any, messages: list[dict], target: str, max_length: int) -> dict[str, list[int]] | None:
    """Token ids of prompt + answer, with labels -100 on the prompt; None when it does not fit ``max_length``.

    The prompt is rendered with the chat template exactly as at inference (``add_generation_prompt``),
    so the boundary between prompt and answer is where generation starts.
    """
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": target}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with an answer; cannot mask the prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full.rstrip("\n"), add_special_tokens=False)["input_ids"]
    if len(full_ids) > max_length:
        return None
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return {"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels}


def load_examples(data_dir: Path) -> list[dict[str, Any]]:
    path = Path(data_dir) / "train.jsonl"
    if not path.exists():
        raise ConfigError(f"{path} does not exist; generate it first: ragbot finetune data --out {data_dir}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class TrainResult:
    out_dir: str
    train_examples: int
    val_examples: int
    skipped_too_long: int
    steps: int
    seconds: float
    device: str
    val_loss: list[float] = field(default_factory=list)
    train_loss: float | None = None
    cache_seconds: float = 0.0  # building the frozen layers' cache (included in ``seconds``)
    precision_reason: str = ""


class LoraTrainer:
    """``LoraTrainer(base_model_path, config).run(data_dir, out_dir)`` → :class:`TrainResult`."""

    def __init__(self, base_model: str, config: TrainConfig, *, device: str = "auto", show_progress: bool = True) -> None:
        self.base_model = base_model
        self.config = config
        self.device = device
        self.show_progress = show_progress

    def run(self, data_dir: Path, out_dir: Path, *, resume: bool = True) -> TrainResult:
        import shutil

        import torch
        from peft import LoraConfig, get_peft_model
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

        from ragbot.embedder import resolve_device
        from ragbot.finetune.prefix import PrefixCache, first_adapted_layer, pad_batch

        start_time = time.perf_counter()
        cfg, out_dir = self.config, Path(out_dir)
        rows = load_examples(Path(data_dir))
        if cfg.max_examples:
            rows = random.Random(cfg.seed).sample(rows, min(cfg.max_examples, len(rows)))
        train_rows, val_rows = _split(rows, cfg.val_fraction, cfg.seed)
        tokenizer = AutoTokenizer.from_pretrained(self.base_model)
        encoded, skipped = {}, 0
        for name, part in (("train", train_rows), ("val", val_rows)):
            encoded[name] = []
            for r in part:
                ex = encode_example(tokenizer, r["messages"], r["target"], cfg.max_length)
                if ex is None:
                    skipped += 1
                else:
                    encoded[name].append(ex)
        if not encoded["train"]:
            raise ConfigError(f"no training example fits max_length={cfg.max_length} tokens; raise max_length")

        device = resolve_device(self.device)
        precision, why = choose_precision(device, cfg.precision)
        print(f"training precision: {precision} ({why})", flush=True)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.base_model, dtype=dtype).to(device)
        n_layers = model.config.num_hidden_layers
        layers = list(range(n_layers - cfg.top_layers, n_layers)) if 0 < cfg.top_layers < n_layers else None
        model = get_peft_model(model, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                 target_modules=list(cfg.target_modules), layers_to_transform=layers,
                                                 task_type="CAUSAL_LM"))
        start = first_adapted_layer(model)
        cache_seconds = 0.0
        if cfg.cache_prompt and start > 0:
            t = time.perf_counter()
            progress = (lambda it, **kw: tqdm(it, **kw)) if self.show_progress else None
            for name in encoded:
                cache = PrefixCache(out_dir / "prefix-cache" / name, progress=progress)
                encoded[name] = cache.run(model, encoded[name], start, model_name=self.base_model)
            cache_seconds = time.perf_counter() - t
            print(f"cached the frozen layers 0-{start - 1} for {sum(map(len, encoded.values()))} examples "
                  f"in {cache_seconds / 60:.1f} min", flush=True)
        checkpoints = out_dir / "checkpoints"
        args = TrainingArguments(
            output_dir=str(checkpoints), per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio
            lr_scheduler_type="cosine", logging_steps=cfg.log_every, eval_strategy="epoch" if encoded["val"] else "no",
            # the frozen weights are loaded in the training precision; autocast adds nothing on top of that
            save_strategy="steps", save_steps=20, save_total_limit=2,
            use_cpu=device == "cpu", report_to=[], seed=cfg.seed, disable_tqdm=not self.show_progress,
            remove_unused_columns=False, dataloader_num_workers=0,
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        trainer = _trainer_class(start if cfg.cache_prompt and start > 0 else None)(
            model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["val"] or None,
            data_collator=lambda batch: pad_batch(batch, pad_id, cfg.pad_to_multiple))
        has_checkpoint = resume and checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
        output = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
        seconds = time.perf_counter() - start_time

        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # the adapter only: a few MB
        val_loss = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        result = TrainResult(str(out_dir), len(encoded["train"]), len(encoded["val"]), skipped,
                             trainer.state.global_step, seconds, f"{device} ({precision})", val_loss, output.training_loss,
                             round(cache_seconds, 1), why)
        settings = {"base_model": self.base_model, "config": asdict(cfg), "result": asdict(result),
                    "loss_history": [h for h in trainer.state.log_history if "loss" in h or "eval_loss" in h]}
        (out_dir / "train_settings.json").write_text(json.dumps(settings, ensure_ascii=False, indent=1))
        for name in ("data_card.json", "data_card.md"):
            if (Path(data_dir) / name).exists():
                shutil.copy(Path(data_dir) / name, out_dir / name)
        shutil.rmtree(checkpoints, ignore_errors=True)
        shutil.rmtree(out_dir / "prefix-cache", ignore_errors=True)
        return result


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX) rather than emulating them."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: no way to tell, fp32 is the safe choice
        return False


def choose_precision(device: str, requested: str = "auto") -> tuple[str, str]:
    """``(precision, why)`` for training on ``device``, detected at run time: CPUs of one kind of machine differ."""
    if requested != "auto":
        return requested, "set by the precision setting"
    if device != "cpu":
        return "bf16", f"{device}"
    import torch

    flags = {"AVX512-BF16": getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)(),
             "AMX": getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()}
    found = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in flags.items())
    return ("bf16" if cpu_has_bf16() else "fp32"), f"CPU {found}"


def _trainer_class(cached_from: int | None) -> Any:
    """A ``Trainer`` whose loss projects only answer positions and, with ``cached_from``, runs only the decoder
    layers from that one on, from the cached states of the layers below (:mod:`ragbot.finetune.prefix`)."""
    from transformers import Trainer

    from ragbot.finetune.prefix import cached_answer_loss, full_answer_loss

    def loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if cached_from is not None:
            return cached_answer_loss(model, inputs, cached_from, num_items_in_batch)
        return full_answer_loss(model, inputs, num_items_in_batch)

    class AnswerOnlyTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # The Trainer leaves the division by gradient-accumulation steps to a loss that takes
            # num_items_in_batch; the mean per micro-batch alone made the logged loss 8x too large.
            value = loss(model, inputs, num_items_in_batch)
            return (value, None) if return_outputs else value

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            import torch

            with torch.no_grad():
                return loss(model, self._prepare_inputs(inputs)).detach(), None, None

    return AnswerOnlyTrainer


def _split(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list, list]:
    """Split by question, so a question's answer and refusal examples land on the same side."""
    questions = sorted({r["question"] for r in rows})
    random.Random(seed).shuffle(questions)
    n_val = max(1, math.floor(len(questions) * val_fraction)) if val_fraction > 0 and len(questions) > 1 else 0
    val_q = set(questions[:n_val])
    return [r for r in rows if r["question"] not in val_q], [r for r in rows if r["question"] in val_q]


SHIPPED_FILES = ("adapter_config.json", "adapter_model.safetensors", "train_settings.json", "data_card.json", "data_card.md")


def export_adapter(src: Path, dst: Path, *, base_model: str) -> list[Path]:
    """Copy a trained adapter folder to ``dst`` in the form the repo ships: weights in bf16 (half the size; peft
    upcasts them when it loads), the base model (``base_model_name_or_path`` and the training settings') set to the
    settings' model spec rather than this machine's path, and the data card without the text of held-out questions (it keeps their count).
    """
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    missing = [n for n in SHIPPED_FILES[:3] if not (src / n).exists()]
    if missing:
        raise ConfigError(f"{src} is not a trained adapter folder (missing {', '.join(missing)}); "
                          "train one first: ragbot finetune train --data DIR --out DIR")
    dst.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(src / "adapter_model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(dst / "adapter_model.safetensors"))
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2))
    settings = json.loads((src / "train_settings.json").read_text(encoding="utf-8"))
    settings["base_model"] = base_model
    (dst / "train_settings.json").write_text(json.dumps(settings, ensure_ascii=False, indent=1), encoding="utf-8")
    if (src / "data_card.json").exists():
        card = json.loads((src / "data_card.json").read_text(encoding="utf-8"))
        for filters in card.get("filters", {}).values():
            filters["near_duplicate_examples"] = [{k: v for k, v in e.items() if k != "held_out"}
                                                  for e in filters.get("near_duplicate_examples", [])]
        (dst / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    if (src / "data_card.md").exists():
        (dst / "data_card.md").write_text((src / "data_card.md").read_text(encoding="utf-8"), encoding="utf-8")
    return [dst / n for n in SHIPPED_FILES if (dst / n).exists()]
