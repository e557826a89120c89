"""The shipped label mapping table: each named dataset's labels onto the paper's Figure 5 categories.

``dermtrl/data/label_map.csv`` has one row per dataset label (``dataset,label,category``); the category is
spelled as in :data:`dermtrl.categories.CATEGORIES`. It is a best-effort grouping of each dataset's own
vocabulary into DermNet-style groups: review it for your use. ``--vocabulary`` replaces it: with a copy of the
table (a ``dataset`` column), that dataset's rows are used; with a plain ``label,category`` CSV, all of it. A
label that is not in the table is listed at ingest and its items are skipped (reason
``label-not-in-vocabulary``), never mapped silently.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from dermtrl.data.vocabulary import Vocabulary, canonical_category, normalize_label

__all__ = ["LABEL_MAP_PATH", "is_label_map", "label_map", "vocabulary_for"]

LABEL_MAP_PATH = Path(__file__).resolve().parents[1] / "label_map.csv"


def is_label_map(path: str | Path) -> bool:
    """Whether ``path`` is a mapping table in this module's format (a CSV with a ``dataset`` column), rather than
    a plain ``label,category`` vocabulary."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return False
    if not path.is_file():
        raise ValueError(f"{path}: no such vocabulary file")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    return "dataset" in [h.strip() for h in header]


def label_map(path: str | Path = LABEL_MAP_PATH) -> dict[str, dict[str, str]]:
    """``{dataset: {label: category}}`` from a mapping table; a bad row is a ``ValueError`` naming its line."""
    path = Path(path)
    out: dict[str, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if set(reader.fieldnames or []) < {"dataset", "label", "category"}:
            raise ValueError(f"{path}: a label map needs the columns dataset, label, category")
        for line, row in enumerate(reader, start=2):
            dataset, label, category = (str(row.get(k) or "").strip() for k in ("dataset", "label", "category"))
            if not dataset or not label:
                raise ValueError(f"{path}: line {line}: empty dataset or label")
            canonical = canonical_category(category)
            if canonical is None:
                raise ValueError(f"{path}: line {line}: {category!r} is not one of Figure 5's categories")
            out.setdefault(dataset, {})[label] = canonical
    return out


def vocabulary_for(datasets: Iterable[str], path: str | Path = LABEL_MAP_PATH) -> Vocabulary:
    """The labels of ``datasets`` (in order; SkinCAP reuses Fitzpatrick17k's and DDI's) as an ingest vocabulary.
    Two datasets mapping one label to different categories is an error: the table must be fixed."""
    table = label_map(path)
    merged: dict[str, str] = {}
    keys: dict[str, str] = {}
    for dataset in datasets:
        for label, category in table.get(dataset, {}).items():
            key = normalize_label(label)
            if key in keys:
                if merged[keys[key]] != category:
                    raise ValueError(f"{path}: {label!r} maps to {category!r} for {dataset} but to "
                                     f"{merged[keys[key]]!r} for another dataset")
                continue
            keys[key] = label
            merged[label] = category
    if not merged:
        raise ValueError(f"{path}: no labels for {', '.join(datasets)}")
    return Vocabulary.from_mapping(merged)
