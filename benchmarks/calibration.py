"""Do DermEval's calibrated intervals cover the experts' scores as often as they claim?

Fits the split conformal predictor of ``dermtrl.agreement.calibration`` on validation cases only, then measures
on test cases:

- the share of expert scores inside their interval at 80, 90 and 95% nominal coverage, with a bootstrap CI over
  cases, the mean interval width and the share of intervals 3 or more points wide ("uncertain");
- selective prediction: the MAE of the scores left after abstaining on the uncertain ones (90% intervals) against
  the MAE of all, and the risk-coverage curve by DermEval's spread, each with a paired CI;

and prints its targets last: measured coverage within 3 points of nominal at each level.

    # score the synthetic validation and test cases with an adapter, then calibrate and measure
    python benchmarks/calibration.py --adapter outputs/demo-sft --n 600
    # or reuse records of earlier `dermtrl eval` runs (validation and test cases)
    python benchmarks/calibration.py --validation-records val/evaluations.jsonl --test-records test/evaluations.jsonl
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
from dermtrl.agreement.calibration import COVERAGES, UNCERTAIN_WIDTH, Calibration, coverage_report, fit, score_matrices  # noqa: E402
from dermtrl.agreement.reliability import Estimate  # noqa: E402
from dermtrl.agreement.selective import record_matrices, risk_coverage, selective_prediction  # noqa: E402
from dermtrl.jsonl import read_records  # noqa: E402

TOLERANCE = 0.03  # measured coverage within 3 points of nominal


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

    targets = []
    for r in rows:
        ok = r.coverage.value is not None and abs(r.coverage.value - r.nominal) <= TOLERANCE
        targets.append({"target": f"coverage at {r.nominal:.0%} within {TOLERANCE:.0%} points",
                        "measured": r.coverage.value, "ci": r.coverage.ci, "met": ok})
        console.print(f"Target: coverage at {r.nominal:.0%} within +/-{TOLERANCE * 100:.0f} points: measured "
                      f"{_fmt(r.coverage)}: {'met' if ok else 'NOT met'}")
    result = {"calibration": calibration.to_dict(), "coverage": [r.to_dict() for r in rows],
              "selective": selective.to_dict(), "risk_coverage": [p.to_dict() for p in curve], "targets": targets}
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
    args = parser.parse_args(argv)
    console = Console()
    validation, test = _records(args, console)
    calibration = fit(validation, coverages=COVERAGES, dataset={
        "name": "dermtrl:synthetic" if args.adapter else str(args.validation_records), "split": "validation",
        "n": len(validation)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"Calibration: {calibration.save(out / 'calibration.json')}")
    report(console, calibration, test, n_bootstrap=args.n_bootstrap, seed=args.seed, out=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
