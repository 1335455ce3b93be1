"""LLM backends behind one protocol, :class:`~ragbot.llm.base.ChatModel`.

:func:`chat_model_from_settings` picks the backend from the ``llm`` setting's scheme: ``openai:MODEL`` is a
server speaking the OpenAI chat-completions API (:mod:`ragbot.llm.remote`: vLLM, Ollama, llama.cpp's
server); ``llamacpp:bundle`` or ``llamacpp:PATH.gguf`` runs a GGUF in-process (:mod:`ragbot.llm.llamacpp`);
anything else (a bundle name, a hub id or a local folder) runs in-process with transformers
(:mod:`ragbot.llm.hf`). Backends load their model (or check their server) on first use (``warm_up``),
never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragbot.llm.base import ChatModel, degenerate

if TYPE_CHECKING:
    from ragbot.settings import Settings

__all__ = ["ChatModel", "backend", "cache_key", "chat_model_from_settings", "degenerate", "describe"]


def backend(settings: Settings) -> str:
    """The engine that answers: ``"openai"`` (a server), ``"llamacpp"`` or ``"transformers"`` (in-process)."""
    for scheme in ("openai", "llamacpp"):
        if settings.llm.startswith(scheme + ":"):
            return scheme
    return "transformers"


def chat_model_from_settings(settings: Settings) -> ChatModel:
    """The chat model the ``llm`` setting names (with the ``adapter`` merged in), not loaded yet."""
    from ragbot.errors import ConfigError

    if backend(settings) == "openai":
        from ragbot.llm.remote import OpenAIChatModel

        if settings.adapter:
            raise ConfigError(f"adapter ({settings.adapter!r}) cannot be applied to a server's model: serve it there "
                              "(vLLM --enable-lora --lora-modules ragbot=ADAPTER, llama-server --lora ADAPTER.gguf) "
                              "and set llm = \"openai:<its name>\", adapter = \"\"")
        return OpenAIChatModel.from_settings(settings)
    if backend(settings) == "llamacpp":
        from ragbot.llm.llamacpp import LlamaCppChatModel

        return LlamaCppChatModel.from_settings(settings)
    from ragbot.llm.hf import HFChatModel

    return HFChatModel.from_settings(settings)


def cache_key(settings: Settings) -> tuple:
    """The settings that make two chat models the same (a process keeps one per key)."""
    if backend(settings) == "openai":
        return (settings.llm, settings.llm_base_url, hash(settings.llm_api_key), settings.llm_context_window,
                settings.llm_concurrency, settings.llm_retries, settings.llm_connect_timeout_s,
                settings.llm_first_token_timeout_s, settings.llm_timeout_s)
    if backend(settings) == "llamacpp":
        return (settings.llm, settings.adapter, settings.num_threads, settings.llm_context_window)
    return (settings.llm, settings.adapter, settings.llm_precision, settings.device)


def describe(settings: Settings) -> str:
    """Which engine and model answer, in one line (the web app's sidebar, ``ragbot doctor``); never the key."""
    if backend(settings) == "openai":
        return f"OpenAI-compatible server · {settings.llm[len('openai:'):]} @ {settings.llm_base_url}"
    adapter = f" + LoRA {settings.adapter}" if settings.adapter else ""
    if backend(settings) == "llamacpp":
        from ragbot.llm.llamacpp import CPU_GGUF_TYPE

        spec = settings.llm[len("llamacpp:"):]
        model = f"bundle ({CPU_GGUF_TYPE})" if spec == "bundle" else spec
        return f"llama.cpp (in-process) · {model}{adapter}"
    return f"transformers (in-process, {settings.llm_precision}) · {settings.llm}{adapter}"


def check(settings: Settings, *, prepare: bool = True) -> tuple[bool, str]:
    """``(ok, where it comes from / why not)`` for the configured LLM: a server is asked what it serves, a GGUF
    or bundle is found (and with ``prepare``, built once). Used by ``ragbot prepare`` and ``--check``."""
    from ragbot.errors import RagbotError

    kind = backend(settings)
    try:
        if kind == "openai":
            from ragbot.llm.remote import OpenAIChatModel

            m = OpenAIChatModel.from_settings(settings)
            window = m.context_window()
            return True, f"served at {settings.llm_base_url}" + (f" (context {window} tokens)" if window else "")
        if kind == "llamacpp":
            import importlib.util

            from ragbot.llm.llamacpp import cpu_gguf_ready, resolve_gguf

            spec = settings.llm[len("llamacpp:"):]
            if importlib.util.find_spec("llama_cpp") is None:
                return False, "llama-cpp-python is not installed: pip install 'ragbot[llamacpp]'"
            if spec == "bundle" and not prepare:  # --check builds nothing
                ready = cpu_gguf_ready(settings.models_dir)
                return True, str(ready) if ready else ("the bundled GGUF requantised to IQ4_NL (made on first use "
                                                       "or by `ragbot prepare`)")
            return True, str(resolve_gguf(spec, settings.models_dir))
        from ragbot.bundle import locate_model

        where = locate_model(settings.llm, settings.models_dir, build=prepare, allow_downloads=settings.allow_downloads)
        adapter = f" + LoRA adapter {settings.adapter}" if settings.adapter else ""
        return True, f"{where}{adapter}"
    except RagbotError as e:
        return False, str(e)
