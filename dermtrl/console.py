"""The project's two rich consoles: results on stdout, progress, notes and errors on stderr.

Defined once, at the bottom of the import graph, so that every layer (the CLI, the data steps, the client's usage
table, the progress bars, the training scripts' reports) prints through the same objects: piped output keeps a
readable width, and tests can capture one place.
"""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["console", "err_console"]

console = Console(width=None if sys.stdout.isatty() else 140)  # tables stay readable in logs
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
