"""Split conformal intervals on DermEval's score distributions: the quantile by hand, coverage on held-out cases,
the calibration file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermtrl.agreement.calibration import Calibration, _quantile, coverage_lines, coverage_report, ece, fit
from dermtrl.dimensions import DIMENSIONS


def _records(n: int, seed: int, scale: float = 1.3) -> list[dict]:
    """Records whose expert score lies around the expected score, further where the spread is larger."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        expected = rng.uniform(0.5, 4.5, len(DIMENSIONS))
        spread = rng.uniform(0.05, 1.0, len(DIMENSIONS))
        expert = np.clip(expected + scale * spread * rng.standard_normal(len(DIMENSIONS)), 0, 5)
        out.append({"expected": dict(zip(DIMENSIONS, expected.round(4), strict=True)),
                    "spread": dict(zip(DIMENSIONS, spread.round(4), strict=True)),
                    "expert_scores": dict(zip(DIMENSIONS, expert, strict=True)), "scores": {}})
    return out


def test_conformal_quantile_by_hand():
    scores = np.arange(1.0, 10.0)  # n = 9
    assert _quantile(scores, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert _quantile(scores, 0.5) == 5.0
    assert _quantile(scores, 0.95) == float("inf")  # ceil(9.5) = 10 > 9: the whole scale


def test_coverage_on_held_out_cases_is_within_three_points_of_nominal():
    calibration = fit(_records(600, seed=1), dataset={"fingerprint": "val"})
    rows = coverage_report(calibration, _records(600, seed=2), n_bootstrap=200)
    for row in rows:
        assert abs(row.coverage.value - row.nominal) <= 0.03, (row.nominal, row.coverage)
        assert row.coverage.ci[0] <= row.coverage.value <= row.coverage.ci[1]
        assert row.n_scores == 600 * len(DIMENSIONS)
    widths = [r.width.value for r in rows]
    assert widths == sorted(widths) and 0 < widths[0] < 5  # wider for higher coverage, never the whole scale
    assert rows[-1].uncertain.value >= rows[0].uncertain.value
    line = coverage_lines(rows)[1]
    assert line.startswith(f"90% intervals: measured coverage {rows[1].coverage.value:.3f} [") and "3600 expert" in line


def test_intervals_follow_the_spread_and_stay_on_the_scale():
    calibration = fit(_records(300, seed=3))
    sure = calibration.interval("Safety", 2.0, 0.1)
    unsure = calibration.interval("Safety", 2.0, 0.9)
    assert unsure[1] - unsure[0] > sure[1] - sure[0] > 0
    assert calibration.interval("Safety", 4.9, 2.0, coverage=0.95)[1] == 5.0
    both = calibration.intervals({"Safety": 2.0, "Accuracy": 3.0}, {"Safety": 0.1})
    assert list(both) == ["Safety"] and both["Safety"] == sure
    with pytest.raises(ValueError, match=r"no quantile for 'Safety' at coverage 0.5 \(fitted: 0.8, 0.9, 0.95\)"):
        calibration.interval("Safety", 2.0, 0.1, coverage=0.5)


def test_calibration_file_round_trip_and_refusals(tmp_path):
    calibration = fit(_records(5, seed=4), dataset={"name": "synthetic", "split": "validation", "fingerprint": "f1"})
    path = calibration.save(tmp_path)
    assert path.name == "calibration.json"
    data = json.loads(path.read_text())
    assert data["quantiles"]["Safety"]["0.95"] == "inf" and data["method"].startswith("split conformal")
    assert Calibration.load(tmp_path, fingerprint="f1") == calibration
    with pytest.raises(ValueError, match="fingerprint 'f1', not 'other'"):
        Calibration.load(tmp_path, fingerprint="other")
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="calibration version 99"):
        Calibration.load(path)


def test_fit_refuses_records_without_distributions():
    records = [{"scores": {}, "expert_scores": dict.fromkeys(DIMENSIONS, 2.0)}]
    with pytest.raises(ValueError, match="no record has an expected score and a spread for 'Accuracy'"):
        fit(records)
    with pytest.raises(ValueError, match="coverages must be in"):
        fit(_records(5, seed=0), coverages=[1.0])


def test_benchmark_reports_coverage_selective_curve_and_targets_last(load_benchmark, tmp_path, monkeypatch):
    from rich.console import Console

    bench = load_benchmark("calibration")
    for name, seed in (("val", 5), ("test", 6)):
        with (tmp_path / f"{name}.jsonl").open("w") as fh:
            for i, r in enumerate(_records(300, seed=seed)):
                scores = {d: round(v) for d, v in r["expected"].items()}
                fh.write(json.dumps({**r, "case_id": f"{name}{i}", "scores": scores}) + "\n")
    log = tmp_path / "log.txt"
    with log.open("w") as fh:
        monkeypatch.setattr(bench, "Console", lambda **kwargs: Console(file=fh, width=160))
        assert bench.main(["--validation-records", str(tmp_path / "val.jsonl"), "--test-records",
                           str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "out"), "--n-bootstrap", "100"]) == 0
    text = log.read_text().strip().splitlines()
    assert all(line.startswith("Target: coverage at") for line in text[-3:])  # targets last
    assert any("Abstaining on the uncertain 90% intervals" in line for line in text)
    assert any("Expected calibration error of the confidence the Space shows" in line for line in text)
    result = json.loads((tmp_path / "out" / "calibration_report.json").read_text())
    assert [t["met"] for t in result["targets"]] == [abs(c["coverage"]["value"] - c["nominal"]) <= 0.03
                                                     for c in result["coverage"]]
    assert len(result["risk_coverage"]) == 6 and (tmp_path / "out" / "calibration.json").is_file()


def test_expected_calibration_error_by_hand():
    # two bands: 3 scores claimed at 90% and hit 70% of the time, 1 claimed at 60% and hit 60%: (3 * 0.2 + 0) / 4
    assert ece([0.9, 0.6], [0.7, 0.6], [3, 1]) == pytest.approx(0.15)
    # nominal coverages against measured ones, equally weighted: (0.02 + 0.03 + 0) / 3
    assert ece([0.8, 0.9, 0.95], [0.78, 0.93, 0.95]) == pytest.approx(0.05 / 3)
    assert ece([0.8, 0.9], [0.8, 0.9]) == 0.0  # every claim holds as often as it says
    # an empty band (no scores, NaN rate) is left out, not counted as a gap
    assert ece([0.9, float("nan")], [0.5, float("nan")], [2, 0]) == pytest.approx(0.4)
    assert np.isnan(ece([float("nan")], [0.5]))
    with pytest.raises(ValueError, match="differ in shape"):
        ece([0.9, 0.8], [0.5])
