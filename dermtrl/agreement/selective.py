"""Selective prediction: does setting aside the scores an evaluator is unsure of lower the error of the rest?

An evaluator that can say "I am not sure of this score" is only useful if the scores it is sure of are better. This
module measures that on per-score absolute errors (Table 1's, :func:`dermtrl.metrics.case_errors`):

- :func:`selective_prediction` takes a mask of the scores marked uncertain (e.g. an interval spanning 3 or more
  points) and gives the share marked, the MAE of all scores, the MAE of the kept ones, and their difference
  (kept - all), each with a percentile bootstrap CI over cases; the difference is paired (the same resampled cases).
- :func:`risk_coverage` ranks the scores by any uncertainty (DermEval's ``spread``: the standard deviation of the
  score under its score-token probabilities; lower = surer) and gives the MAE of the surest fraction at each
  coverage, each with its CI and its paired difference from keeping everything. It needs no calibration: only the
  order of the uncertainties matters.

MAE here is pooled over scores (every kept (case, dimension) cell counts once), since abstention acts on single
scores, not on whole dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dermtrl.agreement.reliability import Estimate, bootstrap_counts, estimate
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import case_errors

__all__ = ["CoveragePoint", "Selective", "record_matrices", "risk_coverage", "selective_prediction"]

COVERAGES: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass(frozen=True)
class Selective:
    """Abstaining on the scores marked uncertain: how many, and the error of the rest against the error of all."""

    n_scores: int
    share_uncertain: Estimate
    mae_all: Estimate
    mae_kept: Estimate
    difference: Estimate  # kept - all: below 0 means abstaining lowers the error

    def to_dict(self) -> dict[str, Any]:
        return {"n_scores": self.n_scores, "share_uncertain": self.share_uncertain.to_dict(),
                "mae_all": self.mae_all.to_dict(), "mae_kept": self.mae_kept.to_dict(),
                "difference_kept_minus_all": self.difference.to_dict()}

    def line(self) -> str:
        def fmt(e: Estimate, sign: str = "") -> str:
            if e.value is None:
                return "n/a"
            ci = "" if e.ci is None else f" [{e.ci[0]:{sign}.3f}, {e.ci[1]:{sign}.3f}]"
            return f"{e.value:{sign}.3f}{ci}"

        d = self.difference
        verdict = ("abstaining lowers the error" if d.ci is not None and d.ci[1] < 0 else
                   "abstaining raises the error" if d.ci is not None and d.ci[0] > 0 else "no difference shown")
        return (f"Uncertain scores: {fmt(self.share_uncertain)} of {self.n_scores}; MAE of the rest "
                f"{fmt(self.mae_kept)} vs {fmt(self.mae_all)} for all; kept - all {fmt(d, '+')}: {verdict}")


@dataclass(frozen=True)
class CoveragePoint:
    """The surest ``coverage`` share of the scores: their MAE, and its paired difference from keeping all."""

    coverage: float
    threshold: float  # uncertainty at or below which a score is kept
    mae: Estimate
    difference: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "threshold": self.threshold, "mae": self.mae.to_dict(),
                "difference_from_all": self.difference.to_dict()}


def _check(errors: np.ndarray, other: np.ndarray, name: str) -> None:
    if errors.ndim != 2 or errors.shape[1] != len(DIMENSIONS):
        raise ValueError(f"errors must be (cases, {len(DIMENSIONS)}), got shape {errors.shape}")
    if other.shape != errors.shape:
        raise ValueError(f"{name} must have the shape of errors {errors.shape}, got {other.shape}")


def _pooled(errors: np.ndarray, keep: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pooled MAE of the kept scores per row of case weights (NaN where nothing is kept)."""
    filled = np.where(keep, errors, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ filled) / (weights @ keep.sum(axis=1).astype(float))


def _weights(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    ones = np.ones((1, n))
    return ones if not n_bootstrap else np.vstack([ones, bootstrap_counts(n, n_bootstrap, seed)])


def selective_prediction(errors: np.ndarray, uncertain: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0,
                         ci: float = 0.95) -> Selective:
    """Abstain on the scores ``uncertain`` marks ((cases, 6) booleans); ``errors`` (cases, 6), NaN where missing."""
    errors, uncertain = np.asarray(errors, dtype=float), np.asarray(uncertain, dtype=bool)
    _check(errors, uncertain, "uncertain")
    scored = np.isfinite(errors)
    w = _weights(len(errors), n_bootstrap, seed)
    boot = n_bootstrap > 0
    all_ = _pooled(errors, scored, w)
    kept = _pooled(errors, scored & ~uncertain, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (w @ (scored & uncertain).sum(axis=1)) / (w @ scored.sum(axis=1))

    def est(v: np.ndarray) -> Estimate:
        return estimate(v[0], v[1:] if boot else None, ci)

    return Selective(n_scores=int(scored.sum()), share_uncertain=est(share), mae_all=est(all_),
                     mae_kept=est(kept), difference=est(kept - all_))


def risk_coverage(errors: np.ndarray, uncertainty: np.ndarray, coverages: Sequence[float] = COVERAGES, *,
                  n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> list[CoveragePoint]:
    """The selective-prediction curve: the MAE of the surest ``coverage`` share of scores, ranked by
    ``uncertainty`` (lower = surer; NaN = no uncertainty known, never kept below full coverage)."""
    errors, uncertainty = np.asarray(errors, dtype=float), np.asarray(uncertainty, dtype=float)
    _check(errors, uncertainty, "uncertainty")
    bad = [c for c in coverages if not 0 < c <= 1]
    if bad:
        raise ValueError(f"coverages must be in (0, 1], got {bad}")
    scored = np.isfinite(errors)
    ranked = uncertainty[scored & np.isfinite(uncertainty)]
    w = _weights(len(errors), n_bootstrap, seed)
    boot = n_bootstrap > 0
    all_ = _pooled(errors, scored, w)
    points = []
    for coverage in coverages:
        if coverage >= 1:
            keep, threshold = scored, float("inf")
        else:
            threshold = float(np.quantile(ranked, coverage, method="inverted_cdf")) if ranked.size else float("nan")
            keep = scored & np.isfinite(uncertainty) & (uncertainty <= threshold)
        kept = _pooled(errors, keep, w)
        points.append(CoveragePoint(coverage=float(coverage), threshold=threshold,
                                    mae=estimate(kept[0], kept[1:] if boot else None, ci),
                                    difference=estimate((kept - all_)[0], (kept - all_)[1:] if boot else None, ci)))
    return points


def record_matrices(records: Sequence[Mapping[str, Any]], *, round_predictions: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(errors, spread) of DermEval evaluation records that carry expert scores: Table 1's per-score absolute errors
    and each score's ``spread`` (NaN where a record has none)."""
    scored = [r for r in records if r.get("expert_scores") and "error" not in r]
    if not scored:
        raise ValueError("selective prediction: no record carries expert scores")
    errors = case_errors([r.get("scores") or {} for r in scored], [r["expert_scores"] for r in scored],
                         round_predictions=round_predictions)
    spread = np.array([[float((r.get("spread") or {}).get(d, np.nan)) for d in DIMENSIONS] for r in scored])
    return errors, spread
