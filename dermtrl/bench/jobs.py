"""A resumable per-item job: one JSONL record per item, appended and flushed the moment the item finishes.

Candidate generation and judging run for hours against rate-limited APIs; a crash, a ``kill -9`` or a
Ctrl-C must cost only the items in flight. :class:`ResultsFile` follows the project's pattern
(:mod:`dermtrl.jsonl`): records are read back with :func:`dermtrl.jsonl.read_records`, a torn last
line from a killed process is cut off before appending (otherwise the next record would be glued to it and
lost), a file written under other settings is refused rather than mixed, and each item is keyed so that it
is written once and only once. :func:`run_concurrently` runs the unfinished items on a thread pool and
writes each record as it completes, under a rich progress bar showing calls, cache hits, failures and ETA.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dermtrl.jsonl import read_records, repair_tail
from dermtrl.progress import JobBar

if TYPE_CHECKING:
    from dermtrl.client import Usage

T = TypeVar("T")
Key = tuple[str, ...]


class ResultsFile:
    """An append-only JSONL file of records keyed by ``key`` fields, resumable, safe to write from threads.

    Every record carries ``settings`` under ``settings_field``; opening a file whose records hold other
    settings raises ``ValueError`` naming the file and the differing fields (``overwrite=True`` starts the
    file afresh). ``redo`` selects finished records to run again (e.g. failed calls): they are removed from
    the file, atomically, before the job starts, so a key is never written twice.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: Sequence[str],
        settings_field: str,
        settings: Mapping[str, Any],
        overwrite: bool = False,
        redo: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:

        self.path = Path(path)
        self.key_fields = tuple(key)
        self.settings_field = settings_field
        self.settings = json.loads(json.dumps(dict(settings)))  # as it reads back from JSON
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
        repair_tail(self.path)
        self._records: dict[Key, dict[str, Any]] = {}
        for line, record in enumerate(read_records(self.path), start=1):
            self._check(record, line)
            k = self.key_of(record)
            if k in self._records:
                raise ValueError(f"{self.path}: line {line} repeats the record for {self._show(k)}")
            self._records[k] = record
        if redo is not None:
            dropped = [k for k, r in self._records.items() if redo(r)]
            if dropped:
                for k in dropped:
                    del self._records[k]
                self._rewrite()
        self._lock = threading.Lock()
        self._fh = self.path.open("a", encoding="utf-8")

    def _show(self, key: Key) -> str:
        return ", ".join(f"{f}={v!r}" for f, v in zip(self.key_fields, key, strict=True))

    def _check(self, record: dict[str, Any], line: int) -> None:
        missing = [f for f in self.key_fields if f not in record]
        if missing:
            raise ValueError(f"{self.path}: line {line} has no {', '.join(missing)}: not a results file of this job")
        theirs = record.get(self.settings_field)
        if theirs == self.settings:
            return
        theirs = theirs if isinstance(theirs, dict) else {}
        diff = sorted(k for k in set(theirs) | set(self.settings) if theirs.get(k) != self.settings.get(k))
        shown = "; ".join(f"{k}: file has {theirs.get(k)!r}, this run {self.settings.get(k)!r}" for k in diff)
        raise ValueError(
            f"{self.path}: holds results made with other {self.settings_field} settings ({shown}); "
            "use another output file, or overwrite it"
        )

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for record in self._records.values():
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def key_of(self, record: Mapping[str, Any]) -> Key:
        return tuple(str(record[f]) for f in self.key_fields)

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[dict[str, Any]]:
        """All records, those from earlier runs first, in the order written."""
        with self._lock:
            return list(self._records.values())

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it to the OS (a killed process keeps it); each key at most once."""
        record = {**record, self.settings_field: self.settings}
        k = self.key_of(record)
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        with self._lock:
            if k in self._records:
                raise ValueError(f"{self.path}: a record for {self._show(k)} was already written")
            self._fh.write(line)
            self._fh.flush()
            self._records[k] = record

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    results: ResultsFile,
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
