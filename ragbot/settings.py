"""One settings object for everything ragbot does.

Values come, in increasing priority, from the defaults below, a TOML file (``ragbot.toml`` in
the working directory, or the file named by ``RAGBOT_CONFIG``), ``RAGBOT_*`` environment
variables (``RAGBOT_TOP_K=8``) and explicit overrides (CLI flags). The object is frozen and
passed explicitly; nothing reads the environment behind its back.

Every model is a setting that takes ``bundle:<name>`` (the offline bundle, the default), a
local folder, or a hub id (used only when ``allow_downloads`` is true or already cached).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragbot.errors import ConfigError

BUNDLED_EMBEDDER = "bundle:multilingual-e5-small"
BUNDLED_LLM = "bundle:qwen2.5-coder-0.5b-instruct"
LLAMACPP_LLM = "llamacpp:bundle"  # the same bundled model, run by llama.cpp (the ``llamacpp`` extra)
REFUSAL = "资料中没有相关信息"
SECRETS = frozenset({"llm_api_key", "embedder_api_key"})  # settings never written or shown anywhere


def resolve_llm(device: str) -> str:
    """What ``llm = "auto"`` runs: the bundled model in llama.cpp when the ``llamacpp`` extra is installed and the
    device is the CPU (``device = "cpu"``, or ``auto`` on a machine without an NVIDIA driver), else in
    transformers. On 2 cores llama.cpp answered the dev set better and decoded 3.5x faster than the int8 path
    (README, "LLM backends"); on a GPU, transformers runs there and llama.cpp (built for the CPU) would not."""
    import importlib.util

    if device == "cuda" or (device == "auto" and _nvidia_driver()):
        return BUNDLED_LLM
    return LLAMACPP_LLM if importlib.util.find_spec("llama_cpp") is not None else BUNDLED_LLM


def _nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (its control device exists): cheap, unlike asking torch."""
    return Path("/dev/nvidiactl").exists()


def _default_home() -> Path:
    return Path(os.environ.get("RAGBOT_HOME", "~/.ragbot")).expanduser()


