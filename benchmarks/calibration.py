"""Do DermEval's calibrated intervals cover the experts' scores as often as they claim?

Fits the split conformal predictor of ``dermtrl.agreement.calibration`` on validation cases only, then measures
on test cases:

- the share of expert scores inside their interval at 80, 90 and 95% nominal coverage, with a bootstrap CI over
  cases, the mean interval width and the share of intervals 3 or more points wide ("uncertain");
- selective prediction: the MAE of the scores left after abstaining on the uncertain ones (90% intervals) against
  the MAE of all, and the risk-coverage curve by DermEval's spread, each with a paired CI;
- the expected calibration error (ECE) of the confidence the Space showed before and after its intervals were
  calibrated, with a paired bootstrap CI over cases. **Before**: the spread bands "high" (spread below 0.3),
  "medium" (below 0.8) and "low"; the old page said they came from the model's own probabilities for each score
  digit, so a band claims the model's own probability that its score is the experts' rounded score, averaged over
  the scores the band labels (read from the score-digit distribution's mean and spread as a normal), against the
  observed share of scores equal to the experts' rounded score. **After**: the calibrated intervals, each nominal
  coverage (80, 90, 95%) against the measured one. ECE weighs each band (or level) by its share of the scores;
  0 means every claim holds as often as it says;

and prints its targets last: measured coverage within 3 points of nominal at each level.

    # score the synthetic validation and test cases with an adapter, then calibrate and measure
    python benchmarks/calibration.py --adapter outputs/demo-sft --n 600
    # or reuse records of earlier `dermtrl eval` runs (validation and test cases)
    python benchmarks/calibration.py --validation-records val/evaluations.jsonl --test-records test/evaluations.jsonl
    # and replace the calibration section of docs/source/benchmarks.md with the tables printed
    python benchmarks/calibration.py --adapter outputs/demo-sft --n 600 --write-docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)

from dermtrl.agreement.calibration import (  # noqa: E402
    COVERAGES,
    UNCERTAIN_WIDTH,
    Calibration,
    coverage_report,
    ece,
    fit,
    score_matrices,
)
from dermtrl.agreement.reliability import Estimate, bootstrap_counts, estimate, round_half_up  # noqa: E402
from dermtrl.agreement.selective import record_matrices, risk_coverage, selective_prediction  # noqa: E402
from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN  # noqa: E402
from dermtrl.jsonl import read_records  # noqa: E402

TOLERANCE = 0.03  # measured coverage within 3 points of nominal
#: The confidence bands the Space showed before its intervals were calibrated: a spread (the standard deviation of
#: the model's score-digit probabilities) below 0.3 read "high", below 0.8 "medium", anything wider "low".
FORMER_BANDS: tuple[tuple[float, str], ...] = ((0.3, "high"), (0.8, "medium"), (float("inf"), "low"))


def written_scores(records: list[dict]) -> np.ndarray:
    """(cases, 6) scores the model wrote, for the records :func:`score_matrices` keeps, in its order; NaN where
    missing."""
    kept = [r for r in records if r.get("expert_scores") and "error" not in r]
    return np.array([[np.nan if (v := (r.get("scores") or {}).get(d)) is None else float(v) for d in DIMENSIONS]
                     for r in kept]).reshape(len(kept), len(DIMENSIONS))


def own_probability(score: np.ndarray, expected: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """The model's own probability that its written score is the experts' rounded score: the mass its score-digit
    distribution puts on that digit, read as a normal with the distribution's mean (``expected``) and standard
    deviation (``spread``) whose mass below 0.5 belongs to 0 and above 4.5 to 5. NaN where an input is missing."""
    from scipy.special import ndtr

    digit = round_half_up(score)
    low = np.where(digit <= SCORE_MIN, -np.inf, digit - 0.5)
    high = np.where(digit >= SCORE_MAX, np.inf, digit + 0.5)
    sd = np.maximum(spread, 1e-9)  # a certain model: all its mass on one digit
    with np.errstate(invalid="ignore"):
        mass = ndtr((high - expected) / sd) - ndtr((low - expected) / sd)
    return np.where(np.isfinite(score) & np.isfinite(expected) & np.isfinite(spread), mass, np.nan)


def _bands(spread: np.ndarray) -> list[np.ndarray]:
    """One boolean matrix per former band: the scores it labelled."""
    taken = np.zeros(spread.shape, dtype=bool)
    out = []
    for bound, _ in FORMER_BANDS:
        with np.errstate(invalid="ignore"):
            mask = np.isfinite(spread) & (spread < bound) & ~taken
        out.append(mask)
        taken |= mask
    return out


def calibration_error(calibration: Calibration, records: list[dict], *, coverages: tuple[float, ...] = COVERAGES,
                      n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """ECE of the former spread bands (before) and of the calibrated intervals (after) on test records, each with a
    percentile bootstrap CI over cases, and their paired difference (after - before, same resampled cases)."""
    expected, spread, expert = score_matrices(records)
    if not len(expert):
        raise ValueError("calibration error: no record carries expert scores")
    written = written_scores(records)
    weights = np.ones((1, len(expert)))
    if n_bootstrap:
        weights = np.vstack([weights, bootstrap_counts(len(expert), n_bootstrap, seed)])
    claimed = own_probability(written, expected, spread)
    usable = np.isfinite(claimed) & np.isfinite(expert)
    hit = usable & (round_half_up(np.where(usable, written, 0)) == round_half_up(np.where(usable, expert, 0)))
    n_band, c_band, h_band = [], [], []
    for mask in _bands(spread):
        mask = mask & usable
        n_band.append(weights @ mask.sum(axis=1))
        c_band.append(weights @ np.where(mask, claimed, 0.0).sum(axis=1))
        h_band.append(weights @ (mask & hit).sum(axis=1))
    n_b, c_b, h_b = (np.stack(x, axis=1) for x in (n_band, c_band, h_band))  # (1 + B, bands)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_b, obs_b = c_b / n_b, h_b / n_b
    before = np.array([ece(conf_b[k], obs_b[k], n_b[k]) for k in range(len(weights))])

    measured = []
    for nominal in coverages:
        low, high = calibration.bounds(expected, spread, nominal)
        scored = np.isfinite(low) & np.isfinite(expert)
        inside = scored & (expert >= low) & (expert <= high)
        with np.errstate(invalid="ignore", divide="ignore"):
            measured.append((weights @ inside.sum(axis=1)) / (weights @ scored.sum(axis=1)))
    measured_m = np.stack(measured, axis=1)  # (1 + B, levels)
    after = np.array([ece(list(coverages), measured_m[k]) for k in range(len(weights))])

    boot = n_bootstrap > 0

    def est(values: np.ndarray) -> Estimate:
        return estimate(values[0], values[1:] if boot else None, ci)

    bands = [{"band": name, "n_scores": int(n_b[0, j]), "implied_confidence": _finite(conf_b[0, j]),
              "observed": _finite(obs_b[0, j])} for j, (_, name) in enumerate(FORMER_BANDS)]
    levels = [{"nominal": float(c), "measured": _finite(measured_m[0, j])} for j, c in enumerate(coverages)]
    return {"before": est(before), "after": est(after), "difference": est(after - before), "bands": bands,
            "levels": levels}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _fmt(e: Estimate, digits: int = 3, sign: str = "") -> str:
    if e.value is None:
        return "n/a"
    ci = "" if e.ci is None else f" [{e.ci[0]:{sign}.{digits}f}, {e.ci[1]:{sign}.{digits}f}]"
    return f"{e.value:{sign}.{digits}f}{ci}"


def _records(args: argparse.Namespace, console: Console) -> tuple[list[dict], list[dict]]:
    if args.validation_records and args.test_records:
        return read_records(args.validation_records), read_records(args.test_records)
    if not args.adapter:
        raise SystemExit("give --adapter, or both --validation-records and --test-records")
    from _shared import TEST_START, VALIDATION_START, evaluate_resuming

    from dermtrl.cases.loading import load_cases

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    found = []
    for name, start in (("validation", VALIDATION_START), ("test", TEST_START)):
        console.print(f"DermEval on {args.n} synthetic {name} cases (from index {start})")
        cases = load_cases("dermtrl:synthetic", n=args.n, start=start, seed=args.seed)
        found.append(evaluate_resuming(args.adapter, cases, out / f"{name}.jsonl", fresh=args.fresh))
    return found[0], found[1]


def report(console: Console, calibration: Calibration, test: list[dict], *, n_bootstrap: int, seed: int,
           out: Path) -> dict:
    """Coverage, widths, selective prediction and the targets; written to ``out/calibration_report.json``."""
    rows = coverage_report(calibration, test, n_bootstrap=n_bootstrap, seed=seed)
    table = Table(title=f"Conformal intervals on {len(score_matrices(test)[2])} test cases (fit on validation only)")
    for name in ("Nominal", "Measured coverage [95% CI]", "Mean width", f"Share >= {UNCERTAIN_WIDTH:g} points wide"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(f"{r.nominal:.0%}", _fmt(r.coverage), _fmt(r.width, 2), _fmt(r.uncertain))
    console.print(table)

    errors, spread = record_matrices(test)
    expected, spread_cal, _ = score_matrices(test)
    low, high = calibration.bounds(expected, spread_cal, 0.9)
    selective = selective_prediction(errors, np.isfinite(low) & (high - low >= UNCERTAIN_WIDTH),
                                     n_bootstrap=n_bootstrap, seed=seed)
    console.print("Abstaining on the uncertain 90% intervals: " + selective.line())
    curve = risk_coverage(errors, spread, n_bootstrap=n_bootstrap, seed=seed)
    table = Table(title="Selective prediction by DermEval's spread: the surest share of the scores")
    for name in ("Scores kept", "MAE [95% CI]", "Kept - all [paired CI]"):
        table.add_column(name, justify="right")
    for p in curve:
        table.add_row(f"{p.coverage:.0%}", _fmt(p.mae), _fmt(p.difference, sign="+"))
    console.print(table)

    errors_ece = calibration_error(calibration, test, n_bootstrap=n_bootstrap, seed=seed)
    table = Table(title="Expected calibration error of the confidence the Space shows (lower is better)")
    for name in ("Space", "Claims", "ECE [95% CI]"):
        table.add_column(name, justify="left" if name != "ECE [95% CI]" else "right")
    bands = ", ".join(f"{b['band']} {_pct(b['implied_confidence'])} claimed / {_pct(b['observed'])} observed "
                      f"({b['n_scores']} scores)" for b in errors_ece["bands"])
    levels = ", ".join(f"{lv['nominal']:.0%} nominal / {_pct(lv['measured'])} measured" for lv in errors_ece["levels"])
    table.add_row("before: spread bands", f"P(score = experts' rounded score): {bands}", _fmt(errors_ece["before"]))
    table.add_row("after: calibrated intervals", f"coverage: {levels}", _fmt(errors_ece["after"]))
    table.add_row("after - before", "paired bootstrap over cases", _fmt(errors_ece["difference"], sign="+"))
    console.print(table)
    console.print("ECE is a mean absolute gap, so sampling noise alone makes it positive: resampled cases bias it "
                  "upwards, and near 0 its percentile CI can lie above the point estimate. Compare the two by the "
                  "paired difference; the coverage table above gives each level's signed gap.")

    targets = []
    for r in rows:
        ok = r.coverage.value is not None and abs(r.coverage.value - r.nominal) <= TOLERANCE
        targets.append({"target": f"coverage at {r.nominal:.0%} within {TOLERANCE:.0%} points",
                        "measured": r.coverage.value, "ci": r.coverage.ci, "met": ok})
        console.print(f"Target: coverage at {r.nominal:.0%} within +/-{TOLERANCE * 100:.0f} points: measured "
                      f"{_fmt(r.coverage)}: {'met' if ok else 'NOT met'}")
    result = {"calibration": calibration.to_dict(), "coverage": [r.to_dict() for r in rows],
              "selective": selective.to_dict(), "risk_coverage": [p.to_dict() for p in curve],
              "calibration_error": {**{k: errors_ece[k].to_dict() for k in ("before", "after", "difference")},
                                    "bands": errors_ece["bands"], "levels": errors_ece["levels"]},
              "targets": targets}
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration_report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", help="a DermEval adapter: scores the synthetic validation and test cases")
    parser.add_argument("--n", type=int, default=600, help="cases per split (default 600)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    parser.add_argument("--validation-records", help="DermEval records of validation cases (JSONL)")
    parser.add_argument("--test-records", help="DermEval records of test cases (JSONL)")
    parser.add_argument("--out", default="outputs/calibration", help="records, calibration.json and the report")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--fresh", action="store_true", help="score the cases again")
    add_write_docs_argument(parser)
    args = parser.parse_args(argv)
    validation, test = _records(args, Console())
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)  # the report, for --write-docs
    calibration = fit(validation, coverages=COVERAGES, dataset={
        "name": "dermtrl:synthetic" if args.adapter else str(args.validation_records), "split": "validation",
        "n": len(validation)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"Calibration: {calibration.save(out / 'calibration.json')}")
    report(console, calibration, test, n_bootstrap=args.n_bootstrap, seed=args.seed, out=out)
    if args.write_docs:
        write_console_docs("calibration", "Calibrated intervals: coverage, selective prediction and ECE", console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
