"""The named datasets: what each is, its licence and access terms, where its skin tone comes from, and reading
one by name from a local copy or a Hub id.

``dermtrl data ingest --source NAME PATH_OR_HUB_ID`` goes through :func:`read_named`. A local folder (or the
dataset's table itself, or a ``save_to_disk`` copy of a Hub dataset) is read in the dataset's own layout. A Hub
id is read only for a dataset that lives on the Hub (HAM10000's mirror as a ``datasets`` dataset, SkinCAP's
repository as files), and only because the user named it: with ``HF_HUB_OFFLINE=1`` an id that is not in the
local Hub cache is an error saying how to get it, and a gated repository's error says which agreement to accept.
Nothing else is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dermtrl.data.sources import readers
from dermtrl.data.sources.raw import RawItem
from dermtrl.errors import MissingInputError

__all__ = ["SOURCES", "DatasetSource", "get_source", "read_named"]


@dataclass(frozen=True)
class DatasetSource:
    """One public dataset dermtrl reads by name."""

    name: str
    title: str
    licence: str  # the licence as the dataset states it
    terms: str  # what the licence or agreement asks of a user, in one or two sentences
    access: str  # how to obtain it
    gated: bool  # an agreement, login or request form stands before the images
    skin_tone: str  # the dataset's skin-tone field and how dermtrl normalises it
    layout: str  # the files dermtrl expects
    reader: Callable[[Path], Iterator[RawItem]]
    label_datasets: tuple[str, ...]  # rows of label_map.csv that apply
    hub: Literal["dataset", "files"] | None = None  # how a Hub id is read (None: not on the Hub)
    hub_reader: Callable[[Any, str], Iterator[RawItem]] | None = None  # rows of a Hub ``datasets`` dataset
    hub_id: str | None = None  # the usual Hub id
    text: str = "none"  # the dataset's own caption text, if any

    def describe(self) -> str:
        """The lines printed at ingest: licence, terms, how to get it, skin tone."""
        lines = [f"{self.title} ({self.name}): licence {self.licence}.", f"  Terms: {self.terms}",
                 f"  How to get it{' (gated)' if self.gated else ''}: {self.access}",
                 f"  Skin tone: {self.skin_tone}"]
        return "\n".join(lines)


SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    DatasetSource(
        "fitzpatrick17k", "Fitzpatrick17k", "CC BY-NC-SA 3.0",
        "non-commercial use, attribution, share-alike; the images belong to the atlases they came from.",
        "the table is fitzpatrick17k.csv in github.com/mattgroh/fitzpatrick17k; download each image from its `url` "
        "column, or ask the authors for the image set with the form linked in that README.",
        True,
        "`fitzpatrick_scale` (Scale AI annotators, 1-6), else `fitzpatrick_centaur` (Centaur Labs); -1 becomes "
        "unknown.", readers.F17K_LAYOUT, readers.fitzpatrick17k, ("fitzpatrick17k",)),
    DatasetSource(
        "ddi", "DDI (Diverse Dermatology Images)", "Stanford AIMI research-use agreement",
        "research use under the agreement you accept when you log in; do not redistribute the images.",
        "log in at https://stanfordaimi.azurewebsites.net/datasets/35866158-8196-48d8-87bf-50dca81df965, accept the "
        "agreement and download; keep ddi_metadata.csv and the PNGs in one folder.",
        True,
        "`skin_tone` 12 / 34 / 56, kept as the groups I-II / III-IV / V-VI.",
        readers.DDI_LAYOUT, readers.ddi, ("ddi",)),
    DatasetSource(
        "scin", "SCIN (Skin Condition Image Network)", "SCIN Data Use License",
        "attribution; re-identifying any contributor is forbidden (see the LICENSE of "
        "github.com/google-research-datasets/scin).",
        "open: `gsutil -m cp -r gs://dx-scin-public-data/dataset .` (no login; see "
        "github.com/google-research-datasets/scin).",
        False,
        "dermatologist estimate (median of `dermatologist_fitzpatrick_skin_type_label_1..3`), else self-reported "
        "`fitzpatrick_skin_type` (FST1-FST6; NONE_IDENTIFIED becomes unknown); both kept, `skin_tone_source` says "
        "which is used; Monk tone (US and India graders) kept as `monk_skin_tone_us`/`_india`.",
        readers.SCIN_LAYOUT, readers.scin, ("scin",)),
    DatasetSource(
        "pad-ufes-20", "PAD-UFES-20", "CC BY 4.0 (as its Mendeley Data page states)",
        "attribution.",
        "open: download the zip from Mendeley Data, doi:10.17632/zr7vgbcyr2.1, and unzip it (metadata.csv and "
        "images/).",
        False,
        "`fitspatrick` (the dataset's spelling), 1-6; empty becomes unknown.",
        readers.PAD_LAYOUT, readers.pad_ufes_20, ("pad-ufes-20",)),
    DatasetSource(
        "ham10000", "HAM10000", "a non-commercial Creative Commons licence (see the Dataverse page for the exact one)",
        "non-commercial use with attribution.",
        "Harvard Dataverse, doi:10.7910/DVN/DBW86T (HAM10000_metadata and the two image zips), or the Hub mirror "
        "marmal88/skin_cancer (not gated; its splits are the mirror's own).",
        False,
        "none recorded: every item's skin tone is unknown.",
        readers.HAM_LAYOUT, readers.ham10000, ("ham10000",), hub="dataset", hub_id="marmal88/skin_cancer",
        hub_reader=readers.ham10000_hub_items),
    DatasetSource(
        "skincap", "SkinCAP", "CC BY-NC-SA 4.0 plus the KAUST SkinCAP research-use agreement",
        "non-commercial research only; no redistribution of any part; do not share the download link.",
        "gated on the Hub: log in at https://huggingface.co/datasets/joshuachou/SkinCAP, accept the agreement, set "
        "HF_TOKEN, then `huggingface-cli download joshuachou/SkinCAP --repo-type dataset` (or pass the id online).",
        True,
        "copied from its source: DDI's `skin_tone` groups or Fitzpatrick17k's `fitzpatrick_scale` (1-6).",
        readers.SKINCAP_LAYOUT, readers.skincap, ("skincap", "fitzpatrick17k", "ddi"), hub="files",
        hub_id="joshuachou/SkinCAP", text="English captions (`caption_zh_polish_en`) kept as `source_caption`"),
)}


def get_source(name: str) -> DatasetSource:
    """The named dataset; an unknown name is a ``ValueError`` listing the known ones."""
    key = name.strip().lower().replace("_", "-")
    if key not in SOURCES:
        raise ValueError(f"--source {name!r}: not a named dataset; known: {', '.join(SOURCES)} (MIDAS is not "
                         "supported: its release_midas.xlsx columns could not be confirmed)")
    return SOURCES[key]


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_available(spec: DatasetSource, repo_id: str, exc: BaseException) -> MissingInputError:
    why = ("it is not in the local Hub cache and the Hub is offline (HF_HUB_OFFLINE=1)" if _offline()
           else f"the Hub refused or could not serve it ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    return MissingInputError(f"{spec.name}: cannot read the Hub dataset {repo_id}: {why}. How to get it: "
                             f"{spec.access}")


def _hub_snapshot(spec: DatasetSource, repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except Exception as exc:  # offline and not cached, gated, missing: one message that says how to get it
        raise _not_available(spec, repo_id, exc) from None


def _hub_dataset(spec: DatasetSource, repo_id: str, split: str) -> Any:
    from datasets import load_dataset

    try:
        return load_dataset(repo_id, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():  # the dataset is there but has no such split: say which exist
            raise ValueError(f"{spec.name}: {repo_id}: {exc}") from None
        raise _not_available(spec, repo_id, exc) from None
    except Exception as exc:
        raise _not_available(spec, repo_id, exc) from None


def _tagged(spec: DatasetSource, items: Iterator[RawItem]) -> Iterator[RawItem]:
    for item in items:
        item.metadata = {"dataset": spec.name, "licence": spec.licence, **item.metadata}
        yield item


def read_named(name: str, source: str, *, split: str = "train") -> Iterator[RawItem]:
    """Items of the dataset ``name`` from ``source``: a local folder or table in its layout, or a Hub id."""
    spec = get_source(name)
    path = Path(source).expanduser()
    saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))
    if saved and spec.hub_reader is not None:  # the Hub dataset kept with save_to_disk
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if split not in ds:
                raise ValueError(f"{spec.name}: {source}: no split {split!r}; available: {', '.join(ds)}")
            ds = ds[split]
        return _tagged(spec, spec.hub_reader(ds, path.name))
    if path.exists():
        return _tagged(spec, spec.reader(path))
    looks_local = source.startswith((".", "/", "~")) or source.count("/") != 1 or path.suffix.lower() == ".csv"
    if looks_local or spec.hub is None:
        where = "" if spec.hub is None else f" (or its Hub id, e.g. {spec.hub_id})"
        raise MissingInputError(f"{spec.name}: {source}: no such folder or file; give the folder holding "
                                f"{spec.layout}{where}. How to get it: {spec.access}")
    if spec.hub == "dataset" and spec.hub_reader is not None:
        return _tagged(spec, spec.hub_reader(_hub_dataset(spec, source, split), source))
    return _tagged(spec, spec.reader(_hub_snapshot(spec, source)))
