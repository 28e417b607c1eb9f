"""The errors a user causes, as one family: `dynadapter` prints their one-line message (the
traceback only with `-v`). Anything else that escapes a command is a bug and keeps its traceback.

Each subclass also derives from the built-in exception it stands for (ValueError, FileNotFoundError,
RuntimeError), so callers that catch those keep working.
"""

from __future__ import annotations


class DynAdapterError(Exception):
    """A problem the user can fix; the message is one line that says what to change."""


class ConfigError(DynAdapterError, ValueError):
    """An option or value out of range, or a combination that cannot work."""


class DataError(DynAdapterError, ValueError):
    """The data set cannot be used as given (layout, classes, files)."""


class RunDirError(DynAdapterError, FileNotFoundError):
    """A run directory is missing, incomplete or of an unknown format."""


class BackboneError(DynAdapterError, RuntimeError):
    """A built-in backbone cannot be obtained."""


class IntegrityError(DynAdapterError, ValueError):
    """A file does not match the checksum it is pinned to."""


class ExportError(DynAdapterError, RuntimeError):
    """The exported segments would not serve what PyTorch computes (parity, non-finite outputs)."""


class MergeError(DynAdapterError, ValueError):
    """A PETL update cannot be folded into the frozen weights (it is not finite)."""


class ModelLoadError(DynAdapterError, RuntimeError):
    """A model version cannot be served; the message is one line fit for a log."""
