"""The one base class for errors the ``dermtrl`` CLI shows to users.

A :class:`DermtrlError` is a problem the person running a command can fix (a bad file, a missing flag, a
results file made with other settings, a repo id that does not look like one); its message says where and
how. ``dermtrl``'s ``main`` prints it on one line without a traceback and exits with status 2. Every
user-facing exception class of the package subclasses it, keeping the built-in base it had before
(``ValueError``, ``RuntimeError``) so that existing ``except`` clauses still catch it.

This module imports nothing from ``dermtrl``: any layer may raise these errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["CLIError", "DataError", "DermtrlError", "MissingInputError", "PublishError", "user_errors"]


class DermtrlError(Exception):
    """An error a user can fix, shown by the CLI as ``error: <message>`` with exit status 2."""


class CLIError(DermtrlError):
    """A user-facing error raised by a command's argument handling: printed without a traceback, exit status 2."""


class DataError(DermtrlError, ValueError):
    """A data file or dataset the commands cannot use (a missing column, an out-of-range score, an empty
    narrative); the message names the file, column and row, and the page that describes the format."""


class MissingInputError(DermtrlError, FileNotFoundError):
    """A file, folder, dataset or adapter the user named does not exist (or cannot be reached offline)."""


class PublishError(DermtrlError, ValueError, RuntimeError):
    """Publishing a dataset or an adapter failed or was refused; the message says where and why (never with the
    token). One class for both (it was two, with a ``ValueError`` and a ``RuntimeError`` base: it keeps both)."""


@contextlib.contextmanager
def user_errors(what: str = "", hint: str = "", *, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """The one place where bad input met inside a command (``ValueError``, ``FileNotFoundError``, and the
    exception types in ``also``, e.g. ``TypeError`` from a config) becomes a :class:`CLIError`: one line, no
    traceback, exit status 2.

    ``what`` prefixes the message (the flags it is about, e.g. ``"--llm-parser-*"``); ``hint`` ends it. Use it as
    a ``with`` block around the call, or as a decorator on a whole command (``@user_errors()``).
    """
    try:
        yield
    except (ValueError, FileNotFoundError, *also) as exc:
        raise CLIError(f"{what + ': ' if what else ''}{exc}{hint}") from exc
