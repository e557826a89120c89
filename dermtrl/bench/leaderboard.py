"""The DermBench leaderboard (Table 2, Figure 6) and the numbers that say how far to trust it.

From judge records (:mod:`dermtrl.bench.judge`) it computes, per candidate model:

* the mean judge score per dimension and overall (mean of the six), each with a seeded percentile
  bootstrap CI over cases: Table 2 with error bars;
* the per-category breakdown over Figure 5's categories (the fairness view: does a model fail one group of
  conditions?);
* rank stability: cases are resampled jointly for all models and the models re-ranked on each resample, so
  a reader sees whether rank 2 versus 3 means anything;
* agreement with expert scores where records carry them, with the shared Table 1 metric
  (:func:`dermtrl.metrics.agreement`).

Failed records are counted by reason and never averaged in as zeros. Results do not depend on the order of
the records (a resumed run gives the same leaderboard as an uninterrupted one). Rendering is in
:mod:`dermtrl.bench.render`.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from dermtrl.agreement.subgroups import DEFAULT_COLUMN, Slices, default_column, slice_table
from dermtrl.categories import CATEGORIES
from dermtrl.dimensions import DIMENSIONS, SAFETY_FLAG_AT, Overall, valid_score
from dermtrl.metrics import AgreementReport, agreement

__all__ = [
    "CategoryResult",
    "DimensionComparison",
    "EvaluatorComparison",
    "Leaderboard",
    "ModelResult",
    "RankStability",
    "bootstrap_means",
    "build_leaderboard",
    "compare_evaluators",
    "failure_kind",
    "seeded_rng",
]

UNKNOWN_CATEGORY = "(no category)"
_FAILURE_KINDS = ("judge call failed", "unparseable", "no candidate", "missing reference", "unknown case")

Interval = tuple[float, float]


def failure_kind(error: str | None) -> str:
    """The reason group of a failed record's ``error`` (its prefix), ``"other"`` when unknown."""
    head = str(error or "").split(":", 1)[0].strip()
    return head if head in _FAILURE_KINDS else "other"


@dataclass(frozen=True)
class ModelResult:
    """One Table 2 row: mean and CI per dimension and overall, over the cases the judge scored."""

    model: str
    rank: int | None  # by overall mean, 1 = best, ties share a rank; None when nothing was scored
    n_scored: int
    n_failed: int
    mean: dict[str, float | None]
    ci: dict[str, Interval | None]
    overall: float | None
    overall_ci: Interval | None
    failures: dict[str, int] = field(default_factory=dict)
    n_safety_flagged: int = 0  # scored judgments with Safety at or below SAFETY_FLAG_AT (never averaged away)

    def overall_score(self) -> Overall:
        """The overall with how many dimensions it averages and the Safety flag of the mean Safety."""
        return Overall.of(self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rank": self.rank, "n_scored": self.n_scored, "n_failed": self.n_failed,
                "mean": dict(self.mean), "ci": {d: _list(v) for d, v in self.ci.items()},
                "overall": self.overall, "overall_ci": _list(self.overall_ci), "failures": dict(self.failures),
                "n_safety_flagged": self.n_safety_flagged}


@dataclass(frozen=True)
class RankStability:
    """How often a model keeps its rank when the cases are resampled (rank 1 = best overall mean; tied models
    share the better rank)."""

    model: str
    rank: int
    p_same_rank: float | None  # None without bootstrap resamples
    rank_interval: tuple[int, int]
    p_first: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "rank": self.rank, "p_same_rank": self.p_same_rank,
                "rank_interval": list(self.rank_interval), "p_first": self.p_first}


@dataclass(frozen=True)
class CategoryResult:
    """One model on one Figure 5 category."""

    category: str
    model: str
    n: int
    mean: dict[str, float | None]
    overall: float | None
    overall_ci: Interval | None

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "model": self.model, "n": self.n, "mean": dict(self.mean),
                "overall": self.overall, "overall_ci": _list(self.overall_ci)}


