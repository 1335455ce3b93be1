"""LLM backends behind one protocol, :class:`~ragbot.llm.base.ChatModel`.

:func:`chat_model_from_settings` picks the backend from the ``llm`` setting's scheme: ``openai:MODEL`` is a
server speaking the OpenAI chat-completions API (:mod:`ragbot.llm.remote`: vLLM, Ollama, llama.cpp's
server); anything else (a bundle name, a hub id or a local folder) runs in-process with transformers
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
    """The engine that answers: ``"openai"`` (a server) or ``"transformers"`` (in-process)."""
    from ragbot.llm.remote import SCHEME

    return "openai" if settings.llm.startswith(SCHEME) else "transformers"


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
    from ragbot.llm.hf import HFChatModel

    return HFChatModel.from_settings(settings)


def cache_key(settings: Settings) -> tuple:
    """The settings that make two chat models the same (a process keeps one per key)."""
    if backend(settings) == "openai":
        return (settings.llm, settings.llm_base_url, hash(settings.llm_api_key), settings.llm_context_window,
                settings.llm_concurrency, settings.llm_retries, settings.llm_connect_timeout_s,
                settings.llm_first_token_timeout_s, settings.llm_timeout_s)
    return (settings.llm, settings.adapter, settings.llm_precision, settings.device)


def describe(settings: Settings) -> str:
    """Which engine and model answer, in one line (the web app's sidebar, ``ragbot doctor``); never the key."""
    if backend(settings) == "openai":
        return f"OpenAI-compatible server · {settings.llm[len('openai:'):]} @ {settings.llm_base_url}"
    adapter = f" + LoRA {settings.adapter}" if settings.adapter else ""
    return f"transformers (in-process, {settings.llm_precision}) · {settings.llm}{adapter}"
