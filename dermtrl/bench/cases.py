"""DermBench cases: the rows of a dataset, keyed by case id, read without decoding images up front.

Generation needs each case's image, judging its certified reference, the report its Figure 5 category and any
expert scores. Every stage reads rows through :func:`case_rows`, so a dataset is checked in one place: a
missing column or a repeated case id stops the run with a message naming it, while a row with a bad value
(an empty reference, an unreadable image) becomes a per-item error downstream and the rest proceeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image as PILImage

def case_rows(
    cases: Dataset | Sequence[Mapping[str, Any]], columns: Iterable[str], *, required: Iterable[str] = ()
) -> Iterator[dict[str, Any]]:
    """Rows of ``cases`` (a ``datasets.Dataset`` or a list of mappings) with ``case_id`` and ``columns``.

    Only the named columns are read (so judging never decodes an image); ``image`` cells stay undecoded
    (``{"bytes", "path"}``) for :func:`load_case_image`. A row without ``case_id`` is keyed by its index. A
    missing ``required`` column or a repeated case id raises ``ValueError`` naming it.
    """
    wanted = [c for c in dict.fromkeys(columns) if c != "case_id"]
    required = list(required)
    rows: Iterable[Mapping[str, Any]]
    if _is_dataset(cases):
        present = set(cases.column_names)
        for column in required:
            if column not in present:
                raise ValueError(f"dataset: missing column {column!r} (columns: {', '.join(sorted(present))})")
        keep = [c for c in ["case_id", *wanted] if c in present]
        if not keep:  # a table of no columns has no rows either: count them ourselves
            rows = ({} for _ in range(cases.num_rows))
        else:
            ds = cases.select_columns(keep)
            if "image" in keep:
                from datasets import Image as ImageFeature

                ds = ds.cast_column("image", ImageFeature(decode=False))
            rows = ds
    elif isinstance(cases, Sequence) and not isinstance(cases, (str, bytes)):
        rows = cases
        for column in required:
            if cases and all(column not in row for row in cases):
                raise ValueError(f"cases: no row has the column {column!r}")
    else:
        raise TypeError(f"cases must be a datasets.Dataset or a list of dicts, got {type(cases).__name__}")
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"cases row {index}: expected a mapping, got {type(row).__name__}")
        raw_id = row.get("case_id")
        case_id = str(raw_id) if raw_id not in (None, "") else str(index)
        if case_id in seen:
            raise ValueError(f"cases: case id {case_id!r} appears in rows {seen[case_id]} and {index}")
        seen[case_id] = index
        yield {"case_id": case_id, **{c: row.get(c) for c in wanted}}


def _is_dataset(value: Any) -> bool:
    return hasattr(value, "column_names") and hasattr(value, "select_columns")


def image_reader(cases: Dataset | Sequence[Mapping[str, Any]]) -> Callable[[int], Any]:
    """``index -> image cell``, read on demand (a large dataset's images are never all in memory at once)."""
    if _is_dataset(cases):
        from datasets import Image as ImageFeature

        ds = cases.select_columns(["image"]).cast_column("image", ImageFeature(decode=False))
        return lambda index: ds[index]["image"]
    return lambda index: cases[index].get("image")


def image_source(cell: Any, where: str | None = None) -> Any:
    """What an ``image`` cell holds, checked, as :func:`dermtrl.llm.client.user_message` takes it: non-empty bytes, an
    absolute path or a PIL image (:func:`dermtrl.cases.images.image_value`: empty bytes are an error, never a
    reason to open a file of that name; a relative path is refused, datasets loaded by
    :func:`dermtrl.cases.loading.load_cases` hold paths resolved against their own folder).

    Raises :class:`~dermtrl.cases.images.ImageError` (a ``ValueError``) naming ``where``.
    """
    from dermtrl.cases.images import image_value

    return image_value(cell, where=where)


def image_name(cell: Any) -> str | None:
    """The file name an ``image`` cell came from, when it says (for error messages)."""
    if isinstance(cell, Mapping) and cell.get("path"):
        return str(cell["path"])
    if isinstance(cell, (str, os.PathLike)):
        return os.fspath(cell)
    return None


def load_case_image(cell: Any, where: str | None = None) -> PILImage.Image:
    """An RGB image from an ``image`` cell through the project's one reader (:func:`dermtrl.cases.images.read_cell`);
    ``ValueError`` naming ``where`` and the file when it is empty, missing or unreadable."""
    from dermtrl.cases.images import read_cell

    return read_cell(cell, where=where).image
