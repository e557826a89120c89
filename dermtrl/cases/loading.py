"""Loading and validating evaluation cases from the Hub, a local folder, or the embedded synthetic generator.

Every DermEval / DermBench entry point reads cases through :func:`load_cases`, so a bad dataset is refused in
one place with a message that names the column and the row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN
from dermtrl.errors import DataError, MissingInputError

#: ``dataset_name`` value that selects the embedded synthetic cases (a colon can never appear in a Hub id).
SYNTHETIC = "dermtrl:synthetic"
#: The page that describes every input format; errors about a data file point to it.
FORMATS_PAGE = "docs/source/data_formats.md"


def load_cases(source: str, split: str | None = None, *, n: int | None = None, seed: int = 0,
               start: int | None = None) -> Dataset:
    """Cases from ``dermtrl:synthetic``, a ``save_to_disk`` folder, a data file, or a Hub dataset id.

    Synthetic cases honour the splits of :mod:`dermtrl.cases.splits`: ``split`` starts at the split's first index
    (``"test"`` from 200,000), ``start`` picks another slice inside it, and ``n`` (default 200) counts the cases; a
    slice that would run into another split is refused. With neither ``split`` nor ``start`` they are training
    cases from 0. For other sources ``split`` defaults to ``"train"`` and ``n`` keeps the first ``n`` rows.
    """
    if source == SYNTHETIC:
        from dermtrl.cases.splits import synthetic_indices
        from dermtrl.cases.synthetic import generate_cases

        try:
            indices = synthetic_indices(n if n is not None else 200, split=split, start=start)
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None
        return generate_cases(len(indices), seed=seed, start=indices.start)
    split = split or "train"
    path = Path(source)
    folder: Path | None = None  # where the dataset's relative image paths live
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = load_from_disk(str(path))
        folder = path
    elif path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
        if builder is None:
            raise DataError(f"{source}: unsupported data file type {path.suffix!r} (use jsonl, csv or parquet; "
                            f"see {FORMATS_PAGE})")
        ds = _load_file(builder, path)
        folder = path.parent
    else:
        ds = _load_hub_or_folder(source)  # a Hub id or a local dataset script/folder
        folder = path if path.is_dir() else None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{source}: no split {split!r}; available: {', '.join(ds)}")
        if len(ds[split]) == 0:
            raise DataError(f"{source}: split {split!r} has no rows; rows per split: "
                             + ", ".join(f"{name} {len(rows)}" for name, rows in ds.items()))
        ds = ds[split]
    if len(ds) == 0:
        raise DataError(f"{source}: the dataset has no rows")
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    if folder is not None:
        ds = resolve_image_paths(ds, folder.resolve())
    return ds


def _load_file(builder: str, path: Path) -> Dataset:
    """One data file as a ``Dataset``; a file ``datasets`` cannot parse is a :class:`DataError` naming it."""
    import logging

    from datasets.exceptions import DatasetGenerationError

    builder_log = logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}")
    was_disabled, builder_log.disabled = builder_log.disabled, True  # it logs the parse error our message states
    try:
        return load_dataset(builder, data_files=str(path), split="train")
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise DataError(f"{path}: not a readable {path.suffix[1:]} data file ({reason}); see {FORMATS_PAGE}") from None
    finally:
        builder_log.disabled = was_disabled


def _load_hub_or_folder(source: str) -> Any:
    """``datasets.load_dataset(source)``, with a one-line ``FileNotFoundError`` when it is neither a local path nor a
    Hub dataset that can be reached (``datasets`` raises ``ConnectionError`` or its own not-found error)."""
    from datasets.exceptions import DatasetNotFoundError

    try:
        return load_dataset(source)
    except (DatasetNotFoundError, ConnectionError, FileNotFoundError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingInputError(
            f"{source}: no such file or folder, and not a Hub dataset that can be loaded ({reason}); give a "
            f"datasets folder, a .jsonl/.csv/.parquet file, a Hub id, or {SYNTHETIC} (see {FORMATS_PAGE})"
        ) from None


def _relative(path: object) -> bool:
    return isinstance(path, str) and bool(path) and not Path(path).is_absolute()


def resolve_image_paths(ds: Dataset, folder: str | os.PathLike[str], column: str = "image") -> Dataset:
    """``ds`` with every relative image path made absolute against ``folder``, the dataset's own folder.

    An image value resolves relative to its dataset, never the working directory (where a file of the same name
    would be read instead). Cells holding bytes are left alone: their bytes are the image. Returns ``ds`` itself
    when nothing is relative.
    """
    from datasets import Image as ImageFeature

    if column not in ds.column_names:
        return ds
    feature = ds.features[column]
    is_image = isinstance(feature, ImageFeature)
    raw = ds.cast_column(column, ImageFeature(decode=False)) if is_image else ds
    if is_image:
        paths = [p for chunk in raw.data.column(column).chunks for p, b in
                 zip(chunk.field("path").to_pylist(), chunk.field("bytes").is_null().to_pylist(), strict=True) if b]
    elif getattr(feature, "dtype", None) in ("string", "large_string"):
        paths = raw.data.column(column).to_pylist()
    else:
        return ds
    if not any(_relative(p) for p in paths):
        return ds
    base = Path(folder)

    def absolute(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out = []
        for cell in batch[column]:
            if is_image and isinstance(cell, dict) and cell.get("bytes") is None and _relative(cell.get("path")):
                cell = {**cell, "path": str(base / cell["path"])}
            elif not is_image and _relative(cell):
                cell = str(base / cell)
            out.append(cell)
        return {column: out}

    fixed = raw.map(absolute, batched=True, desc="resolving image paths against the dataset folder")
    return fixed.cast_column(column, feature) if is_image else fixed


def validate_cases(ds: Dataset, required: Iterable[str] = ("image", "narrative"), *, scores: bool = False,
                   source: str = "dataset") -> None:
    """Refuse a dataset missing a column or holding out-of-range expert scores, naming the column and row."""
    columns = set(ds.column_names)
    needed = list(required) + (["expert_scores"] if scores else [])
    for column in needed:
        if column not in columns:
            raise DataError(f"{source}: missing column {column!r} (columns: {', '.join(sorted(columns))}); "
                            f"{FORMATS_PAGE} lists the columns each command needs")
    if not scores:
        return
    for row, value in enumerate(ds["expert_scores"]):
        if not isinstance(value, dict):
            raise DataError(f"{source}: column 'expert_scores', row {row}: expected a mapping of the six scores")
        for dim in DIMENSIONS:
            v = value.get(dim)
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DataError(f"{source}: column 'expert_scores', row {row}: {dim!r} is missing")
            if not SCORE_MIN <= v <= SCORE_MAX:
                raise DataError(
                    f"{source}: column 'expert_scores', row {row}: {dim!r} = {v} is outside "
                    f"[{SCORE_MIN:g}, {SCORE_MAX:g}]"
                )
    for row, text in enumerate(ds["narrative"]):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{source}: column 'narrative', row {row}: empty narrative")
