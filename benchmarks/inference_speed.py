"""DermEval inference throughput: evaluations per second at batch 1 and batch 8, side by side in one run.

Goal: batch 8 >= 4x batch 1. Uses a Stage-1 adapter when given (so generations have realistic length),
otherwise trains none and uses the untrained tiny model with a fixed number of new tokens.

    python benchmarks/inference_speed.py --adapter outputs/dermeval-tiny-sft
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dermtrl.cases.loading import load_cases
from dermtrl.dermeval.evaluator import DermEval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, write_console_docs  # noqa: E402


def measure(evaluator: DermEval, images, narratives, batch_size: int, repeats: int) -> tuple[float, float]:
    evaluator.batch_size = batch_size
    evaluator.evaluate_batch(images[:batch_size], narratives[:batch_size])  # warm-up
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        start = time.perf_counter()
        results = evaluator.evaluate_batch(images, narratives)
        best = min(best, time.perf_counter() - start)
        tokens = sum(len(evaluator.tokenizer.encode(r.text)) for r in results)
    return len(images) / best, tokens / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=None, help="a Stage-1 adapter folder or Hub id")
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_write_docs_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    evaluator = (DermEval.from_pretrained(adapter=args.adapter) if args.adapter
                 else DermEval.from_pretrained("dermtrl:tiny", max_new_tokens=96))
    cases = load_cases("dermtrl:synthetic", n=args.cases, start=300_000)
    images, narratives = list(cases["image"]), list(cases["narrative"])
    rows = {bs: measure(evaluator, images, narratives, bs, args.repeats) for bs in (1, 8)}
    table = Table(title=f"DermEval inference on {args.cases} cases ({args.adapter or 'untrained tiny model'}, "
                        f"{args.threads} thread(s), best of {args.repeats})")
    for col in ("batch size", "evaluations / s", "generated tokens / s"):
        table.add_column(col, justify="right")
    for bs, (eps, tps) in rows.items():
        table.add_row(str(bs), f"{eps:.1f}", f"{tps:.0f}")
    console = Console(width=None if sys.stdout.isatty() else 120, record=True)
    console.print(table)
    ratio = rows[8][0] / rows[1][0]
    console.print(f"batch 8 / batch 1 throughput: {ratio:.2f}x (goal >= 4x): {'met' if ratio >= 4 else 'NOT met'}")
    console.print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other processes on the "
                  "machine slow both batch sizes, unevenly)")
    if args.write_docs:
        write_console_docs("inference_speed", "DermEval inference: batch 8 against batch 1", console)


if __name__ == "__main__":
    main()
