"""Write a benchmark's current result into ``docs/source/benchmarks.md``.

Each benchmark owns one section of that page, between ``<!-- benchmark:NAME -->`` and ``<!-- /benchmark:NAME -->``.
``--write-docs`` replaces that section with the table the run just printed, the command that made it, the commit,
the machine and the date, so the page always states what the current code measured and never keeps history (git
does). Sections of other benchmarks are left as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "source" / "benchmarks.md"
_HEADER = """# Benchmarks

Each section below is written by its benchmark script (`--write-docs`) from the run that produced it: the table,
the command, the commit, the machine and the date. A section is replaced, never appended to; earlier results live in
the git history of this page. Run a script yourself to check a number on your machine.
"""


def add_write_docs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--write-docs", action="store_true",
                        help="replace this benchmark's section of docs/source/benchmarks.md with this run's result")


def commit() -> str:
    """The checked-out commit, marked ``-dirty`` when tracked files differ from it (the number is then not its).

    The page itself is left out of the check: sections written by earlier runs do not change what is measured, so
    several benchmarks run one after another all name the commit they ran.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        page = DOCS_PAGE.relative_to(ROOT).as_posix()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){page}"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine() -> str:
    """What the number depends on: CPU architecture, cores, Python, torch and its kernels, and a GPU if one is used."""
    parts = [f"{platform.machine()}", f"{os.cpu_count()} cores", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(parts)


def section(name: str, title: str, body: str, command: str | None = None, *, when: _dt.datetime | None = None) -> str:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    command = command or "python " + " ".join(shlex.quote(a) for a in [_relative(sys.argv[0]), *sys.argv[1:]]
                                              if a != "--write-docs")
    return (f"<!-- benchmark:{name} -->\n## {title}\n\n{body.strip()}\n\n"
            f"Command: `{command}`  \nCommit: `{commit()}`  \nMachine: {machine()}  \n"
            f"Date: {when.strftime('%Y-%m-%d %H:%M UTC')}\n<!-- /benchmark:{name} -->\n")


def write_docs(name: str, title: str, body: str, command: str | None = None, page: Path = DOCS_PAGE) -> Path:
    """Replace (or add) the section ``name`` of ``page`` with ``body``; returns the page written."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"benchmark section name {name!r}: use lower-case letters, digits and underscores")
    text = page.read_text() if page.exists() else _HEADER
    block = section(name, title, body, command)
    pattern = re.compile(rf"<!-- benchmark:{name} -->\n.*?<!-- /benchmark:{name} -->\n", re.S)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return page


def write_console_docs(name: str, title: str, console: object, page: Path = DOCS_PAGE) -> Path:
    """Write what a script printed to a ``Console(record=True)`` (its tables, ratios and targets) as its section."""
    text = console.export_text(clear=False).rstrip()  # type: ignore[attr-defined]
    path = write_docs(name, title, f"```text\n{text}\n```", page=page)
    print(f"wrote the {name} section of {path}")
    return path


def report_only(console: object) -> None:
    """Forget what a ``Console(record=True)`` recorded so far (launches, per-run progress), so that the section
    written by ``write_console_docs`` holds the report printed after this call and nothing before it."""
    console.export_text(clear=True)  # type: ignore[attr-defined]


@contextlib.contextmanager
def recording_stdout() -> Iterator[io.StringIO]:
    """Print as usual and keep a copy: for scripts that report with ``print`` rather than a rich console."""
    copy = io.StringIO()
    real = sys.stdout

    class _Tee(io.TextIOBase):
        def write(self, text: str) -> int:
            copy.write(text)
            return real.write(text)

        def flush(self) -> None:
            real.flush()

    with contextlib.redirect_stdout(_Tee()):
        yield copy


def write_text_docs(name: str, title: str, text: str, page: Path = DOCS_PAGE) -> Path:
    """Write plain printed text (what ``recording_stdout`` kept) as the section ``name``."""
    text = text.strip("\n").rstrip()
    path = write_docs(name, title, f"```text\n{text}\n```", page=page)
    print(f"wrote the {name} section of {path}")
    return path


def rich_table_markdown(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table from the same cells a script prints with rich."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path
