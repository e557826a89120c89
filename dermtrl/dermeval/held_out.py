"""The held-out check a training run prints: agreement on cases it never saw, before and after, with controls.

``make demo`` ends with it: Table 1 on held-out synthetic cases before and after Stage 2, the paired difference of
the macro MAE with its bootstrap CI (the same cases score both models), and one line of vision reliance (the same
narratives shown with mismatched pictures), so that a gain or a "looks at the image" claim is never read off a
single number without its control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.metrics import AgreementReport, agreement, case_errors, constant_predictions, macro_mae, paired_bootstrap


@dataclass
class HeldOut:
    """One model's records on one set of cases, as Table 1 and as a per-case error matrix."""

    report: AgreementReport | None
    errors: np.ndarray
    records: list[dict[str, Any]]


def record_errors(records: Sequence[dict[str, Any]], case_ids: Sequence[str],
                  experts: Sequence[Any]) -> np.ndarray:
    """(cases, 6) Table-1 errors of evaluation records, in the order of ``case_ids``; NaN where a score is missing."""
    by_id = {r["case_id"]: r for r in records}
    return case_errors([(by_id.get(c) or {}).get("scores") for c in case_ids], experts)


def evaluate_held_out(evaluator: Any, cases: Any, out_path: str | Path, label: str) -> HeldOut:
    """Run ``evaluator`` over ``cases`` (resumable JSONL at ``out_path``) and score it against the experts."""
    from dermtrl.dermeval.eval_job import agreement_from_records, run_evaluation

    records = run_evaluation(evaluator, cases, out_path, overwrite=True)
    errors = record_errors(records, cases["case_id"], cases["expert_scores"])
    return HeldOut(agreement_from_records(records, label=label), errors, records)


def constant_baseline(train_experts: Sequence[Any], cases: Any, label: str = "Constant train mean",
                      **kwargs: Any) -> HeldOut:
    """The row every agreement report shows beside the model: a constant evaluator answering the training set's
    mean expert scores for every case (raw, never rounded). A model whose macro MAE is not below it has learnt
    nothing usable about these cases. ``cases`` needs ``case_id`` and ``expert_scores``."""
    case_ids, experts = list(cases["case_id"]), list(cases["expert_scores"])
    predictions, _ = constant_predictions(experts, train_experts)
    records = [{"case_id": c, "scores": dict(p)} for c, p in zip(case_ids, predictions, strict=True)]
    report = agreement(predictions, experts, round_predictions=False, label=label, baseline=False, **kwargs)
    return HeldOut(report, case_errors(predictions, experts, round_predictions=False), records)


def summary_lines(before: HeldOut, after: HeldOut, mismatched: HeldOut | None = None,
                  image_dims: Sequence[str] | None = None, baseline: HeldOut | None = None) -> list[str]:
    """The paired difference after - before, and true vs mismatched images on the image-dependent dimensions;
    with ``baseline`` (:func:`constant_baseline`), the paired difference after - the constant baseline too."""
    diff = paired_bootstrap(lambda a, b: macro_mae(b) - macro_mae(a), [before.errors, after.errors])
    verdict = ("Stage 2 is better" if diff[2] < 0 else "Stage 2 is worse" if diff[1] > 0
               else "no difference shown")
    n = before.errors.shape[0]
    lines = [f"Macro MAE after - before: {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] "
             f"(95% paired bootstrap CI over {n} held-out cases): {verdict}"]
    if mismatched is not None:
        dims = list(image_dims) if image_dims else None
        kwargs = {"dims": dims} if dims else {}
        true, mis = macro_mae(after.errors, **kwargs), macro_mae(mismatched.errors, **kwargs)
        ratio = paired_bootstrap(lambda a, b: macro_mae(b, **kwargs) / macro_mae(a, **kwargs),
                                 [after.errors, mismatched.errors])
        scope = "image-dependent dimensions" if dims else "all dimensions"
        lines.append(f"Vision reliance ({scope}): macro MAE {true:.3f} with the true images, {mis:.3f} with "
                     f"mismatched images ({ratio[0]:.2f}x [{ratio[1]:.2f}, {ratio[2]:.2f}])")
    if baseline is not None:
        gap = paired_bootstrap(lambda a, b: macro_mae(b) - macro_mae(a), [baseline.errors, after.errors])
        verdict = ("better than the constant" if gap[2] < 0 else "worse than the constant" if gap[1] > 0
                   else "not shown to beat the constant")
        lines.append(f"Macro MAE after - constant train-mean baseline: {gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}] "
                     f"(95% paired bootstrap CI): {verdict}")
    return lines
