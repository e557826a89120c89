"""DermEval records in the official schema <-> dermtrl's ``dermeval`` dataset.

The DermBench release documents DermEval's training records (``docs/dermeval.md``): JSONL or a JSON list of
``{"id", "image", "diagnostic_text", "evaluation_text", "scores": {snake_case key: number}}``, ``image``
relative to the runner's image root, ``evaluation_text`` the supervised target (when absent, the target is built
from ``scores`` and optional per-dimension ``rationales``). dermtrl trains on its ``dermeval`` dataset
(:data:`~dermtrl.data.schema.DERMEVAL_FEATURES`: ``image``, ``narrative``, ``evaluation``, ``expert_scores``
by the six names). :func:`import_records` and :func:`export_records` map one onto the other:

* scores map between the snake_case keys (``medical_groundedness``) and the six names (``Medical Groundedness``);
* what dermtrl's schema has no column for (the relative image path, an absent ``id``, extra keys, whether the
  target was given or built) rides in ``metadata``, so import then export gives the same records;
* a bad record raises :class:`RecordError` naming the file, the line (the item, for a JSON list) and the field.

A target built from scores uses the official target format, one line per dimension, ``<Dimension>: <score> -
<justification>``, then ``Overall Score: <mean>``: the format ``target_format: official`` trains on, and that
:func:`dermtrl.parsing.parse_scores` reads like the paper's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dermtrl.dimensions import DIMENSIONS
from dermtrl.errors import DermtrlError

__all__ = ["OFFICIAL_KEYS", "PROMPT_VERSION", "RecordError", "export_records", "import_records", "official_target",
           "read_official_records", "to_official", "to_row"]

#: The official snake_case score keys, in the six dimensions' order.
OFFICIAL_KEYS: dict[str, str] = {
    "accuracy": "Accuracy",
    "safety": "Safety",
    "medical_groundedness": "Medical Groundedness",
    "clinical_coverage": "Clinical Coverage",
    "reasoning_coherence": "Reasoning Coherence",
    "description_precision": "Description Precision",
}
_KEY_OF = {name: key for key, name in OFFICIAL_KEYS.items()}
#: ``prompt_version`` of imported rows: their target is in the official format.
PROMPT_VERSION = "dermeval-official-records"
_TEXT_FIELDS = ("diagnostic_text", "candidate_text", "narrative", "answer", "text")
_TARGET_FIELDS = ("evaluation_text", "label_text", "critique", "rationale")
_DEFAULT_RATIONALE = "Score given for this dimension; no rationale was recorded."


class RecordError(DermtrlError, ValueError):
    """A DermEval record that cannot be read; the message names the file, the line and the field."""


def official_target(scores: Mapping[str, float], rationales: Mapping[str, str] | None = None) -> str:
    """The official target text for six scores (keys: the six names or the snake_case keys) and rationales."""
    rationales = rationales or {}
    values = {OFFICIAL_KEYS.get(k, k): float(v) for k, v in scores.items()}
    lines = []
    for name in DIMENSIONS:
        why = rationales.get(_KEY_OF[name]) or rationales.get(name) or _DEFAULT_RATIONALE
        lines.append(f"{name}: {values[name]:.1f} - {str(why).strip()}")
    lines.append(f"Overall Score: {sum(values[d] for d in DIMENSIONS) / len(DIMENSIONS):.1f}")
    return "\n".join(lines)


def _scores(record: Mapping[str, Any], where: str) -> dict[str, float] | None:
    raw: Any
    if "scores" in record:
        raw = record["scores"]
        if isinstance(raw, Sequence) and not isinstance(raw, (str, bytes)):
            if len(raw) != len(DIMENSIONS):
                raise RecordError(f"{where}, field 'scores': a list must hold {len(DIMENSIONS)} scores, got {len(raw)}")
            raw = dict(zip(OFFICIAL_KEYS, raw, strict=True))
        if not isinstance(raw, Mapping):
            raise RecordError(f"{where}, field 'scores': expected an object of the six scores, got "
                              f"{type(raw).__name__}")
        field = "scores."
    elif any(k in record for k in OFFICIAL_KEYS):
        raw, field = {k: record[k] for k in OFFICIAL_KEYS if k in record}, ""
    else:
        return None
    out: dict[str, float] = {}
    for key, name in OFFICIAL_KEYS.items():
        if key not in raw:
            raise RecordError(f"{where}, field '{field}{key}': missing (the six keys are {', '.join(OFFICIAL_KEYS)})")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 5:
            raise RecordError(f"{where}, field '{field}{key}': must be a number from 0 to 5, got {value!r:.40}")
        out[name] = float(value)
    unknown = sorted(set(raw) - set(OFFICIAL_KEYS))
    if unknown:
        raise RecordError(f"{where}, field '{field}{unknown[0]}': not one of the six keys ({', '.join(OFFICIAL_KEYS)})")
    return out


def to_row(record: Mapping[str, Any], where: str, image_root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """One official record as a ``dermeval`` row (``where`` names it in errors: ``file, line N``)."""
    if not isinstance(record, Mapping):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RecordError(f"{where}, field 'image': missing or not a path string")
    text_field = next((k for k in _TEXT_FIELDS if isinstance(record.get(k), str) and record[k].strip()), None)
    if text_field is None:
        raise RecordError(f"{where}, field 'diagnostic_text': missing or empty")
    target_field = next((k for k in _TARGET_FIELDS if isinstance(record.get(k), str) and record[k].strip()), None)
    scores = _scores(record, where)
    rationales = record.get("rationales") or record.get("justifications") or {}
    if not isinstance(rationales, Mapping):
        raise RecordError(f"{where}, field 'rationales': expected an object, got {type(rationales).__name__}")
    if target_field is None and scores is None:
        raise RecordError(f"{where}, field 'evaluation_text': missing, and no 'scores' to build it from")
    evaluation = record[target_field] if target_field else official_target(scores or {}, rationales)
    image_path, image_sha = image, ""
    if image_root is not None:
        file = Path(image_root) / image
        if not file.is_file():
            raise RecordError(f"{where}, field 'image': no such file {str(file)!r}")
        image_path = str(file.resolve())
        image_sha = hashlib.sha256(file.read_bytes()).hexdigest()
    known = {"id", "image", text_field, target_field, "scores", *OFFICIAL_KEYS}
    extra = {k: v for k, v in record.items() if k not in known}
    official = {"image": image, "id": "id" in record, "text_field": text_field, "target_field": target_field,
                "scores_field": "scores" if "scores" in record else ("top-level" if scores else None),
                "extra": extra}
    case_id = str(record["id"]) if "id" in record else where.rsplit(", ", 1)[-1].replace(" ", "-")
    return {
        "id": case_id, "item_id": case_id, "image": image_path,
        "image_sha256": image_sha, "category": "", "label": "", "narrative": record[text_field], "stream": "",
        "expert_scores": scores, "ratings": [], "evaluation": evaluation,
        "rationale": json.dumps(dict(rationales), ensure_ascii=False) if rationales else "",
        "split": "", "metadata": json.dumps({"official": official}, ensure_ascii=False),
        "prompt_version": PROMPT_VERSION,
    }


def to_official(row: Mapping[str, Any]) -> dict[str, Any]:
    """One ``dermeval`` row as an official record (the record it was imported from, when it was)."""
    try:
        meta = json.loads(row.get("metadata") or "{}")
    except (TypeError, ValueError):
        meta = {}
    official = meta.get("official") if isinstance(meta, dict) else None
    scores = row.get("expert_scores")
    snake = ({_KEY_OF[d]: float(scores[d]) for d in DIMENSIONS}
             if isinstance(scores, Mapping) and all(scores.get(d) is not None for d in DIMENSIONS) else None)
    if not isinstance(official, dict):  # a row dermtrl built: the plain schema
        image = row.get("image")
        image = image.get("path") if isinstance(image, Mapping) else image
        out = {"id": row.get("id"), "image": image, "diagnostic_text": row.get("narrative"),
               "evaluation_text": row.get("evaluation")}
        return {**out, "scores": snake} if snake is not None else out
    out: dict[str, Any] = {}
    if official.get("id"):
        out["id"] = row.get("id")
    out["image"] = official["image"]
    out[official.get("text_field") or "diagnostic_text"] = row.get("narrative")
    if official.get("target_field"):
        out[official["target_field"]] = row.get("evaluation")
    if snake is not None and official.get("scores_field") == "scores":
        out["scores"] = snake
    elif snake is not None and official.get("scores_field") == "top-level":
        out.update(snake)
    out.update(official.get("extra") or {})
    return out


def read_official_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, record)`` of a JSONL file, a JSON list or a ``{"data": [...]}`` file (``where``: file and line)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such records file")
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl" and text.lstrip()[:1] in ("[", "{") and not _looks_like_jsonl(text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of records, a {{'data': [...]}} object, or JSONL")
        return [(f"{path}, item {i}", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}, line {n}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}, line {n}: not a JSON object ({exc.msg})") from None
    return out


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(line), dict) for line in lines[:2])
    except json.JSONDecodeError:
        return False


def import_records(path: str | os.PathLike[str], out: str | os.PathLike[str], *, image_root: str | None = None,
                   split: str = "train") -> int:
    """Official DermEval records -> a ``dermeval`` dataset: a JSONL data file when ``out`` ends in ``.jsonl``,
    else a ``save_to_disk`` folder (one split, :data:`~dermtrl.data.schema.DERMEVAL_FEATURES`; images under
    ``image_root`` are checked and stored). Returns the number of records; nothing is written if any is bad."""
    records = read_official_records(path)
    rows = [to_row(record, where, image_root) for where, record in records]
    ids: dict[str, str] = {}
    for (where, _), r in zip(records, rows, strict=True):
        if r["id"] in ids:
            raise RecordError(f"{where}, field 'id': {r['id']!r} already at {ids[r['id']]}")
        ids[r["id"]] = where
    out = Path(out)
    if out.suffix == ".jsonl":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return len(rows)
    if image_root is None:
        raise RecordError("a dataset folder stores the images: give image_root (--image-root), or write a .jsonl "
                          "data file instead")
    from datasets import Dataset, DatasetDict

    from dermtrl.data.schema import DERMEVAL_FEATURES

    # every column of the schema, those dermtrl adds later too (empty: an official record has no value for them)
    rows = [{**{name: None for name in DERMEVAL_FEATURES}, **r, "split": split} for r in rows]
    DatasetDict({split: Dataset.from_list(rows, features=DERMEVAL_FEATURES)}).save_to_disk(str(out))
    return len(rows)


def _rows(source: str | os.PathLike[str]) -> Iterable[Mapping[str, Any]]:
    source = Path(source)
    if source.is_file():
        for where, row in read_official_records(source):
            if not isinstance(row, Mapping):
                raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield row
        return
    if not source.is_dir():
        raise RecordError(f"{source}: no such dataset folder or data file")
    from datasets import DatasetDict, Image, load_from_disk

    loaded = load_from_disk(str(source))
    for ds in (loaded.values() if isinstance(loaded, DatasetDict) else [loaded]):
        if "image" in ds.column_names:
            ds = ds.cast_column("image", Image(decode=False))
        yield from ds


def export_records(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """A ``dermeval`` dataset (folder or JSONL data file) -> official DermEval records, JSONL. Returns the count."""
    records = [to_official(row) for row in _rows(source)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return len(records)
