"""The ``dermtrl`` command line (the ``dermtrl`` console script is :func:`main`).

:mod:`~dermtrl.cli.dispatch` builds the parser and runs a command; :mod:`~dermtrl.cli._common` holds what every
command module shares (consoles, :class:`~dermtrl.errors.CLIError`, the exit-status rule). The names below are
the ones ``from dermtrl.cli import ...`` has always offered.
"""

from __future__ import annotations

from dermtrl.cli._common import EXIT_FAILURES, CLIError, allow_failures_arg, console, err_console, finish
from dermtrl.cli.dispatch import build_parser, cmd_eval, cmd_parse, cmd_synth, cmd_tiny, main

__all__ = ["EXIT_FAILURES", "CLIError", "allow_failures_arg", "build_parser", "cmd_eval", "cmd_parse", "cmd_synth",
           "cmd_tiny", "console", "err_console", "finish", "main"]
