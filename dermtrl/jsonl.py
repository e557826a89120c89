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
from collections.abc import Iterable, Mapping
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


class RecordLog:
    """One step's records, keyed by ``key`` (default ``"id"``); the last record for an id wins.

    ``settings`` (e.g. ``{"prompt_version": ..., "model": ...}``) are written into every record and compared
    with those already in the file. A record with an ``"error"`` field does not count as done, so a re-run
    retries it. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], settings: Mapping[str, Any] | None = None, *,
                 key: str = "id", overwrite: bool = False) -> None:
        self.path = Path(path)
        self.key = key
        self.settings = dict(settings or {})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.path.unlink(missing_ok=True)
        self._latest: dict[str, dict[str, Any]] = {}
        for record in read_records(self.path):
            self._check(record)
            if self.key in record:
                self._latest[str(record[self.key])] = record
        self._fh: IO[str] | None = None

    def _check(self, record: Mapping[str, Any]) -> None:
        for name, value in self.settings.items():
            if record.get(name) != value:
                raise SettingsMismatch(
                    f"{self.path}: record {record.get(self.key)!r} was made with {name}={record.get(name)!r}, "
                    f"this run uses {name}={value!r}; use another output folder or start afresh (overwrite)"
                )

    # --- reading --------------------------------------------------------------------------------------
    @property
    def records(self) -> dict[str, dict[str, Any]]:
        """The latest record of every id, in first-seen order."""
        return dict(self._latest)

    def done(self) -> set[str]:
        """Ids whose latest record succeeded (has no ``error``)."""
        return {k for k, r in self._latest.items() if not r.get("error")}

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self._latest.get(str(item_id))

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._latest

    def __len__(self) -> int:
        return len(self._latest)

    # --- writing --------------------------------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record (with the settings added) and flush it to disk before returning."""
        if self.key not in record:
            raise KeyError(f"record has no {self.key!r} field: {dict(record)!r:.120}")
        full = {**record, **self.settings}
        if self._fh is None:
            repair_tail(self.path)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(full, ensure_ascii=False, sort_keys=False) + "\n")
        self._fh.flush()
        self._latest[str(full[self.key])] = full
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
