"""Agreement between evaluator scores and expert (dermatologist) scores: the metric of Table 1.

DermBench and DermEval are both judged by the same yardstick (Section 4.1): per-dimension mean absolute
error against physician scores, with the evaluator's scores "rounded to the nearest integer on the 0 to 5
scale", and the "macro average MAE" over the six dimensions. Keeping that definition in one function means
the two evaluators can never drift onto subtly different metrics. Rank correlations, quadratic-weighted
kappa and seeded bootstrap confidence intervals are reported alongside, and missing or skipped cases are
counted and reported rather than silently scored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import cohen_kappa_score

from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN, Scores, canonical_dimension, valid_score

__all__ = ["AgreementReport", "DimensionAgreement", "agreement", "round_half_up"]

#: The integer labels of the 0-5 scale (for Cohen's kappa).
LABELS: tuple[int, ...] = tuple(range(int(SCORE_MIN), int(SCORE_MAX) + 1))


def round_half_up(values: np.ndarray | float) -> np.ndarray:
    """Round to the nearest integer with halves going *up*: ``floor(x + 0.5)`` (2.5 -> 3, 4.5 -> 5).

    Not ``round``/``np.round``: those round half to even (2.5 -> 2, 3.5 -> 4, 4.5 -> 4), so a judge score
    of exactly x.5 would go down or up depending on the parity of x, an arbitrary bias on a 0-5 scale
    where x.5 is a common score. The paper only says "nearest integer"; the ordinary (school / clinical)
    convention, and the one that treats every half-point alike, rounds halves up. All scores are >= 0,
    so half-up and half-away-from-zero coincide.
    """
    return np.floor(np.asarray(values, dtype=float) + 0.5)


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class DimensionAgreement:
    """Agreement on one dimension. ``None`` marks a metric that is undefined (e.g. constant input)."""

    mae: float | None
    mae_ci: tuple[float, float] | None
    spearman: float | None
    kendall: float | None
    qwk: float | None
    n: int  # pairs scored
    n_missing: int  # cases whose prediction lacks this dimension (not scored, not in the MAE denominator)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mae": _finite_or_none(self.mae),
            "mae_ci": None if self.mae_ci is None else [_finite_or_none(v) for v in self.mae_ci],
            "spearman": _finite_or_none(self.spearman),
            "kendall": _finite_or_none(self.kendall),
            "qwk": _finite_or_none(self.qwk),
            "n": int(self.n),
            "n_missing": int(self.n_missing),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DimensionAgreement:
        ci = data.get("mae_ci")
        return cls(
            mae=data.get("mae"),
            mae_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            spearman=data.get("spearman"),
            kendall=data.get("kendall"),
            qwk=data.get("qwk"),
            n=int(data["n"]),
            n_missing=int(data["n_missing"]),
        )


@dataclass(frozen=True)
class AgreementReport:
    """Table 1 for one evaluator: per-dimension agreement (paper order) plus the macro-average MAE."""

    per_dimension: dict[str, DimensionAgreement]
    macro_mae: float | None
    macro_mae_ci: tuple[float, float] | None
    n_cases: int  # cases passed in (scored or missing); excludes `skipped`
    skipped: int  # cases skipped before scoring (e.g. undecodable images)
    rounded: bool  # model scores rounded half-up to integers before the MAE (as in the paper)
    label: str = ""
    ci_level: float = 0.95
    n_bootstrap: int = 1000
    seed: int = 0
    truncated: int = 0  # evaluations that hit the generation budget (their score block may be cut)

    @property
    def n_missing(self) -> dict[str, int]:
        return {d: a.n_missing for d, a in self.per_dimension.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN/inf become ``None``, tuples become lists."""
        return {
            "label": self.label,
            "n_cases": int(self.n_cases),
            "skipped": int(self.skipped),
            "rounded": bool(self.rounded),
            "ci_level": float(self.ci_level),
            "n_bootstrap": int(self.n_bootstrap),
            "seed": int(self.seed),
            "truncated": int(self.truncated),
            "macro_mae": _finite_or_none(self.macro_mae),
            "macro_mae_ci": None
            if self.macro_mae_ci is None
            else [_finite_or_none(v) for v in self.macro_mae_ci],
            "per_dimension": {d: a.to_dict() for d, a in self.per_dimension.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgreementReport:
        ci = data.get("macro_mae_ci")
        per = {d: DimensionAgreement.from_dict(a) for d, a in data["per_dimension"].items()}
        return cls(
            per_dimension=per,
            macro_mae=data.get("macro_mae"),
            macro_mae_ci=None if ci is None else (float(ci[0]), float(ci[1])),
            n_cases=int(data["n_cases"]),
            skipped=int(data["skipped"]),
            rounded=bool(data["rounded"]),
            label=str(data.get("label", "")),
            ci_level=float(data.get("ci_level", 0.95)),
            n_bootstrap=int(data.get("n_bootstrap", 1000)),
            seed=int(data.get("seed", 0)),
            truncated=int(data.get("truncated", 0)),
        )


# --------------------------------------------------------------------------------------------- validation


def _is_number(value: Any) -> bool:
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    return numeric and not isinstance(value, (bool, np.bool_))


def _canonical_items(row: Mapping[str, Any], i: int, who: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        try:
            dim = canonical_dimension(key)
        except KeyError:
            raise ValueError(f"{who} row {i}: unknown dimension {key!r}") from None
        out[dim] = value
    return out


def _prediction_matrix(predictions: Sequence[Mapping[str, float | None] | Scores | None]) -> np.ndarray:
    """(n_cases, 6) float array, NaN where the prediction is missing."""
    pred = np.full((len(predictions), len(DIMENSIONS)), np.nan)
    for i, row in enumerate(predictions):
        if row is None:  # the evaluator failed on this case: missing on every dimension
            continue
        if not isinstance(row, Mapping):
            raise ValueError(f"prediction row {i}: expected a mapping (or None), got {row!r}")
        values = _canonical_items(row, i, "prediction")
        for j, dim in enumerate(DIMENSIONS):
            value = values.get(dim)
            if value is None:
                continue
            if not _is_number(value):
                raise ValueError(f"prediction row {i}, dimension {dim!r}: expected a number, got {value!r}")
            value = float(value)
            if math.isnan(value):  # NaN is how tables spell "missing"; treat it like None
                continue
            if not valid_score(value):
                raise ValueError(
                    f"prediction row {i}, dimension {dim!r}: score {value!r} outside "
                    f"[{SCORE_MIN:g}, {SCORE_MAX:g}]"
                )
            pred[i, j] = value
    return pred


def _expert_matrix(experts: Sequence[Mapping[str, float]]) -> np.ndarray:
    """(n_cases, 6) float array; every expert score must be present and on the 0-5 scale."""
    exp = np.empty((len(experts), len(DIMENSIONS)))
    for i, row in enumerate(experts):
        if not isinstance(row, Mapping):
            raise ValueError(f"expert row {i}: expected a mapping of dimension -> score, got {row!r}")
        values = _canonical_items(row, i, "expert")
        for j, dim in enumerate(DIMENSIONS):
            value = values.get(dim)
            if value is None:
                raise ValueError(f"expert row {i}, dimension {dim!r}: expert score missing")
            if not _is_number(value) or not valid_score(float(value)):
                raise ValueError(
                    f"expert row {i}, dimension {dim!r}: score {value!r} is not a number in "
                    f"[{SCORE_MIN:g}, {SCORE_MAX:g}]"
                )
            exp[i, j] = float(value)
    return exp


# ---------------------------------------------------------------------------------------------- metrics


def _correlation(func: Any, x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning etc.: an undefined statistic becomes None
        return _finite_or_none(func(x, y).statistic)


def _qwk(expert: np.ndarray, pred: np.ndarray) -> float | None:
    if expert.size == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa (single shared label) -> NaN -> None
        value = cohen_kappa_score(
            round_half_up(expert).astype(int),
            round_half_up(pred).astype(int),
            labels=list(LABELS),
            weights="quadratic",
        )
    return _finite_or_none(value)


def _percentile_ci(samples: np.ndarray, ci: float) -> np.ndarray:
    """Percentile interval per column, ignoring NaN resamples; NaN where a column has no finite resample."""
    out = np.full((2, samples.shape[1]), np.nan)
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    for j in range(samples.shape[1]):
        col = samples[:, j]
        col = col[np.isfinite(col)]
        if col.size:
            out[:, j] = np.percentile(col, q)
    return out


def _as_ci(lo: float, hi: float) -> tuple[float, float] | None:
    return (float(lo), float(hi)) if math.isfinite(lo) and math.isfinite(hi) else None


def agreement(
    predictions: Sequence[Mapping[str, float | None] | Scores | None],
    experts: Sequence[Mapping[str, float]],
    *,
    round_predictions: bool = True,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    skipped: int = 0,
    label: str = "",
    truncated: int = 0,
) -> AgreementReport:
    """Agreement of evaluator ``predictions`` with ``experts``, case by case (row ``i`` with row ``i``).

    - MAE per dimension as in Table 1: mean ``|round_half_up(pred) - expert|`` over the cases whose
      prediction has that dimension (raw ``pred`` when ``round_predictions=False``). A missing score (absent
      key, ``None``, NaN, or a ``None`` prediction row) is counted in ``n_missing`` and left out of the
      denominator, never scored as 0.
    - Macro MAE: mean of the six per-dimension MAEs (``None`` if any dimension has no scored pair).
    - Spearman / Kendall (tau-b) on the same (rounded or raw) scores the MAE uses; ``None`` when undefined.
    - Quadratic-weighted Cohen's kappa on half-up-rounded predictions and experts over the labels 0..5.
    - Percentile bootstrap CIs (``ci`` level, ``n_bootstrap`` resamples of whole cases, seeded) for each
      dimension's MAE and for the macro MAE (dimensions resampled jointly). ``n_bootstrap=0`` gives no CIs.

    ``skipped`` counts cases dropped before scoring (e.g. undecodable images); it is carried into the
    report so that it is never lost; ``truncated`` likewise counts evaluations that hit the generation budget.
    Raises ``ValueError`` for mismatched lengths, missing or out-of-range
    expert scores, or out-of-range predictions (naming the row and dimension).
    """
    if len(predictions) != len(experts):
        raise ValueError(
            f"predictions and experts must have the same length: got {len(predictions)} predictions "
            f"and {len(experts)} expert rows"
        )
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap!r}")
    if skipped < 0:
        raise ValueError(f"skipped must be >= 0, got {skipped!r}")

    pred = _prediction_matrix(predictions)
    exp = _expert_matrix(experts)
    n_cases = len(exp)
    used = round_half_up(pred) if round_predictions else pred  # NaN stays NaN
    mask = ~np.isnan(used)
    err = np.where(mask, np.abs(used - exp), 0.0)
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = err.sum(axis=0) / n  # NaN where n == 0

    # Bootstrap: an (n_bootstrap, n_cases) index matrix of resampled cases, turned into per-resample case
    # counts so each resample's per-dimension sums are one matrix product (cases resampled jointly).
    boot_ci = np.full((2, len(DIMENSIONS) + 1), np.nan)
    if n_bootstrap and n_cases:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n_cases, size=(n_bootstrap, n_cases))
        offsets = (np.arange(n_bootstrap) * n_cases)[:, None]
        counts = np.bincount((idx + offsets).ravel(), minlength=n_bootstrap * n_cases)
        counts = counts.reshape(n_bootstrap, n_cases).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mae_b = (counts @ err) / (counts @ mask.astype(float))  # (n_bootstrap, 6)
        macro_b = mae_b.mean(axis=1)  # NaN where some dimension had no pair in that resample
        boot_ci = _percentile_ci(np.column_stack([mae_b, macro_b]), ci)

    per_dimension: dict[str, DimensionAgreement] = {}
    for j, dim in enumerate(DIMENSIONS):
        m = mask[:, j]
        x, y = used[m, j], exp[m, j]
        per_dimension[dim] = DimensionAgreement(
            mae=_finite_or_none(mae[j]),
            mae_ci=_as_ci(boot_ci[0, j], boot_ci[1, j]),
            spearman=_correlation(spearmanr, x, y),
            kendall=_correlation(kendalltau, x, y),
            qwk=_qwk(y, pred[m, j]),
            n=int(n[j]),
            n_missing=int(n_cases - n[j]),
        )

    macro = float(mae.mean()) if bool(np.all(n > 0)) else None
    return AgreementReport(
        per_dimension=per_dimension,
        macro_mae=macro,
        macro_mae_ci=_as_ci(boot_ci[0, -1], boot_ci[1, -1]),
        n_cases=n_cases,
        skipped=int(skipped),
        rounded=bool(round_predictions),
        label=label,
        ci_level=float(ci),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        truncated=int(truncated),
    )


def case_errors(predictions: Sequence[Mapping[str, float | None] | Scores | None],
                experts: Sequence[Mapping[str, float]], *, round_predictions: bool = True) -> np.ndarray:
    """(cases, 6) absolute errors as Table 1 computes them (rounded predictions); NaN where a score is missing.

    The per-case matrix is what paired comparisons need: two evaluators, or two training runs, on the same cases.
    """
    pred = _prediction_matrix(predictions)
    exp = _expert_matrix(experts)
    used = round_half_up(pred) if round_predictions else pred
    return np.abs(used - exp)


def macro_mae(errors: np.ndarray, dims: Sequence[str] = DIMENSIONS) -> float:
    """Mean over ``dims`` of each dimension's MAE (missing scores left out); ``errors`` from :func:`case_errors`."""
    cols = [DIMENSIONS.index(d) for d in dims]
    with warnings.catch_warnings():  # a dimension with no scored case gives NaN, which is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.mean([np.nanmean(errors[..., j]) for j in cols]))


def paired_bootstrap(stat: Any, arms: Sequence[np.ndarray], *, n_bootstrap: int = 2000, seed: int = 0,
                     ci: float = 0.95) -> tuple[float, float, float]:
    """``stat(*arms)`` and its percentile CI, resampling the same cases in every arm (a paired bootstrap).

    Arms are per-case error matrices of shape (cases, 6), or (seeds, cases, 6) when runs were repeated with several
    seeds: seeds and cases are then resampled jointly. Returns (value, low, high).
    """
    rng = np.random.default_rng(seed)
    value = float(stat(*arms))
    n = arms[0].shape[-2]
    samples = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        if arms[0].ndim == 3:
            sidx = rng.integers(0, arms[0].shape[0], arms[0].shape[0])
            resampled = [a[sidx][:, idx] for a in arms]
        else:
            resampled = [a[idx] for a in arms]
        with np.errstate(invalid="ignore", divide="ignore"):
            samples.append(stat(*resampled))
    values = np.asarray(samples, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return value, float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return value, float(lo), float(hi)
