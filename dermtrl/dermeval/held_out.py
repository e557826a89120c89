"""The held-out check a training run prints: agreement on cases it never saw, before and after, with controls.

``make demo`` ends with it: Table 1 on held-out synthetic cases before and after Stage 2, the paired difference of
the macro MAE with its bootstrap CI (the same cases score both models), and one line of vision reliance (the same
narratives shown with mismatched pictures), so that a gain or a "looks at the image" claim is never read off a
single number without its control. When the cases carry a Fitzpatrick ``skin_tone``, one more line gives the
MAE after training per skin-tone group (I-II, III-IV, V-VI) with the largest gap between groups, and the slices
before and after are written beside the report (:func:`write_skin_tone_slices`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.agreement.subgroups import FEW_CASES, Slices, format_estimate, slice_records, write_slices
from dermtrl.metrics import AgreementReport, agreement, case_errors, constant_predictions, macro_mae, paired_bootstrap

SKIN_TONE = "skin_tone"
#: Fitzpatrick types in the groups DDI reports: two types a group, so balanced held-out cases give each a third
#: (six groups of 33 cases would leave intervals too wide to read a gap from).
FITZPATRICK_GROUPS: dict[str, str] = {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV", "V": "V-VI",
                                      "VI": "V-VI"}


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


def _short_label(label: str) -> str:
    """"After SOREB (Stage 2)" -> "after SOREB": the label without its parenthesis, a capitalised word lowered."""
    label = re.sub(r"\s*\([^()]*\)$", "", label).strip()
    first = label.split(" ", 1)[0]
    return label[:1].lower() + label[1:] if first[1:].islower() else label


def skin_tone_slices(held: HeldOut, *, label: str | None = None, n_bootstrap: int = 1000, seed: int = 0,
                     ci: float = 0.95, min_cases: int = 10) -> Slices | None:
    """Table 1's MAE of ``held`` by skin-tone group (Fitzpatrick I-VI grouped I-II, III-IV, V-VI; other values, e.g.
    "unknown", kept as they are), with the largest between-group gap; ``None`` when no record carries a skin tone.

    Reads the records' ``skin_tone`` (``run_evaluation`` copies it from the cases), via
    :func:`dermtrl.agreement.subgroups.slice_records`, as ``dermtrl eval --by skin_tone`` does."""
    scored = [r for r in held.records if r.get("expert_scores") and "error" not in r]
    if not any(r.get(SKIN_TONE) not in (None, "") for r in scored):
        return None
    grouped = [{**r, SKIN_TONE: FITZPATRICK_GROUPS.get(str(r.get(SKIN_TONE) or "").strip().upper(), r.get(SKIN_TONE))}
               for r in scored]
    if label is None:
        label = held.report.label if held.report is not None else ""
    return slice_records(grouped, SKIN_TONE, label=label, n_bootstrap=n_bootstrap, seed=seed, ci=ci,
                         min_cases=min_cases)


def skin_tone_line(slices: Slices) -> str:
    """One line: each group's MAE with its CI and size ("few cases" under ``min_cases``), then the largest gap."""
    groups = ", ".join(f"{g.value} {format_estimate(g.macro)} (n={g.n}{', ' + FEW_CASES if g.few else ''})"
                       for g in slices.groups)
    if slices.gap_groups is None:
        gap = "largest gap n/a (fewer than two groups with a value)"
    else:
        large = sum(1 for g in slices.groups if not g.few and g.macro.value is not None) >= 2
        among = ("" if slices.gap_among == len(slices.groups) else f" (of the {slices.gap_among} groups with "
                 + (f"{slices.min_cases}+ cases)" if large else "a value)"))
        gap = f"largest gap {slices.gap_groups[0]} - {slices.gap_groups[1]} {format_estimate(slices.gap, '+')}{among}"
    label = _short_label(slices.label)
    note = f" ({slices.ci_level:.0%} bootstrap CIs)" if any(g.macro.ci for g in slices.groups) else ""
    return f"Skin tone{f' ({label})' if label else ''}: {slices.statistic} {groups}; {gap}{note}"


def write_skin_tone_slices(before: HeldOut, after: HeldOut, out_dir: str | Path) -> Slices | None:
    """Write the skin-tone slices before and after (``slices_skin_tone.md``, ``.csv``, ``.json``, ``.png``) under
    ``out_dir``; return the slices after, for :func:`summary_lines`, or ``None`` when the cases carry no skin tone
    (nothing written)."""
    after_slices = skin_tone_slices(after)
    if after_slices is None:
        return None
    before_slices = skin_tone_slices(before)
    write_slices([s for s in (before_slices, after_slices) if s is not None], out_dir)
    return after_slices


def summary_lines(before: HeldOut, after: HeldOut, mismatched: HeldOut | None = None,
                  image_dims: Sequence[str] | None = None, baseline: HeldOut | None = None,
                  skin_tone: Slices | None = None) -> list[str]:
    """The paired difference after - before, and true vs mismatched images on the image-dependent dimensions;
    with ``baseline`` (:func:`constant_baseline`), the paired difference after - the constant baseline too; with
    ``skin_tone`` (:func:`skin_tone_slices` of ``after``), its one line last."""
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
    if skin_tone is not None:
        lines.append(skin_tone_line(skin_tone))
    return lines
