"""The fast path of LoRA training: the frozen layers run once, only the adapted layers run every epoch.

With LoRA in the top ``N`` decoder layers only, everything below the first adapted layer is frozen and
sees no adapter: the hidden states that enter layer ``start = n_layers - N`` are the same in every epoch.
:class:`PrefixCache` computes them once per example (no gradients, in the training precision) and keeps
them on disk; each epoch then runs :func:`adapted_suffix` (layers ``start..`` with their adapters, the final
norm) from the cache, and :func:`answer_loss` projects only the answer positions onto the vocabulary
(151,936 rows for Qwen2.5: over every prompt position that projection costs about as much as nine
decoder layers). Both are exact: the unit tests compare loss and gradients with the plain forward.

The layer loop mirrors the decoder model's own forward (``Qwen2Model.forward`` and the Llama family,
which share it in transformers 5): the same causal (and sliding-window) masks, rotary embeddings and
position ids, so an architecture whose layers take other arguments fails the exactness test instead of
training quietly on something else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


class _Reached(Exception):
    """Raised by the hook on the first adapted layer: the rest of the forward is not needed."""

    def __init__(self, hidden: Any) -> None:
        self.hidden = hidden


def decoder(lm: Any) -> Any:
    """The decoder stack (``model.model``) of a causal LM, through a peft wrapper if there is one."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.model


def frozen_prefix(lm: Any, input_ids: Any, start: int) -> Any:
    """The hidden states that enter decoder layer ``start`` (the embeddings when ``start`` is 0), without gradients.

    The model's own forward runs until that layer and stops there, so the prefix is computed by exactly the
    code that computes it in a full forward.
    """
    import torch

    layers = decoder(lm).layers
    if not 0 <= start < len(layers):
        raise ValueError(f"start layer {start} is outside the model's {len(layers)} layers")

    def stop(_module: Any, args: tuple, kwargs: dict) -> None:
        raise _Reached(args[0] if args else kwargs["hidden_states"])

    handle = layers[start].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            decoder(lm)(input_ids=input_ids, use_cache=False)
    except _Reached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"the decoder never reached its layer {start}")  # pragma: no cover


def adapted_suffix(lm: Any, hidden: Any, attention_mask: Any, start: int, *, from_position: int = 0) -> Any:
    """Decoder layers ``start..`` and the final norm on ``hidden`` (batch, seq, dim); positions 0..seq-1 per row
    (right padding, as the collator pads).

    With ``from_position`` P > 0 (one row only), the output is wanted only from position P on (the loss reads
    answer positions): the last layer then computes keys and values for every position but its queries, output
    projection and MLP, most of a layer, only for positions P.. (the model's own attention with a KV cache, as in
    generation). Returns the states of positions P.. only.
    """
    import torch
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    inner = decoder(lm)
    config = inner.config
    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * len(inner.layers))
    makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}

    def masks(states: Any, mask: Any, pos: Any, cache: Any = None) -> dict[str, Any]:
        args = {"config": config, "inputs_embeds": states, "attention_mask": mask, "past_key_values": cache,
                "position_ids": pos}
        return {t: makers[t](**args) for t in set(layer_types[start:])}

    rotary = inner.rotary_emb(hidden, positions)
    last = len(inner.layers) - 1
    # (a sliding-window last layer keeps the plain path: its cache would drop the keys the mask expects)
    split = (0 < from_position < hidden.shape[1] and hidden.shape[0] == 1 and start < last
             and layer_types[last] == "full_attention")
    full = masks(hidden, attention_mask, positions)
    for i in range(start, last if split else last + 1):
        hidden = inner.layers[i](hidden, attention_mask=full[layer_types[i]], position_embeddings=rotary,
                                 position_ids=positions, use_cache=False)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    if not split:
        return inner.norm(hidden)[:, from_position:]
    p, layer = from_position, inner.layers[last]
    # an explicit (T x T) mask, cut into the rows of each part (an implicit causal mask would align a shorter query
    # block with the first keys, not the last)
    explicit = makers[layer_types[last]](config=config, inputs_embeds=hidden, attention_mask=attention_mask,
                                         past_key_values=None, position_ids=positions, allow_is_causal_skip=False)
    cache = DynamicCache(config=config)
    # keys and values of positions 0..P-1 into the cache (their attention output is not needed)
    layer.self_attn(hidden_states=layer.input_layernorm(hidden[:, :p]), position_embeddings=tuple(r[:, :p] for r in rotary),
                    attention_mask=explicit[:, :, :p, :p], past_key_values=cache)
    out = layer(hidden[:, p:], attention_mask=explicit[:, :, p:, :], position_embeddings=tuple(r[:, p:] for r in rotary),
                position_ids=positions[:, p:], past_key_values=cache, use_cache=True)
    out = out[0] if isinstance(out, tuple) else out
    return inner.norm(out)


