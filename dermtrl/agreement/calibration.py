"""Calibrated score intervals: split conformal prediction on DermEval's score distributions.

DermEval reads, at each score digit it writes, the probabilities of the digits 0-5 and reports their mean
(``expected``) and standard deviation (``spread``). These are not calibrated: a spread of 0.4 does not say how often
the experts' score lies within 0.4 of the mean. Split conformal prediction turns them into intervals with a coverage
guarantee: fit on validation cases, the interval holds the experts' score with probability at least the nominal
coverage on exchangeable test cases, whatever the model.

**Nonconformity score** (per dimension): the normalised residual ``|y - expected| / (spread + delta)``, ``y`` the
expert score (the mean of the raters, on the continuous 0-5 scale) and ``delta`` (default 0.1) a floor that keeps a
very sure but wrong model from dividing by zero. With ``q`` the ``ceil((n + 1) * coverage)``-th smallest score of
the ``n`` validation cases, the interval is ``expected +/- q * (spread + delta)``, clipped to 0-5. Scores the model
was unsure of get wider intervals; when ``(n + 1) * coverage > n`` the interval is the whole scale.

``calibration.json`` records the method, ``delta``, the version, the calibration data's fingerprint and size, and
``q`` per dimension at each fitted coverage. :func:`coverage_report` measures on test cases what a report should
state: the share of expert scores inside their interval at each coverage, with a bootstrap CI over cases, and the
mean interval width.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.agreement.reliability import Estimate, bootstrap_counts, estimate
from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN

__all__ = ["CALIBRATION_FILE", "CALIBRATION_VERSION", "Calibration", "CoverageRow", "coverage_lines",
           "coverage_report", "ece", "fit", "score_matrices"]

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 1
METHOD = "split conformal, nonconformity |y - expected| / (spread + delta)"
COVERAGES: tuple[float, ...] = (0.8, 0.9, 0.95)
#: An interval this wide or wider marks its score "uncertain".
UNCERTAIN_WIDTH = 3.0


def score_matrices(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, spread, expert) matrices (cases, 6) of DermEval records with expert scores; NaN where missing.

    Records with an ``error`` or without ``expert_scores`` are left out.
    """
    kept = [r for r in records if r.get("expert_scores") and "error" not in r]

    def matrix(key: str) -> np.ndarray:
        out = np.full((len(kept), len(DIMENSIONS)), np.nan)
        for i, r in enumerate(kept):
            values = r.get(key) or {}
            for j, d in enumerate(DIMENSIONS):
                v = values.get(d)
                if v is not None:
                    out[i, j] = float(v)
        return out

    return matrix("expected"), matrix("spread"), matrix("expert_scores")


def _quantile(scores: np.ndarray, coverage: float) -> float:
    """The conformal quantile: the ceil((n + 1) * coverage)-th smallest score; infinite when that exceeds n."""
    n = scores.size
    rank = math.ceil((n + 1) * coverage)
    return float("inf") if rank > n or n == 0 else float(np.sort(scores)[rank - 1])


