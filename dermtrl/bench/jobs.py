"""A resumable per-item job: one JSONL record per item, appended and flushed the moment the item finishes.

Candidate generation and judging run for hours against rate-limited APIs; a crash, a ``kill -9`` or a
Ctrl-C must cost only the items in flight. Their records go to the project's one record file,
:class:`dermtrl.jsonl.RecordLog` with ``once=True`` (keyed by model and case, settings nested under one field,
each item written once and only once). :func:`run_concurrently` runs the unfinished items on a thread pool and
writes each record as it completes, under a rich progress bar showing calls, cache hits, failures and ETA.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from dermtrl.jsonl import RecordLog
from dermtrl.progress import JobBar

if TYPE_CHECKING:
    from dermtrl.llm.client import Usage

T = TypeVar("T")
Key = tuple[str, ...]


def results_file(path: str | os.PathLike[str], settings_field: str, settings: Mapping[str, Any], *,
                 overwrite: bool = False, redo: Callable[[dict[str, Any]], bool] | None = None) -> RecordLog:
    """A DermBench job's record file: one record per (model, case), written once, settings under one field."""
    return RecordLog(path, settings, key=("model", "case_id"), settings_field=settings_field, once=True,
                     overwrite=overwrite, redo=redo)


class JobProgress(JobBar):
    """A job's bar: done/total, API calls and cache hits of this run, failures, ETA.

    ``done`` records (``failed`` of them failed) come from an earlier run: the bar starts there, and its failure
    count is that of all the job's records, as the summary at the end counts them.
    """

    def __init__(self, label: str, total: int, done: int = 0, *, failed: int = 0, usage: Usage | None = None,
                 enabled: bool = True) -> None:
        super().__init__(label, total, done=done, counters={"calls": 0, "cached": 0, "failed": failed},
                         enabled=enabled)
        self._usage = usage
        self._start = usage.as_dict() if usage is not None else {}

    @property
    def failed(self) -> int:
        return self.counters["failed"]

    def advance_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        records = list(records)
        failed = self.failed + sum(record.get("error") is not None for record in records)
        calls = hits = 0
        if self._usage is not None:
            now = self._usage.as_dict()
            calls, hits = now["calls"] - self._start["calls"], now["cache_hits"] - self._start["cache_hits"]
        self.advance(len(records), calls=calls, cached=hits, failed=failed)


def run_concurrently(
    todo: Sequence[T],
    work: Callable[[T], dict[str, Any]],
    results: RecordLog,
    progress: JobProgress,
    *,
    workers: int,
    on_error: Callable[[T, BaseException], dict[str, Any]],
) -> None:
    """Run ``work`` on every item, ``workers`` at a time, writing each record the moment it is ready.

    ``work`` returns the item's record (its own failures included); an exception it lets escape becomes the
    record ``on_error`` makes, so no item is ever lost. Ctrl-C cancels what has not started; what finished
    is already on disk.
    """
    if not todo:
        with progress:  # shown all the same: done/total and the failures, as the summary counts them
            return
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))), thread_name_prefix="dermtrl-bench")

    def run(item: T) -> dict[str, Any]:
        try:
            return work(item)
        except Exception as exc:  # noqa: BLE001 - a bug or bad input costs this item only, recorded
            return on_error(item, exc)

    try:
        with progress:
            futures = [pool.submit(run, item) for item in todo]
            for future in as_completed(futures):
                record = future.result()
                results.write(record)
                progress.advance_records([record])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
