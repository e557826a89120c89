"""Build the two datasets of Section 3.1 from a finished run: ``dermbench`` and ``dermeval``.

Both have ``datasets`` :class:`~datasets.Image` features (the image bytes are embedded, so a saved or pushed
dataset needs no other file) and a fixed schema, :data:`DERMBENCH_FEATURES` and :data:`DERMEVAL_FEATURES`:

``dermbench`` (split ``test``; one row per image with a certified reference)
    ``id`` (item id), ``image``, ``image_sha256`` (pixel hash), ``category`` (Figure 5), ``label``,
    ``reference`` (the certified narrative; the clinician's revision when there is one), ``reference_revised``,
    ``caption``, ``ratings`` (every rater's six scores of the text before certification), ``metadata`` (a JSON
    object as a string: source row extras such as ``fitzpatrick``), ``source`` (file or row it came from).
``dermeval`` (splits ``train`` and ``test``; one row per image and stream)
    ``id`` (text id), ``item_id``, ``image``, ``image_sha256``, ``category``, ``label``, ``narrative``,
    ``stream`` (``certified`` | ``regular``), ``expert_scores`` (the six recorded scores: certified ones fixed at
    5, regular ones the mean over raters), ``ratings`` (every rater), ``evaluation`` (y*, Figure 4's label text),
    ``rationale``, ``split``, ``metadata``, ``prompt_version``.

The split guard: the paper evaluates DermEval on images not used for training, so the split is decided per
*image content hash* (never per file name or row): every row of one picture, under whatever name or stream, falls
in the same split, chosen by a seeded hash of the pixels or forced to ``test`` for images listed as evaluation
images (``exclude_from_train``). :func:`check_split_guard` verifies it on any built ``dermeval``.

DermBench's evaluation set: the paper evaluates on images "not used for DermEval training" (Section 4.1), so
``dermbench`` holds only the certified references of images that DermEval's ``train`` split does not use; the
references of training images are left out (counted in the summary and the card) unless the user asks for them
(``allow_eval_images_in_train``, ``--allow-eval-images-in-train``).

Training-set selection (Section 3.4: "2,000 certified exemplar images with perfect scores and 2,000 imperfect
low-score images"): :class:`StreamSelection` keeps, per stream, the ``train`` rows whose score (the mean of the six
expert scores) lies within ``[min_score, max_score]`` and then ``count`` of them, chosen by a seeded hash of the
text id. Rows of ``train`` images not selected are left out of both splits (their image stays a training image,
so it cannot be a test one). The ``test`` split is not filtered. The card reports the rule and the counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.data.reviews import TextStatus, review_status
from dermtrl.data.run import RunDir
from dermtrl.data.schema import DERMBENCH_FEATURES, DERMEVAL_FEATURES, subgroup_columns
from dermtrl.data.summary import StepSummary
from dermtrl.dimensions import DIMENSIONS
from dermtrl.errors import DermtrlError
from dermtrl.prompts import PROMPT_VERSION

__all__ = [
    "DERMBENCH_FEATURES",
    "DERMEVAL_FEATURES",
    "BuildResult",
    "SplitLeak",
    "StreamSelection",
    "build_datasets",
    "check_split_guard",
    "evaluation_hashes",
]


class SplitLeak(DermtrlError, ValueError):
    """An image (by content hash) is in DermEval's training split and also in its test split or evaluation set."""


def check_split_guard(dermeval: Any, evaluation: Iterable[str] = ()) -> None:
    """Raise :class:`SplitLeak` when a training image is also a test or evaluation image (by pixel hash)."""
    from datasets import DatasetDict

    splits = dermeval if isinstance(dermeval, DatasetDict) else {"all": dermeval}
    train: set[str] = set()
    test: set[str] = set()
    for ds in splits.values():
        for sha, split in zip(ds["image_sha256"], ds["split"], strict=True):
            (train if split == "train" else test).add(sha)
    leaked = (train & test) | (train & set(evaluation))
    if leaked:
        raise SplitLeak(f"{len(leaked)} image(s) are in DermEval's training split and also used for evaluation: "
                        + ", ".join(sorted(s[:16] for s in leaked)[:10]))


