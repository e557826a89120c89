"""Agreement between evaluator scores and expert (dermatologist) scores: the metric of Table 1.

DermBench and DermEval are both judged by the same yardstick (Section 4.1): per-dimension mean absolute
error against physician scores, with the evaluator's scores "rounded to the nearest integer on the 0 to 5
scale", and the "macro average MAE" over the six dimensions. Keeping that definition in one function means
the two evaluators can never drift onto subtly different metrics. Beside the MAE every report gives the
statistics clinical agreement studies use (ICC(2,1), ICC(3,1), Krippendorff's ordinal alpha), quadratic-weighted
kappa and Spearman's rho, per dimension and macro-averaged, each with a seeded bootstrap CI over cases
(:mod:`dermtrl.agreement.reliability`); a constant-mean baseline row; and, when the cases keep every rater's
scores, the expert ceiling (:mod:`dermtrl.agreement.ceiling`). Missing or skipped cases are counted and reported
rather than silently scored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from dermtrl.agreement.ceiling import Ceiling, expert_ceiling
from dermtrl.agreement.reliability import (
    STATISTICS,
    Estimate,
    agreement_statistics,
    bootstrap_counts,
    estimate,
    finite_or_none,
    round_half_up,
)
from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN, Scores, canonical_dimension, valid_score

__all__ = ["AgreementReport", "DimensionAgreement", "agreement", "constant_predictions", "round_half_up"]

#: The integer labels of the 0-5 scale (for Cohen's kappa and the ordinal alpha).
LABELS: tuple[int, ...] = tuple(range(int(SCORE_MIN), int(SCORE_MAX) + 1))
TRAIN_MEAN_LABEL = "Constant train-mean baseline"
IN_SAMPLE_LABEL = "Constant mean of these cases (in-sample)"

_finite_or_none = finite_or_none


def _ci_list(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_finite_or_none(v) for v in ci]


def _ci_tuple(ci: Sequence[float] | None) -> tuple[float, float] | None:
    return None if ci is None else (float(ci[0]), float(ci[1]))


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
    spearman_ci: tuple[float, float] | None = None
    qwk_ci: tuple[float, float] | None = None
    icc21: float | None = None  # ICC(2,1): absolute agreement, raters random
    icc21_ci: tuple[float, float] | None = None
    icc31: float | None = None  # ICC(3,1): consistency, raters fixed
    icc31_ci: tuple[float, float] | None = None
    alpha: float | None = None  # Krippendorff's alpha, ordinal, on scores rounded to integers
    alpha_ci: tuple[float, float] | None = None

    def stat(self, name: str) -> Estimate:
        """One statistic of :data:`~dermtrl.agreement.reliability.STATISTICS` with its interval."""
        return Estimate(getattr(self, name), getattr(self, f"{name}_ci"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kendall": _finite_or_none(self.kendall), "n": int(self.n),
                               "n_missing": int(self.n_missing)}
        for name in STATISTICS:
            out[name] = _finite_or_none(getattr(self, name))
            out[f"{name}_ci"] = _ci_list(getattr(self, f"{name}_ci"))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DimensionAgreement:
        values: dict[str, Any] = {}
        for name in STATISTICS:
            values[name] = data.get(name)
            values[f"{name}_ci"] = _ci_tuple(data.get(f"{name}_ci"))
        return cls(kendall=data.get("kendall"), n=int(data["n"]), n_missing=int(data["n_missing"]), **values)


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
    macro: dict[str, Estimate] = field(default_factory=dict)  # every statistic averaged over the six dimensions
    baseline: AgreementReport | None = None  # a constant predictor on the same cases, scored the same way
    constant: bool = False  # this report is itself a constant baseline (every case got the same scores)
    ceiling: Ceiling | None = None  # rater-to-rater agreement beside this evaluator's, when raters are known

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
            "macro_mae_ci": _ci_list(self.macro_mae_ci),
            "per_dimension": {d: a.to_dict() for d, a in self.per_dimension.items()},
            "macro": {s: e.to_dict() for s, e in self.macro.items()},
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "ceiling": None if self.ceiling is None else self.ceiling.to_dict(),
            "constant": bool(self.constant),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgreementReport:
        per = {d: DimensionAgreement.from_dict(a) for d, a in data["per_dimension"].items()}
        return cls(
            per_dimension=per,
            macro_mae=data.get("macro_mae"),
            macro_mae_ci=_ci_tuple(data.get("macro_mae_ci")),
            n_cases=int(data["n_cases"]),
            skipped=int(data["skipped"]),
            rounded=bool(data["rounded"]),
            label=str(data.get("label", "")),
            ci_level=float(data.get("ci_level", 0.95)),
            n_bootstrap=int(data.get("n_bootstrap", 1000)),
            seed=int(data.get("seed", 0)),
            truncated=int(data.get("truncated", 0)),
            macro={s: Estimate.from_dict(e) for s, e in (data.get("macro") or {}).items()},
            baseline=None if not data.get("baseline") else cls.from_dict(data["baseline"]),
            ceiling=None if not data.get("ceiling") else Ceiling.from_dict(data["ceiling"]),
            constant=bool(data.get("constant", False)),
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


def _kendall(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.size < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning etc.: an undefined statistic becomes None
        return _finite_or_none(kendalltau(x, y).statistic)


def constant_predictions(experts: Sequence[Mapping[str, float]],
                         train_experts: Sequence[Mapping[str, float]] | None = None) -> tuple[list[dict], str]:
    """The constant baseline's predictions and its label.

    With ``train_experts``: every case gets the training set's mean expert score per dimension (what an evaluator
    that ignores image and text would learn). Without: every case gets the mean of these cases' own expert scores,
    labelled in-sample: a constant that knows the answers' average, so a little harder to beat than a true training
    mean. (Not each case's leave-one-out mean: that varies against the case's own score by construction, so near a
    rounding boundary it scores worse than any constant and gives negative correlations.)
    """
    exp = _expert_matrix(experts)
    if train_experts is not None:
        train = _expert_matrix(train_experts)
        if not len(train):
            raise ValueError("train_experts is empty: the constant baseline needs the training cases' expert scores")
        means, label = train.mean(axis=0), TRAIN_MEAN_LABEL
    elif len(exp):
        means, label = exp.mean(axis=0), IN_SAMPLE_LABEL
    else:
        return [], IN_SAMPLE_LABEL
    return [dict(zip(DIMENSIONS, map(float, means), strict=True))] * len(exp), label


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
    raters: Sequence[Sequence[Any] | None] | None = None,
    train_experts: Sequence[Mapping[str, float]] | None = None,
    baseline: bool = True,
) -> AgreementReport:
    """Agreement of evaluator ``predictions`` with ``experts``, case by case (row ``i`` with row ``i``).

    - MAE per dimension as in Table 1: mean ``|round_half_up(pred) - expert|`` over the cases whose
      prediction has that dimension (raw ``pred`` when ``round_predictions=False``). A missing score (absent
      key, ``None``, NaN, or a ``None`` prediction row) is counted in ``n_missing`` and left out of the
      denominator, never scored as 0.
    - Spearman, ICC(2,1) and ICC(3,1) on the same (rounded or raw) scores the MAE uses; Kendall (tau-b) likewise.
    - Quadratic-weighted Cohen's kappa and Krippendorff's ordinal alpha on half-up-rounded predictions and experts
      over the labels 0..5.
    - Macro: each statistic's mean over the six dimensions (``None`` if any dimension's is undefined).
    - Percentile bootstrap CIs (``ci`` level, ``n_bootstrap`` resamples of whole cases, seeded, the same resamples
      for every statistic and dimension). ``n_bootstrap=0`` gives no CIs.
    - ``baseline``: a nested report of a constant predictor on the same cases (the training mean when
      ``train_experts`` is given, else these cases' own mean, labelled in-sample), so a model is never read
      without what a constant achieves. A report whose predictions are all the same is itself a constant baseline
      (``constant=True``) and gets none; the renderers show no nested baseline beside a constant report.
    - ``raters``: per case, every rater's scores (``rater_scores`` or the pipeline's ``ratings``); gives the nested
      expert ceiling (:func:`dermtrl.agreement.ceiling.expert_ceiling`) on the same bootstrap resamples.

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
    if raters is not None and len(raters) != len(experts):
        raise ValueError(f"raters and experts must have the same length: got {len(raters)} rater rows "
                         f"and {len(experts)} expert rows")
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
    n = mask.sum(axis=0)
    counts = bootstrap_counts(n_cases, n_bootstrap, seed) if n_bootstrap and n_cases else None
    # row 0: the cases as given (the point estimate); rows 1..: the bootstrap resamples
    weights = np.ones((1, n_cases)) if counts is None else np.vstack([np.ones((1, n_cases)), counts])
    per_stat = {s: np.full((len(weights), len(DIMENSIONS)), np.nan) for s in STATISTICS}
    for j in range(len(DIMENSIONS)):
        x = np.where(mask[:, j], used[:, j], 0.0)  # a missing score takes no part: weight 0
        for s, values in agreement_statistics(x, exp[:, j], weights * mask[:, j], len(LABELS)).items():
            per_stat[s][:, j] = values

    def est(s: str, j: int | None) -> Estimate:
        col = per_stat[s].mean(axis=1) if j is None else per_stat[s][:, j]
        return estimate(col[0], col[1:] if counts is not None else None, ci)

    per_dimension: dict[str, DimensionAgreement] = {}
    for j, dim in enumerate(DIMENSIONS):
        m = mask[:, j]
        fields = {}
        for s in STATISTICS:
            e = est(s, j)
            fields[s], fields[f"{s}_ci"] = e.value, e.ci
        per_dimension[dim] = DimensionAgreement(kendall=_kendall(used[m, j], exp[m, j]), n=int(n[j]),
                                                n_missing=int(n_cases - n[j]), **fields)
    macro = {s: est(s, None) for s in STATISTICS}
    is_constant = n_cases > 0 and bool(np.all((pred == pred[0]) | (np.isnan(pred) & np.isnan(pred[0]))))
    base = None
    if baseline and not is_constant:
        constant, base_label = constant_predictions(experts, train_experts)
        if constant:
            base = replace(agreement(constant, experts, round_predictions=round_predictions, n_bootstrap=n_bootstrap,
                                     seed=seed, ci=ci, label=base_label, baseline=False), constant=True)
    ceiling = expert_ceiling(used, raters, counts, ci=ci) if raters is not None else None
    return AgreementReport(
        per_dimension=per_dimension,
        macro_mae=macro["mae"].value,
        macro_mae_ci=macro["mae"].ci,
        n_cases=n_cases,
        skipped=int(skipped),
        rounded=bool(round_predictions),
        label=label,
        ci_level=float(ci),
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        truncated=int(truncated),
        macro=macro,
        baseline=base,
        ceiling=ceiling,
        constant=is_constant,
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
