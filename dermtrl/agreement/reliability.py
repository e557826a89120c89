"""The statistics clinical agreement studies report, computed for a whole bootstrap at once.

Every statistic here takes the cases with a weight each: one row of weights is one data set (all ones: the cases as
given; bootstrap multiplicities: one resample of whole cases; a zero: a case left out, e.g. a missing score). A
resample with a case drawn twice is exactly the data set with that case's weight 2, so one matrix of case counts
(:func:`bootstrap_counts`, the project's one bootstrap) gives the point estimate and every resample of every
statistic in a few matrix products, and two statistics computed with the same counts are paired.

- **ICC(2,1) and ICC(3,1)** (Shrout & Fleiss 1979): two-way ANOVA on cases x raters. ICC(2,1) treats the raters as
  random and counts a systematic offset between them as disagreement (absolute agreement); ICC(3,1) treats them as
  fixed and ignores it (consistency).
- **Krippendorff's alpha** (Krippendorff 2011) from the coincidence matrix, nominal, ordinal or interval metric;
  units with fewer than two values are left out, as alpha prescribes.
- **Quadratic-weighted kappa** and **Spearman's rho** (average ranks for ties), as Table 1 has always reported them.

Why our own code: the maintained Python packages (``pingouin`` for ICC, ``krippendorff`` for alpha) are GPL-3.0,
which an Apache-2.0 package cannot depend on; ``pingouin`` also pulls in ``statsmodels``, ``seaborn`` and
``pandas`` and computes one data frame per call, far too slow for thousands of resamples. Tests check these functions
against the published worked examples (Shrout & Fleiss's 6x4 table, Krippendorff's 4-coder reliability data).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["STATISTICS", "Estimate", "agreement_statistics", "bootstrap_counts", "icc", "krippendorff_alpha",
           "percentile_ci", "round_half_up", "weighted_alpha", "weighted_icc", "weighted_mae", "weighted_qwk",
           "weighted_spearman"]

Level = Literal["nominal", "ordinal", "interval"]

#: The statistics every agreement report gives, per dimension and macro-averaged, each with a bootstrap CI.
STATISTICS: tuple[str, ...] = ("mae", "spearman", "qwk", "icc21", "icc31", "alpha")
#: How reports name them.
STATISTIC_NAMES: dict[str, str] = {"mae": "MAE", "spearman": "Spearman", "qwk": "QWK", "icc21": "ICC(2,1)",
                                   "icc31": "ICC(3,1)", "alpha": "Krippendorff alpha (ordinal)"}
#: Statistics where lower is better (the rest: higher is better, 1 is perfect agreement).
LOWER_IS_BETTER: frozenset[str] = frozenset({"mae"})
#: Above this many (x value, y value) cells Spearman ranks every case instead of counting cells.
JOINT_CELLS = 4096


def round_half_up(values: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer with halves going *up*: ``floor(x + 0.5)`` (2.5 -> 3, 4.5 -> 5).

    Not ``round``/``np.round``: those round half to even (2.5 -> 2, 3.5 -> 4, 4.5 -> 4), so a judge score
    of exactly x.5 would go down or up depending on the parity of x, an arbitrary bias on a 0-5 scale
    where x.5 is a common score. The paper only says "nearest integer"; the ordinary (school / clinical)
    convention, and the one that treats every half-point alike, rounds halves up. All scores are >= 0,
    so half-up and half-away-from-zero coincide.
    """
    return np.floor(np.asarray(values, dtype=float) + 0.5)


@dataclass(frozen=True)
class Estimate:
    """A statistic and its percentile bootstrap interval; ``None`` where undefined (e.g. constant scores)."""

    value: float | None
    ci: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci": None if self.ci is None else list(self.ci)}

    @classmethod
    def from_dict(cls, data: dict | None) -> Estimate:
        if not data:
            return cls(None)
        ci = data.get("ci")
        return cls(data.get("value"), None if ci is None else (float(ci[0]), float(ci[1])))


def finite_or_none(value: object) -> float | None:
    if value is None:
        return None
    value = float(value)  # type: ignore[arg-type]
    return value if math.isfinite(value) else None


def bootstrap_counts(n_cases: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_cases) multiplicities of whole cases drawn with replacement, seeded.

    Row ``b`` says how often each case appears in resample ``b``; every statistic of a report uses the same rows, so
    differences and ratios between them are paired bootstraps.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, size=(n_bootstrap, n_cases))
    offsets = (np.arange(n_bootstrap) * n_cases)[:, None]
    counts = np.bincount((idx + offsets).ravel(), minlength=n_bootstrap * n_cases)
    return counts.reshape(n_bootstrap, n_cases).astype(float)


def percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float] | None:
    """Percentile interval of the finite resamples; ``None`` when none is finite."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return None
    lo, hi = np.percentile(samples, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def estimate(point: np.ndarray | float, samples: np.ndarray | None, ci: float) -> Estimate:
    """An :class:`Estimate` from a point value and its resamples (``None``: no interval)."""
    value = finite_or_none(np.asarray(point, dtype=float).reshape(-1)[0])
    interval = None if samples is None or value is None else percentile_ci(samples, ci)
    return Estimate(value, interval)


# ------------------------------------------------------------------------------------------------ kernels
# Each kernel takes per-case values and weights ``w`` of shape (B, n) and returns one value per row (B,), NaN where the
# statistic is undefined in that row.


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(np.isfinite(out) & (den != 0), out, np.nan)


def weighted_mae(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean absolute difference per row of weights."""
    return _divide(w @ np.abs(x - y), w.sum(axis=1))


def _onehot(codes: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((codes.size, size))
    out[np.arange(codes.size), codes] = 1.0
    return out


def _midranks(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank) of ``v`` in each weighted data set: (B, n)."""
    values, codes = np.unique(v, return_inverse=True)
    c = w @ _onehot(codes, values.size)  # (B, distinct values): how many cases hold each value
    mid = np.cumsum(c, axis=1) - c + (c + 1) / 2
    return mid[:, codes]


def weighted_spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Spearman's rho (Pearson on average ranks) per row of weights.

    Scores take few distinct values, so the joint counts of (x value, y value) per row hold everything: the ranks
    and their cross-products are sums over at most a few hundred cells instead of over every case.
    """
    vx, cx = np.unique(x, return_inverse=True)
    vy, cy = np.unique(y, return_inverse=True)
    if vx.size * vy.size > JOINT_CELLS:  # near-continuous scores: rank every case
        rx, ry = _midranks(x, w), _midranks(y, w)
        total = w.sum(axis=1, keepdims=True)
        mx = _divide((w * rx).sum(axis=1, keepdims=True), total)
        my = _divide((w * ry).sum(axis=1, keepdims=True), total)
        dx, dy = rx - mx, ry - my
        cov = (w * dx * dy).sum(axis=1)
        var = (w * dx * dx).sum(axis=1) * (w * dy * dy).sum(axis=1)
        return _divide(cov, np.sqrt(var))
    joint = (w @ _onehot(cx * vy.size + cy, vx.size * vy.size)).reshape(-1, vx.size, vy.size)
    nx, ny = joint.sum(axis=2), joint.sum(axis=1)
    mean = (nx.sum(axis=1, keepdims=True) + 1) / 2  # the mean of average ranks is (N + 1) / 2
    dx = np.cumsum(nx, axis=1) - nx + (nx + 1) / 2 - mean
    dy = np.cumsum(ny, axis=1) - ny + (ny + 1) / 2 - mean
    cov = np.einsum("bij,bi,bj->b", joint, dx, dy)
    var = (nx * dx * dx).sum(axis=1) * (ny * dy * dy).sum(axis=1)
    return _divide(cov, np.sqrt(var))


def weighted_qwk(a: np.ndarray, b: np.ndarray, w: np.ndarray, labels: int) -> np.ndarray:
    """Quadratic-weighted Cohen's kappa of integer codes ``a``, ``b`` in ``0..labels-1`` per row of weights."""
    observed = (w @ _onehot(a * labels + b, labels * labels)).reshape(-1, labels, labels)
    rows, cols = observed.sum(axis=2), observed.sum(axis=1)
    total = observed.sum(axis=(1, 2))
    expected = _divide(rows[:, :, None] * cols[:, None, :], total[:, None, None])
    grid = np.arange(labels)
    penalty = (grid[:, None] - grid[None, :]) ** 2.0
    return 1.0 - _divide((observed * penalty).sum(axis=(1, 2)), (expected * penalty).sum(axis=(1, 2)))


def weighted_icc(ratings: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICC(2,1) and ICC(3,1) of an (n cases, k raters) matrix per row of weights (Shrout & Fleiss 1979, eq. from
    the two-way ANOVA mean squares: BMS between cases, JMS between raters, EMS residual)."""
    n_raters = ratings.shape[1]
    total = w.sum(axis=1)  # weighted number of cases
    row_mean = ratings.mean(axis=1)
    col_mean = _divide(w @ ratings, total[:, None])  # (B, k)
    grand = col_mean.mean(axis=1)
    ss_rows = n_raters * (w @ row_mean**2 - 2 * grand * (w @ row_mean) + total * grand**2)
    ss_cols = total * ((col_mean - grand[:, None]) ** 2).sum(axis=1)
    ss_total = w @ (ratings**2).sum(axis=1) - 2 * grand * (w @ ratings.sum(axis=1)) + total * n_raters * grand**2
    ss_error = ss_total - ss_rows - ss_cols
    bms = _divide(ss_rows, total - 1)
    jms = ss_cols / (n_raters - 1)
    ems = _divide(ss_error, (total - 1) * (n_raters - 1))
    icc2 = _divide(bms - ems, bms + (n_raters - 1) * ems + n_raters * _divide(jms - ems, total))
    icc3 = _divide(bms - ems, bms + (n_raters - 1) * ems)
    return icc2, icc3


def _distance(n_v: np.ndarray, values: np.ndarray, level: Level) -> np.ndarray:
    """Squared difference function delta^2 of Krippendorff's alpha, (B, V, V) from the value frequencies (B, V)."""
    if level == "nominal":
        return np.broadcast_to(1.0 - np.eye(values.size), (n_v.shape[0], values.size, values.size))
    if level == "interval":
        d = (values[:, None] - values[None, :]) ** 2.0
        return np.broadcast_to(d, (n_v.shape[0], values.size, values.size))
    # ordinal: (sum of n_g for g from c to k) - (n_c + n_k) / 2, squared; with S the cumulative sum of n_g this is
    # S_k - S_c + (n_c - n_k) / 2 for any order of c and k.
    cum = np.cumsum(n_v, axis=1)
    return (cum[:, None, :] - cum[:, :, None] + (n_v[:, :, None] - n_v[:, None, :]) / 2) ** 2


def weighted_alpha(value_counts: np.ndarray, values: np.ndarray, w: np.ndarray, level: Level = "ordinal"
                   ) -> np.ndarray:
    """Krippendorff's alpha from per-unit value counts (units x V, values in ``values`` order) per row of weights."""
    pairable = value_counts.sum(axis=1)
    keep = pairable >= 2
    counts, weights = value_counts[keep], w[:, keep]
    m = pairable[keep]
    n_values = values.size
    per_unit = (counts[:, :, None] * counts[:, None, :] - np.einsum("uv,vk->uvk", counts, np.eye(n_values)))
    per_unit /= (m - 1)[:, None, None]
    coincidence = (weights @ per_unit.reshape(len(counts), -1)).reshape(-1, n_values, n_values)
    n_v = coincidence.sum(axis=2)
    n = n_v.sum(axis=1)
    delta = _distance(n_v, values, level)
    observed = (coincidence * delta).sum(axis=(1, 2))
    expected = _divide((n_v[:, :, None] * n_v[:, None, :] * delta).sum(axis=(1, 2)), n - 1)
    return 1.0 - _divide(observed, expected)


# --------------------------------------------------------------------------------------------- one data set


def icc(ratings: Sequence[Sequence[float]] | np.ndarray) -> dict[str, float | None]:
    """ICC(2,1) and ICC(3,1) of a complete (cases x raters) table: ``{"ICC(2,1)": ..., "ICC(3,1)": ...}``."""
    table = np.asarray(ratings, dtype=float)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2 or not np.isfinite(table).all():
        raise ValueError(f"icc: need a complete table of at least 2 cases x 2 raters, got shape {table.shape}")
    icc2, icc3 = weighted_icc(table, np.ones((1, table.shape[0])))
    return {"ICC(2,1)": finite_or_none(icc2[0]), "ICC(3,1)": finite_or_none(icc3[0])}


def krippendorff_alpha(reliability_data: Sequence[Sequence[float | None]] | np.ndarray, level: Level = "ordinal",
                       domain: Sequence[float] | None = None) -> float | None:
    """Krippendorff's alpha of a (coders x units) table; ``None``/NaN marks a missing value.

    ``domain`` lists the values in order (default: the values observed); the ordinal metric uses their frequencies.
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"krippendorff_alpha: level must be nominal, ordinal or interval, got {level!r}")
    table = np.array([[np.nan if v is None else float(v) for v in row] for row in reliability_data], dtype=float)
    if table.ndim != 2:
        raise ValueError("krippendorff_alpha: reliability_data must be a (coders x units) table")
    observed = np.unique(table[np.isfinite(table)])
    values = observed if domain is None else np.asarray(domain, dtype=float)
    outside = sorted(set(observed.tolist()) - set(values.tolist()))
    if outside:
        raise ValueError(f"krippendorff_alpha: values {outside} are not in the domain {values.tolist()}")
    counts = np.zeros((table.shape[1], values.size))
    for j, value in enumerate(values):
        counts[:, j] = (table == value).sum(axis=0)
    return finite_or_none(weighted_alpha(counts, values, np.ones((1, table.shape[1])), level)[0])


# ------------------------------------------------------------------------------------------ two score columns


def agreement_statistics(x: np.ndarray, y: np.ndarray, w: np.ndarray, labels: int) -> dict[str, np.ndarray]:
    """Every statistic of :data:`STATISTICS` for scores ``x`` against ``y`` (0..labels-1 scale), per row of ``w``.

    MAE, Spearman and the ICCs use the scores as given; QWK and the ordinal alpha, which need categories, use them
    rounded half-up to integers. Cases with weight 0 take no part (their values must still be finite).
    """
    if not np.size(x):  # no case: every statistic is undefined
        return {s: np.full(w.shape[0], np.nan) for s in STATISTICS}
    a = np.clip(round_half_up(x), 0, labels - 1).astype(int)
    b = np.clip(round_half_up(y), 0, labels - 1).astype(int)
    icc2, icc3 = weighted_icc(np.column_stack([x, y]), w)
    value_counts = _onehot(a, labels) + _onehot(b, labels)
    return {"mae": weighted_mae(x, y, w), "spearman": weighted_spearman(x, y, w), "qwk": weighted_qwk(b, a, w, labels),
            "icc21": icc2, "icc31": icc3,
            "alpha": weighted_alpha(value_counts, np.arange(labels, dtype=float), w, "ordinal")}