STREAMS = ("certified", "regular")


@dataclass(frozen=True)
class StreamSelection:
    """Which ``train`` rows of one stream DermEval keeps: score (mean of the six expert scores) within
    ``[min_score, max_score]``, then ``count`` of them (all when ``None``)."""

    count: int | None = None
    min_score: float | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        if self.count is not None and self.count < 1:
            raise ValueError(f"a stream's count must be at least 1, got {self.count}")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 5.0:
                raise ValueError(f"{name} must be within 0-5 (the expert score scale), got {value}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score {self.min_score} is above max_score {self.max_score}")

    def rule(self) -> str:
        bounds = []
        if self.min_score is not None:
            bounds.append(f"score >= {self.min_score:g}")
        if self.max_score is not None:
            bounds.append(f"score <= {self.max_score:g}")
        return (" and ".join(bounds) or "any score") + (f", {self.count} rows" if self.count else ", all rows")


def _score(row: dict[str, Any]) -> float:
    return sum(row["expert_scores"].values()) / len(DIMENSIONS)


def _select_train(rows: list[dict[str, Any]], selection: dict[str, StreamSelection], seed: int,
                  summary: StepSummary) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply each stream's selection to the ``train`` rows; returns the kept rows and one report per stream."""
    keep = [r for r in rows if r["split"] != "train" or r["stream"] not in selection]
    report = []
    for stream, sel in selection.items():
        available = [r for r in rows if r["split"] == "train" and r["stream"] == stream]
        eligible = [r for r in available if (sel.min_score is None or _score(r) >= sel.min_score)
                    and (sel.max_score is None or _score(r) <= sel.max_score)]
        if sel.count is not None and sel.count > len(eligible):
            raise ValueError(f"--{stream}-count {sel.count}: only {len(eligible)} of the {len(available)} {stream} "
                             f"rows in DermEval's train split pass the rule ({sel.rule()}); lower the count, widen "
                             "the score bounds or lower --test-fraction")
        ranked = sorted(eligible, key=lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).hexdigest())
        chosen = ranked[: sel.count] if sel.count is not None else ranked
        chosen_ids = {r["id"] for r in chosen}
        for r in available:
            if r["id"] not in chosen_ids:
                summary.skip(r["id"], "not-selected", f"{r['id']}: not selected for training ({stream}: "
                                                      f"{sel.rule()}, score {_score(r):.2f})")
        keep += chosen
        report.append({"stream": stream, "rule": sel.rule(), "available": len(available),
                       "eligible": len(eligible), "selected": len(chosen)})
    order = {r["id"]: i for i, r in enumerate(rows)}
    return sorted(keep, key=lambda r: order[r["id"]]), report


def _assign_split(sha: str, test_fraction: float, seed: int, forced_test: set[str]) -> str:
    if sha in forced_test:
        return "test"
    bucket = int(hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()[:12], 16) / float(16**12)
    return "test" if bucket < test_fraction else "train"


