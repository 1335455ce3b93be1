"""LLM backends behind one protocol, :class:`~ragbot.llm.base.ChatModel`.

:func:`chat_model_from_settings` picks the backend from the ``llm`` setting; today every spec (a
bundle name, a hub id or a local folder) runs in-process with transformers (:mod:`ragbot.llm.hf`).
Backends load their model on first use (``warm_up``), never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragbot.llm.base import ChatModel, degenerate

if TYPE_CHECKING:
    from ragbot.settings import Settings

__all__ = ["ChatModel", "chat_model_from_settings", "degenerate"]


def chat_model_from_settings(settings: Settings) -> ChatModel:
    """The chat model the ``llm`` setting names (with the ``adapter`` merged in), not loaded yet."""
    from ragbot.llm.hf import HFChatModel

    return HFChatModel.from_settings(settings)
