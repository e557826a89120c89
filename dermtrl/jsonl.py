"""Append-only JSONL record files that a long step writes as it goes and resumes from.

A step that calls a model for thousands of items must never lose finished work, and must never mix results
made with other settings into one file. :class:`RecordLog` gives both: every record is appended and flushed as
soon as it exists, a re-run reads the file back (a torn last line from a killed process is ignored) and skips
the ids already done, and resuming a file whose records carry other settings (prompt version, model, stream)
is refused with a message naming the field, unless the caller starts afresh.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dermtrl.errors import DermtrlError

__all__ = ["RecordLog", "SettingsMismatch", "read_records", "repair_tail"]


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a (possibly interrupted) run; lines that are not a JSON object (a torn last line) are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def repair_tail(path: str | os.PathLike[str]) -> None:
    """Cut a torn last line (no trailing newline: the writer was killed mid-write) off ``path``.

    Appending after such a line would glue the next record to it, and both would be lost when read back.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


class SettingsMismatch(DermtrlError, ValueError):
    """A record file holds results made with other settings; resuming it would mix them."""


RecordId = str | tuple[str, ...]


class RecordLog:
    """The project's one resumable record file: every step, job and evaluation that writes per-item results uses it.

    Records are keyed by the ``key`` field (or fields: ``("model", "case_id")``). ``settings`` (prompt version,
    model, sampling...) go into every record, spread into its fields or, with ``settings_field``, nested under
    one field; a file whose records carry other settings is refused (:class:`SettingsMismatch`, naming the file
    and each differing setting) unless ``overwrite`` starts it afresh.

    Two ways to resume: by default the last record of an id wins and a record with an ``"error"`` is retried
    (:meth:`done` leaves it out); with ``once=True`` each id is written once and only once (a file repeating one is
    refused), and ``redo`` selects the records to run again: they are removed, atomically, before the job starts.
    Writes are thread-safe and flushed before :meth:`write` returns. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], settings: Mapping[str, Any] | None = None, *,
                 key: str | Sequence[str] = "id", settings_field: str | None = None, once: bool = False,
                 redo: Callable[[dict[str, Any]], bool] | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.key_fields = (key,) if isinstance(key, str) else tuple(key)
        self.settings = json.loads(json.dumps(dict(settings or {})))  # as they read back from the file
        self.settings_field = settings_field
        self.once = once
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
        self._latest: dict[RecordId, dict[str, Any]] = {}
        for line, record in enumerate(read_records(self.path), start=1):
            self._check(record, line)
            rid = self.id_of(record)
            if once and rid in self._latest:
                raise ValueError(f"{self.path}: line {line} repeats the record for {self._show(rid)}")
            self._latest[rid] = record
        if redo is not None:
            dropped = [rid for rid, r in self._latest.items() if redo(r)]
            for rid in dropped:
                del self._latest[rid]
            if dropped:
                self._rewrite()
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None

    def id_of(self, record: Mapping[str, Any]) -> RecordId:
        """A record's id: the string of its key field, or the tuple of its key fields' strings."""
        ids = tuple(str(record[f]) for f in self.key_fields)
        return ids[0] if len(ids) == 1 else ids

    def _show(self, rid: RecordId) -> str:
        values = (rid,) if isinstance(rid, str) else rid
        return ", ".join(f"{f}={v!r}" for f, v in zip(self.key_fields, values, strict=True))

    def _check(self, record: Mapping[str, Any], line: int) -> None:
        missing = [f for f in self.key_fields if f not in record]
        if missing:
            raise ValueError(f"{self.path}: line {line} has no {', '.join(missing)}: not a record file of this job")
        theirs = record.get(self.settings_field) if self.settings_field else record
        theirs = theirs if isinstance(theirs, Mapping) else {}
        names = set(self.settings) | (set(theirs) if self.settings_field else set())
        diff = sorted(k for k in names if theirs.get(k) != self.settings.get(k))
        if diff:
            shown = "; ".join(f"{k}: file has {theirs.get(k)!r}, this run {self.settings.get(k)!r}" for k in diff)
            raise SettingsMismatch(
                f"{self.path}: record {self._show(self.id_of(record))} was made with other settings ({shown}); "
                "use another output file, or overwrite it"
            )

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for record in self._latest.values():
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    # --- reading --------------------------------------------------------------------------------------
    @property
    def records(self) -> dict[RecordId, dict[str, Any]]:
        """The latest record of every id, in first-seen order."""
        with self._lock:
            return dict(self._latest)

    def done(self) -> set[RecordId]:
        """Ids whose latest record succeeded (has no ``error``)."""
        return {k for k, r in self.records.items() if not r.get("error")}

    def get(self, item_id: RecordId) -> dict[str, Any] | None:
        return self._latest.get(item_id if isinstance(item_id, tuple) else str(item_id))

    def __contains__(self, item_id: object) -> bool:
        return (item_id if isinstance(item_id, tuple) else str(item_id)) in self._latest

    def __len__(self) -> int:
        return len(self._latest)

    # --- writing --------------------------------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (with the settings added) and flush it to disk before returning."""
        missing = [f for f in self.key_fields if f not in record]
        if missing:
            raise KeyError(f"record has no {', '.join(map(repr, missing))} field: {dict(record)!r:.120}")
        full = {**record, self.settings_field: self.settings} if self.settings_field else {**record, **self.settings}
        rid = self.id_of(full)
        line = json.dumps(full, ensure_ascii=False) + "\n"
        with self._lock:
            if self.once and rid in self._latest:
                raise ValueError(f"{self.path}: a record for {self._show(rid)} was already written")
            if self._fh is None:
                repair_tail(self.path)
                self._fh = self.path.open("a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()
            self._latest[rid] = full
        return full

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.write(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
