"""Each named dataset's own layout read into :class:`~dermtrl.data.sources.raw.RawItem`\\ s.

A reader finds the dataset's table by its published file name, checks the columns it needs (a missing one is a
:class:`~dermtrl.errors.DataError` naming the dataset, the file and the column), finds each row's image by the
file name or id the table gives (wherever the download put it under the folder), and yields the row's label as
the dataset spells it, its skin tone normalised (:mod:`~dermtrl.data.sources.skin_tone`) with the field it came
from, and the dataset's other fields as metadata. A row whose image is missing or whose value cannot be read is
yielded with a ``problem`` (ingest lists it as skipped), never dropped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dermtrl.data.sources.raw import RawItem, image_index, read_csv
from dermtrl.data.sources.skin_tone import (
    FITZPATRICK_TYPES,
    GROUPED_TYPES,
    UNKNOWN,
    median_type,
    normalise_monk,
    normalise_skin_tone,
)
from dermtrl.errors import MissingInputError

__all__ = ["READERS", "find_table", "ham10000_hub_items"]

_TRUE = {"1", "1.0", "true", "yes", "y", "t"}


def find_table(root: Path, names: tuple[str, ...], *, dataset: str, layout: str) -> Path:
    """The dataset's table: ``root`` itself when it is that file, else the first of ``names`` found under it."""
    if root.is_file():
        if root.name in names or any(root.match(n) for n in names):
            return root
        raise MissingInputError(f"{dataset}: {root} is not {' or '.join(names)} (expected layout: {layout})")
    for name in names:
        found = sorted(root.rglob(name))
        if found:
            return found[-1] if "*" in name else found[0]  # a glob (SkinCAP's dated CSVs): the newest
    raise MissingInputError(f"{dataset}: no {' or '.join(names)} under {root} (expected layout: {layout})")


def _item(where: str, label: str | None, metadata: dict[str, Any], image: Path | None, missing: str) -> RawItem:
    label = (label or "").strip() or None
    if image is None:
        return RawItem(where, label, metadata=metadata, problem=missing)
    return RawItem(where, label, metadata=metadata, load=lambda p=image: str(p))


def _tone(value: str, field: str) -> dict[str, Any]:
    tone = normalise_skin_tone(value)
    return {"skin_tone": tone, "skin_tone_source": field if tone != UNKNOWN else "none",
            "skin_tone_raw": (value or "").strip()}


def _base(table: Path) -> Path:
    return table.parent


# --- Fitzpatrick17k ---------------------------------------------------------------------------------------

F17K_LAYOUT = ("fitzpatrick17k.csv with the images named <md5hash>.<ext> (or by their url_alphanum name) anywhere "
               "under the folder")


def fitzpatrick17k(root: Path) -> Iterator[RawItem]:
    """``fitzpatrick17k.csv`` (GitHub) and images named by ``md5hash``; skin tone from ``fitzpatrick_scale``
    (Scale AI), else ``fitzpatrick_centaur`` (Centaur Labs); ``-1`` is unknown."""
    table = find_table(root, ("fitzpatrick17k.csv",), dataset="fitzpatrick17k", layout=F17K_LAYOUT)
    rows = read_csv(table, dataset="fitzpatrick17k",
                    required=("md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label"))
    images = image_index(_base(table))
    for line, row in enumerate(rows, start=2):
        md5 = row["md5hash"].strip()
        tone = _tone(row["fitzpatrick_scale"], "fitzpatrick_scale")
        if tone["skin_tone"] == UNKNOWN:
            centaur = _tone(row["fitzpatrick_centaur"], "fitzpatrick_centaur")
            if centaur["skin_tone"] != UNKNOWN:
                tone = {**centaur, "skin_tone_raw": tone["skin_tone_raw"]}
        meta = {**tone, "md5hash": md5, "fitzpatrick_scale": row["fitzpatrick_scale"],
                "fitzpatrick_centaur": row["fitzpatrick_centaur"]}
        meta.update({k: row[k] for k in ("nine_partition_label", "three_partition_label", "qc", "url")
                     if row.get(k)})
        image = (images.get(md5) if md5 else None) or images.get(row.get("url_alphanum", "").strip() or "\0")
        yield _item(f"{table.name}:{line} ({md5})", row["label"], meta, image,
                    f"no image named {md5 or '(empty md5hash)'}.* under {_base(table)} (download it from the row's "
                    "url, or request the image set from the dataset's authors)")


