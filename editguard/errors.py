"""The errors editguard raises on purpose, by kind, so a caller can tell them apart.

Every exception class of editguard derives from one of these (and, where it did before, from
a builtin such as ValueError, so `except ValueError` keeps working). A message names what went
wrong and where: the option, the file (and record and field), the model.

The `editguard` command turns each into one line on stderr and its kind's `exit_code`:

    0  success
    1  a gate failed: a regression in `compare`, failing cases in `report`
    2  editguard could not do what was asked: a usage or input problem (an option, a data or
       case file, a model that does not load, the editor's set-up, the cache, a report that
       cannot be read or an output that cannot be written)

This module is a leaf: it imports nothing from editguard.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "CacheError", "DataError", "EditguardError", "EditorError",
    "ModelLoadError", "ReportError", "UsageError", "bounded",
]

EXIT_OK = 0
EXIT_FAILED = 1  # a gate failed: a regression in compare, failing cases
EXIT_USAGE = 2  # a usage or input problem: nothing was judged
SHOWN_MAX = 200  # the most characters of a value that an error message echoes


def bounded(value: object, limit: int = SHOWN_MAX) -> str:
    """repr(value) cut to `limit` characters: an error message never embeds an unbounded value (a
    file's expanded YAML, a case's 1 MB prompt)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 25]}... ({len(text)} characters)"


class EditguardError(Exception):
    """Base of every error editguard raises on purpose; `exit_code` is the command's exit status."""

    exit_code: int = EXIT_USAGE


class UsageError(EditguardError):
    """A bad option, argument or configuration value."""


class DataError(EditguardError):
    """Data or case files missing or malformed; the message names the file (and record and field)."""


class ModelLoadError(EditguardError):
    """A model that cannot be found or loaded; the message names it and what was expected."""


class EditorError(EditguardError):
    """The editor under test or its set-up: unknown, not ready (e.g. untrained), bad hyperparameters,
    or an edit that failed."""


class CacheError(EditguardError):
    """A cache entry or statistics file that cannot be read, written or trusted."""


class ReportError(EditguardError):
    """A report that cannot be read or is incompatible, or an output that cannot be written."""
