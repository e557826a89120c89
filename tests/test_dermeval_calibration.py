"""DermEval with a calibration file beside its adapter: every evaluation carries intervals at the chosen coverage and
marks the wide ones uncertain; without the file there are no intervals, never made-up ones."""

from __future__ import annotations

import shutil

import pytest

from dermtrl.agreement.calibration import CALIBRATION_FILE, Calibration, fit
from dermtrl.cases.synthetic import generate_case
from dermtrl.dimensions import DIMENSIONS


@pytest.fixture(scope="module")
def case():
    return generate_case(200_000, seed=0)


def test_intervals_come_from_the_adapters_calibration_file(demo_adapter, tmp_path, case):
    from dermtrl import DermEval

    adapter = tmp_path / "adapter"
    shutil.copytree(demo_adapter, adapter)
    (adapter / CALIBRATION_FILE).unlink(missing_ok=True)  # the shipped demo adapter has one
    plain = DermEval.from_pretrained(adapter=str(adapter)).evaluate(case["image"], case["narrative"])
    assert plain.intervals == {} and plain.uncertain == [] and plain.coverage is None

    # a calibration whose quantile is 0.5 for every dimension but Safety, where it is large: Safety is uncertain
    quantiles = {d: {"0.8": 0.4, "0.9": 0.5, "0.95": 0.7} for d in DIMENSIONS}
    quantiles["Safety"] = {"0.8": 30.0, "0.9": 40.0, "0.95": 50.0}
    Calibration(quantiles=quantiles, n=dict.fromkeys(DIMENSIONS, 50), dataset={"name": "test"}).save(adapter)
    evaluator = DermEval.from_pretrained(adapter=str(adapter))
    result = evaluator.evaluate(case["image"], case["narrative"])
    assert result.coverage == 0.9 and set(result.intervals) == set(result.expected)
    for dim, (low, high) in result.intervals.items():
        assert 0 <= low <= result.expected[dim] <= high <= 5
        if dim != "Safety":
            assert high - low == pytest.approx(min(5, result.expected[dim] + 0.5 * (result.spread[dim] + 0.1))
                                               - max(0, result.expected[dim] - 0.5 * (result.spread[dim] + 0.1)))
    assert result.uncertain == ["Safety"] and result.intervals["Safety"] == (0.0, 5.0)
    assert result.to_dict()["uncertain"] == ["Safety"] and result.to_dict()["coverage"] == 0.9

    with pytest.raises(ValueError, match="no quantile .* coverage 0.5"):
        DermEval.from_pretrained(adapter=str(adapter), coverage=0.5)
    elsewhere = tmp_path / "other.json"
    shutil.move(str(adapter / CALIBRATION_FILE), elsewhere)
    explicit = DermEval.from_pretrained(adapter=str(adapter), calibration=str(elsewhere), coverage=0.95)
    assert explicit.evaluate(case["image"], case["narrative"]).coverage == 0.95


def test_fit_then_intervals_cover_the_calibration_cases_at_the_nominal_rate():
    """On the calibration cases themselves split conformal covers at least the nominal share (by construction)."""
    records = []
    for i in range(40):
        expected = {d: 2.0 + (i % 5) * 0.5 for d in DIMENSIONS}
        spread = {d: 0.2 + (i % 3) * 0.1 for d in DIMENSIONS}
        expert = {d: expected[d] + ((-1) ** i) * (i % 7) * 0.15 for d in DIMENSIONS}
        records.append({"expected": expected, "spread": spread, "expert_scores": expert})
    calibration = fit(records)
    inside = sum(all(lo <= r["expert_scores"][d] <= hi
                     for d, (lo, hi) in calibration.intervals(r["expected"], r["spread"], 0.9).items())
                 for r in records)
    assert inside / len(records) >= 0.9


def test_calibrate_command_fits_on_validation_and_score_shows_intervals(demo_adapter, tmp_path, case, capsys):
    """`dermtrl calibrate` evaluates validation cases, writes calibration.json beside the adapter (with the data's
    split and fingerprint), and `dermtrl score` then prints intervals."""
    import json

    from dermtrl.cli import main

    adapter = tmp_path / "adapter"
    shutil.copytree(demo_adapter, adapter)
    assert main(["calibrate", "--adapter", str(adapter), "--dataset", "dermtrl:synthetic", "--n", "12"]) == 0
    saved = json.loads((adapter / CALIBRATION_FILE).read_text())
    assert saved["dataset"]["split"] == "validation" and saved["dataset"]["fingerprint"]
    assert set(saved["quantiles"]) == set(DIMENSIONS) and set(saved["quantiles"]["Safety"]) == {"0.8", "0.9", "0.95"}
    assert (adapter / "calibration-records.jsonl").is_file()
    capsys.readouterr()
    image = tmp_path / "case.png"
    case["image"].save(image)
    assert main(["score", str(image), case["narrative"], "--adapter", str(adapter), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["coverage"] == 0.9 and set(result["intervals"]) <= set(DIMENSIONS) and result["intervals"]
    assert main(["score", str(image), case["narrative"], "--adapter", str(adapter)]) == 0
    table = capsys.readouterr().out
    assert "Interval" in table and "calibrated on validation cases" in table
    uncalibrated = tmp_path / "uncalibrated"
    shutil.copytree(demo_adapter, uncalibrated)
    (uncalibrated / CALIBRATION_FILE).unlink(missing_ok=True)  # the shipped demo adapter has one
    assert main(["score", str(image), case["narrative"], "--adapter", str(uncalibrated)]) == 0
    assert "No calibration file beside this adapter" in capsys.readouterr().out
    assert main(["calibrate", "--adapter", "owner/not-here", "--dataset", "dermtrl:synthetic", "--n", "2"]) == 2


def test_calibrate_out_is_a_json_file_or_a_folder(tmp_path):
    from dermtrl.cli.dispatch import calibration_target

    assert calibration_target(None, str(tmp_path / "adapter")) == tmp_path / "adapter" / CALIBRATION_FILE
    assert calibration_target(str(tmp_path / "cal.json"), "owner/adapter") == tmp_path / "cal.json"
    # a name without .json is a folder (made on writing), never a file called "calibrated"
    folder = tmp_path / "calibrated"
    assert calibration_target(str(folder), "owner/adapter") == folder / CALIBRATION_FILE
    (tmp_path / "odd.json").mkdir()
    assert calibration_target(str(tmp_path / "odd.json"), "owner/adapter") == tmp_path / "odd.json" / CALIBRATION_FILE