@dataclass(frozen=True)
class Settings:
    # where things live
    home: Path = field(default_factory=_default_home)
    index_dir: Path | None = None  # default: <home>/index

    # models
    # a sentence-transformers spec (bundle:, folder, hub id), "openai:MODEL" (a server), or "hash:DIM" (NOT
    # semantic: a hashing embedder for scale tests of the store)
    embedder: str = BUNDLED_EMBEDDER
    # an embedding server (embedder = "openai:MODEL"): its URL and key default to the LLM server's
    embedder_base_url: str = ""
    embedder_api_key: str = field(default="", repr=False)  # secret, like llm_api_key
    embedder_query_prefix: str = ""  # put before each question by a server embedder (e5: "query: "); in the manifest
    embedder_document_prefix: str = ""  # before each chunk (e5: "passage: "); in the manifest
    # "auto" (the bundled model: llama.cpp when its extra is installed and no GPU is to be used, else transformers;
    # see resolve_llm), a transformers spec (bundle:, folder, hub id), "llamacpp:bundle", "llamacpp:PATH.gguf", or
    # "openai:MODEL" (a server, below)
    llm: str = "auto"
    adapter: str = ""  # a LoRA adapter folder applied on top of ``llm``; empty for none
    # an OpenAI-compatible server (llm = "openai:MODEL"): vLLM, Ollama, llama.cpp's server, a hosted API
    llm_base_url: str = ""  # e.g. http://127.0.0.1:8000/v1 (vLLM), http://127.0.0.1:11434/v1 (Ollama)
    llm_api_key: str = field(default="", repr=False)  # secret: never logged, never in to_dict() (manifests, records)
    llm_connect_timeout_s: float = 5.0  # to open the connection
    llm_first_token_timeout_s: float = 120.0  # from the request to the first streamed piece (prefill, queueing)
    llm_timeout_s: float = 60.0  # the longest silence between two streamed pieces after the first
    llm_concurrency: int = 4  # requests in flight to one server from this process; more wait their turn
    llm_retries: int = 2  # retries of a request that failed before its first token (never after)
    llm_context_window: int = 0  # the served model's context in tokens; 0 asks the server (/v1/models)
    reranker: str = "ltr"  # "ltr" (shipped learned-to-rank), "ltr:<model.json>", "cross-encoder:<hub id or path>", "none"
    allow_downloads: bool = False
    device: str = "auto"  # auto, cpu, cuda
    llm_precision: str = "auto"  # auto (int8 on CPU, bf16 on GPU), int8, bf16, fp32
    num_threads: int = 0  # torch CPU threads; 0 keeps torch's default

    # chunking (recorded in the index manifest)
    chunk_size: int = 400
    chunk_overlap: int = 80
    chunker: str = "markdown"  # "markdown" (headers, then sentences) or "fixed" (plain character windows)

    # ingestion: limits that keep one hostile or broken file from exhausting memory or time
    embed_batch_size: int = 16
    max_line_chars: int = 20_000  # a longer line is cut before splitting (a 50 MB one-line file stays bounded)
    max_pdf_pages: int = 2_000  # pages read per PDF; later pages are skipped and reported
    max_pdf_chars: int = 5_000_000  # characters extracted per PDF; the rest is skipped and reported

    # the index on disk
    store: str = "local"  # "local" (segments in the index folder), "milvus:PATH.db" (Milvus Lite), "milvus://HOST:PORT"
    lock_timeout_s: float = 600.0  # how long a second writer waits for the index lock before giving up
    keep_versions: int = 2  # previous index versions kept for `ragbot index rollback` (besides the live one)
    version_grace_s: float = 300.0  # a superseded version is deleted only after this long (readers may hold it)
    ingest_batch_files: int = 200  # ingest publishes a version every this many files: an interrupted run resumes there
    ann_min_chunks: int = 50_000  # a segment this large gets an approximate (IVF) dense index; smaller ones are exact
    nprobe: int = 64  # IVF lists searched per question (more: higher recall, slower); see README "Scale"

    # retrieval
    dense_k: int = 30
    bm25_k: int = 30
    use_bm25: bool = True
    rrf_k: int = 60
    rerank_candidates: int = 20
    top_k: int = 5

    # generation
    prompt: str = "grounded"  # "grounded" (cite or refuse) or "plain" (textbook RAG prompt)
    refusal_gate: bool = True  # refuse without generating when the question names a term the documents never mention
    align_citations: bool = True  # cite by lexical alignment when the model's answer cites nothing
    valid_markers: bool = True  # decoding: a citation marker can only name a given passage ([1]..[k])
    repoint_citations: bool = True  # move a citation to the passage that supports its sentence when the cited one does not
    max_new_tokens: int = 256
    temperature: float = 0.0
    max_passage_chars: int = 300  # per passage in the prompt (a window focused on the question)
    max_question_chars: int = 2_000  # a longer question is refused with a message (CLI and web app)

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.llm == "auto":
            object.__setattr__(self, "llm", resolve_llm(self.device))
        if self.index_dir is not None:
            object.__setattr__(self, "index_dir", Path(self.index_dir).expanduser())
        for name in ("chunk_size", "dense_k", "bm25_k", "rrf_k", "top_k", "max_new_tokens", "embed_batch_size",
                     "rerank_candidates", "max_passage_chars", "max_line_chars", "max_pdf_pages", "max_pdf_chars",
                     "max_question_chars", "ingest_batch_files", "ann_min_chunks", "nprobe"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be at least 1")
        if not 0 <= self.chunk_overlap < self.chunk_size:
            raise ConfigError(
                f"chunk_overlap ({self.chunk_overlap}) must be between 0 and chunk_size ({self.chunk_size}) - 1"
            )
        if self.temperature < 0:
            raise ConfigError(f"temperature ({self.temperature}) must be >= 0 (0 means greedy decoding)")
        for name in ("lock_timeout_s", "version_grace_s", "keep_versions", "llm_retries", "llm_context_window"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be >= 0")
        for name in ("llm_connect_timeout_s", "llm_first_token_timeout_s", "llm_timeout_s", "llm_concurrency"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be greater than 0")
        if self.llm.startswith("openai:"):
            if not self.llm[len("openai:"):].strip():
                raise ConfigError(f"llm ({self.llm!r}) names no model: write openai:MODEL, e.g. openai:qwen2.5")
            if not self.llm_base_url.startswith(("http://", "https://")):
                raise ConfigError(f"llm_base_url ({self.llm_base_url!r}) must be the server's http(s) URL for "
                                  f"llm = {self.llm!r}, e.g. http://127.0.0.1:8000/v1 (set RAGBOT_LLM_BASE_URL)")
        if self.embedder.startswith("openai:"):
            if not self.embedder[len("openai:"):].strip():
                raise ConfigError(f"embedder ({self.embedder!r}) names no model: write openai:MODEL")
            if not (self.embedder_base_url or self.llm_base_url).startswith(("http://", "https://")):
                raise ConfigError(f"embedder_base_url ({self.embedder_base_url!r}) must be the embedding server's "
                                  f"http(s) URL for embedder = {self.embedder!r} (set RAGBOT_EMBEDDER_BASE_URL)")
        if not (self.store == "local" or self.store.startswith("milvus://") and len(self.store) > 9
                or self.store.startswith("milvus:") and not self.store.startswith("milvus://") and len(self.store) > 7):
            raise ConfigError(f"store ({self.store!r}) must be \"local\", \"milvus:PATH.db\" (Milvus Lite, a file) or "
                              "\"milvus://HOST:PORT\" (a Milvus server), e.g. RAGBOT_STORE=milvus:./ragbot.db")
        if self.num_threads < 0:
            raise ConfigError(f"num_threads ({self.num_threads}) must be >= 0 (0 keeps torch's default)")
        choices = {"device": ("auto", "cpu", "cuda"), "chunker": ("markdown", "fixed"), "prompt": ("grounded", "plain"),
                   "llm_precision": ("auto", "int8", "bf16", "fp32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} ({getattr(self, name)!r}) must be one of {', '.join(allowed)}")

    @property
    def index_path(self) -> Path:
        return self.index_dir if self.index_dir is not None else self.home / "index"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (validated like the original)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if "device" in changes and "llm" not in changes and self.llm == resolve_llm(self.device):
            changes["llm"] = "auto"  # what "auto" picked follows the device (llama.cpp runs on the CPU only)
        return dataclasses.replace(self, **changes)

    def transformers_llm(self, needed_for: str) -> str:
        """The transformers model behind ``llm``, for what needs its weights in torch (fine-tuning, an adapter's
        base, the judge): the bundle for ``llamacpp:bundle``; a one-line error for another GGUF or a server."""
        if self.llm == LLAMACPP_LLM:
            return BUNDLED_LLM
        if self.llm.startswith(("llamacpp:", "openai:")):
            raise ConfigError(f"{needed_for} needs a transformers model, and llm = {self.llm!r} is not one: set "
                              f"llm = \"{BUNDLED_LLM}\" (or a model folder or hub id) for it, e.g. RAGBOT_LLM=...")
        return self.llm

    def to_dict(self) -> dict[str, Any]:
        """Every setting but the secrets (:data:`SECRETS`): what manifests, evaluation records and the web app show."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
                if k not in SECRETS}

    @classmethod
    def load(cls, config_file: Path | str | None = None, env: typing.Mapping[str, str] | None = None,
             **overrides: Any) -> Settings:
        """Defaults < TOML file < ``RAGBOT_*`` environment variables < ``overrides`` (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_path(config_file, env)
        if config_file or path.exists():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"config file {path} does not exist; create it or unset RAGBOT_CONFIG") from None
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
            # settings live under [ragbot] or at the top level; [variants.*] tables are read by ragbot.variants
            values.update(data.get("ragbot", {k: v for k, v in data.items() if k != "variants"}))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            raw = env.get(f"RAGBOT_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(hints)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))} in {path}; known: {', '.join(hints)}")
        if "home" not in values:
            values["home"] = _default_home() if env is os.environ else Path(env.get("RAGBOT_HOME", "~/.ragbot"))
        return cls(**values)


def config_path(config_file: Path | str | None = None, env: typing.Mapping[str, str] | None = None) -> Path:
    """The settings file: ``config_file`` when given, else ``$RAGBOT_CONFIG``, else ``./ragbot.toml``."""
    env = os.environ if env is None else env
    return Path(config_file) if config_file else Path(env.get("RAGBOT_CONFIG", "ragbot.toml"))


def _parse(name: str, raw: str, hint: Any) -> Any:
    """Convert an environment string to the field's type, naming the variable when it does not parse."""
    base = {t for t in typing.get_args(hint) if t is not type(None)} or {hint}
    try:
        if bool in base:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if int in base:
            return int(raw)
        if float in base:
            return float(raw)
        if Path in base:
            return Path(raw) if raw else None
    except ValueError:
        raise ConfigError(f"RAGBOT_{name.upper()}={raw!r} is not a valid {' or '.join(t.__name__ for t in base)}") from None
    return raw


def embedder_identity(settings: Settings) -> str:
    """What the index manifest records as the embedder: the spec, plus the prefixes a server embedder puts before
    questions and chunks (they change the vectors). Unchanged for every other embedder."""
    if not (settings.embedder_query_prefix or settings.embedder_document_prefix):
        return settings.embedder
    return (f"{settings.embedder} (query prefix {settings.embedder_query_prefix!r}, "
            f"document prefix {settings.embedder_document_prefix!r})")
