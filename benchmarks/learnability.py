"""Does DermEval learn? Table-1 agreement on held-out synthetic cases, before and after Stage 1.

Rows, side by side in one run on the same held-out cases:
- the untrained tiny LLaVA (random weights: it writes no parseable score, so every dimension is missing);
- a constant baseline that predicts the training set's mean expert score per dimension (what an evaluator
  that ignores its input would get);
- DermEval after Stage 1 (recipes/sft.py with recipes/configs/demo_sft.yaml, launched as users launch it).

    python benchmarks/learnability.py                     # trains Stage 1 (~3 minutes on 2 CPU cores)
    python benchmarks/learnability.py --sft-adapter DIR   # reuse a trained adapter
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from rich.console import Console

from dermtrl.data.loading import load_cases
from dermtrl.dimensions import DIMENSIONS
from dermtrl.eval_job import agreement_from_records, run_evaluation
from dermtrl.evaluator import DermEval
from dermtrl.metrics import agreement
from dermtrl.report import render_table, write_report

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_START = 100_000  # training cases use indices 0..n-1; evaluation cases never overlap them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-cases", type=int, default=200)
    parser.add_argument("--out", default="outputs/learnability")
    parser.add_argument("--sft-adapter", default=None, help="a trained Stage-1 adapter (skips training)")
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/demo_sft.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 140)
    out = Path(args.out)
    held_out = load_cases("dermtrl:synthetic", n=args.eval_cases, start=HELD_OUT_START)
    experts = held_out["expert_scores"]
    reports = []

    untrained = DermEval.from_pretrained("dermtrl:tiny", max_new_tokens=64)
    records = run_evaluation(untrained, held_out, out / "untrained.jsonl", overwrite=True)
    reports.append(agreement_from_records(records, label="Untrained tiny LLaVA"))

    n_train = yaml.safe_load(Path(args.config).read_text()).get("synthetic_train_cases", 800)
    train = load_cases("dermtrl:synthetic", n=n_train)["expert_scores"]
    means = {d: sum(r[d] for r in train) / len(train) for d in DIMENSIONS}
    reports.append(agreement([means] * len(experts), experts, label="Constant train-mean baseline"))

    adapter = args.sft_adapter
    if adapter is None:
        adapter = str(out / "sft")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
               str(ROOT / "recipes/sft.py"), "--config", args.config, "--output_dir", adapter]
        console.print("[bold]Stage 1:[/bold] " + " ".join(cmd[2:]))
        subprocess.run(cmd, check=True, env=env)
    trained = DermEval.from_pretrained(adapter=adapter)
    records = run_evaluation(trained, held_out, out / "stage1.jsonl", overwrite=True)
    reports.append(agreement_from_records(records, label="DermEval Stage 1 (SFT)"))

    paths = write_report(reports, out)
    console.print(f"Held-out synthetic cases: {len(held_out)} (indices from {HELD_OUT_START}); reports: "
                  + ", ".join(str(p) for p in paths.values()))
    console.print(render_table(reports, title="Agreement with expert scores on held-out cases (MAE, lower is better)"))


if __name__ == "__main__":
    main()
