"""Agreement sliced by a column of the cases (skin tone by default): does the evaluator hold across groups?

Dermatology models are known to fail more often on darker skin, and the field's datasets record a skin tone so
that this can be checked. :func:`slice_agreement` splits the cases by any column and gives, per group:

- n, the number of cases, and whether the group is small ("few cases" under ``min_cases``: shown, never hidden);
- the macro MAE (or any per-case statistic, e.g. the mean score of a leaderboard, via :func:`slice_table`) with a
  percentile bootstrap CI over the group's cases, and each dimension's value;

and the largest between-group difference (highest minus lowest group) with its CI. The groups hold different cases,
so the difference is unpaired: each resample draws every group's cases independently (a stratified bootstrap) with
the project's one bootstrap (:func:`dermtrl.agreement.reliability.bootstrap_counts`). The pair is chosen among the
groups with at least ``min_cases`` cases when two such groups exist; a gap picked as the largest of several is
biased upwards, and the report says how many groups it was chosen from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.agreement.reliability import Estimate, bootstrap_counts, finite_or_none, percentile_ci
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS, Scores
from dermtrl.metrics import case_errors

__all__ = ["DEFAULT_COLUMN", "Group", "Slices", "default_column", "format_estimate", "slice_agreement", "slice_records",
           "slice_table", "write_slices"]

DEFAULT_COLUMN = "skin_tone"
UNKNOWN = "unknown"
FEW_CASES = "few cases"
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}


@dataclass(frozen=True)
class Group:
    """One group of cases: its size, the macro statistic with its CI, and each dimension's value."""

    value: str
    n: int
    macro: Estimate
    per_dimension: dict[str, float | None]
    few: bool  # fewer than the report's ``min_cases``

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "macro": self.macro.to_dict(), "per_dimension": self.per_dimension,
                "few_cases": self.few}


@dataclass(frozen=True)
class Slices:
    """A statistic sliced by one column, with the largest between-group difference."""

    column: str
    statistic: str  # "MAE" or e.g. "mean score"
    label: str
    groups: list[Group]
    gap: Estimate  # highest minus lowest group's macro statistic, unpaired bootstrap CI
    gap_groups: tuple[str, str] | None  # (highest, lowest)
    gap_among: int  # how many groups the pair was chosen from
    min_cases: int = 10
    ci_level: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "statistic": self.statistic, "label": self.label,
                "groups": [g.to_dict() for g in self.groups], "largest_difference": {
                    **self.gap.to_dict(), "groups": None if self.gap_groups is None else list(self.gap_groups),
                    "chosen_among": self.gap_among, "method": "unpaired (stratified) percentile bootstrap"},
                "min_cases": self.min_cases, "ci_level": self.ci_level, "n_bootstrap": self.n_bootstrap,
                "seed": self.seed}

    def lines(self) -> list[str]:
        """One line per group and one for the gap, for a terminal or a log."""
        out = [f"{self.label + ': ' if self.label else ''}{self.statistic} by {self.column}"]
        for g in self.groups:
            few = f" ({FEW_CASES})" if g.few else ""
            out.append(f"  {g.value}: n = {g.n}{few}, macro {self.statistic} {format_estimate(g.macro)}")
        if self.gap_groups is not None:
            gap = format_estimate(self.gap, "+")
            out.append(f"  largest difference {self.gap_groups[0]} - {self.gap_groups[1]}: {gap} "
                       f"({self.ci_level:.0%} unpaired bootstrap CI; the largest of {self.gap_among} groups)")
        return out


def format_estimate(e: Estimate, sign: str = "") -> str:
    """``0.412 [0.38, 0.45]``: the value to 3 decimals, its CI to 2; ``n/a`` when there is none."""
    if e.value is None:
        return "n/a"
    text = f"{e.value:{sign}.3f}"
    return text if e.ci is None else f"{text} [{e.ci[0]:{sign}.2f}, {e.ci[1]:{sign}.2f}]"


