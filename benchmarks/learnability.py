"""Does DermEval learn? Table-1 agreement on held-out synthetic cases: untrained, Stage 1, Stage 2.

Rows, side by side in one run on the same held-out cases:
- the untrained tiny LLaVA (random weights: it writes no parseable score, so every dimension is missing);
- a constant baseline that predicts the training set's mean expert score per dimension (what an evaluator
  that ignores its input would get);
- DermEval after Stage 1 (recipes/sft.py with recipes/configs/demo_sft.yaml, launched as users launch it);
- DermEval after Stage 2, SOREB (recipes/soreb.py with recipes/configs/demo_soreb.yaml, from that Stage 1).

    python benchmarks/learnability.py                     # trains both stages (~4 minutes on 2 CPU cores)
    python benchmarks/learnability.py --sft-adapter DIR   # reuse a trained Stage-1 adapter
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from rich.console import Console

from dermtrl.cases.loading import load_cases
from dermtrl.dermeval.eval_job import agreement_from_records, run_evaluation
from dermtrl.dermeval.evaluator import DermEval
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import agreement
from dermtrl.report import render_table, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, report_only, write_console_docs  # noqa: E402
from _shared import HELD_OUT_START, ROOT, launch  # noqa: E402  (test cases from 200,000, as every benchmark)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-cases", type=int, default=200)
    parser.add_argument("--out", default="outputs/learnability")
    parser.add_argument("--sft-adapter", default=None, help="a trained Stage-1 adapter (skips training)")
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/demo_sft.yaml"))
    parser.add_argument("--soreb-config", default=str(ROOT / "recipes/configs/demo_soreb.yaml"))
    add_write_docs_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)
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
        launch(console, "Stage 1", "sft.py", "--config", args.config, "--output_dir", adapter)
    trained = DermEval.from_pretrained(adapter=adapter)
    records = run_evaluation(trained, held_out, out / "stage1.jsonl", overwrite=True)
    reports.append(agreement_from_records(records, label="DermEval Stage 1 (SFT)"))

    soreb = str(out / "soreb")
    launch(console, "Stage 2", "soreb.py", "--config", args.soreb_config, "--sft_adapter", adapter,
           "--output_dir", soreb, "--report_cases", "0")
    records = run_evaluation(DermEval.from_pretrained(adapter=soreb), held_out, out / "stage2.jsonl", overwrite=True)
    reports.append(agreement_from_records(records, label="DermEval Stage 2 (SOREB)"))

    paths = write_report(reports, out)
    report_only(console)
    console.print(f"Held-out synthetic cases: {len(held_out)} (indices from {HELD_OUT_START}); reports: "
                  + ", ".join(str(p) for p in paths.values()))
    console.print(render_table(reports, title="Agreement with expert scores on held-out cases (MAE, lower is better)"))
    if args.write_docs:
        write_console_docs("learnability", "Does DermEval learn? Table 1 by training stage", console)


if __name__ == "__main__":
    main()
