"""The expert ceiling: how well the experts agree with each other, read beside the model's agreement with them.

"DermEval's MAE against experts is 0.33" means little until one knows how far one expert lies from the others. When a
data set keeps every rater's scores (synthetic cases' ``rater_scores``, the data pipeline's ``ratings``), the ceiling
is measured with the same statistics as the model:

- **raters, leave one out**: each rater's score against the mean of the other raters of that case, pooled over raters
  and cases (a case with fewer than two raters on a dimension takes no part);
- **model**: the model's score against the mean of all raters of the case, on the same cases;
- **ratio model / raters** per dimension and macro-averaged, with a paired percentile bootstrap CI: the model's and the
  raters' statistics are computed on the same resampled cases, so the ratio's interval carries their covariance.

An MAE ratio of 1 says the model is as far from the experts' mean as one expert is from the others'; below 1, closer.
For the agreement coefficients (ICC, alpha, QWK, Spearman) a ratio of 1 says the same, above 1 better. The model is
compared with the mean of all raters while each rater is compared with the mean of one rater fewer, so the model's
reference is slightly less noisy: at equal skill its MAE ratio sits a little under 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dermtrl.agreement.reliability import STATISTICS, Estimate, agreement_statistics, estimate
from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN, canonical_dimension

__all__ = ["RATER_COLUMNS", "Ceiling", "expert_ceiling", "rater_matrix", "record_raters"]

MACRO = "Macro"
#: Where cases keep every rater's scores: synthetic cases, then the data pipeline's records.
RATER_COLUMNS: tuple[str, ...] = ("rater_scores", "ratings")
LABELS = int(SCORE_MAX - SCORE_MIN) + 1


def _table(data: Mapping[str, Mapping[str, Estimate]]) -> dict[str, dict[str, Any]]:
    return {k: {s: e.to_dict() for s, e in v.items()} for k, v in data.items()}


def _untable(data: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Estimate]]:
    return {k: {s: Estimate.from_dict(e) for s, e in v.items()} for k, v in data.items()}


@dataclass(frozen=True)
class Ceiling:
    """Rater-to-rater agreement beside the model's, per dimension and ``"Macro"``, each statistic with its CI."""

    raters: dict[str, dict[str, Estimate]]  # each rater vs the mean of the others
    model: dict[str, dict[str, Estimate]]  # the model vs the mean of all raters, same cases
    ratio: dict[str, dict[str, Estimate]]  # model / raters
    n_cases: dict[str, int]  # per dimension: cases with >= 2 raters and a model score
    n_ratings: dict[str, int]  # per dimension: rater scores compared (leave-one-out pairs)
    raters_per_case: tuple[int, int] = (0, 0)  # fewest and most raters of a case used
    ci_level: float = 0.95
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"raters": _table(self.raters), "model": _table(self.model), "ratio_model_over_raters":
                _table(self.ratio), "n_cases": dict(self.n_cases), "n_ratings": dict(self.n_ratings),
                "raters_per_case": list(self.raters_per_case), "ci_level": self.ci_level, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ceiling:
        return cls(raters=_untable(data["raters"]), model=_untable(data["model"]),
                   ratio=_untable(data["ratio_model_over_raters"]), n_cases=dict(data["n_cases"]),
                   n_ratings=dict(data["n_ratings"]), raters_per_case=tuple(data.get("raters_per_case", (0, 0))),
                   ci_level=float(data.get("ci_level", 0.95)), notes=list(data.get("notes", [])))


def _rater_scores(rater: Any, i: int, r: int) -> Mapping[str, Any]:
    """A rater entry is a mapping of dimension -> score (synthetic ``rater_scores``) or ``{"rater_id", "scores"}``
    (the pipeline's ``ratings``)."""
    if isinstance(rater, Mapping) and isinstance(rater.get("scores"), Mapping):
        return rater["scores"]
    if isinstance(rater, Mapping):
        return rater
    raise ValueError(f"raters row {i}, rater {r}: expected a mapping of dimension -> score, got {rater!r}")


def record_raters(records: Sequence[Mapping[str, Any]]) -> list[Any] | None:
    """Each record's raters (``rater_scores`` or ``ratings``), for ``agreement(..., raters=...)``; ``None`` when no
    record carries any, so a report without raters simply has no ceiling."""
    raters = [next((r[c] for c in RATER_COLUMNS if r.get(c)), None) for r in records]
    return raters if any(raters) else None