def answer_loss(lm: Any, hidden: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Next-token cross-entropy over the answer positions (labels != -100) only: just those hidden states go
    through ``lm_head``. With ``num_items_in_batch`` (the answer tokens of all micro-batches of one optimizer
    step) the sum is divided by it, so every answer token weighs the same however a step is split; else the mean.
    """
    import torch.nn.functional as F

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    shifted = labels[:, 1:]
    keep = shifted != -100
    logits = base.lm_head(hidden[:, :-1][keep]).float()
    if num_items_in_batch is None:
        return F.cross_entropy(logits, shifted[keep])
    return F.cross_entropy(logits, shifted[keep], reduction="sum") / num_items_in_batch


def full_answer_loss(lm: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
    """The loss without the cache: every layer runs, only answer positions are projected (the slow path's loss)."""
    hidden = decoder(lm)(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         use_cache=False).last_hidden_state
    return answer_loss(lm, hidden, inputs["labels"], num_items_in_batch)


def cached_answer_loss(lm: Any, inputs: dict[str, Any], start: int, num_items_in_batch: Any = None) -> Any:
    """The same loss from cached prefix states (``inputs["hidden"]``): only layers ``start..`` run, and the last
    of them only where a prediction is scored (from the position before the first answer token)."""
    labels = inputs["labels"]
    first = int((labels[0, 1:] != -100).nonzero()[0, 0]) if labels.shape[0] == 1 and (labels[0, 1:] != -100).any() else 0
    hidden = adapted_suffix(lm, inputs["hidden"], inputs["attention_mask"], start, from_position=first)
    return answer_loss(lm, hidden, labels[:, first:], num_items_in_batch)


def first_adapted_layer(lm: Any) -> int:
    """The lowest decoder layer holding a trainable parameter (every layer below it is frozen and adapter-free)."""
    import re

    found = [int(m.group(1)) for name, p in lm.named_parameters() if p.requires_grad
             for m in [re.search(r"\blayers\.(\d+)\.", name)] if m]
    trainable_outside = [name for name, p in lm.named_parameters() if p.requires_grad and ".layers." not in name]
    if trainable_outside:
        raise ValueError(f"trainable parameters outside the decoder layers ({trainable_outside[0]}, ...): "
                         "the prefix cache needs a frozen embedding")
    if not found:
        raise ValueError("the model has no trainable decoder layer")
    return min(found)


class PrefixCache:
    """``PrefixCache(folder).run(lm, examples, start)`` → examples with ``hidden`` (seq, dim) added.

    The states are saved in shards of ``shard_size`` examples under ``folder`` with a key (base model, start
    layer, dtype, the token ids of every example): an interrupted run resumes from the saved shards, and a
    cache built for other data or another model is rebuilt, never reused.
    """

    def __init__(self, folder: Path, *, shard_size: int = 64,
                 progress: Callable[..., Iterable[Any]] | None = None) -> None:
        self.folder = Path(folder)
        self.shard_size = shard_size
        self.progress = progress or (lambda it, **kw: it)

    def key(self, model_name: str, start: int, dtype: Any, examples: Sequence[dict[str, Any]]) -> str:
        digest = hashlib.sha256(json.dumps([model_name, start, str(dtype), CACHE_VERSION]).encode())
        for ex in examples:
            digest.update(json.dumps(ex["input_ids"]).encode())
        return digest.hexdigest()[:20]

    def run(self, lm: Any, examples: Sequence[dict[str, Any]], start: int, *, model_name: str = "") -> list[dict[str, Any]]:
        import torch
        from safetensors.torch import load_file, save_file

        device = next(lm.parameters()).device
        dtype = next(p for p in lm.parameters() if not p.requires_grad).dtype
        key = self.key(model_name, start, dtype, examples)
        stamp = self.folder / "cache.json"
        if not stamp.exists() or json.loads(stamp.read_text()).get("key") != key:
            if self.folder.exists():
                for old in self.folder.glob("shard-*.safetensors"):
                    old.unlink()
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps({"key": key, "start": start, "dtype": str(dtype), "examples": len(examples)}))
        out: list[dict[str, Any]] = []
        shards = range(0, len(examples), self.shard_size)
        for first in self.progress(shards, desc=f"cache layers 0-{start - 1}", unit="shard", total=len(shards)):
            path = self.folder / f"shard-{first // self.shard_size:05d}.safetensors"
            part = examples[first:first + self.shard_size]
            if path.exists():
                states = load_file(str(path))
            else:
                states = {}
                for i, ex in enumerate(part):
                    ids = torch.tensor([ex["input_ids"]], device=device)
                    states[str(i)] = frozen_prefix(lm, ids, start)[0].to("cpu").contiguous()
                save_file(states, str(path))
            out += [{**ex, "hidden": states[str(i)]} for i, ex in enumerate(part)]
        return out


def pad_batch(rows: Sequence[dict[str, Any]], pad_id: int, multiple: int = 1) -> dict[str, Any]:
    """Right-pad a micro-batch: ids with ``pad_id``, labels with -100, cached states with zeros, mask with 0."""
    import torch

    longest = max(len(r["input_ids"]) for r in rows)
    longest = -(-longest // multiple) * multiple
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([r["input_ids"] + [pad_id] * (longest - len(r["input_ids"])) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows]),
        "labels": torch.tensor([r["labels"] + [-100] * (longest - len(r["labels"])) for r in rows]),
    }
    if "hidden" in rows[0]:
        hidden = rows[0]["hidden"]
        batch["hidden"] = torch.stack([torch.cat([r["hidden"], hidden.new_zeros(longest - len(r["hidden"]), hidden.shape[1])])
                                       for r in rows])
    return batch