@dataclass(frozen=True)
class Calibration:
    """Per-dimension conformal quantiles at each fitted coverage, and where they came from."""

    quantiles: dict[str, dict[str, float]]  # dimension -> coverage ("0.9") -> q
    n: dict[str, int]  # calibration scores per dimension
    delta: float = 0.1
    dataset: dict[str, Any] = field(default_factory=dict)  # e.g. {"name", "split", "fingerprint"}
    version: int = CALIBRATION_VERSION

    def interval(self, dim: str, expected: float, spread: float, coverage: float = 0.9) -> tuple[float, float]:
        """The interval for one score at a fitted ``coverage``."""
        q = self._q(dim, coverage)
        half = q * (max(0.0, spread) + self.delta)
        return max(SCORE_MIN, expected - half), min(SCORE_MAX, expected + half)

    def intervals(self, expected: Mapping[str, float], spread: Mapping[str, float], coverage: float = 0.9
                  ) -> dict[str, tuple[float, float]]:
        """Intervals for every dimension that has both an expected score and a spread (one evaluation's)."""
        return {d: self.interval(d, expected[d], spread[d], coverage) for d in DIMENSIONS
                if d in expected and d in spread}

    def bounds(self, expected: np.ndarray, spread: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) matrices for (cases, 6) expected and spread matrices; NaN where either is missing."""
        q = np.array([self._q(d, coverage) for d in DIMENSIONS])
        with np.errstate(invalid="ignore"):
            half = q[None, :] * (np.maximum(spread, 0.0) + self.delta)  # an infinite q: the whole scale
        return np.clip(expected - half, SCORE_MIN, SCORE_MAX), np.clip(expected + half, SCORE_MIN, SCORE_MAX)

    def _q(self, dim: str, coverage: float) -> float:
        key = _key(coverage)
        try:
            return self.quantiles[dim][key]
        except KeyError:
            fitted = sorted(self.quantiles.get(dim, {}))
            raise ValueError(f"calibration: no quantile for {dim!r} at coverage {coverage:g} (fitted: "
                             f"{', '.join(fitted) or 'none'}); refit with that coverage") from None

    def to_dict(self) -> dict[str, Any]:
        def finite(q: float) -> float | str:
            return q if math.isfinite(q) else "inf"

        return {"version": self.version, "method": METHOD, "delta": self.delta, "dataset": dict(self.dataset),
                "n": dict(self.n), "quantiles": {d: {c: finite(q) for c, q in v.items()}
                                                 for d, v in self.quantiles.items()}}

    def save(self, folder_or_file: str | Path) -> Path:
        """Write ``calibration.json`` (into a folder, e.g. beside the adapter, or to the given file)."""
        path = Path(folder_or_file)
        path = path / CALIBRATION_FILE if path.is_dir() else path
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path, fingerprint: str | None = None) -> Calibration:
        """Read ``calibration.json``; with ``fingerprint``, refuse one fitted on other data."""
        path = Path(folder_or_file)
        path = path / CALIBRATION_FILE if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable calibration file ({exc})") from None
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"{path}: calibration version {data.get('version')!r}, this dermtrl reads "
                             f"{CALIBRATION_VERSION}; refit it")
        try:
            quantiles = {d: {c: float(q) for c, q in v.items()} for d, v in data["quantiles"].items()}
            calibration = cls(quantiles=quantiles, n={d: int(v) for d, v in data["n"].items()},
                              delta=float(data["delta"]), dataset=dict(data.get("dataset") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: malformed calibration file (field {exc})") from None
        unknown = sorted(set(quantiles) - set(DIMENSIONS))
        if unknown:
            raise ValueError(f"{path}: unknown dimension(s) {', '.join(unknown)} in 'quantiles'")
        found = calibration.dataset.get("fingerprint")
        if fingerprint is not None and found != fingerprint:
            raise ValueError(f"{path}: fitted on data with fingerprint {found!r}, not {fingerprint!r}")
        return calibration


def _key(coverage: float) -> str:
    return f"{coverage:g}"


def fit(records: Sequence[Mapping[str, Any]], *, coverages: Sequence[float] = COVERAGES, delta: float = 0.1,
        dataset: Mapping[str, Any] | None = None) -> Calibration:
    """Fit per-dimension conformal quantiles on validation records (``expected``, ``spread``, ``expert_scores``)."""
    bad = [c for c in coverages if not 0 < c < 1]
    if bad:
        raise ValueError(f"coverages must be in (0, 1), got {bad}")
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    expected, spread, expert = score_matrices(records)
    if not len(expert):
        raise ValueError("calibration: no record carries expert scores")
    scores = np.abs(expert - expected) / (np.maximum(spread, 0.0) + delta)
    quantiles: dict[str, dict[str, float]] = {}
    n: dict[str, int] = {}
    for j, dim in enumerate(DIMENSIONS):
        col = scores[:, j][np.isfinite(scores[:, j])]
        if not col.size:
            raise ValueError(f"calibration: no record has an expected score and a spread for {dim!r} (were the "
                             "records written by a DermEval that reads its score distributions?)")
        n[dim] = int(col.size)
        quantiles[dim] = {_key(c): _quantile(col, c) for c in coverages}
    return Calibration(quantiles=quantiles, n=n, delta=float(delta), dataset=dict(dataset or {}))


@dataclass(frozen=True)
class CoverageRow:
    """Measured coverage and width at one nominal coverage, pooled over scores and per dimension."""

    nominal: float
    coverage: Estimate
    width: Estimate
    uncertain: Estimate  # share of intervals at least UNCERTAIN_WIDTH wide
    per_dimension: dict[str, float | None]
    n_scores: int

    def to_dict(self) -> dict[str, Any]:
        return {"nominal": self.nominal, "coverage": self.coverage.to_dict(), "mean_width": self.width.to_dict(),
                "share_uncertain": self.uncertain.to_dict(), "per_dimension": self.per_dimension,
                "n_scores": self.n_scores}


def coverage_report(calibration: Calibration, records: Sequence[Mapping[str, Any]], *,
                    coverages: Sequence[float] = COVERAGES, n_bootstrap: int = 1000, seed: int = 0,
                    ci: float = 0.95) -> list[CoverageRow]:
    """On test records: the share of expert scores inside their interval, the mean width and the share marked
    uncertain, at each nominal coverage, pooled over scores with a percentile bootstrap CI over cases."""
    expected, spread, expert = score_matrices(records)
    if not len(expert):
        raise ValueError("coverage: no record carries expert scores")
    weights = np.ones((1, len(expert)))
    if n_bootstrap:
        weights = np.vstack([weights, bootstrap_counts(len(expert), n_bootstrap, seed)])
    rows = []
    for nominal in coverages:
        low, high = calibration.bounds(expected, spread, nominal)
        scored = np.isfinite(low) & np.isfinite(expert)
        inside = scored & (expert >= low) & (expert <= high)
        width = np.where(scored, high - low, 0.0)
        wide = scored & (high - low >= UNCERTAIN_WIDTH)
        count = weights @ scored.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov, wid, unc = ((weights @ m.sum(axis=1)) / count for m in (inside, width, wide))
        per_dim = {d: (float(inside[:, j].sum() / scored[:, j].sum()) if scored[:, j].any() else None)
                   for j, d in enumerate(DIMENSIONS)}
        boot = n_bootstrap > 0
        rows.append(CoverageRow(nominal=float(nominal), coverage=estimate(cov[0], cov[1:] if boot else None, ci),
                                width=estimate(wid[0], wid[1:] if boot else None, ci),
                                uncertain=estimate(unc[0], unc[1:] if boot else None, ci), per_dimension=per_dim,
                                n_scores=int(scored.sum())))
    return rows


def ece(claimed: Sequence[float], observed: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Expected calibration error: the weighted mean gap ``|claimed - observed|`` over bins (confidence bands, or
    nominal coverages with their measured coverage), weighted by each bin's share of the scores (equal weights when
    ``weights`` is None); bins with a NaN or zero weight are left out. 0 means every claim holds as often as it says.
    """
    c, o = np.asarray(claimed, dtype=float), np.asarray(observed, dtype=float)
    w = np.ones_like(c) if weights is None else np.asarray(weights, dtype=float)
    if not c.shape == o.shape == w.shape:
        raise ValueError(f"ece: claimed, observed and weights differ in shape ({c.shape}, {o.shape}, {w.shape})")
    keep = np.isfinite(c) & np.isfinite(o) & np.isfinite(w) & (w > 0)
    if not keep.any():
        return float("nan")
    return float(np.sum(w[keep] * np.abs(c[keep] - o[keep])) / np.sum(w[keep]))


def coverage_lines(rows: Sequence[CoverageRow]) -> list[str]:
    """One line per nominal coverage, for an agreement report or a terminal."""

    def cell(e: Estimate, digits: int) -> str:
        if e.value is None:
            return "n/a"
        return f"{e.value:.{digits}f}" + ("" if e.ci is None else f" [{e.ci[0]:.{digits}f}, {e.ci[1]:.{digits}f}]")

    return [f"{r.nominal:.0%} intervals: measured coverage {cell(r.coverage, 3)} of {r.n_scores} expert scores; mean "
            f"width {cell(r.width, 2)} points; {cell(r.uncertain, 3)} at least {UNCERTAIN_WIDTH:g} points wide "
            "(uncertain)" for r in rows]
