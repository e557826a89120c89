"""Running DermEval over a dataset: per-case JSONL written as it goes, resumable, then agreement with experts.

A long evaluation must never lose finished work: each batch's records are appended and flushed before the
next batch starts, and a re-run skips the case ids already in the file. Cases whose image cannot be decoded
are recorded with the error and counted as skipped in the report, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset
from datasets import Image as ImageFeature

from dermtrl.cases.images import read_cell
from dermtrl.dermeval.evaluator import DermEval
from dermtrl.jsonl import RecordLog
from dermtrl.metrics import AgreementReport, agreement
from dermtrl.progress import JobBar
from dermtrl.prompts import PROMPT_VERSION


def _decode(value: Any, case_id: str):
    """Decode a raw ``Image`` cell ourselves (the project's one reader), so one bad image costs one case, not the
    run; empty bytes are that case's error, never a reason to open a file of the same name."""
    return read_cell(value, where=f"case {case_id!r}").image


def _batches(ds: Dataset, done: set[str], batch_size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    batch = []
    for i, row in enumerate(ds):
        case_id = str(row.get("case_id") or i)
        if case_id in done:
            continue
        batch.append((case_id, row))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


#: Case columns copied into each record when the data has them: every rater's scores (the expert ceiling) and the
#: subgroup columns reports slice by.
CARRIED_COLUMNS: tuple[str, ...] = ("rater_scores", "ratings", "skin_tone", "category", "source")


def run_evaluation(
    evaluator: DermEval, ds: Dataset, out_path: str | Path, *, progress: bool = True, overwrite: bool = False,
    carry: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Evaluate every case not yet in ``out_path`` (JSONL), appending records as each batch finishes.

    Each record keeps the case's :data:`CARRIED_COLUMNS` and ``carry`` columns (raters, skin tone, a ``--by``
    column) where the data has them, so a report can read them without reloading the data.

    Records from other weights or another prompt version are never mixed in: resuming such a file is refused
    (:class:`~dermtrl.jsonl.SettingsMismatch`; ``overwrite=True`` starts it afresh).
    """
    log = RecordLog(out_path, {"prompt_version": PROMPT_VERSION, "model_fingerprint": evaluator.model_fingerprint},
                    key="case_id", overwrite=overwrite)
    done = set(log.records)  # a case whose image failed is done too: rerunning cannot mend the file
    carried = [c for c in dict.fromkeys((*CARRIED_COLUMNS, *carry)) if c in ds.column_names and c != "image"]
    if "image" in ds.column_names:
        ds = ds.cast_column("image", ImageFeature(decode=False))
    ids = ([str(c or i) for i, c in enumerate(ds["case_id"])] if "case_id" in ds.column_names
           else [str(i) for i in range(len(ds))])  # as _batches keys them
    wanted = set(ids)
    skipped = sum(1 for case_id, r in log.records.items() if case_id in wanted and "error" in r)
    already = sum(1 for case_id in ids if case_id in done)
    bar = JobBar("DermEval", len(ids), done=already, counters={"skipped": skipped}, enabled=progress)
    with log, bar:
        for batch in _batches(ds, done, evaluator.batch_size):
            new: list[dict[str, Any]] = []
            good: list[tuple[int, Any, str]] = []  # (slot in `new`, image, narrative)
            for case_id, row in batch:
                new.append({"case_id": case_id, "model": evaluator.model_id, "expert_scores": row.get("expert_scores"),
                            **{c: row[c] for c in carried if row.get(c) is not None}})
                try:
                    good.append((len(new) - 1, _decode(row["image"], case_id), row["narrative"]))
                except ValueError as exc:
                    new[-1]["error"] = f"image: {exc}"
            if good:
                evals = evaluator.evaluate_batch([g[1] for g in good], [g[2] for g in good])
                for (slot, _, _), ev in zip(good, evals, strict=True):
                    new[slot].update(ev.to_dict())
            log.write_many(new)  # flushed before the next batch starts
            skipped += sum(1 for r in new if "error" in r)
            bar.advance(len(batch), skipped=skipped)
    return [r for case_id, r in log.records.items() if case_id in wanted]


def agreement_from_records(records: list[dict[str, Any]], *, label: str = "DermEval", **kwargs: Any
                           ) -> AgreementReport | None:
    """Table-1 agreement for records that carry expert scores; ``None`` when the dataset has none."""
    scored = [r for r in records if r.get("expert_scores") and "error" not in r]
    if not scored:
        return None
    skipped = sum(1 for r in records if "error" in r)
    truncated = sum(1 for r in scored if r.get("truncated"))
    if "raters" not in kwargs:  # records that carry every rater's scores are read against the expert ceiling
        from dermtrl.agreement.ceiling import record_raters

        kwargs["raters"] = record_raters(scored)
    return agreement([r["scores"] for r in scored], [r["expert_scores"] for r in scored], skipped=skipped,
                     label=label, truncated=truncated, **kwargs)