# --- DDI ----------------------------------------------------------------------------------------------------

DDI_LAYOUT = "ddi_metadata.csv with the PNGs it names (DDI_file) beside it or in images/"


def ddi(root: Path) -> Iterator[RawItem]:
    """``ddi_metadata.csv`` and its PNGs; ``skin_tone`` 12/34/56 kept as the groups I-II/III-IV/V-VI."""
    table = find_table(root, ("ddi_metadata.csv",), dataset="ddi", layout=DDI_LAYOUT)
    rows = read_csv(table, dataset="ddi", required=("DDI_file", "skin_tone", "disease"))
    images = image_index(_base(table))
    for line, row in enumerate(rows, start=2):
        name = row["DDI_file"].strip()
        tone = _tone(row["skin_tone"], "skin_tone (DDI groups)")
        if tone["skin_tone"] in FITZPATRICK_TYPES:  # DDI records groups only: a single type is not its encoding
            tone = {"skin_tone": UNKNOWN, "skin_tone_source": "none", "skin_tone_raw": tone["skin_tone_raw"]}
        malignant = row.get("malignant", row.get("malignancy(malig=1)", ""))
        meta = {**tone, "DDI_file": name, "malignant": str(malignant).strip().lower() in _TRUE}
        if row.get("DDI_ID"):
            meta["DDI_ID"] = row["DDI_ID"]
        yield _item(f"{table.name}:{line} ({name})", row["disease"], meta, images.get(name) if name else None,
                    f"no image {name or '(empty DDI_file)'} under {_base(table)}")


# --- SCIN ---------------------------------------------------------------------------------------------------

SCIN_LAYOUT = ("scin_cases.csv and scin_labels.csv (gs://dx-scin-public-data/dataset/) with the images their "
               "image_N_path columns name, e.g. dataset/images/<id>.png")
SCIN_CASE_COLUMNS = ("case_id", "fitzpatrick_skin_type", "image_1_path", "image_2_path", "image_3_path")
SCIN_LABEL_COLUMNS = ("case_id", "weighted_skin_condition_label", "dermatologist_fitzpatrick_skin_type_label_1",
                      "dermatologist_fitzpatrick_skin_type_label_2", "dermatologist_fitzpatrick_skin_type_label_3",
                      "monk_skin_tone_label_us", "monk_skin_tone_label_india")


def _scin_label(text: str) -> tuple[str | None, str | None]:
    """The condition with the largest weight in ``weighted_skin_condition_label`` (ties: by name); a problem."""
    text = (text or "").strip()
    if not text:
        return None, None
    try:
        weights = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None, f"weighted_skin_condition_label {text[:60]!r} is not a {{condition: weight}} mapping"
    if not isinstance(weights, dict) or not all(isinstance(w, (int, float)) for w in weights.values()):
        return None, f"weighted_skin_condition_label {text[:60]!r} is not a {{condition: weight}} mapping"
    if not weights:
        return None, None
    return sorted(weights.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0], None


