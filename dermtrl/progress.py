"""The project's one progress bar, so every long job (LLM batches, judging, evaluation, dataset steps) looks alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def progress_bar(counters: str | None = None, *, disable: bool = False) -> Any:
    """A rich ``Progress`` on stderr: description, bar, done/total, optional counters, elapsed time and ETA.

    ``counters`` is a rich format string over the task's fields, e.g.
    ``"cached {task.fields[hits]} · failed {task.fields[failed]}"``; pass those fields to ``add_task``.
    """
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
    from dermtrl.console import err_console

    return Progress(*columns, console=err_console, disable=disable)


def resume_line(done: int, total: int) -> str | None:
    """What a rerun of a resumable job says first: ``resumed: N of M already done``, ``nothing to do: all M
    already done``, or nothing on a first run."""
    if total and done >= total:
        return f"nothing to do: all {total} already done"
    if done:
        return f"resumed: {done} of {total} already done"
    return None


class JobBar:
    """The one progress bar of a long job, as a context manager; with ``enabled=False`` it does nothing.

    ``done`` items come from an earlier run: the bar starts there and, on a rerun, says so first
    (:func:`resume_line`). ``counters`` name the numbers shown beside the bar (``{"cached": 0, "failed": 0}``);
    :meth:`advance` moves the bar and sets any of them.
    """

    def __init__(self, description: str, total: int, *, done: int = 0, counters: dict[str, int] | None = None,
                 enabled: bool = True) -> None:
        self.counters = dict(counters or {})
        self._bar: Any = None
        if not enabled:
            return
        self._bar = progress_bar(" · ".join(f"{k} {{task.fields[{k}]}}" for k in self.counters) or None)
        line = resume_line(done, total)
        if line is not None:
            self._bar.console.print(f"{description}: {line}")
        self._task = self._bar.add_task(description, total=total, completed=done, **self.counters)

    def advance(self, n: int = 1, **counters: int) -> None:
        self.counters.update(counters)
        if self._bar is not None:
            self._bar.update(self._task, advance=n, **self.counters)

    def __enter__(self) -> JobBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """Within the block, the libraries' own progress bars ("Loading weights", "Generating train split", a
    ``Dataset.map``'s description) stay hidden, so a short command shows only the project's bars and its results;
    the previous state is restored after. The Trainer's training bar is not affected (``disable_tqdm`` decides it).
    """
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_on = datasets.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            transformers_logging.enable_progress_bar()
