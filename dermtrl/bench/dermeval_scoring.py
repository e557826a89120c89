"""DermEval as DermBench's second evaluator (Table 2's second half): score every candidate without a reference.

The paper benchmarks the nine models "using both DermBench and DermEval". This scores the same candidate sets
that the judge scores, with a DermEval model (a local adapter folder or Hub id), batched, one record per
(model, case) in a resumable JSONL (:class:`~dermtrl.jsonl.RecordLog`), in the judge records' schema, so
:func:`~dermtrl.bench.leaderboard.build_leaderboard` builds DermEval's half of Table 2 unchanged and
:func:`~dermtrl.bench.leaderboard.compare_evaluators` sets the two halves side by side (Figure 6, agreement).

A record is ``scored`` only when DermEval's evaluation has all six scores; otherwise it is ``failed`` with the
reason ("unparseable: ..." naming the missing dimensions, and whether the evaluation hit its token budget),
never averaged in as zeros, exactly as for the judge.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermtrl.bench.cases import case_rows, image_reader, load_case_image
from dermtrl.bench.jobs import JobProgress, results_file
from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from datasets import Dataset

    from dermtrl.dermeval.evaluator import DermEval

__all__ = ["dermeval_settings", "load_dermeval", "score_candidates"]


def dermeval_settings(evaluator: DermEval) -> dict[str, Any]:
    """What makes two DermEval scorings comparable; stored in every record (as ``judge``) and checked on resume."""
    return {"model": f"DermEval ({evaluator.model_id})", "prompt_version": PROMPT_VERSION, "order": "reference-free",
            "fingerprint": evaluator.model_fingerprint, "max_new_tokens": evaluator.max_new_tokens}


def _items(cases: Any, candidates: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    rows = {r["case_id"]: (i, r) for i, r in enumerate(case_rows(cases, ("category", "expert_scores", "skin_tone")))}
    items = []
    for model, records in candidates.items():
        for record in records:
            case_id = str(record["case_id"])
            index, row = rows.get(case_id, (None, {}))
            text = record.get("text")
            error = None
            if index is None:
                error = f"unknown case: case {case_id!r} is not in the dataset"
            elif record.get("error"):
                error = f"no candidate: {record['error']}"
            elif not isinstance(text, str) or not text.strip():
                error = "no candidate: the candidate text is empty"
            items.append({"model": str(model), "case_id": case_id, "index": index, "text": text, "error": error,
                          "category": row.get("category"), "skin_tone": row.get("skin_tone"),
                          "expert_scores": dict(record.get("expert_scores") or {}) or None})
    return items


def _record(item: Mapping[str, Any], evaluation: Any = None, error: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"model": item["model"], "case_id": item["case_id"], "category": item["category"],
                              "status": "failed", "scores": None, "error": error,
                              "expert_scores": item["expert_scores"]}
    if item.get("skin_tone") not in (None, ""):
        record["skin_tone"] = str(item["skin_tone"])  # the leaderboards slice by it
    if evaluation is None:
        return record
    record.update(raw=evaluation.text, truncated=evaluation.truncated, sources=evaluation.sources)
    if evaluation.missing:
        cut = "the evaluation hit its max_new_tokens budget; " if evaluation.truncated else ""
        record.update(partial_scores=evaluation.scores.to_dict(),
                      error=f"unparseable: {cut}DermEval's evaluation lacked {', '.join(evaluation.missing)}")
    else:
        record.update(status="scored", scores={d: evaluation.scores[d] for d in DIMENSIONS})
    return record


def score_candidates(
    cases: Dataset | Sequence[Mapping[str, Any]],
    candidates: Mapping[str, Sequence[Mapping[str, Any]]],
    evaluator: DermEval,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score every candidate with DermEval (image + narrative, no reference); one record per (model, case).

    ``candidates`` maps a model name to its candidate records (``case_id``, ``text``), as the judge takes them.
    Resumes where an earlier run stopped; refuses a file written by other DermEval weights or settings.
    """
    items = _items(cases, candidates)
    read = image_reader(cases)
    with results_file(out, "judge", dermeval_settings(evaluator),
                     overwrite=overwrite) as results:
        todo = [i for i in items if (i["model"], i["case_id"]) not in results]
        bar = JobProgress("DermEval", len(items), len(items) - len(todo), enabled=progress)
        with bar:
            for start in range(0, len(todo), evaluator.batch_size):
                batch, images, done = [], [], []
                for item in todo[start : start + evaluator.batch_size]:
                    if item["error"] is not None:
                        done.append(_record(item, error=item["error"]))
                        continue
                    try:
                        images.append(load_case_image(read(item["index"])))
                    except ValueError as exc:
                        done.append(_record(item, error=f"no candidate: {exc}"))
                        continue
                    batch.append(item)
                if batch:
                    evaluations = evaluator.evaluate_batch(images, [i["text"] for i in batch])
                    done += [_record(i, e) for i, e in zip(batch, evaluations, strict=True)]
                for record in done:
                    results.write(record)
                bar.advance_records(done)
        by_key = {(r["model"], r["case_id"]): r for r in results.records.values()}
    return [by_key[(i["model"], i["case_id"])] for i in items]


def load_dermeval(adapter: str | None, base: str | None = None, **kwargs: Any) -> DermEval:
    """A DermEval evaluator from an adapter (folder or Hub id) and/or a base model, for DermBench runs."""
    from dermtrl.dermeval.evaluator import DermEval

    try:
        return DermEval.from_pretrained(base, adapter, **kwargs)
    except (OSError, ValueError) as exc:
        where = adapter or base
        if where is not None and not Path(where).exists():
            raise ValueError(f"dermeval {where!r}: no such folder, and loading it as a Hub id failed ({exc})") from exc
        raise
