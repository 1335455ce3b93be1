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
