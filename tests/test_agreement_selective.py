"""Selective prediction: abstaining on uncertain scores, and the MAE of the surest share at each coverage."""

from __future__ import annotations

import numpy as np
import pytest

from dermtrl.agreement.selective import record_matrices, risk_coverage, selective_prediction
from dermtrl.dimensions import DIMENSIONS


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Errors that grow with the uncertainty: the uncertain half is off by 2, the sure half by 0 or 1."""
    rng = np.random.default_rng(seed)
    spread = rng.uniform(0, 1, (n, len(DIMENSIONS)))
    errors = np.where(spread > 0.5, 2.0, rng.integers(0, 2, (n, len(DIMENSIONS))).astype(float))
    return errors, spread


def test_abstaining_by_hand():
    errors = np.array([[0, 1, 2, 3, 0, 0], [2, 2, np.nan, 0, 0, 0]], dtype=float)
    uncertain = np.zeros_like(errors, dtype=bool)
    uncertain[0, 3] = uncertain[1, 0] = uncertain[1, 2] = True  # the missing score marked too: not counted
    s = selective_prediction(errors, uncertain, n_bootstrap=0)
    assert s.n_scores == 11 and s.share_uncertain.value == pytest.approx(2 / 11)
    assert s.mae_all.value == pytest.approx(10 / 11) and s.mae_kept.value == pytest.approx(5 / 9)
    assert s.difference.value == pytest.approx(5 / 9 - 10 / 11) and s.difference.ci is None


def test_abstaining_lowers_the_error_when_uncertainty_tracks_it():
    errors, spread = _data()
    s = selective_prediction(errors, spread > 0.8, n_bootstrap=300)
    assert s.difference.ci[1] < 0 and "abstaining lowers the error" in s.line()
    rng = np.random.default_rng(1)
    unrelated = selective_prediction(errors, rng.uniform(0, 1, errors.shape) > 0.8, n_bootstrap=300)
    assert unrelated.difference.ci[0] < 0 < unrelated.difference.ci[1]


def test_risk_coverage_curve():
    errors, spread = _data()
    curve = risk_coverage(errors, spread, n_bootstrap=200)
    assert [p.coverage for p in curve] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]
    assert curve[0].mae.value == pytest.approx(errors.mean()) and curve[0].difference.value == 0
    half = curve[-1]  # the surer half holds (almost) only errors of 0 or 1
    kept = errors[spread <= half.threshold]
    assert half.mae.value == pytest.approx(kept.mean()) and half.mae.value < 0.6
    assert half.difference.ci[1] < 0
    maes = [p.mae.value for p in curve]
    assert maes == sorted(maes, reverse=True)
    with pytest.raises(ValueError, match=r"coverages must be in \(0, 1\]"):
        risk_coverage(errors, spread, [0.0])
    with pytest.raises(ValueError, match="uncertainty must have the shape of errors"):
        risk_coverage(errors, spread[:3])


def test_record_matrices_read_spread_and_skip_errors():
    scores = dict.fromkeys(DIMENSIONS, 3.0)
    records = [{"scores": scores, "expert_scores": dict.fromkeys(DIMENSIONS, 2.0), "spread": {"Safety": 0.4}},
               {"error": "image: broken", "expert_scores": dict.fromkeys(DIMENSIONS, 2.0)}]
    errors, spread = record_matrices(records)
    assert errors.shape == (1, 6) and errors[0, 0] == 1.0
    assert spread[0, DIMENSIONS.index("Safety")] == 0.4 and np.isnan(spread[0, 0])
    with pytest.raises(ValueError, match="no record carries expert scores"):
        record_matrices(records[1:])
