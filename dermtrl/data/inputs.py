"""Input: labelled dermatology images from a folder, a CSV/JSONL table, a saved dataset or a Hub dataset id.

Accepted sources (:func:`read_source` tells them apart):

* an **image folder** in ImageFolder layout, ``ROOT/<label>/<image>`` or ``ROOT/<Figure 5 category>/<label>/<image>``,
  optionally with a ``metadata.csv``/``metadata.jsonl`` beside the images (a ``file_name`` column relative to
  ``ROOT`` and any further columns, e.g. ``fitzpatrick``), as ``datasets``' ImageFolder reads it;
* a **CSV or JSONL table** with ``path`` (or ``file_name``/``image``), ``label``, optional ``category`` and any
  further columns kept as metadata; relative paths are read from the table's folder;
* a ``save_to_disk`` **dataset folder** or a **Hub dataset id** with an ``image`` column and a label column
  (``label``, ``dx`` or ``diagnosis``; a ``ClassLabel`` is read by name);
* a **named public dataset** (``dataset="ddi"``, ``--source ddi``: Fitzpatrick17k, DDI, SCIN, PAD-UFES-20,
  HAM10000, SkinCAP) in its own layout, read by :mod:`dermtrl.data.sources`: its labels are checked against the
  shipped mapping table (``label_map.csv``) unless a vocabulary is given, and each item records its normalised
  ``skin_tone``, the dataset and its licence.

:func:`ingest` decodes every image through :mod:`dermtrl.cases.images`, checks the label against the
vocabulary, drops duplicates by pixel hash, stores the normalised image in the run folder and writes one record
per source item to ``items.jsonl`` as it goes; a re-run resumes. Each skipped item has a message naming the file
or row; the summary lists them all.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dermtrl.cases.images import MAX_PIXELS, ImageError, Oversize, image_value, read_image
from dermtrl.data.run import RunDir
from dermtrl.data.sources.raw import IMAGE_SUFFIXES, RawItem
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary, canonical_category
from dermtrl.jsonl import RecordLog
from dermtrl.progress import JobBar

__all__ = ["IMAGE_SUFFIXES", "RawItem", "ingest", "read_source"]

_PATH_COLUMNS = ("path", "file_name", "image", "filepath", "file")
_LABEL_COLUMNS = ("label", "dx", "diagnosis")
_METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def _clean_metadata(row: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if key in skip or key is None:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
        else:
            out[str(key)] = str(value)
    return out


def _read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV or JSONL file; a JSONL line that is not an object becomes a row with a problem."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            row = {"__problem__": f"line {n} is not valid JSON ({exc.msg})"}
        if not isinstance(row, dict):
            row = {"__problem__": f"line {n} is not a JSON object"}
        row["__line__"] = n
        rows.append(row)
    return rows


def _first(row: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return name, row[name]
    return None, None


def _from_table(path: Path) -> Iterator[RawItem]:
    base = path.parent
    rows = _read_table(path)
    for index, row in enumerate(rows):
        line = row.pop("__line__", index + 2)  # CSV: header is line 1
        where = f"{path.name}:{line}"
        if "__problem__" in row:
            yield RawItem(where, None, problem=row["__problem__"])
            continue
        path_col, rel = _first(row, _PATH_COLUMNS)
        label_col, label = _first(row, _LABEL_COLUMNS)
        category = row.get("category") or None
        metadata = _clean_metadata(row, {path_col or "", label_col or "", "category"})
        if rel is None:
            yield RawItem(where, label, category, metadata,
                          problem=f"no image path (expected a column named one of {', '.join(_PATH_COLUMNS)})")
            continue
        image_path = (base / str(rel)).resolve() if not os.path.isabs(str(rel)) else Path(str(rel))
        yield RawItem(f"{where} ({rel})", None if label is None else str(label), category, metadata,
                      load=lambda p=image_path: str(p))


def _folder_metadata(root: Path) -> dict[str, dict[str, Any]]:
    for name in _METADATA_FILES:
        path = root / name
        if path.is_file():
            out = {}
            for row in _read_table(path):
                row.pop("__line__", None)
                key = row.get("file_name")
                if key:
                    out[Path(str(key)).as_posix()] = {k: v for k, v in row.items() if k != "file_name"}
            return out
    return {}


def _from_folder(root: Path) -> Iterator[RawItem]:
    extra = _folder_metadata(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts) or path.name in _METADATA_FILES:
            continue
        parts = path.relative_to(root).parts
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            yield RawItem(rel, None, problem=f"not an image file type ({path.suffix or 'no extension'})")
            continue
        meta = dict(extra.get(rel, {}))
        label: str | None = meta.pop("label", None) or None
        category: str | None = meta.pop("category", None) or None
        problem = None
        if len(parts) == 2:
            label = label or parts[0]
        elif len(parts) == 3:
            label, category = label or parts[1], category or parts[0]
        elif label is None:
            problem = (f"cannot tell the label from {rel!r}: use ROOT/<label>/<image> or "
                       "ROOT/<category>/<label>/<image>, or give it in metadata.csv")
        yield RawItem(rel, label, category, _clean_metadata(meta, set()), load=lambda p=path: str(p),
                      problem=problem)


def _from_dataset(ds: Any, name: str, folder: Path | None = None) -> Iterator[RawItem]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    columns = ds.column_names
    image_col = next((c for c in ("image", "img") if c in columns), None)
    label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    if image_col is None or label_col is None:
        raise ValueError(f"{name}: needs an 'image' column and a label column ({', '.join(_LABEL_COLUMNS)}); "
                         f"columns: {', '.join(columns)}")
    label_feature = ds.features[label_col]
    ds = ds.cast_column(image_col, ImageFeature(decode=False))
    for index, row in enumerate(ds):
        cell = row[image_col]
        label = row[label_col]
        if isinstance(label_feature, ClassLabel) and isinstance(label, int):
            label = label_feature.int2str(label)
        metadata = _clean_metadata(row, {image_col, label_col, "category"})
        where = f"{name}[{index}]"

        def load(cell: Any = cell, where: str = where) -> str | bytes:
            # bytes are the image (empty ones an error); a path resolves against the dataset's folder, never the cwd
            value = image_value(cell, base_dir=folder, where=where)
            if not isinstance(value, (str, bytes)):
                raise ImageError(f"{where}: the image cell holds a {type(value).__name__}", "unreadable")
            return value

        yield RawItem(where, None if label is None else str(label), row.get("category") or None, metadata,
                      load=load)


def read_source(source: str, *, split: str = "train", dataset: str | None = None) -> Iterator[RawItem]:
    """Raw items of any accepted source (see the module docstring), in a deterministic order; ``dataset`` names a
    public dataset whose own layout ``source`` (a folder, its table, or a Hub id) has."""
    if dataset is not None:
        from dermtrl.data.sources.registry import read_named

        return read_named(dataset, source, split=split)
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            from datasets import DatasetDict, load_from_disk

            ds = load_from_disk(str(path))
            if isinstance(ds, DatasetDict):
                if split not in ds:
                    raise ValueError(f"{source}: no split {split!r}; available: {', '.join(ds)}")
                ds = ds[split]
            return _from_dataset(ds, path.name, path.resolve())
        return _from_folder(path)
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"{source}: an input table must be .csv or .jsonl, got {path.suffix or 'no extension'!r}")
        return _from_table(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or path.suffix.lower() in (".csv", ".jsonl"):
        raise ValueError(f"{source}: no such folder or file")
    from datasets import load_dataset

    try:
        ds = load_dataset(source, split=split)
    except Exception as exc:  # a Hub id that does not resolve: say which and why, no traceback
        raise ValueError(f"{source}: not a folder, a table, or a loadable Hub dataset ({type(exc).__name__}: "
                         f"{exc})") from None
    return _from_dataset(ds, source)


def ingest(
    source: str,
    run: RunDir | str | os.PathLike[str],
    *,
    vocabulary: Vocabulary | None = None,
    split: str = "train",
    max_pixels: int = MAX_PIXELS,
    oversize: Oversize = "downscale",
    overwrite: bool = False,
    progress: bool = True,
    dataset: str | None = None,
) -> StepSummary:
    """Check and store every item of ``source`` in ``run`` (``items.jsonl`` + ``images/``), resumably.

    ``dataset`` names a public dataset (:data:`dermtrl.data.sources.registry.SOURCES`): ``source`` is read in its
    layout and, without a ``vocabulary``, its labels are mapped through the shipped ``label_map.csv``. Labels
    outside the vocabulary are listed in the summary (``unmapped labels``) and their items skipped by name.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if vocabulary is None and dataset is not None:
        from dermtrl.data.sources.labels import vocabulary_for
        from dermtrl.data.sources.registry import get_source

        vocabulary = vocabulary_for(get_source(dataset).label_datasets)
    vocabulary = vocabulary or Vocabulary.default()
    run.images_dir.mkdir(parents=True, exist_ok=True)
    settings = {"step": "ingest", "vocabulary": vocabulary.fingerprint(), "max_pixels": max_pixels,
                "oversize": oversize}
    summary = StepSummary("ingest")
    raw_items = list(read_source(source, split=split, dataset=dataset))
    summary.total = len(raw_items)
    with RecordLog(run.items_path, settings, key="source", overwrite=overwrite) as log:
        run.save_vocabulary(vocabulary)  # the records agree with it (RecordLog refused any other)
        seen: dict[str, str] = {r["content_hash"]: r["source"] for r in log.records.values() if not r.get("error")}
        done = log.done()
        with JobBar("ingest", len(raw_items), enabled=progress) as bar:
            for raw in raw_items:
                if raw.source in done:
                    summary.reused += 1
                    bar.advance()
                    continue
                record = _ingest_one(raw, run, vocabulary, seen, max_pixels, oversize)
                log.write(record)
                if record.get("error"):
                    summary.skip(raw.source, record["reason"], record["error"])
                else:
                    seen[record["content_hash"]] = raw.source
                    summary.done += 1
                    if record["notes"]:
                        summary.flag(raw.source, "converted", "; ".join(record["notes"]))
                bar.advance()
    unmapped = Counter(str(raw.label).strip() for raw in raw_items
                       if not raw.problem and raw.label and vocabulary.canonical(raw.label) is None)
    if unmapped:
        summary.extra["unmapped labels"] = "; ".join(f"{label} ({n})" for label, n in sorted(unmapped.items()))
    return summary


