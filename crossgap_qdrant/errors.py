"""The package's error base.

Every error this package raises on purpose (bad input, a missing or damaged collection, an unreachable server,
an unsupported model) derives from :class:`CrossgapError` and from the builtin class that describes it
(``ValueError``, ``LookupError``, ``OSError``, ...), so callers can catch either. The command line prints a
``CrossgapError`` as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CrossgapError(Exception):
    """Base of the errors crossgap-qdrant raises on purpose; the message names the problem and the fix."""


class MissingDependencyError(CrossgapError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra that brings it)."""


class InvalidArgumentError(CrossgapError, ValueError):
    """An argument or setting outside what it may be (a config value, a kind, a template, a shape)."""


class InvalidArgumentTypeError(CrossgapError, TypeError):
    """An argument of the wrong type (the message names the type expected and how to make one)."""


__all__ = ["CrossgapError", "InvalidArgumentError", "InvalidArgumentTypeError", "MissingDependencyError"]
