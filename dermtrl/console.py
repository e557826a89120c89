"""The project's two rich consoles: results on stdout, progress, notes and errors on stderr.

Defined once, at the bottom of the import graph, so that every layer (the CLI, the data steps, the client's usage
table, the progress bars, the training scripts' reports) prints through the same objects: piped output keeps a
readable width, and tests can capture one place.
"""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["WIDTH", "console", "err_console"]

#: The width every table is made to fit: a terminal's own when narrower, and this when output is piped to a log.
WIDTH = 100

console = Console(width=None if sys.stdout.isatty() else WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else WIDTH)
