"""One connection to an OpenAI-compatible server (vLLM, Ollama, llama.cpp's server, TEI, a hosted API), shared by
the chat backend (:mod:`ragbot.llm.remote`) and the embedder (:class:`ragbot.embedder.OpenAIEmbedder`).

It owns the client (the ``openai`` extra), the ``/v1/models`` listing and the one-line error for every way a
request can fail, worded for the setting it concerns (``llm`` or ``embedder``) and never naming the key.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from ragbot.errors import LLMServerError, MissingExtraError

# how servers say a prompt is too long: vLLM "maximum context length is 2048 tokens", llama.cpp "exceed context
# window of 2048", "context_length_exceeded" (OpenAI), Ollama "input length exceeds the context length"
_TOO_LONG = re.compile(r"context.{0,12}(length|window)|maximum context|context_length_exceeded", re.I)
_SEMAPHORES: dict[str, threading.BoundedSemaphore] = {}
_SEMAPHORES_LOCK = threading.Lock()


def semaphore(base_url: str, limit: int) -> threading.BoundedSemaphore:
    """One limit of requests in flight per server for the whole process (variants and browser sessions share it)."""
    with _SEMAPHORES_LOCK:
        return _SEMAPHORES.setdefault(f"{base_url}#{limit}", threading.BoundedSemaphore(limit))


def openai_module():
    try:
        import openai
    except ImportError:
        raise MissingExtraError("a setting names an OpenAI-compatible server ('openai:...'), which needs the openai "
                                "client: pip install 'ragbot[openai]'") from None
    return openai


class ContextTooLong(LLMServerError):
    """The server said the input does not fit the model's context window."""


class Timeout(Exception):
    """Nothing arrived for ``seconds`` (``stage``: before the first token, between pieces); ``setting`` to raise."""

    def __init__(self, seconds: float, stage: str, setting: str) -> None:
        super().__init__(f"no data for {seconds} s {stage}")
        self.seconds, self.stage, self.setting = seconds, stage, setting


class Truncated(Exception):
    """The stream ended without a finish_reason: the server went away mid-answer."""


class OpenAIServer:
    """``model`` at ``base_url``. ``setting`` (``"llm"`` or ``"embedder"``) and ``role`` word the errors."""

    def __init__(self, model: str, base_url: str, *, api_key: str = "", connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 120.0, setting: str = "llm", role: str = "LLM") -> None:
        self.model, self.base_url = model, base_url.rstrip("/")
        self._api_key = api_key
        self.connect_timeout_s, self.read_timeout_s = connect_timeout_s, read_timeout_s
        self.setting, self.role = setting, role
        self._client = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAIServer(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def client(self):
        if self._client is None:
            openai = openai_module()
            self._client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key or "none", max_retries=0,
                                         timeout=openai.Timeout(self.read_timeout_s, connect=self.connect_timeout_s))
        return self._client

    def served(self) -> list[dict[str, Any]]:
        """The server's ``/v1/models`` entries (id plus whatever the engine adds, e.g. vLLM's ``max_model_len``)."""
        try:
            page = self.client.models.list()
        except Exception as e:
            raise self.error(e) from None
        return [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in page.data]

    def entry(self) -> dict[str, Any]:
        """This model's ``/v1/models`` entry; raises when the server does not serve it, naming those it does."""
        models = self.served()
        found = next((m for m in models if m.get("id") == self.model), None)
        if found is None:
            raise LLMServerError(f"the {self.role} server at {self.base_url} does not serve model {self.model!r}; it "
                                 f"serves: {', '.join(str(m.get('id')) for m in models) or 'none'}. Set "
                                 f"{self.setting} = \"openai:<one of them>\"")
        return found

    def error(self, e: Exception, partial: str = "") -> LLMServerError:
        """The one-line message for what went wrong talking to the server; ``partial``: the text already shown."""
        openai = openai_module()
        where = f"the {self.role} server at {self.base_url}"
        cut = f" after {len(partial)} characters of the answer (the partial answer is incomplete)" if partial else ""
        key = f"RAGBOT_{self.setting.upper()}_API_KEY"
        if isinstance(e, LLMServerError):
            return e
        if isinstance(e, Truncated):
            return LLMServerError(f"{where} closed the stream before the answer was finished{cut}: was the server "
                                  "stopped, or did another request interrupt it (llama_cpp.server: start it with "
                                  "--interrupt_requests false)? Ask again")
        if isinstance(e, Timeout):
            return LLMServerError(f"{where} sent nothing for {e.seconds:g} s {e.stage}{cut}; it may be overloaded "
                                  f"or stuck: raise {e.setting} or check the server")
        if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
            return LLMServerError(f"{where} rejected the API key (HTTP {e.status_code}): set {key} "
                                  f"(or {self.setting}_api_key) to a key it accepts")
        if isinstance(e, openai.NotFoundError):
            try:
                ids = ", ".join(str(m.get("id")) for m in self.served())
            except LLMServerError:
                ids = "(could not list them)"
            return LLMServerError(f"{where} does not serve model {self.model!r} (HTTP 404); it serves: {ids or 'none'}."
                                  f" Set {self.setting} = \"openai:<one of them>\" (or check the base URL ends in /v1)")
        if isinstance(e, openai.APIStatusError):
            message = _message(e)
            if _TOO_LONG.search(message):
                knob = "top_k or max_passage_chars" if self.setting == "llm" else "chunk_size"
                return ContextTooLong(f"{where}: the input is longer than the model's context ({message}); lower "
                                      f"{knob}, or serve the model with a longer context")
            return LLMServerError(f"{where} answered HTTP {e.status_code}: {message}{cut}")
        if isinstance(e, openai.APITimeoutError):
            if "connect" in _cause(e).lower():
                return LLMServerError(f"{where} could not be connected to within llm_connect_timeout_s "
                                      f"({self.connect_timeout_s:g} s): is it running and reachable?")
            return LLMServerError(f"{where} did not answer within {self.read_timeout_s:g} s: it may be overloaded; "
                                  "raise llm_first_token_timeout_s or check the server")
        if isinstance(e, openai.APIConnectionError):
            return LLMServerError(f"no {self.role} server answers at {self.base_url} ({_cause(e)}): start it (e.g. "
                                  f"`python -m llama_cpp.server --model MODEL.gguf`) or fix {self.setting}_base_url")
        return LLMServerError(f"{where} failed{cut}: {_cause(e)}; ask again")


def backoff(attempt: int) -> None:
    """Wait before retry ``attempt + 1``: 0.5 s, 1 s, 2 s, ... at most 4 s."""
    time.sleep(min(4.0, 0.5 * 2 ** attempt))


def retryable(e: Exception) -> bool:
    """Connection failures, timeouts, 408/409/429 and 5xx: worth another try (before anything was shown)."""
    status = getattr(e, "status_code", None)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return True


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            body = body.get("message", body)
    text = str(body or getattr(e, "message", "") or e)
    return " ".join(text.split())[:300]


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None and e.__cause__ is not e:
        e = e.__cause__
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]