def scin(root: Path) -> Iterator[RawItem]:
    """One item per image of each case; the label is the top condition of ``weighted_skin_condition_label``.
    Skin tone: the dermatologists' estimate (median of ``dermatologist_fitzpatrick_skin_type_label_1..3``) when
    given, else the self-reported ``fitzpatrick_skin_type``; both are kept, with Monk tone (US and India)."""
    cases_path = find_table(root, ("scin_cases.csv",), dataset="scin", layout=SCIN_LAYOUT)
    labels_path = find_table(root if root.is_dir() else root.parent, ("scin_labels.csv",), dataset="scin",
                             layout=SCIN_LAYOUT)
    cases = read_csv(cases_path, dataset="scin", required=SCIN_CASE_COLUMNS)
    labels = {r["case_id"].strip(): r for r in read_csv(labels_path, dataset="scin", required=SCIN_LABEL_COLUMNS)}
    base = _base(cases_path)
    images = image_index(base.parent if base.name == "dataset" else base)
    for line, case in enumerate(cases, start=2):
        case_id = case["case_id"].strip()
        lab = labels.get(case_id, {})
        label, problem = _scin_label(lab.get("weighted_skin_condition_label", ""))
        self_reported = normalise_skin_tone(case["fitzpatrick_skin_type"])
        dermatologist = median_type(lab.get(f"dermatologist_fitzpatrick_skin_type_label_{i}") for i in (1, 2, 3))
        if dermatologist != UNKNOWN:
            tone, source = dermatologist, "dermatologist"
        elif self_reported != UNKNOWN:
            tone, source = self_reported, "self-reported"
        else:
            tone, source = UNKNOWN, "none"
        meta: dict[str, Any] = {
            "skin_tone": tone, "skin_tone_source": source, "skin_tone_self_reported": self_reported,
            "skin_tone_dermatologist": dermatologist, "skin_tone_raw": case["fitzpatrick_skin_type"].strip(),
            "monk_skin_tone_us": normalise_monk(lab.get("monk_skin_tone_label_us")),
            "monk_skin_tone_india": normalise_monk(lab.get("monk_skin_tone_label_india")),
            "case_id": case_id, "weighted_skin_condition_label": lab.get("weighted_skin_condition_label", ""),
        }
        if not lab:
            problem = f"case {case_id} has no row in {labels_path.name}"
        for n in (1, 2, 3):
            rel = case.get(f"image_{n}_path", "").strip()
            if not rel:
                continue
            item = _item(f"{cases_path.name}:{line} ({rel})", label,
                         {**meta, "image_path": rel, "shot_type": case.get(f"image_{n}_shot_type", "")},
                         images.get(Path(rel).name), f"no image {rel} under {base}")
            if problem:
                item.problem, item.load = problem, None
            yield item


# --- PAD-UFES-20 --------------------------------------------------------------------------------------------

PAD_LAYOUT = "metadata.csv (with its `fitspatrick` column) and the PNGs it names (img_id), e.g. in images/"


def pad_ufes_20(root: Path) -> Iterator[RawItem]:
    """``metadata.csv`` and its smartphone PNGs; skin tone from the column the dataset spells ``fitspatrick``."""
    table = find_table(root, ("metadata.csv",), dataset="pad-ufes-20", layout=PAD_LAYOUT)
    with table.open(encoding="utf-8-sig") as fh:
        header = fh.readline()
    column = "fitzpatrick" if "fitzpatrick" in header and "fitspatrick" not in header else "fitspatrick"
    rows = read_csv(table, dataset="pad-ufes-20", required=("img_id", "diagnostic", column))
    images = image_index(_base(table))
    for line, row in enumerate(rows, start=2):
        name = row["img_id"].strip()
        meta = {**_tone(row[column], column), "img_id": name}
        meta.update({k: row[k] for k in ("patient_id", "lesion_id", "region", "biopsed") if row.get(k)})
        yield _item(f"{table.name}:{line} ({name})", row["diagnostic"], meta, images.get(name) if name else None,
                    f"no image {name or '(empty img_id)'} under {_base(table)}")


# --- HAM10000 -----------------------------------------------------------------------------------------------

HAM_LAYOUT = ("HAM10000_metadata(.csv) with HAM10000_images_part_1/ and _part_2/ (ISIC_<n>.jpg), or a Hub "
              "dataset with image and dx columns such as marmal88/skin_cancer")
_HAM_NO_TONE = {"skin_tone": UNKNOWN, "skin_tone_source": "none", "skin_tone_raw": ""}


def ham10000(root: Path) -> Iterator[RawItem]:
    """``HAM10000_metadata`` and the two image folders; HAM10000 records no skin tone (all ``unknown``)."""
    table = find_table(root, ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab"),
                       dataset="ham10000", layout=HAM_LAYOUT)
    rows = read_csv(table, dataset="ham10000", required=("image_id", "dx"))
    images = image_index(_base(table))
    for line, row in enumerate(rows, start=2):
        image_id = row["image_id"].strip()
        meta = {**_HAM_NO_TONE, "image_id": image_id}
        meta.update({k: row[k] for k in ("lesion_id", "dx_type", "age", "sex", "localization") if row.get(k)})
        yield _item(f"{table.name}:{line} ({image_id})", row["dx"], meta,
                    images.get(image_id) if image_id else None, f"no image {image_id}.jpg under {_base(table)}")