def evaluation_hashes(sources: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Pixel hashes of evaluation images: from a text file of hashes (one a line), an image folder, or a dataset
    folder with an ``image_sha256`` or ``image`` column."""
    from dermtrl.cases.images import ImageError, read_cell, read_image

    out: set[str] = set()
    for source in sources:
        path = Path(source)
        if path.is_file():
            out.update(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
            from datasets import DatasetDict, load_from_disk
            from datasets import Image as ImageFeature

            loaded = load_from_disk(str(path))
            for ds in (loaded.values() if isinstance(loaded, DatasetDict) else [loaded]):
                if "image_sha256" in ds.column_names:
                    out.update(ds["image_sha256"])
                elif "image" in ds.column_names:
                    for row, cell in enumerate(ds.cast_column("image", ImageFeature(decode=False))["image"]):
                        where = f"{path}: row {row}"
                        out.add(read_cell(cell, base_dir=path.resolve(), where=where).content_hash)
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                try:
                    out.add(read_image(file).content_hash)
                except ImageError:
                    continue
        else:
            raise ValueError(f"{source}: no such file or folder of evaluation images")
    return out


@contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """datasets' own progress bars, off when the caller asked for quiet."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if not enabled and was_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and was_enabled:
            datasets.enable_progress_bars()


@dataclass
class BuildResult:
    """The two datasets, where they were saved, the skipped items and how long the build took."""

    dermbench: Any
    dermeval: Any
    paths: dict[str, Path] = field(default_factory=dict)
    summary: StepSummary = field(default_factory=lambda: StepSummary("build"))
    seconds: float = 0.0
    #: the training-set selection per stream and the evaluation-image rule, as the cards report them
    selection: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {f"dermbench/{k}": len(v) for k, v in self.dermbench.items()}
        out.update({f"dermeval/{k}": len(v) for k, v in self.dermeval.items()})
        return out


def _ratings(st: TextStatus) -> list[dict[str, Any]]:
    return [{"rater_id": r["rater_id"], "scores": {d: float(r["scores"][d]) for d in DIMENSIONS}} for r in st.ratings]


def build_datasets(
    run: RunDir | str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    exclude_from_train: Iterable[str] = (),
    keep_flagged: bool = False,
    selection: dict[str, StreamSelection] | None = None,
    allow_eval_images_in_train: bool = False,
    license: str = "cc-by-nc-4.0",
    write_cards: bool = True,
    progress: bool = True,
) -> BuildResult:
    """Assemble, check and save ``dermbench`` and ``dermeval`` (``save_to_disk``) with their cards.

    ``exclude_from_train`` are pixel hashes forced into DermEval's test split (see :func:`evaluation_hashes`);
    ``keep_flagged`` keeps rationales whose restated scores still differ from the experts' (left out by default:
    their critique would contradict the score block of y*). ``selection`` maps a stream to its
    :class:`StreamSelection`; ``allow_eval_images_in_train`` keeps in ``dermbench`` the references of images
    DermEval trains on (see the module docstring).
    """
    from datasets import Dataset, DatasetDict

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    selection = dict(selection or {})
    unknown = set(selection) - set(STREAMS)
    if unknown:
        raise ValueError(f"selection: unknown stream(s) {', '.join(sorted(unknown))} (streams: {', '.join(STREAMS)})")
    started = time.perf_counter()
    run = run if isinstance(run, RunDir) else RunDir(run)
    out = Path(out_dir) if out_dir is not None else run.datasets_dir
    items = run.require_items()
    texts = run.all_texts()
    statuses = review_status(run)
    rationales = run.rationales()
    forced = set(exclude_from_train)
    summary = StepSummary("build", total=len(statuses))

    image_bytes: dict[str, bytes] = {}

    def image_cell(item: dict[str, Any]) -> dict[str, Any]:
        if item["id"] not in image_bytes:
            image_bytes[item["id"]] = run.image_path(item).read_bytes()
        return {"bytes": image_bytes[item["id"]], "path": Path(item["image"]).name}

    bench_rows: list[dict[str, Any]] = []
    eval_rows: list[dict[str, Any]] = []
    for tid, st in statuses.items():
        text = texts[tid]
        item = items.get(text["item_id"])
        if item is None:
            summary.skip(tid, "no-item", f"{tid}: its item is no longer ingested")
            continue
        if not st.final:
            summary.skip(tid, st.status, f"{tid}: {st.status} ({st.note})")
            continue
        assert st.scores is not None
        metadata = json.dumps(item.get("metadata") or {}, ensure_ascii=False, sort_keys=True)
        subgroups = subgroup_columns(item.get("metadata"))  # skin_tone and licence, as columns to slice by
        if st.stream == "certified":
            bench_rows.append({
                "id": item["id"], "image": image_cell(item), "image_sha256": item["content_hash"],
                "category": item["category"], "label": item["label"], "reference": st.narrative,
                "reference_revised": st.status == "revised", "caption": text.get("caption", ""),
                "ratings": _ratings(st), "metadata": metadata, "source": item["source"], **subgroups,
            })
        rationale = rationales.get(tid)
        if rationale is None or rationale.get("narrative") != st.narrative or rationale.get("scores") != st.scores:
            summary.skip(tid, "no-rationale", f"{tid}: no rationale for its current text and scores yet "
                                              "(run `dermtrl data rationale`)")
            continue
        if rationale.get("score_mismatch") and not keep_flagged:
            summary.skip(tid, "rationale-mismatch", f"{tid}: the rationale restates other scores than the "
                                                    "experts' (left out; --keep-flagged keeps it)")
            continue
        eval_rows.append({
            "id": tid, "item_id": item["id"], "image": image_cell(item), "image_sha256": item["content_hash"],
            "category": item["category"], "label": item["label"], "narrative": st.narrative, "stream": st.stream,
            "expert_scores": {d: float(st.scores[d]) for d in DIMENSIONS}, "ratings": _ratings(st),
            "evaluation": rationale["evaluation"], "rationale": rationale["rationale"],
            "split": _assign_split(item["content_hash"], test_fraction, seed, forced), "metadata": metadata,
            "prompt_version": str(rationale.get("prompt_version") or PROMPT_VERSION), **subgroups,
        })
        summary.done += 1

    def dataset(rows: list[dict[str, Any]], features: Any) -> Dataset:
        if not rows:  # from_list([]) loses the schema: an empty split keeps the fixed one
            return Dataset.from_dict({name: [] for name in features}, features=features)
        return Dataset.from_list(rows, features=features)

    eval_rows, selected = _select_train(eval_rows, selection, seed, summary)
    summary.done -= sum(s["available"] - s["selected"] for s in selected)
    train_images = {r["image_sha256"] for r in eval_rows if r["split"] == "train"}
    if not allow_eval_images_in_train:
        left_out = [r for r in bench_rows if r["image_sha256"] in train_images]
        bench_rows = [r for r in bench_rows if r["image_sha256"] not in train_images]
        summary.extra["dermbench_left_out"] = len(left_out)
    dermbench = DatasetDict({"test": dataset(bench_rows, DERMBENCH_FEATURES)})
    dermeval = DatasetDict({
        split: dataset([r for r in eval_rows if r["split"] == split], DERMEVAL_FEATURES) for split in ("train", "test")
    })
    evaluation_images = set() if allow_eval_images_in_train else set(dermbench["test"]["image_sha256"])
    check_split_guard(dermeval, forced | evaluation_images)
    result = BuildResult(dermbench, dermeval, summary=summary)
    result.selection = {"streams": selected, "allow_eval_images_in_train": allow_eval_images_in_train,
                        "dermbench_left_out": summary.extra.get("dermbench_left_out", 0), "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    with _datasets_progress(progress):
        for name, ds in (("dermbench", dermbench), ("dermeval", dermeval)):
            path = out / name
            # an empty split needs one (empty) shard: with none, `load_from_disk` fails on it with an IndexError
            ds.save_to_disk(str(path), num_shards={split: 1 for split, rows in ds.items() if len(rows) == 0})
            result.paths[name] = path
    if write_cards:
        from dermtrl.data.cards import write_card

        for name, ds in (("dermbench", dermbench), ("dermeval", dermeval)):
            write_card(name, ds, result.paths[name] / "README.md", license=license, build_info=result.selection)
    result.seconds = time.perf_counter() - started
    summary.extra.update(result.counts())
    summary.extra["seconds"] = round(result.seconds, 2)
    return result
