"""What the synthetic task allows: the bounds beside which vision_reliance.py's numbers are read.

On the same held-out cases and with the same metric (Table 1's MAE on rounded scores, image-dependent dimensions),
computed from the generator itself (``dermtrl.cases.synthetic.draw_case``), no model involved:
- an evaluator that compares every claim with the picture perfectly (the raters' noise-free scores);
- the same evaluator shown mismatched images (vision_reliance's derangement): what a model that truly looks scores;
- the best a text-only scorer can do, estimated by the median expert score of narratives with the same claims
  (fitted on separate cases, indices from 300,000; unseen claims fall back to the quality tier's median);
- the constant training-set mean.

    python benchmarks/task_bounds.py                 # 200 held-out cases, 60,000 fitting cases (about 15 s)
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared import HELD_OUT_START, constant_errors, fmt_ci  # noqa: E402

from dermtrl.cases.controls import derangement  # noqa: E402
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, SYNTHETIC_VERSION, draw_case, expert_scores, generate_case  # noqa: E402
from dermtrl.console import console  # noqa: E402
from dermtrl.dimensions import DIMENSIONS  # noqa: E402
from dermtrl.metrics import case_errors, macro_mae, paired_bootstrap  # noqa: E402

FIT_START = 300_000  # fitting cases for the text-only estimate: apart from training, validation and test cases


def _text_key(draw) -> tuple:
    c = draw.claims  # everything the narrative says that can move an image-dependent score
    return (draw.tier, c.findings, c.diagnosis, c.hallucinations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-cases", type=int, default=200)
    parser.add_argument("--fit-cases", type=int, default=60_000)
    parser.add_argument("--train-cases", type=int, default=2400, help="the demo's training cases (constant baseline)")
    args = parser.parse_args()

    idx = range(HELD_OUT_START, HELD_OUT_START + args.eval_cases)
    draws = [draw_case(i) for i in idx]
    experts = [generate_case(i, render_image=False)["expert_scores"] for i in idx]
    pairs = list(zip((f"{i}" for i in idx), experts, strict=True))

    perfect = [expert_scores(d.claims, d.cond, d.truth) for d in draws]
    shown = derangement(len(draws), seed=0)  # as benchmarks/vision_reliance.py (dermtrl.cases.controls.mismatched)
    mismatched = [expert_scores(d.claims, draws[j].cond, draws[j].truth) for d, j in zip(draws, shown, strict=True)]

    groups: dict[tuple, list] = defaultdict(list)
    tiers: dict[str, list] = defaultdict(list)
    for i in range(FIT_START, FIT_START + args.fit_cases):
        d = draw_case(i)
        score = generate_case(i, render_image=False)["expert_scores"]
        groups[_text_key(d)].append([score[k] for k in DIMENSIONS])
        tiers[d.tier].append([score[k] for k in DIMENSIONS])

    def text_only(d) -> dict[str, float]:
        rows = groups.get(_text_key(d))
        rows = rows if rows and len(rows) >= 3 else tiers[d.tier]
        return dict(zip(DIMENSIONS, np.median(rows, axis=0).tolist(), strict=True))

    covered = sum(len(groups.get(_text_key(d), ())) >= 3 for d in draws)
    train = [generate_case(i, render_image=False)["expert_scores"] for i in range(args.train_cases)]
    arms = {
        "Perfect comparison, true images": case_errors(perfect, experts),
        "Perfect comparison, mismatched images": case_errors(mismatched, experts),
        "Best text-only (median of same claims)": case_errors([text_only(d) for d in draws], experts),
        "Constant train mean": constant_errors(train, pairs),
    }
    dims = list(IMAGE_DEPENDENT)
    table = Table(title=f"What the task allows: {args.eval_cases} held-out synthetic {SYNTHETIC_VERSION} cases "
                        "(MAE, rounded scores, image-dependent dimensions, 95% bootstrap CI)")
    table.add_column("Evaluator")
    table.add_column("Macro, image-dependent", justify="right")
    for name, err in arms.items():
        table.add_row(name, fmt_ci(paired_bootstrap(lambda e: macro_mae(e, dims), [err])))
    console.print(table)
    true, mis = arms["Perfect comparison, true images"], arms["Perfect comparison, mismatched images"]
    ratio = paired_bootstrap(lambda a, b: macro_mae(b, dims) / macro_mae(a, dims), [true, mis])
    gap = paired_bootstrap(lambda a, b: macro_mae(b, dims) - macro_mae(a, dims),
                           [true, arms["Best text-only (median of same claims)"]])
    console.print(f"Perfect evaluator: mismatched / true {fmt_ci(ratio, 2)} (vision_reliance's goal: >= 3x); "
                  f"best text-only - perfect {fmt_ci(gap)} (goal: >= 0.3). Text-only estimate from {args.fit_cases} "
                  f"fitting cases; {covered} of {len(draws)} held-out narratives had >= 3 fitting cases with the "
                  "same claims (the rest use their tier's median).")


if __name__ == "__main__":
    main()