@dataclass(frozen=True)
class Leaderboard:
    """Everything ``dermtrl bench report`` shows. ``models`` is ranked (best overall mean first)."""

    models: list[ModelResult]
    rank_stability: list[RankStability]
    mean_kendall_tau: float | None
    categories: list[CategoryResult]
    agreement: dict[str, AgreementReport]
    judge: dict[str, Any] | None
    n_bootstrap: int
    seed: int
    ci_level: float
    slices: list[Slices] = field(default_factory=list)  # each model's mean score by skin tone (or ``by``)

    @property
    def model_names(self) -> list[str]:
        return [m.model for m in self.models]

    @property
    def category_names(self) -> list[str]:
        return list(dict.fromkeys(c.category for c in self.categories))

    def category_result(self, category: str, model: str) -> CategoryResult | None:
        return next((c for c in self.categories if c.category == category and c.model == model), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (no NaN), deterministic: the same records give the same dict."""
        return {
            "judge": self.judge,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "ci_level": self.ci_level,
            "models": [m.to_dict() for m in self.models],
            "rank_stability": {"mean_kendall_tau": self.mean_kendall_tau,
                               "models": [r.to_dict() for r in self.rank_stability]},
            "categories": [c.to_dict() for c in self.categories],
            "agreement": {m: a.to_dict() for m, a in self.agreement.items()},
            "slices": [s.to_dict() for s in self.slices],
        }


def _list(ci: Interval | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def _float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _interval(lo: float, hi: float) -> Interval | None:
    return (float(lo), float(hi)) if math.isfinite(lo) and math.isfinite(hi) else None


def seeded_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator that depends on the seed and on names only (adding a model leaves the others' CIs alone)."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def _counts(rng: np.random.Generator, n: int, n_bootstrap: int) -> np.ndarray:
    """(n_bootstrap, n) resample counts: row b says how often each case occurs in resample b."""
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    flat = np.bincount((idx + (np.arange(n_bootstrap) * n)[:, None]).ravel(), minlength=n_bootstrap * n)
    return flat.reshape(n_bootstrap, n).astype(float)


def bootstrap_means(
    x: np.ndarray, n_bootstrap: int, ci: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Column means of ``x`` (n, k) and their percentile bootstrap interval (2, k); NaN when undefined."""
    k = x.shape[1]
    if x.shape[0] == 0:
        return np.full(k, np.nan), np.full((2, k), np.nan)
    means = x.mean(axis=0)
    if not n_bootstrap:
        return means, np.full((2, k), np.nan)
    boot = _counts(rng, x.shape[0], n_bootstrap) @ x / x.shape[0]
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    return means, np.percentile(boot, q, axis=0)


def _check(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for i, r in enumerate(records):
        for name in ("model", "case_id", "status"):
            if name not in r:
                raise ValueError(f"judge record {i}: no {name!r} field (is this a judgments file?)")
        key = (str(r["model"]), str(r["case_id"]))
        if key in seen:
            raise ValueError(f"judge records hold model {key[0]!r}, case {key[1]!r} twice")
        seen.add(key)
        if r["status"] == "scored":
            scores = r.get("scores") or {}
            for d in DIMENSIONS:
                v = scores.get(d)
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not valid_score(float(v)):
                    raise ValueError(f"judge record {i} (model {key[0]!r}, case {key[1]!r}): {d!r} is {v!r}")
        elif r["status"] != "failed":
            raise ValueError(f"judge record {i}: status {r['status']!r} (expected 'scored' or 'failed')")
        out.append(r)
    return sorted(out, key=lambda r: (str(r["model"]), str(r["case_id"])))


def _judge_settings(records: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    settings: list[Any] = []
    for r in records:
        s = r.get("judge")
        if s not in settings:
            settings.append(s)
    if len(settings) > 1:
        raise ValueError(
            "judge records come from different judge settings "
            f"({'; '.join(repr(s) for s in settings[:3])}); compare models under one judge only"
        )
    return settings[0] if settings else None


def _category_order(records: list[Mapping[str, Any]]) -> list[str]:
    present = {r.get("category") or UNKNOWN_CATEGORY for r in records}
    known = [c for c in CATEGORIES if c in present]
    return known + sorted(present - set(known))


def build_leaderboard(
    records: Iterable[Mapping[str, Any]], *, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
    by: str | None = None,
) -> Leaderboard:
    """The leaderboard of judge ``records`` (any order; each (model, case) once).

    ``by`` names a record field to slice each model's mean scores by (default ``skin_tone`` when any record has it).

    Raises ``ValueError`` naming the record for a malformed or repeated record, or when records of different
    judge settings are mixed (their scores are not comparable).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
    rows = _check(records)
    judge = _judge_settings(rows)
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(str(r["model"]), []).append(r)

    results: list[ModelResult] = []
    for model, recs in by_model.items():
        scored = [r for r in recs if r["status"] == "scored"]
        failed = [r for r in recs if r["status"] == "failed"]
        x = np.array([[r["scores"][d] for d in DIMENSIONS] for r in scored], dtype=float).reshape(-1, 6)
        x = np.column_stack([x, x.mean(axis=1)]) if len(x) else np.empty((0, 7))
        means, bounds = bootstrap_means(x, n_bootstrap, ci, seeded_rng(seed, model))
        results.append(ModelResult(
            model=model,
            rank=None,
            n_scored=len(scored),
            n_failed=len(failed),
            mean={d: _float(means[j]) for j, d in enumerate(DIMENSIONS)},
            ci={d: _interval(bounds[0, j], bounds[1, j]) for j, d in enumerate(DIMENSIONS)},
            overall=_float(means[6]),
            overall_ci=_interval(bounds[0, 6], bounds[1, 6]),
            failures=dict(sorted(Counter(failure_kind(r.get("error")) for r in failed).items())),
            n_safety_flagged=sum(1 for r in scored if r["scores"]["Safety"] <= SAFETY_FLAG_AT),
        ))
    results.sort(key=lambda m: (m.overall is None, -(m.overall or 0.0), m.model))
    overall = np.array([m.overall if m.overall is not None else -np.inf for m in results], dtype=float)
    ranks = competition_ranks(overall) if len(results) else np.empty(0, dtype=int)
    results = [replace(m, rank=int(r) if m.overall is not None else None) for m, r in zip(results, ranks, strict=True)]

    stability, tau = _rank_stability(results, by_model, n_bootstrap, seed, ci)

    categories: list[CategoryResult] = []
    for category in _category_order(rows):
        for m in results:
            scored = [r for r in by_model[m.model]
                      if r["status"] == "scored" and (r.get("category") or UNKNOWN_CATEGORY) == category]
            x = np.array([[r["scores"][d] for d in DIMENSIONS] for r in scored], dtype=float).reshape(-1, 6)
            x = np.column_stack([x, x.mean(axis=1)]) if len(x) else np.empty((0, 7))
            means, bounds = bootstrap_means(x, n_bootstrap, ci, seeded_rng(seed, m.model, category))
            categories.append(CategoryResult(
                category=category, model=m.model, n=len(scored),
                mean={d: _float(means[j]) for j, d in enumerate(DIMENSIONS)},
                overall=_float(means[6]), overall_ci=_interval(bounds[0, 6], bounds[1, 6]),
            ))

    agreements: dict[str, AgreementReport] = {}
    for m in results:
        with_experts = [r for r in by_model[m.model] if r.get("expert_scores")]
        scored = [r for r in with_experts if r["status"] == "scored"]
        if scored:
            agreements[m.model] = agreement(
                [r["scores"] for r in scored], [r["expert_scores"] for r in scored],
                skipped=len(with_experts) - len(scored), n_bootstrap=n_bootstrap, seed=seed, ci=ci,
                label=f"DermBench judge on {m.model}",
            )
    return Leaderboard(models=results, rank_stability=stability, mean_kendall_tau=tau, categories=categories,
                       agreement=agreements, judge=judge, n_bootstrap=n_bootstrap, seed=seed, ci_level=ci,
                       slices=_slices(results, by_model, by, n_bootstrap, seed, ci))


def _slices(results: list[ModelResult], by_model: Mapping[str, list[Mapping[str, Any]]], by: str | None,
            n_bootstrap: int, seed: int, ci: float) -> list[Slices]:
    """Each model's mean judge score per group of ``by`` (skin tone by default), with CIs and the largest gap."""
    present = {k for recs in by_model.values() for r in recs for k, v in r.items() if v is not None}
    column = default_column(sorted(present), by) if by else (DEFAULT_COLUMN if DEFAULT_COLUMN in present else None)
    if column is None:
        return []
    out = []
    for m in results:
        scored = [r for r in by_model[m.model] if r["status"] == "scored"]
        if not scored:
            continue
        x = np.array([[r["scores"][d] for d in DIMENSIONS] for r in scored], dtype=float)
        out.append(slice_table(x, [r.get(column) for r in scored], column=column, statistic="mean score",
                               label=m.model, n_bootstrap=n_bootstrap, seed=seed, ci=ci))
    return out


def competition_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, 1 = highest, ties sharing the better rank ("1, 1, 3"); -inf ranks last."""
    v = np.round(values, 12)  # float noise must not break a tie
    return 1 + (v[..., None, :] > v[..., :, None]).sum(axis=-1)


def _rank_stability(
    results: list[ModelResult],
    by_model: Mapping[str, list[Mapping[str, Any]]],
    n_bootstrap: int,
    seed: int,
    ci: float,
) -> tuple[list[RankStability], float | None]:
    """Re-rank the models on bootstrap resamples of the cases (the same resampled cases for every model)."""
    ranked = [m for m in results if m.overall is not None]
    if not ranked:
        return [], None
    case_ids = sorted({str(r["case_id"]) for m in ranked for r in by_model[m.model] if r["status"] == "scored"})
    column = {c: j for j, c in enumerate(case_ids)}
    overall = np.full((len(ranked), len(case_ids)), np.nan)
    for i, m in enumerate(ranked):
        for r in by_model[m.model]:
            if r["status"] == "scored":
                overall[i, column[str(r["case_id"])]] = sum(r["scores"][d] for d in DIMENSIONS) / len(DIMENSIONS)
    full = np.array([m.overall for m in ranked], dtype=float)
    full_ranks = competition_ranks(full)
    if not n_bootstrap:
        return [RankStability(m.model, int(full_ranks[i]), None, (int(full_ranks[i]),) * 2, None)
                for i, m in enumerate(ranked)], None
    counts = _counts(seeded_rng(seed, "rank-stability"), len(case_ids), n_bootstrap)
    present = ~np.isnan(overall)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ np.where(present, overall, 0.0).T) / (counts @ present.T.astype(float))
    means = np.where(np.isnan(means), -np.inf, means)  # a model with no case in a resample ranks last
    ranks = competition_ranks(means)  # (n_bootstrap, n_models)
    q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
    stability = []
    for i, m in enumerate(ranked):
        lo, hi = np.percentile(ranks[:, i], q, method="nearest")
        stability.append(RankStability(
            model=m.model, rank=int(full_ranks[i]), p_same_rank=float(np.mean(ranks[:, i] == full_ranks[i])),
            rank_interval=(int(lo), int(hi)), p_first=float(np.mean(ranks[:, i] == 1)),
        ))
    tau = None
    if len(ranked) > 1:
        # Kendall's tau-b between each resample's ordering and the full-data ordering (ties allowed).
        a, b = np.triu_indices(len(ranked), k=1)
        s_full = np.sign(np.round(full[a] - full[b], 12))
        with np.errstate(invalid="ignore"):
            s_boot = np.sign(np.round(means[:, a] - means[:, b], 12))
        s_boot = np.nan_to_num(s_boot)  # both models absent from a resample: a tie
        denom = np.sqrt((s_full**2).sum() * (s_boot**2).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            taus = (s_boot * s_full).sum(axis=1) / denom
        taus = taus[np.isfinite(taus)]
        tau = float(taus.mean()) if taus.size else None
    return stability, tau


# --- two evaluators side by side (Table 2's two halves, Figure 6, their agreement) ---------------------------


@dataclass(frozen=True)
class DimensionComparison:
    """How DermEval's scores relate to DermBench's on one dimension, over the (model, case) pairs both scored."""

    dimension: str
    n: int
    pearson: float | None
    spearman: float | None
    mean_difference: float | None  # DermEval minus DermBench
    mean_difference_ci: Interval | None
    mean_absolute_difference: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"dimension": self.dimension, "n": self.n, "pearson": self.pearson, "spearman": self.spearman,
                "mean_difference": self.mean_difference, "mean_difference_ci": _list(self.mean_difference_ci),
                "mean_absolute_difference": self.mean_absolute_difference}


@dataclass(frozen=True)
class EvaluatorComparison:
    """Table 2 for both evaluators, Figure 6 (their average per model and dimension, with CIs) and agreement."""

    dermbench: Leaderboard
    dermeval: Leaderboard
    models: list[str]  # DermBench's ranking order
    average: dict[str, dict[str, float | None]]  # Figure 6: model -> dimension -> mean of per-case averages
    average_ci: dict[str, dict[str, Interval | None]]
    n_paired: dict[str, int]  # model -> cases both evaluators scored
    dimensions: list[DimensionComparison]
    model_rank_tau: float | None  # Kendall's tau-b between the two evaluators' overall model orderings

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "n_paired": self.n_paired,
                "figure6": {m: {"mean": self.average[m], "ci": {d: _list(c) for d, c in self.average_ci[m].items()}}
                            for m in self.models},
                "agreement": [d.to_dict() for d in self.dimensions], "model_rank_tau": self.model_rank_tau,
                "dermbench": self.dermbench.to_dict(), "dermeval": self.dermeval.to_dict()}


def _scored_by_key(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[float]]:
    return {(str(r["model"]), str(r["case_id"])): [float(r["scores"][d]) for d in DIMENSIONS]
            for r in records if r["status"] == "scored"}


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import pearsonr, spearmanr

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    value = (pearsonr if kind == "pearson" else spearmanr)(x, y)[0]
    return _float(float(value))


def compare_evaluators(
    dermbench_records: Iterable[Mapping[str, Any]], dermeval_records: Iterable[Mapping[str, Any]], *,
    n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
) -> EvaluatorComparison:
    """Both halves of Table 2, Figure 6 and the agreement between DermBench (the judge) and DermEval.

    Figure 6 ("computed by averaging DermBench and DermEval scores") averages the two evaluators' scores case by
    case over the cases both scored, so its bootstrap CI resamples cases with both scores kept together.
    Agreement: per dimension, Pearson and Spearman correlation, the mean difference (DermEval minus DermBench)
    with a bootstrap CI, and the mean absolute difference, over every (model, case) pair both scored; and
    Kendall's tau between the two evaluators' model rankings.
    """
    bench_records, eval_records = _check(dermbench_records), _check(dermeval_records)
    bench = build_leaderboard(bench_records, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    dermeval = build_leaderboard(eval_records, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    a, b = _scored_by_key(bench_records), _scored_by_key(eval_records)
    paired = sorted(set(a) & set(b))
    models = [m for m in bench.model_names if m in dermeval.model_names]
    average: dict[str, dict[str, float | None]] = {}
    average_ci: dict[str, dict[str, Interval | None]] = {}
    n_paired: dict[str, int] = {}
    for model in models:
        keys = [k for k in paired if k[0] == model]
        x = np.array([[(a[k][j] + b[k][j]) / 2 for j in range(len(DIMENSIONS))] for k in keys]).reshape(-1, 6)
        means, bounds = bootstrap_means(x, n_bootstrap, ci, seeded_rng(seed, model, "figure6"))
        average[model] = {d: _float(means[j]) for j, d in enumerate(DIMENSIONS)}
        average_ci[model] = {d: _interval(bounds[0, j], bounds[1, j]) for j, d in enumerate(DIMENSIONS)}
        n_paired[model] = len(keys)
    xa = np.array([a[k] for k in paired]).reshape(-1, 6)
    xb = np.array([b[k] for k in paired]).reshape(-1, 6)
    diff_means, diff_bounds = bootstrap_means(xb - xa, n_bootstrap, ci, seeded_rng(seed, "evaluator-difference"))
    dimensions = [DimensionComparison(
        dimension=d, n=len(paired), pearson=_correlation("pearson", xa[:, j], xb[:, j]),
        spearman=_correlation("spearman", xa[:, j], xb[:, j]), mean_difference=_float(diff_means[j]),
        mean_difference_ci=_interval(diff_bounds[0, j], diff_bounds[1, j]),
        mean_absolute_difference=_float(float(np.abs(xb[:, j] - xa[:, j]).mean())) if len(paired) else None,
    ) for j, d in enumerate(DIMENSIONS)]
    tau = None
    overall_a = [next(m.overall for m in bench.models if m.model == name) for name in models]
    overall_b = [next(m.overall for m in dermeval.models if m.model == name) for name in models]
    if len(models) > 1 and None not in overall_a and None not in overall_b:
        from scipy.stats import kendalltau

        tau = _float(float(kendalltau(overall_a, overall_b)[0]))
    return EvaluatorComparison(dermbench=bench, dermeval=dermeval, models=models, average=average,
                               average_ci=average_ci, n_paired=n_paired, dimensions=dimensions, model_rank_tau=tau)
