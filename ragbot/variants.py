"""Named pipeline configurations ("variants") that evaluation and the arena compare side by side.

A variant is a set of setting overrides applied to the base settings, plus whether it retrieves at
all. Built-in variants are below; more can be defined in the settings file::

    [variants.big-k]
    top_k = 8
    description = "more passages"

A variant whose chunking or embedder differs from the main index gets an index of its own, built
from the files listed in the main index's manifest (see :func:`variant_index_path`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import ConfigError
from ragbot.settings import BUNDLED_LLM, LLAMACPP_LLM, SECRETS, Settings, config_path
from ragbot.store import IndexSpec

SHIPPED_ADAPTER = Path(__file__).resolve().parent / "assets" / "adapter"


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    retrieval: bool = True

    def settings(self, base: Settings) -> Settings:
        return base.replace(**self.overrides)


BUILTIN: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("ragbot", "the default pipeline: hybrid retrieval, grounded prompt, refusal gate, citation checks"),
        Variant("naive", "textbook RAG: fixed 512-character chunks (50 overlap), dense top-5, plain prompt",
                {"chunker": "fixed", "chunk_size": 512, "chunk_overlap": 50, "use_bm25": False, "reranker": "none",
                 "top_k": 5, "prompt": "plain", "refusal_gate": False, "align_citations": False}),
        Variant("no-rerank", "the default pipeline without the reranker stage", {"reranker": "none"}),
        Variant("llm-only", "the LLM alone, no retrieval",
                {"prompt": "plain", "refusal_gate": False, "align_citations": False}, retrieval=False),
        Variant("finetuned",
                "the default pipeline with the LoRA adapter in ragbot/assets/adapter (scripts/train_adapter.sh)",
                {"adapter": str(SHIPPED_ADAPTER)}),
        Variant("llamacpp", "the default pipeline, the bundled LLM run by llama.cpp (requantised to IQ4_NL)",
                {"llm": LLAMACPP_LLM}),
        Variant("transformers", "the default pipeline, the bundled LLM run by transformers in-process "
                "(int8 on CPUs, bf16 on GPUs)", {"llm": BUNDLED_LLM}),
    )
}


def _offered(name: str) -> bool:
    """Built-ins that need something optional: ``finetuned`` its adapter, ``llamacpp`` the llamacpp extra."""
    if name == "finetuned":
        return (SHIPPED_ADAPTER / "adapter_config.json").exists()
    if name == "llamacpp":
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None
    return True


def available(settings: Settings, config_file: Path | None = None) -> dict[str, Variant]:
    """Built-in variants (``finetuned`` when its adapter exists, ``llamacpp`` when llama.cpp is installed) plus those
    in the settings file (``config_file``, else ``$RAGBOT_CONFIG``, else ``./ragbot.toml``: the settings' file)."""
    variants = {k: v for k, v in BUILTIN.items() if _offered(k)}
    path = config_path(config_file)
    if path.exists():
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for name, table in data.get("variants", {}).items():
            table = dict(table)
            description = table.pop("description", "defined in " + str(path))
            retrieval = table.pop("retrieval", True)
            secrets = sorted(SECRETS & set(table))
            if secrets:  # a variant's overrides are written into every evaluation's summary
                raise ConfigError(f"variant {name!r} in {path} sets {', '.join(secrets)}: keys belong in the "
                                  "environment (RAGBOT_LLM_API_KEY ...) or the [ragbot] table, never in a variant")
            variant = Variant(name, description, table, retrieval)
            try:
                variant.settings(settings)
            except ConfigError as e:
                raise ConfigError(f"variant {name!r} in {path}: {e}") from None
            variants[name] = variant
    return variants


def resolve(names: list[str], settings: Settings, config_file: Path | None = None) -> list[Variant]:
    known = available(settings, config_file)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; available: {', '.join(known)}")
    return [known[n] for n in names]


def variant_index_path(base: Settings, variant_settings: Settings) -> Path:
    """The main index when the variant indexes like the base settings, else a sibling folder named by the
    variant's :meth:`IndexSpec.key <ragbot.store.IndexSpec.key>` (embedder and chunking, chunker version included)."""
    key = IndexSpec.from_settings(variant_settings).key()
    if IndexSpec.from_settings(base).key() == key:
        return base.index_path
    return base.index_path.parent / f"{base.index_path.name}-{key}"
