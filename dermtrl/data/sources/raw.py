"""What a reader yields before ingest checks it (:class:`RawItem`), and the table and file helpers readers share.

Its own module, below both :mod:`dermtrl.data.inputs` (generic folders and tables) and the named-dataset
readers, so that each can build items without importing the other.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "RawItem", "image_index", "read_csv"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass
class RawItem:
    """One source item before checks: where it came from, its label and metadata, how to get its image."""

    source: str
    label: str | None
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    load: Callable[[], str | bytes] | None = None  # a path or encoded bytes
    problem: str | None = None  # a problem found while reading the source row


def read_csv(path: Path, *, dataset: str, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Rows of a dataset's CSV (comma or tab separated); a required column that is missing is a
    :class:`~dermtrl.errors.DataError` naming the dataset, the file and the column."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        head = fh.readline()
        fh.seek(0)
        delimiter = "\t" if head.count("\t") > head.count(",") else ","
        reader = csv.DictReader(fh, delimiter=delimiter)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DataError(f"{dataset}: {path.name} has no column {missing[0]!r}"
                            + (f" (nor {', '.join(repr(m) for m in missing[1:])})" if len(missing) > 1 else "")
                            + f"; its columns: {', '.join(columns) or '(none)'}")
        return [{k: (v if v is not None else "") for k, v in row.items() if k is not None} for row in reader]


def image_index(root: Path) -> dict[str, Path]:
    """Every image file under ``root`` by file name and by stem (the first one found in sorted order wins), so a
    dataset's table can name its images either way wherever the download put them."""
    index: dict[str, Path] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        index.setdefault(path.name, path)
        index.setdefault(path.stem, path)
    return index
