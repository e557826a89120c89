"""The closed loop: does training a narrative writer against DermEval make its narratives better, or only DermEval's
scores? Measured against the synthetic oracle (the experts' rule applied to the writer's claims).

Arms, each ``recipes/grpo_narrator.py`` with the same config, seeds and number of GRPO steps:

* ``dermeval``: DermEval's macro score as the reward (the Space's demo adapter), Safety-gated;
* ``oracle``: the oracle's macro score as the reward (the ceiling: what the same budget buys with the true rule);
* ``judge``: the DermBench judge reward through the loopback stand-in judge (``dermtrl.llm.server.hashed_scores``:
  scores from a hash of the prompt, so this arm says what a reward with no information does).

For each arm, before and after GRPO on the same synthetic test cases: the reward (DermEval's macro score), the oracle's
macro score, the share of narratives the oracle can read, and the **gaming gap**: DermEval's gain minus the oracle's
gain, per case where both read the narrative before and after. Intervals are 95% paired bootstraps over seeds and test
cases jointly. Then, per dimension, where DermEval's gain most exceeds the oracle's, and the narratives DermEval
over-scores most. Goals: the oracle's score improves under the DermEval reward with a CI above 0; the gap is reported.

    python benchmarks/closed_loop.py                    # 3 seeds x 3 arms, the demo config
    python benchmarks/closed_loop.py --smoke            # a few steps and cases: checks the pipeline, measures nothing
    python benchmarks/closed_loop.py --jobs 9 --device cuda   # every run at once on a GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, recording_stdout, write_text_docs  # noqa: E402
from _shared import ROOT, file_digest, finished, mark_finished, run_settings  # noqa: E402

from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS  # noqa: E402
from dermtrl.metrics import paired_bootstrap  # noqa: E402

ARMS = ("dermeval", "oracle", "judge")
CONFIG = ROOT / "recipes" / "configs" / "demo_grpo_narrator.yaml"
SMOKE = ("--writer_sft_steps", "40", "--test_cases", "6", "--train_cases", "8", "--max_steps", "2",
         "--max_completion_length", "32", "--eval_max_new_tokens", "48", "--evaluator_max_new_tokens", "64")


def run_arm(arm: str, seed: int, out: Path, extra: list[str], judge_url: str | None, device: str | None) -> dict:
    """One recipe run in its own process (as a user launches it); reused when it finished with these settings."""
    run_dir = out / f"{arm}-seed{seed}"
    argv = ["--config", str(CONFIG), "--output_dir", str(run_dir), "--reward", arm, "--seed", str(seed), *extra]
    if arm == "judge":
        argv += ["--judge_base_url", judge_url, "--judge_model", "stand-in"]
    if device == "cuda":
        argv += ["--use_cpu", "false"]
    settings = run_settings(arm=arm, seed=seed, extra=extra, config=file_digest(CONFIG), device=device)
    stamp = finished(run_dir, settings)
    if stamp is not None:
        return json.loads((run_dir / "narrator_eval.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo_narrator.py"), *argv], stdout=fh,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{arm} seed {seed} failed (exit {done.returncode}); see {log}:\n"
                         + log.read_text()[-3000:])
    result = json.loads((run_dir / "narrator_eval.json").read_text())
    mark_finished(run_dir, settings, {"before": result["before"], "after": result["after"]})
    return result


def matrix(results: list[dict], phase: str, key) -> np.ndarray:
    """(seeds, cases, 1): ``key(row)`` per test case, NaN where it is missing (unreadable, unparsed)."""
    return np.array([[[np.nan if (v := key(r)) is None else float(v)] for r in res["cases"][phase]]
                     for res in results], dtype=float)


def dermeval_macro(row):
    return row["dermeval_macro"]


def oracle_macro(row):
    return row["oracle"]["macro"]


def readable(row):
    return float(row["oracle"]["readable"])


def _nanmean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN (shown n/a) when there is none."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _gain(before: np.ndarray, after: np.ndarray) -> float:
    return _nanmean(after - before)


def _gap(rb: np.ndarray, ra: np.ndarray, ob: np.ndarray, oa: np.ndarray) -> float:
    return _nanmean((ra - rb) - (oa - ob))  # NaN unless all four are there: the same cases on both sides


def cell(value: float, lo: float | None = None, hi: float | None = None) -> str:
    if value != value:
        return "n/a"
    return f"{value:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{value:.2f}"


def report(results: dict[str, list[dict]]) -> None:
    print(f"\n{'arm':<10}{'reward before':>14}{'after':>7}{'reward gain [95% CI]':>26}{'oracle before':>15}{'after':>7}"
          f"{'oracle gain [95% CI]':>26}{'readable':>15}{'gaming gap [95% CI]':>26}")
    summary: dict[str, dict] = {}
    for arm, res in results.items():
        rb, ra = matrix(res, "before", dermeval_macro), matrix(res, "after", dermeval_macro)
        ob, oa = matrix(res, "before", oracle_macro), matrix(res, "after", oracle_macro)
        read_b, read_a = matrix(res, "before", readable), matrix(res, "after", readable)
        rg = paired_bootstrap(_gain, [rb, ra])
        og = paired_bootstrap(_gain, [ob, oa])
        gap = paired_bootstrap(_gap, [rb, ra, ob, oa])
        summary[arm] = {"reward_gain": rg, "oracle_gain": og, "gap": gap}
        print(f"{arm:<10}{cell(_nanmean(rb)):>14}{cell(_nanmean(ra)):>7}{cell(*rg):>26}"
              f"{cell(_nanmean(ob)):>15}{cell(_nanmean(oa)):>7}{cell(*og):>26}"
              f"{f'{_nanmean(read_b):.0%} -> {_nanmean(read_a):.0%}':>15}{cell(*gap):>26}")
    if "dermeval" in results:
        per_dimension(results["dermeval"])
        examples(results["dermeval"])
    print()
    if "dermeval" in summary:
        value, lo, _ = summary["dermeval"]["oracle_gain"]
        met = lo == lo and lo > 0
        print(f"target: the oracle's score improves under the DermEval reward, CI above 0 ... "
              f"{'met' if met else 'NOT met'} ({cell(*summary['dermeval']['oracle_gain'])})")
        print(f"gaming gap under the DermEval reward (reward gain - oracle gain): {cell(*summary['dermeval']['gap'])}")


def per_dimension(res: list[dict]) -> None:
    """Per dimension: DermEval's gain minus the oracle's, on cases both scored before and after."""
    print("\nper dimension, DermEval reward arm: DermEval gain - oracle gain (positive: DermEval was fooled)")
    rows = []
    for dim in DIMENSIONS:
        def d_score(row, dim=dim):
            return (row["dermeval_scores"] or {}).get(dim)

        def o_score(row, dim=dim):
            return (row["oracle"]["scores"] or {}).get(dim)

        gap = paired_bootstrap(_gap, [matrix(res, "before", d_score), matrix(res, "after", d_score),
                                      matrix(res, "before", o_score), matrix(res, "after", o_score)])
        rows.append((dim, gap))
    for dim, gap in sorted(rows, key=lambda r: -r[1][0] if r[1][0] == r[1][0] else 0):
        print(f"  {ABBREVIATIONS[dim]:<7}{cell(*gap):>26}")


def examples(res: list[dict], k: int = 3) -> None:
    """The after-GRPO narratives DermEval over-scores most (DermEval macro - oracle macro; unreadable: oracle n/a)."""
    rows = []
    for r in res:
        for row in r["cases"]["after"]:
            if row["dermeval_macro"] is None:
                continue
            oracle_score = row["oracle"]["macro"]
            excess = row["dermeval_macro"] - (oracle_score if oracle_score is not None else 0.0)
            if oracle_score is None or excess > 0:
                rows.append((oracle_score is not None, excess, r["seed"], row))
    print("\nnarratives DermEval over-scores most (after GRPO, DermEval reward):")
    if not [t for t in rows if t[0]]:
        print("  none: on every narrative the oracle can read, DermEval's macro score is at or below the oracle's")
    for readable_, _excess, seed, row in sorted(rows, key=lambda t: (not t[0], -t[1]))[:k]:
        oracle_text = f"{row['oracle']['macro']:.2f}" if readable_ else f"unreadable ({row['oracle']['reason']})"
        print(f"  seed {seed} {row['case_id']}: DermEval {row['dermeval_macro']:.2f}, oracle {oracle_text}\n"
              f"    {row['narrative'][:300]}")
    unreadable = [t for t in rows if not t[0]]
    if unreadable:
        best = max(unreadable, key=lambda t: t[1])
        print(f"  {len(unreadable)} narratives the oracle cannot read got a DermEval score; the highest, "
              f"{best[3]['dermeval_macro']:.2f}: {best[3]['narrative'][:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--out", default="outputs/closed_loop", help="one folder per run; finished runs are reused")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each is its own process)")
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the config's (CPU)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps and cases per run: checks that everything runs; the numbers mean nothing")
    parser.add_argument("recipe_args", nargs="*", help="more recipe flags after --, e.g. -- --max_steps 20")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    if args.write_docs and args.smoke:
        parser.error("--write-docs with --smoke: a smoke run checks the pipeline and measures nothing to publish")
    extra = [*(SMOKE if args.smoke else ()), *args.recipe_args]
    out = Path(args.out) / ("smoke" if args.smoke else "full")

    from dermtrl.llm.server import FakeOpenAIServer, hashed_scores

    judge = FakeOpenAIServer(hashed_scores, model="stand-in").start() if "judge" in args.arms else None
    try:
        runs = [(arm, seed) for arm in args.arms for seed in args.seeds]
        print(f"closed loop: {len(runs)} runs ({', '.join(args.arms)} x seeds {args.seeds}), "
              f"{args.jobs} at a time{'; SMOKE settings: the numbers below measure nothing' if args.smoke else ''}",
              flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = list(pool.map(lambda r: run_arm(r[0], r[1], out, extra, judge and judge.base_url, args.device),
                                 runs))
    finally:
        if judge is not None:
            judge.stop()
    results: dict[str, list[dict]] = {}
    for (arm, _seed), result in zip(runs, done, strict=True):
        results.setdefault(arm, []).append(result)
    steps = {r["steps"] for res in results.values() for r in res}
    with recording_stdout() as printed:
        print(f"GRPO steps per run: {sorted(steps)} (equal across arms: {'yes' if len(steps) == 1 else 'NO'})")
        report(results)
    if args.smoke:
        print("\n(smoke run: a pipeline check, not a result)")
    if args.write_docs:
        write_text_docs("closed_loop", "The closed loop: GRPO against DermEval", printed.getvalue())


if __name__ == "__main__":
    main()
