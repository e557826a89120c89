"""Loading and validating evaluation cases from the Hub, a local folder, or the embedded synthetic generator.

Every DermEval / DermBench entry point reads cases through :func:`load_cases`, so a bad dataset is refused in
one place with a message that names the column and the row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN

#: ``dataset_name`` value that selects the embedded synthetic cases (a colon can never appear in a Hub id).
SYNTHETIC = "dermtrl:synthetic"


def load_cases(source: str, split: str = "train", *, n: int | None = None, seed: int = 0, start: int = 0) -> Dataset:
    """Cases from ``dermtrl:synthetic``, a ``save_to_disk`` folder, a data file, or a Hub dataset id.

    For synthetic cases, ``n``, ``seed`` and ``start`` pick a reproducible slice (held-out sets use another
    ``start``); for other sources ``n`` keeps the first ``n`` rows.
    """
    if source == SYNTHETIC:
        from dermtrl.data.synthetic import generate_cases

        return generate_cases(n if n is not None else 200, seed=seed, start=start)
    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        ds = load_from_disk(str(path))
    elif path.is_file():
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
        if builder is None:
            raise ValueError(f"{source}: unsupported data file type {path.suffix!r} (use jsonl, csv or parquet)")
        ds = load_dataset(builder, data_files=str(path), split="train")
    else:
        ds = load_dataset(source)  # a Hub id or a local dataset script/folder
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise ValueError(f"{source}: no split {split!r}; available: {', '.join(ds)}")
        ds = ds[split]
    if n is not None:
        ds = ds.select(range(min(n, len(ds))))
    return ds


def validate_cases(ds: Dataset, required: Iterable[str] = ("image", "narrative"), *, scores: bool = False,
                   source: str = "dataset") -> None:
    """Refuse a dataset missing a column or holding out-of-range expert scores, naming the column and row."""
    columns = set(ds.column_names)
    needed = list(required) + (["expert_scores"] if scores else [])
    for column in needed:
        if column not in columns:
            raise ValueError(f"{source}: missing column {column!r} (columns: {', '.join(sorted(columns))})")
    if not scores:
        return
    for row, value in enumerate(ds["expert_scores"]):
        if not isinstance(value, dict):
            raise ValueError(f"{source}: column 'expert_scores', row {row}: expected a mapping of the six scores")
        for dim in DIMENSIONS:
            v = value.get(dim)
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{source}: column 'expert_scores', row {row}: {dim!r} is missing")
            if not SCORE_MIN <= v <= SCORE_MAX:
                raise ValueError(
                    f"{source}: column 'expert_scores', row {row}: {dim!r} = {v} is outside "
                    f"[{SCORE_MIN:g}, {SCORE_MAX:g}]"
                )
    for row, text in enumerate(ds["narrative"]):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source}: column 'narrative', row {row}: empty narrative")
