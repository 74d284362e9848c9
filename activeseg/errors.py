"""Exceptions raised by activeseg.

Every error a user can cause derives from :class:`ActiveSegError`, and also from the
matching built-in exception, so ``except ValueError`` keeps working for callers that
do not know about activeseg. The CLI catches :class:`ActiveSegError` once, prints one
line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "ActiveSegError",
    "ConfigError",
    "StackError",
    "LabelError",
    "SessionError",
    "SessionLockedError",
    "StrategyError",
    "ModelError",
    "OutputError",
]


class ActiveSegError(Exception):
    """Base class of every error activeseg raises on bad input or state."""


class ConfigError(ActiveSegError, ValueError):
    """A parameter, option or configuration value is invalid."""


class StackError(ActiveSegError, ValueError):
    """An image stack cannot be read or has the wrong shape, dtype or content."""


class LabelError(ActiveSegError, ValueError):
    """A label file or mask does not match the image or holds invalid values."""


class SessionError(ActiveSegError, RuntimeError):
    """A session directory is missing, inconsistent, or in the wrong state for a step."""


class SessionLockedError(SessionError):
    """Another live process holds the session lock."""


class StrategyError(ActiveSegError, LookupError):
    """A query strategy is unknown, broken, or called with unknown parameters."""


class ModelError(ActiveSegError, ValueError):
    """A model name, configuration or weight file is invalid."""


class OutputError(ActiveSegError, OSError):
    """An output cannot or must not be written (it is an input, a folder, read-only, or the disk is full)."""
