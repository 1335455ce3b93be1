"""Exceptions ragbot raises for problems a user can fix; each message says what to do."""


class RagbotError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(RagbotError, ValueError):
    """A setting has a bad value."""


class ModelBundleError(RagbotError):
    """The offline model bundle is missing or corrupt."""


class IndexMismatchError(RagbotError):
    """An index was built with other settings than the current ones."""


class IndexNotFoundError(RagbotError):
    """No index exists where one was expected."""


class MissingExtraError(RagbotError, ImportError):
    """An optional dependency is not installed."""


class IndexCorruptError(RagbotError):
    """An index version on disk is damaged or inconsistent (and no earlier version could be used)."""


class StoreUnavailableError(RagbotError):
    """The engine that holds an index's data (Milvus) failed or could not be reached."""


class IndexLockedError(RagbotError):
    """Another writer held the index lock for longer than ``lock_timeout_s``."""


class UnsafePublishError(RagbotError):
    """A rebuild or prune would drop every file, or more than half of them; pass ``force`` to publish anyway.

    ``dropped`` lists ``(source, reason)`` for each file that would go ("not found", "failed to load: ...").
    """

    def __init__(self, message: str, dropped: list[tuple[str, str]] | None = None, total: int = 0) -> None:
        super().__init__(message)
        self.dropped = list(dropped or [])
        self.total = total


class QuestionTooLongError(ConfigError):
    """A question has more characters than ``max_question_chars`` (``length`` and ``limit``, 0 when unknown)."""

    def __init__(self, message: str, length: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.length, self.limit = length, limit


class LLMServerError(RagbotError):
    """An LLM server (``llm = "openai:..."``) could not be reached or failed; the message says what to do."""
