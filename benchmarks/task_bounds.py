"""What the synthetic task allows: the bounds beside which vision_reliance.py's numbers are read.

On the same held-out cases and with the same metric (Table 1's MAE on rounded scores, image-dependent dimensions),
computed from the generator itself (``dermtrl.cases.synthetic.draw_case``), no model involved:
- an evaluator that compares every claim with the picture perfectly (the raters' noise-free scores);
- the same evaluator shown mismatched images (vision_reliance's derangement): what a model that truly looks scores;
- the best a text-only scorer can do, estimated by the median expert score of narratives with the same claims
  (fitted on separate cases, indices from 300,000; unseen claims fall back to the quality tier's median);
- the constant training-set mean;
- with ``--reading-from``: an evaluator that copies every claim perfectly but reads the pictures as a trained DermEval
  did (each feature's word drawn from that evaluator's confusions, each extra finding seen as often as it wrote it,
  measured by ``critique_slots.picture_readings`` on its records), on true and on mismatched images. It separates
  what reading the picture costs from what everything else costs (copying, the other sentences, the scores).

    python benchmarks/task_bounds.py                 # 200 held-out cases, 60,000 fitting cases (about 15 s)
    python benchmarks/task_bounds.py --reading-from outputs/vision_reliance/true-seed4*.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, write_console_docs  # noqa: E402
from _shared import HELD_OUT_START, constant_errors, fmt_ci  # noqa: E402
from critique_slots import picture_readings, read_records  # noqa: E402

from dermtrl.cases.controls import derangement  # noqa: E402
from dermtrl.cases.synthetic import (  # noqa: E402
    COUNTS,
    EXTRAS,
    IMAGE_DEPENDENT,
    SYNTHETIC_VERSION,
    Claims,
    Findings,
    claim_words,
    classify,
    draw_case,
    expert_scores,
    finding_words,
    generate_case,
)
from dermtrl.console import WIDTH  # noqa: E402
from dermtrl.dimensions import DIMENSIONS  # noqa: E402
from dermtrl.metrics import case_errors, macro_mae, paired_bootstrap  # noqa: E402

FIT_START = 300_000  # fitting cases for the text-only estimate: apart from training, validation and test cases


def _text_key(draw) -> tuple:
    c = draw.claims  # everything the narrative says that can move an image-dependent score
    return (draw.tier, c.findings, c.diagnosis, c.hallucinations)


class Reader:
    """Reads a picture's findings as a trained DermEval did: each feature's word drawn from its confusions given the
    true word (the true word where it never saw that word), each extra finding seen at its measured rates."""

    def __init__(self, records_files: list[str], seed: int = 0) -> None:
        records = [record for path in records_files for record in read_records(path)]
        self.confusion, self.extras = picture_readings(records)
        self.n_records = len(records)
        self.rng = np.random.default_rng(seed)
        self.count_of = dict(zip(claim_words()["Count"], COUNTS, strict=True))

    def rates(self) -> str:
        parts = [f"{slot.lower()} {sum(n for (a, b), n in c.items() if a == b) / max(1, sum(c.values())):.0%}"
                 for slot, c in self.confusion.items()]
        parts += [f"{extra} {self._seen(extra, True):.0%} seen ({self._seen(extra, False):.0%} where absent)"
                  for extra in self.extras]
        return ", ".join(parts)

    def _seen(self, extra: str, present: bool) -> float:
        """How often the critiques wrote ``extra`` as seen when the picture had it (``present=False``: lacked it)."""
        key = "present" if present else "absent"
        return self.extras[extra][key] / max(1, self.extras[extra][f"n {key}"])

    def read(self, truth: Findings) -> Findings:
        words = {}
        for slot, seen in finding_words(truth).items():
            row = {b: n for (a, b), n in self.confusion[slot].items() if a == seen}
            weights = np.array(list(row.values()), dtype=float)
            words[slot] = self.rng.choice(list(row), p=weights / weights.sum()) if row else seen
        extras = tuple(e for e in EXTRAS if self.rng.random() < self._seen(e, e in truth.extras))
        return Findings(words["Colour"], self.count_of[words["Count"]], words["Border"], words["Size"], words["Site"],
                        extras)

    def scores(self, claims: Claims, truth: Findings, draws: int) -> list[dict[str, float]]:
        out = []
        for _ in range(draws):
            seen = self.read(truth)
            out.append(expert_scores(claims, classify(replace(seen, extras=())), seen))
        return out


def _mean_errors(predictions: list[list[dict[str, float]]], experts: list[dict[str, float]]) -> np.ndarray:
    """Per case, the error averaged over the reader's draws (Table 1's metric for each draw)."""
    return np.stack([case_errors(p, [e] * len(p)).mean(axis=0) for p, e in zip(predictions, experts, strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-cases", type=int, default=200)
    parser.add_argument("--fit-cases", type=int, default=60_000)
    parser.add_argument("--train-cases", type=int, default=2400, help="the demo's training cases (constant baseline)")
    parser.add_argument("--reading-from", nargs="+", metavar="RECORDS",
                        help="DermEval records (JSONL) of synthetic cases scored with their own images "
                        "(not the mismatched or text-only arms): add the reading-limited rows")
    parser.add_argument("--reading-draws", type=int, default=20, help="readings sampled per case")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else WIDTH, record=True)

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
    reader = None
    if args.reading_from:
        reader = Reader(args.reading_from)
        arms["Perfect copy, DermEval's reading, true images"] = _mean_errors(
            [reader.scores(d.claims, d.truth, args.reading_draws) for d in draws], experts)
        arms["Perfect copy, DermEval's reading, mismatched images"] = _mean_errors(
            [reader.scores(d.claims, draws[j].truth, args.reading_draws) for d, j in zip(draws, shown, strict=True)],
            experts)
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
    if reader is not None:
        true, mis = (arms[f"Perfect copy, DermEval's reading, {k} images"] for k in ("true", "mismatched"))
        ratio = paired_bootstrap(lambda a, b: macro_mae(b, dims) / macro_mae(a, dims), [true, mis])
        console.print(f"Reading as in {reader.n_records} DermEval critiques ({reader.rates()}), copying perfectly: "
                      f"mismatched / true {fmt_ci(ratio, 2)}. Above what DermEval reached, the difference is what "
                      "the rest costs (miscopies of the narrative, the other sentences, the scores written from them); "
                      "below 3x, nothing but a better reading of the pictures reaches the goal.")
    if args.write_docs:
        write_console_docs("task_bounds", "What the synthetic task allows", console)


if __name__ == "__main__":
    main()
