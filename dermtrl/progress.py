"""The project's one progress bar, so every long job (LLM batches, judging, evaluation, dataset steps) looks alike."""

from __future__ import annotations

from typing import Any


def progress_bar(counters: str | None = None, *, disable: bool = False) -> Any:
    """A rich ``Progress`` on stderr: description, bar, done/total, optional counters, elapsed time and ETA.

    ``counters`` is a rich format string over the task's fields, e.g.
    ``"cached {task.fields[hits]} · failed {task.fields[failed]}"``; pass those fields to ``add_task``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[Any] = [TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if counters:
        columns.append(TextColumn(counters))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True), disable=disable)


def resume_line(done: int, total: int) -> str | None:
    """What a rerun of a resumable job says first: ``resumed: N of M already done``, ``nothing to do: all M
    already done``, or nothing on a first run."""
    if total and done >= total:
        return f"nothing to do: all {total} already done"
    if done:
        return f"resumed: {done} of {total} already done"
    return None
