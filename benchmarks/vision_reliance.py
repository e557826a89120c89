"""Does DermEval look at the picture? Held-out MAE with true images, mismatched images and a text-only control.

On held-out synthetic cases (indices from 200,000: never used to train, to choose settings or to probe), side by side:
- DermEval Stage 1 (recipes/sft.py with the demo config) with each case's own image;
- the same adapter with **mismatched images** (every case shown another held-out case's picture, same narrative);
- a **text-only control**: the same Stage-1 recipe trained and tested with one blank image for every case;
- a constant baseline predicting the training set's mean expert score per dimension.

Image-dependent dimensions of the synthetic cases (``IMAGE_DEPENDENT``): Accuracy, Medical Groundedness,
Reasoning Coherence, Description Precision. Targets (printed last, "met" / "NOT met"):
mismatched / true macro MAE on them >= 3x; text-only >= 0.3 worse than DermEval on them; Stage 1 not at ceiling
(macro MAE >= 0.25) and better than the constant baseline (paired CI of the difference excludes 0).

    python benchmarks/vision_reliance.py                    # trains two Stage-1 adapters (~6 min each on 2 cores)
    python benchmarks/vision_reliance.py --seeds 3          # three training seeds per arm (~20 min on 2 cores)
    python benchmarks/vision_reliance.py --sft-adapter DIR --text-only-adapter DIR   # reuse trained adapters

Rerun after an interrupt and it resumes: an adapter that finished with the same settings (config, epochs, seed,
case and base versions; stamped in its folder) is reused, and each evaluation continues its per-case records.
``--overwrite`` trains and scores everything afresh.

With ``--seeds N`` both arms are trained with N seeds (the config's seed, +1, ...); every interval then resamples
seeds and cases together, so it covers training-seed variation as well as the choice of cases.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, report_only, write_console_docs  # noqa: E402
from _shared import (  # noqa: E402
    HELD_OUT_START,
    ROOT,
    constant_errors,
    errors,
    evaluate_resuming,
    file_digest,
    finished,
    fmt_ci,
    launch_together,
    mark_finished,
    run_settings,
)

from dermtrl.cases.controls import blanked, mismatched  # noqa: E402
from dermtrl.cases.loading import load_cases  # noqa: E402
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, SYNTHETIC_VERSION  # noqa: E402
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS  # noqa: E402
from dermtrl.metrics import macro_mae, paired_bootstrap  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-cases", type=int, default=200)
    parser.add_argument("--out", default="outputs/vision_reliance")
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/demo_sft.yaml"))
    parser.add_argument("--sft-adapter", default=None, help="a trained Stage-1 adapter (skips its training)")
    parser.add_argument("--text-only-adapter", default=None, help="a trained text-only adapter (skips training)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="Stage-1 epochs of both adapters (equal compute; default: the config's, the demo budget)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="training seeds per arm (the config's seed, +1, ...); intervals then resample seeds too")
    parser.add_argument("--overwrite", action="store_true",
                        help="train and score every arm afresh instead of reusing finished ones in --out")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.seeds > 1 and (args.sft_adapter or args.text_only_adapter):
        parser.error("--sft-adapter / --text-only-adapter reuse one trained adapter each: "
                     "they cannot be given with --seeds > 1")
    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    config = yaml.safe_load(Path(args.config).read_text())
    n_train, seed = config.get("synthetic_train_cases", 800), config.get("synthetic_seed", 0)

    budget = [] if args.epochs is None else ["--num_train_epochs", f"{args.epochs:g}"]
    seeds = [config.get("seed", 42) + k for k in range(args.seeds)]
    held_out = load_cases("dermtrl:synthetic", n=args.eval_cases, start=HELD_OUT_START, seed=seed)
    experts = list(zip(held_out["case_id"], held_out["expert_scores"], strict=True))
    train = load_cases("dermtrl:synthetic", n=n_train, seed=seed)
    if args.text_only_adapter is None:
        blanked(train).save_to_disk(str(out / "text_only_train"))
    inputs = {"true": held_out, "mismatched": mismatched(held_out), "text_only": blanked(held_out)}
    per_seed: dict[str, list[np.ndarray]] = {}
    reused_seconds = 0.0  # training time that earlier runs spent on the arms this run reuses
    for training_seed in seeds:
        # one seed keeps the single-run layout (out/sft, out/text_only); several get a folder each
        tag = "" if len(seeds) == 1 else f"-seed{training_seed}"
        seed_args = [] if len(seeds) == 1 else ["--seed", str(training_seed)]
        runs, stamps, fresh = {}, {}, {}
        adapter = args.sft_adapter or str(out / f"sft{tag}")
        text_only = args.text_only_adapter or str(out / f"text_only{tag}")
        for arm, path, given, stage, data in (
                ("sft", adapter, args.sft_adapter, "Stage 1 (true images)", []),
                ("text_only", text_only, args.text_only_adapter, "Text-only control (blank images)",
                 ["--dataset_name", str(out / "text_only_train")])):
            if given:
                continue
            stamps[path] = run_settings(arm=arm, config=file_digest(args.config), epochs=args.epochs,
                                        seed=training_seed, train_cases=n_train)
            done = None if args.overwrite else finished(path, stamps[path])
            fresh[path] = done is None
            if fresh[path]:
                runs[f"{stage}{tag}"] = ("sft.py", ["--config", args.config, *data, "--output_dir", path, *budget,
                                                    *seed_args])
            else:
                reused_seconds += done["result"].get("train_seconds", 0.0)
                console.print(f"[dim]Reusing {path}: it finished with these settings (--overwrite retrains)[/dim]")
        if runs:
            launch_started = time.time()
            launch_together(console, runs)  # side by side: the same machine for both arms
            for path, settings in stamps.items():
                if fresh[path]:  # the arms ran together: each is stamped with their shared wall time, counted once
                    mark_finished(path, settings, {"train_seconds": (time.time() - launch_started) / len(runs)})
        for name, model, label in (("DermEval, true images", adapter, "true"),
                                   ("DermEval, mismatched images", adapter, "mismatched"),
                                   ("Text-only control (blank images)", text_only, "text_only")):
            records = evaluate_resuming(model, inputs[label], out / f"{label}{tag}.jsonl",
                                        fresh=args.overwrite or fresh.get(model, False))
            per_seed.setdefault(name, []).append(errors(records, experts))
    epochs = args.epochs if args.epochs is not None else config.get("num_train_epochs", 3.0)  # TRL default

    # (seeds, cases, 6) with several seeds, as paired_bootstrap expects; (cases, 6) with one
    arms = {name: np.stack(errs) if len(errs) > 1 else errs[0] for name, errs in per_seed.items()}
    constant = constant_errors(train["expert_scores"], experts)
    arms["Constant train-mean baseline"] = np.stack([constant] * len(seeds)) if len(seeds) > 1 else constant
    report_only(console)
    report(console, arms, out, len(held_out), time.time() - started, demo_budget=args.epochs is None, epochs=epochs,
           seeds=seeds, reused_seconds=reused_seconds)
    if args.write_docs:
        write_console_docs("vision_reliance", "Does DermEval look at the picture?", console)


def report(console: Console, arms: dict[str, np.ndarray], out: Path, n: int, seconds: float, *, demo_budget: bool,
           epochs: float | None, seeds: list[int], reused_seconds: float = 0.0) -> None:
    image_dims = list(IMAGE_DEPENDENT)
    over = "bootstrap CI" if len(seeds) == 1 else f"CI over cases and {len(seeds)} training seeds {seeds}"
    table = Table(title=f"Held-out MAE (rounded scores, Table 1's metric), {n} synthetic {SYNTHETIC_VERSION} cases, "
                        f"95% {over}")
    for col in ["Evaluator", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Macro", "Macro, image-dep.", "Parsed"]:
        table.add_column(col, justify="left" if col == "Evaluator" else "right")
    rows = []
    for name, err in arms.items():
        per_dim = [float(np.nanmean(err[..., j])) for j in range(len(DIMENSIONS))]
        m = paired_bootstrap(lambda e: macro_mae(e), [err])
        mi = paired_bootstrap(lambda e: macro_mae(e, image_dims), [err])
        parsed = float(np.mean(~np.isnan(err)))
        table.add_row(name, *(f"{v:.3f}" for v in per_dim), fmt_ci(m), fmt_ci(mi), f"{parsed:.0%}")
        rows.append([name, *(f"{v:.4f}" for v in per_dim), f"{m[0]:.4f}", f"{mi[0]:.4f}", f"{parsed:.4f}"])
    console.print(table)

    true, mis = arms["DermEval, true images"], arms["DermEval, mismatched images"]
    text, const = arms["Text-only control (blank images)"], arms["Constant train-mean baseline"]
    ratio = paired_bootstrap(lambda a, b: macro_mae(b, image_dims) / macro_mae(a, image_dims), [true, mis])
    text_gap = paired_bootstrap(lambda a, b: macro_mae(b, image_dims) - macro_mae(a, image_dims), [true, text])
    const_gap = paired_bootstrap(lambda a, b: macro_mae(b) - macro_mae(a), [true, const])
    stage1 = paired_bootstrap(lambda a: macro_mae(a), [true])
    lines = [
        ("mismatched / true macro MAE, image-dependent dimensions >= 3x", fmt_ci(ratio, 2), ratio[0] >= 3),
        ("text-only - DermEval macro MAE, image-dependent dimensions >= 0.3", fmt_ci(text_gap), text_gap[0] >= 0.3),
        (f"Stage 1 not at ceiling: macro MAE >= 0.25 ({'the demo budget' if demo_budget else 'NOT the demo budget'}"
         f", {epochs:g} epochs)", fmt_ci(stage1), stage1[0] >= 0.25),
        ("constant baseline - Stage 1 macro MAE > 0 (CI excludes 0)", fmt_ci(const_gap), const_gap[1] > 0),
    ]
    resampled = "cases" if len(seeds) == 1 else "cases and seeds"
    targets = Table(title=f"Targets (paired bootstrap over {resampled}, 95% CI)")
    for col in ("Target", "Measured", "Result"):
        targets.add_column(col)
    for name, value, ok in lines:
        targets.add_row(name, value, "[green]met[/green]" if ok else "[red]NOT met[/red]")
    with (out / "vision_reliance.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arm", *(ABBREVIATIONS[d] for d in DIMENSIONS), "macro", "macro_image_dependent", "parsed"])
        w.writerows(rows)
        for name, value, ok in lines:
            w.writerow(["target", name, value, "met" if ok else "NOT met"])
    reused = (f" (plus {reused_seconds / 60:.1f} min of training that earlier runs did for the arms reused here)"
              if reused_seconds else "")
    console.print(f"Wall time: {seconds / 60:.1f} min{reused}; CSV and per-case records in {out}")
    console.print(targets)


if __name__ == "__main__":
    main()