def _group_name(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return UNKNOWN
    return str(value).strip()


def _order(name: str) -> tuple[int, float, str]:
    """Fitzpatrick types (I-VI, also grouped as I-II) in their order, numbers by value, other names alphabetically,
    "unknown" last."""
    if name == UNKNOWN:
        return (3, 0.0, name)
    first = re.split(r"[-/ ]", name.upper())[0]
    if first in _ROMAN:
        return (0, float(_ROMAN[first]), name)
    try:
        return (1, float(name), name)
    except ValueError:
        return (2, 0.0, name)


def _macro(values: np.ndarray) -> float:
    """Mean over dimensions of each dimension's mean (missing values left out); NaN if a dimension has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.mean(np.nanmean(values, axis=0)))


def _macro_resamples(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    present = np.isfinite(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_dim = (counts @ filled) / (counts @ present.astype(float))
    return per_dim.mean(axis=1)


def slice_table(per_case: np.ndarray, groups: Sequence[Any], *, column: str = DEFAULT_COLUMN,
                statistic: str = "MAE", label: str = "", n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
                min_cases: int = 10) -> Slices:
    """Slice a (cases, 6) per-case matrix (absolute errors, or scores; NaN where missing) by ``groups``.

    A missing or empty group value is the group "unknown", shown like any other.
    """
    per_case = np.asarray(per_case, dtype=float)
    if per_case.ndim != 2 or per_case.shape[1] != len(DIMENSIONS):
        raise ValueError(f"per_case must be (cases, {len(DIMENSIONS)}), got shape {per_case.shape}")
    if len(groups) != len(per_case):
        raise ValueError(f"column {column!r}: {len(groups)} values for {len(per_case)} cases")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    names = [_group_name(v) for v in groups]
    resamples: dict[str, np.ndarray | None] = {}
    out: list[Group] = []
    for k, name in enumerate(sorted(set(names), key=_order)):
        values = per_case[[i for i, g in enumerate(names) if g == name]]
        samples = None
        if n_bootstrap:
            samples = _macro_resamples(values, bootstrap_counts(len(values), n_bootstrap, seed + 7919 * (k + 1)))
        resamples[name] = samples
        point = finite_or_none(_macro(values))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dims = {d: finite_or_none(np.nanmean(values[:, j])) for j, d in enumerate(DIMENSIONS)}
        interval = None if samples is None or point is None else percentile_ci(samples, ci)
        out.append(Group(name, len(values), Estimate(point, interval), dims, len(values) < min_cases))
    scored = [g for g in out if g.macro.value is not None]
    pool = [g for g in scored if not g.few] if sum(not g.few for g in scored) >= 2 else scored
    gap, pair = Estimate(None), None
    if len(pool) >= 2:
        low = min(pool, key=lambda g: g.macro.value)  # type: ignore[arg-type, return-value]
        # among the others: with equal values the pair is still two groups, never one group against itself
        high = max((g for g in pool if g is not low), key=lambda g: g.macro.value)  # type: ignore[arg-type, return-value]
        diff = None
        if n_bootstrap:
            diff = resamples[high.value] - resamples[low.value]  # type: ignore[operator]
        value = high.macro.value - low.macro.value  # type: ignore[operator]
        gap, pair = Estimate(value, None if diff is None else percentile_ci(diff, ci)), (high.value, low.value)
    return Slices(column=column, statistic=statistic, label=label, groups=out, gap=gap, gap_groups=pair,
                  gap_among=len(pool), min_cases=min_cases, ci_level=float(ci), n_bootstrap=int(n_bootstrap),
                  seed=int(seed))


def slice_agreement(predictions: Sequence[Mapping[str, float | None] | Scores | None],
                    experts: Sequence[Mapping[str, float]], groups: Sequence[Any], *, column: str = DEFAULT_COLUMN,
                    round_predictions: bool = True, **kwargs: Any) -> Slices:
    """Table 1's MAE (scores rounded as the report rounds them) sliced by ``groups``, one value per case."""
    errors = case_errors([p or {} for p in predictions], experts, round_predictions=round_predictions)
    return slice_table(errors, groups, column=column, statistic="MAE", **kwargs)


def slice_records(records: Sequence[Mapping[str, Any]], column: str, *, label: str = "", **kwargs: Any) -> Slices:
    """:func:`slice_agreement` over evaluation records (``scores``, ``expert_scores`` and ``column`` in each);
    records without expert scores or with an ``error`` are left out, as the agreement report leaves them out."""
    scored = [r for r in records if r.get("expert_scores") and "error" not in r]
    if not scored:
        raise ValueError(f"slicing by {column!r}: no record carries expert scores")
    return slice_agreement([r.get("scores") for r in scored], [r["expert_scores"] for r in scored],
                           [r.get(column) for r in scored], column=column, label=label, **kwargs)


def default_column(columns: Sequence[str], by: str | None = None) -> str | None:
    """The column to slice by: ``by`` when given (an error naming the columns if absent), else ``skin_tone`` when
    the data has it, else none."""
    if by:
        if by not in columns:
            raise ValueError(f"--by {by!r}: no such column (columns: {', '.join(sorted(columns))})")
        return by
    return DEFAULT_COLUMN if DEFAULT_COLUMN in columns else None


# ------------------------------------------------------------------------------------------------- output


def _markdown(slices: Slices) -> str:
    header = ["Group", "n", f"Macro {slices.statistic} [CI]", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Note"]
    rows = [[g.value, str(g.n), format_estimate(g.macro),
             *("n/a" if g.per_dimension[d] is None else f"{g.per_dimension[d]:.3f}" for d in DIMENSIONS),
             FEW_CASES if g.few else ""]
            for g in slices.groups]
    lines = [f"### {slices.label + ': ' if slices.label else ''}{slices.statistic} by {slices.column}", "",
             "| " + " | ".join(header) + " |", "| --- | " + " | ".join(["---:"] * (len(header) - 2)) + " | --- |",
             *("| " + " | ".join(r) + " |" for r in rows), ""]
    if slices.gap_groups is not None:
        lines.append(f"Largest difference, {slices.gap_groups[0]} minus {slices.gap_groups[1]}: "
                     f"{format_estimate(slices.gap, '+')} ({slices.ci_level:.0%} unpaired percentile bootstrap CI, "
                     f"{slices.n_bootstrap} resamples, seed {slices.seed}; the largest of {slices.gap_among} groups, "
                     "so biased upwards).")
    else:
        lines.append("Largest difference: n/a (fewer than two groups with a value).")
    lines.append(f"Groups under {slices.min_cases} cases are marked \"{FEW_CASES}\": shown, but read their "
                 "intervals, not their values.")
    return "\n".join(lines) + "\n"


def _csv(slices: Slices) -> str:
    buf = io.StringIO()
    fields = ["label", "column", "group", "n", "few_cases", "statistic", "macro", "macro_lo", "macro_hi",
              *DIMENSIONS]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in slices.groups:
        lo, hi = g.macro.ci if g.macro.ci is not None else (None, None)
        writer.writerow({"label": slices.label, "column": slices.column, "group": g.value, "n": g.n,
                         "few_cases": g.few, "statistic": slices.statistic, "macro": g.macro.value, "macro_lo": lo,
                         "macro_hi": hi, **g.per_dimension})
    if slices.gap_groups is not None:
        lo, hi = slices.gap.ci if slices.gap.ci is not None else (None, None)
        writer.writerow({"label": slices.label, "column": slices.column,
                         "group": f"{slices.gap_groups[0]} - {slices.gap_groups[1]}", "statistic":
                         f"largest difference of macro {slices.statistic}", "macro": slices.gap.value,
                         "macro_lo": lo, "macro_hi": hi})
    return buf.getvalue()


def _plot(slices: Sequence[Slices], path: Path) -> None:
    """Grouped bars: each group's per-dimension values, with the macro value and its CI as a point and bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(slices), figsize=(max(6.0, 1.4 * max(len(s.groups) for s in slices) + 2)
                                                      * len(slices), 4.2), squeeze=False)
    width = 0.8 / (len(DIMENSIONS) + 1)
    for ax, s in zip(axes[0], slices, strict=True):
        x = np.arange(len(s.groups))
        for j, d in enumerate(DIMENSIONS):
            heights = [np.nan if g.per_dimension[d] is None else g.per_dimension[d] for g in s.groups]
            ax.bar(x + (j - len(DIMENSIONS) / 2) * width, heights, width, label=ABBREVIATIONS[d], alpha=0.75)
        macro = np.array([np.nan if g.macro.value is None else g.macro.value for g in s.groups])
        lo = np.array([np.nan if g.macro.ci is None else g.macro.ci[0] for g in s.groups])
        hi = np.array([np.nan if g.macro.ci is None else g.macro.ci[1] for g in s.groups])
        ax.errorbar(x + (len(DIMENSIONS) / 2) * width, macro, yerr=[macro - lo, hi - macro], fmt="ko", capsize=3,
                    label=f"macro [{s.ci_level:.0%} CI]")
        ax.set_xticks(x, [f"{g.value}\nn={g.n}" + (f"\n({FEW_CASES})" if g.few else "") for g in s.groups])
        ax.set_title(f"{s.label + ': ' if s.label else ''}{s.statistic} by {s.column}")
        ax.set_ylabel(s.statistic)
    axes[0][0].legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_slices(slices: Slices | Sequence[Slices], out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """``<stem>.md``, ``.csv``, ``.json`` and ``.png`` (default stem ``slices_<column>``); several slicings (e.g.
    DermBench and DermEval by the same column) go into the same files. Returns the paths."""
    items = [slices] if isinstance(slices, Slices) else list(slices)
    if not items:
        raise ValueError("write_slices: nothing to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or f"slices_{items[0].column}"
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "json", "png")}
    paths["md"].write_text("\n".join(_markdown(s) for s in items), encoding="utf-8")
    text = _csv(items[0]) + "".join(_csv(s).split("\n", 1)[1] for s in items[1:])
    paths["csv"].write_text(text, encoding="utf-8", newline="")
    paths["json"].write_text(json.dumps([s.to_dict() for s in items], indent=2, allow_nan=False) + "\n",
                             encoding="utf-8")
    _plot(items, paths["png"])
    return paths


def markdown(slices: Slices | Sequence[Slices]) -> str:
    """The slices as Markdown (for a report that embeds them)."""
    items = [slices] if isinstance(slices, Slices) else list(slices)
    return "\n".join(_markdown(s) for s in items)