def ham10000_hub_items(ds: Any, name: str) -> Iterator[RawItem]:
    """Rows of a HAM10000 Hub dataset (``image`` and ``dx`` features; ``dx`` a string or a ``ClassLabel``)."""
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    from dermtrl.cases.images import ImageError, image_value
    from dermtrl.errors import DataError

    for column in ("image", "dx"):
        if column not in ds.column_names:
            raise DataError(f"ham10000: the Hub dataset {name} has no column {column!r}; its columns: "
                            f"{', '.join(ds.column_names)}")
    feature = ds.features["dx"]
    ds = ds.cast_column("image", ImageFeature(decode=False))
    for index, row in enumerate(ds):
        label = row["dx"]
        if isinstance(feature, ClassLabel) and isinstance(label, int):
            label = feature.int2str(label)
        meta = {**_HAM_NO_TONE, **{k: row[k] for k in ("image_id", "lesion_id", "dx_type", "sex", "localization")
                                   if row.get(k) not in (None, "")}}
        if row.get("age") is not None:
            meta["age"] = row["age"]
        where = f"{name}[{index}]"

        def load(cell: Any = row["image"], where: str = where) -> str | bytes:
            value = image_value(cell, where=where)
            if not isinstance(value, (str, bytes)):
                raise ImageError(f"{where}: the image cell holds a {type(value).__name__}", "unreadable")
            return value

        yield RawItem(f"{where} ({meta.get('image_id', index)})", None if label is None else str(label),
                      metadata=meta, load=load)


# --- SkinCAP ------------------------------------------------------------------------------------------------

SKINCAP_LAYOUT = "skincap_v<date>.csv with the PNGs it names (skincap_file_path) under skincap/"


def skincap(root: Path) -> Iterator[RawItem]:
    """The SkinCAP CSV joined to its images by file name; the English caption (``caption_zh_polish_en``) is kept
    as ``source_caption``. Skin tone is the one SkinCAP copied from its source: DDI's groups (``skin_tone``) or
    Fitzpatrick17k's ``fitzpatrick_scale``. Rows marked ``Do not consider this image`` are skipped by name."""
    table = find_table(root, ("skincap_v*.csv",), dataset="skincap", layout=SKINCAP_LAYOUT)
    rows = read_csv(table, dataset="skincap", required=("skincap_file_path", "disease", "caption_zh_polish_en"))
    images = image_index(_base(table))
    for line, row in enumerate(rows, start=2):
        rel = row["skincap_file_path"].strip()
        grouped = normalise_skin_tone(row.get("skin_tone", ""))
        if grouped in GROUPED_TYPES.values():
            tone = {"skin_tone": grouped, "skin_tone_source": "skin_tone (DDI groups)",
                    "skin_tone_raw": row["skin_tone"].strip()}
        else:
            tone = _tone(row.get("fitzpatrick_scale", ""), "fitzpatrick_scale")
            if tone["skin_tone"] == UNKNOWN and row.get("fitzpatrick_centaur"):
                tone = _tone(row["fitzpatrick_centaur"], "fitzpatrick_centaur")
        meta = {**tone, "skincap_file_path": rel, "source_caption": row["caption_zh_polish_en"].strip()}
        meta.update({k: row[k] for k in ("id", "ori_file_path", "source", "caption_zh", "malignant")
                     if row.get(k)})
        item = _item(f"{table.name}:{line} ({rel})", row["disease"], meta,
                     images.get(Path(rel).name) if rel else None, f"no image {rel or '(empty skincap_file_path)'} "
                                                                  f"under {_base(table)}")
        if str(row.get("Do not consider this image", "")).strip().lower() in _TRUE:
            item.problem, item.load = "marked 'Do not consider this image' in the SkinCAP table", None
        yield item


READERS = {"fitzpatrick17k": fitzpatrick17k, "ddi": ddi, "scin": scin, "pad-ufes-20": pad_ufes_20,
           "ham10000": ham10000, "skincap": skincap}
