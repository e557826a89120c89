"""The one base class for errors the ``dermtrl`` CLI shows to users.

A :class:`DermtrlError` is a problem the person running a command can fix (a bad file, a missing flag, a
results file made with other settings, a repo id that does not look like one); its message says where and
how. ``dermtrl``'s ``main`` prints it on one line without a traceback and exits with status 2. Every
user-facing exception class of the package subclasses it, keeping the built-in base it had before
(``ValueError``, ``RuntimeError``) so that existing ``except`` clauses still catch it.

This module imports nothing from ``dermtrl``: any layer may raise these errors.
"""

from __future__ import annotations

__all__ = ["CLIError", "DermtrlError"]


class DermtrlError(Exception):
    """An error a user can fix, shown by the CLI as ``error: <message>`` with exit status 2."""


class CLIError(DermtrlError):
    """A user-facing error raised by a command's argument handling: printed without a traceback, exit status 2."""