def _ingest_one(raw: RawItem, run: RunDir, vocabulary: Vocabulary, seen: dict[str, str], max_pixels: int,
                oversize: Oversize) -> dict[str, Any]:
    def fail(reason: str, message: str) -> dict[str, Any]:
        return {"source": raw.source, "error": message, "reason": reason}

    if raw.problem:
        return fail("bad-row", f"{raw.source}: {raw.problem}")
    if raw.label is None or not str(raw.label).strip():
        return fail("no-label", f"{raw.source}: no label")
    label = vocabulary.canonical(raw.label)
    if label is None:
        return fail("label-not-in-vocabulary",
                    f"{raw.source}: label {raw.label!r} is not in the label vocabulary ({len(vocabulary)} labels)")
    category = vocabulary.category(label)
    if raw.category:
        given = canonical_category(raw.category)
        if given is None:
            return fail("unknown-category",
                        f"{raw.source}: category {raw.category!r} is not one of Figure 5's categories")
        if category is not None and given != category:
            return fail("category-mismatch", f"{raw.source}: category {given!r} contradicts the vocabulary, which "
                                             f"puts {label!r} in {category!r}")
        category = given
    if category is None:
        return fail("no-category", f"{raw.source}: no Figure 5 category for {label!r} (give a category column, a "
                                   "ROOT/<category>/<label>/ folder, or a vocabulary with categories)")
    assert raw.load is not None
    try:
        loaded = read_image(raw.load(), name=raw.source, max_pixels=max_pixels, oversize=oversize)
    except ImageError as exc:
        return fail(exc.reason, str(exc))
    except (ValueError, OSError) as exc:
        return fail("unreadable", f"{raw.source}: {exc}")
    if loaded.content_hash in seen:
        return fail("duplicate", f"{raw.source}: duplicate image (same pixels as {seen[loaded.content_hash]}); "
                                 "kept the first")
    item_id = f"img-{loaded.content_hash[:16]}"
    data, ext = loaded.encoded()
    rel = f"images/{item_id}{ext}"
    target = run.root / rel
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)  # never a half-written image under the final name
    return {
        "source": raw.source, "id": item_id, "content_hash": loaded.content_hash, "image": rel,
        "label": label, "category": category, "metadata": raw.metadata,
        "width": loaded.image.width, "height": loaded.image.height, "format": loaded.source_format,
        "mode": loaded.original_mode, "notes": loaded.notes,
    }
