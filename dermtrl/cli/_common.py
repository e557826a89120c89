"""What every ``dermtrl`` command module shares: the consoles, the user-error class and the exit-status rule.

Subcommand modules (:mod:`dermtrl.bench.cli`, :mod:`dermtrl.data.cli`, :mod:`dermtrl.publish_adapter`) import
from here, never from :mod:`dermtrl.cli.dispatch`, so that the dispatcher can import them without a cycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

from dermtrl.errors import CLIError, DermtrlError, user_errors

__all__ = ["EXIT_FAILURES", "EXIT_USER_ERROR", "CLIError", "DermtrlError", "allow_failures_arg", "console",
           "err_console", "finish", "user_errors"]

console = Console(width=None if sys.stdout.isatty() else 140)  # tables stay readable in logs
err_console = Console(stderr=True)

#: Exit status of a command whose records include failures (without ``--allow-failures``).
EXIT_FAILURES = 1
#: Exit status of a command stopped by a :class:`~dermtrl.errors.DermtrlError` (bad input the user can fix).
EXIT_USER_ERROR = 2


def finish(failed: int, total: int, what: str, *, allow_failures: bool, notes: Sequence[str] = ()) -> int:
    """The exit status of a job over ``total`` records of which ``failed`` failed, after its notes (retries by
    kind, concurrency lowered): 0, or :data:`EXIT_FAILURES` unless ``allow_failures``. One rule for every command
    a script runs (``dermtrl eval``, ``dermtrl bench generate|judge|run``)."""
    for line in notes:
        err_console.print(line)
    if failed and not allow_failures:
        err_console.print(f"[red]{failed} of {total} {what} failed[/red]: exit status {EXIT_FAILURES} (fix the cause "
                          "and rerun, with --retry-failed where the command has it; --allow-failures accepts them)")
        return EXIT_FAILURES
    return 0


def allow_failures_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-failures", action="store_true",
                   help=f"exit 0 even when some records failed (default: exit {EXIT_FAILURES})")