def rater_matrix(raters: Sequence[Sequence[Any] | None]) -> np.ndarray:
    """(cases, most raters, 6) scores, NaN where a case has fewer raters or a rater skipped a dimension."""
    width = max((len(r) for r in raters if r), default=0)
    cube = np.full((len(raters), width, len(DIMENSIONS)), np.nan)
    columns: dict[str, int] = {}  # dimension spelling -> column, resolved once
    for i, row in enumerate(raters):
        for r, rater in enumerate(row or ()):
            for key, value in _rater_scores(rater, i, r).items():
                if key not in columns:
                    try:
                        columns[key] = DIMENSIONS.index(canonical_dimension(key))
                    except KeyError:
                        raise ValueError(f"raters row {i}, rater {r}: unknown dimension {key!r}") from None
                j = columns[key]
                if value is None:
                    continue
                ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                if not ok or not math.isfinite(float(value)) or not SCORE_MIN <= float(value) <= SCORE_MAX:
                    raise ValueError(f"raters row {i}, rater {r}, dimension {DIMENSIONS[j]!r}: score {value!r} is "
                                     f"not a number in [{SCORE_MIN:g}, {SCORE_MAX:g}]")
                cube[i, r, j] = float(value)
    return cube


def _pairs(cube: np.ndarray, j: int, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out pairs on dimension ``j``: (case index, the rater's score, the mean of the case's other raters)."""
    scores = cube[:, :, j]
    present = np.isfinite(scores)
    count = present.sum(axis=1)
    total = np.where(present, scores, 0.0).sum(axis=1)
    case, rater = np.nonzero(present & eligible[:, None])
    own = scores[case, rater]
    others = (total[case] - own) / (count[case] - 1)
    return case, own, others


def expert_ceiling(used: np.ndarray, raters: Sequence[Sequence[Any] | None], counts: np.ndarray | None, *,
                   ci: float = 0.95) -> Ceiling | None:
    """The ceiling for model scores ``used`` ((cases, 6), NaN where missing, as the report scores them) and each
    case's raters; ``counts`` are the report's bootstrap case counts (``None``: no CIs). ``None`` when no case has
    two raters."""
    cube = rater_matrix(raters)
    if cube.shape[1] < 2:
        return None
    n_raters = np.isfinite(cube).sum(axis=1)  # (cases, 6)
    weights = np.ones((1, len(used))) if counts is None else np.vstack([np.ones((1, len(used))), counts])
    n_cases: dict[str, int] = {}
    n_ratings: dict[str, int] = {}
    per_dim: dict[str, list[dict[str, np.ndarray]]] = {"raters": [], "model": []}
    for j, dim in enumerate(DIMENSIONS):
        eligible = (n_raters[:, j] >= 2) & np.isfinite(used[:, j])
        n_cases[dim] = int(eligible.sum())
        mean_all = np.where(eligible, np.nanmean(np.where(eligible[:, None], cube[:, :, j], 0.0), axis=1), 0.0)
        model_x = np.where(eligible, used[:, j], 0.0)
        per_dim["model"].append(agreement_statistics(model_x, mean_all, weights * eligible, LABELS))
        case, own, others = _pairs(cube, j, eligible)
        n_ratings[dim] = int(case.size)
        per_dim["raters"].append(agreement_statistics(own, others, weights[:, case], LABELS))
    if not any(n_cases.values()):
        return None
    out: dict[str, dict[str, dict[str, Estimate]]] = {"raters": {}, "model": {}, "ratio": {}}
    for key in (*DIMENSIONS, MACRO):
        for side in ("raters", "model"):
            out[side][key] = {}
        out["ratio"][key] = {}
        for s in STATISTICS:
            if key == MACRO:
                values = {side: np.mean([d[s] for d in per_dim[side]], axis=0) for side in ("raters", "model")}
            else:
                j = DIMENSIONS.index(key)
                values = {side: per_dim[side][j][s] for side in ("raters", "model")}
            with np.errstate(invalid="ignore", divide="ignore"):
                values["ratio"] = values["model"] / values["raters"]
            for side, v in values.items():
                out[side][key][s] = estimate(v[0], v[1:] if counts is not None else None, ci)
    used_counts = n_raters[n_raters >= 2]
    return Ceiling(raters=out["raters"], model=out["model"], ratio=out["ratio"], n_cases=n_cases,
                   n_ratings=n_ratings, raters_per_case=(int(used_counts.min()), int(used_counts.max())),
                   ci_level=float(ci))
