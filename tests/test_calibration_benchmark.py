"""benchmarks/calibration.py's expected calibration error: the Space's former spread bands against its calibrated
intervals, on records built here whose every number can be worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dermtrl.agreement.calibration import Calibration
from dermtrl.dimensions import DIMENSIONS


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _record(score: float, expected: float, spread: float, expert: float, **extra: Any) -> dict:
    """A DermEval record that scored Accuracy only (the other five missing, as a truncated answer leaves them)."""
    return {"scores": {"Accuracy": score}, "expected": {"Accuracy": expected}, "spread": {"Accuracy": spread},
            "expert_scores": {"Accuracy": expert}, **extra}


def _calibration(q: float) -> Calibration:
    return Calibration(quantiles={d: {"0.8": q, "0.9": q, "0.95": q} for d in DIMENSIONS},
                       n=dict.fromkeys(DIMENSIONS, 50))


def test_own_probability_is_the_digits_mass_under_the_models_distribution(load_benchmark: Any) -> None:
    bench = load_benchmark("calibration")
    got = bench.own_probability(np.array([4.0, 4.0, 5.0, 0.0, 3.0, np.nan]),
                                np.array([4.0, 4.0, 5.0, 0.0, 3.6, 2.0]), np.array([0.0, 0.5, 0.5, 0.5, 0.3, 0.1]))
    want = [1.0, _phi(1) - _phi(-1), 1 - _phi(-1), _phi(1), _phi(-0.1 / 0.3) - _phi(-1.1 / 0.3)]
    assert got[:5] == pytest.approx(want) and np.isnan(got[5])  # 5 and 0 own the mass beyond the scale's ends


def test_calibration_error_before_and_after_by_hand(load_benchmark: Any) -> None:
    """Three scores: two "high" (spread 0, claimed 100%), one right and one wrong; one "medium" (spread 0.5, claimed
    68.3%), right. Intervals expected +/- 1 * (spread + 0.1) hold 2 of the 3 expert scores at every level."""
    bench = load_benchmark("calibration")
    records = [_record(4, 4.0, 0.0, 4.0), _record(4, 4.0, 0.0, 2.0), _record(3, 3.0, 0.5, 3.2),
               _record(1, 1.0, 0.1, 1.0, error="parse failed"),  # failed records are left out, as everywhere
               {"scores": {"Accuracy": 2}, "expected": {"Accuracy": 2.0}, "spread": {"Accuracy": 0.1}}]  # no experts
    result = bench.calibration_error(_calibration(1.0), records, n_bootstrap=0)
    medium = _phi(1) - _phi(-1)
    assert result["bands"] == [
        {"band": "high", "n_scores": 2, "implied_confidence": 1.0, "observed": 0.5},
        {"band": "medium", "n_scores": 1, "implied_confidence": pytest.approx(medium), "observed": 1.0},
        {"band": "low", "n_scores": 0, "implied_confidence": None, "observed": None}]
    before = (2 * 0.5 + 1 * (1 - medium)) / 3
    after = (abs(0.8 - 2 / 3) + abs(0.9 - 2 / 3) + abs(0.95 - 2 / 3)) / 3
    assert result["before"].value == pytest.approx(before) and result["before"].ci is None
    assert result["after"].value == pytest.approx(after)
    assert result["difference"].value == pytest.approx(after - before)
    assert [lv["measured"] for lv in result["levels"]] == pytest.approx([2 / 3] * 3)


def _synthetic_records(n: int, seed: int) -> list[dict]:
    """Records whose expert score lies around the expected score, further where the spread is larger."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        expected = rng.uniform(0.5, 4.5, len(DIMENSIONS))
        spread = rng.uniform(0.05, 1.2, len(DIMENSIONS))
        expert = np.clip(expected + 1.3 * spread * rng.standard_normal(len(DIMENSIONS)), 0, 5)
        written = np.rint(expected).astype(int).tolist()
        out.append({"case_id": f"c{seed}-{i}", "scores": dict(zip(DIMENSIONS, written, strict=True)),
                    "expected": dict(zip(DIMENSIONS, expected.round(4).tolist(), strict=True)),
                    "spread": dict(zip(DIMENSIONS, spread.round(4).tolist(), strict=True)),
                    "expert_scores": dict(zip(DIMENSIONS, expert.tolist(), strict=True))})
    return out


def test_the_report_prints_both_eces_with_cis_and_write_docs_writes_that_report(
        load_benchmark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    bench = load_benchmark("calibration")
    paths = {}
    for name, seed in (("validation", 11), ("test", 12)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in _synthetic_records(20, seed)))
    written: list[tuple[str, str, str]] = []
    monkeypatch.setattr(bench, "write_console_docs",
                        lambda name, title, console: written.append((name, title, console.export_text())))
    monkeypatch.setattr(bench, "Console", lambda **kwargs: Console(**{**kwargs, "width": 140}))
    args = ["--validation-records", str(paths["validation"]), "--test-records", str(paths["test"]),
            "--out", str(tmp_path / "out"), "--n-bootstrap", "50"]
    assert bench.main(args) == 0 and written == []  # no --write-docs: the docs page is not touched
    report = json.loads((tmp_path / "out" / "calibration_report.json").read_text())["calibration_error"]
    for key in ("before", "after"):
        value, (low, high) = report[key]["value"], report[key]["ci"]
        assert 0 <= low <= high <= 1 and 0 <= value <= 1
    assert [b["band"] for b in report["bands"]] == ["high", "medium", "low"]
    assert sum(b["n_scores"] for b in report["bands"]) == 20 * len(DIMENSIONS)
    assert bench.main([*args, "--write-docs"]) == 0
    [(name, title, text)] = written
    assert name == "calibration" and "ECE" in title
    assert "Expected calibration error" in text and "before: spread bands" in text and "after - before" in text
    assert text.strip().splitlines()[-1].startswith("Target: coverage at 95%")  # the section ends with the targets
