"""Choose a Stage-1 setting on validation cases: variants of the demo recipe, several seeds, true and mismatched images.

The demo recipe's settings (learning rate 3e-3, LoRA rank 64) were chosen this way, on validation cases
100,000-100,199, which no reported number uses (`vision_reliance.py` reports on cases from 200,000). Each variant is
the Stage-1 recipe plus its command-line overrides, trained at the demo budget with each seed (two runs side by side),
then scored with the true pictures and with mismatched ones (another case's picture, the same narrative). Reported per
variant and seed: image-dependent macro MAE with the true images and mismatched / true; then each variant against the
first, paired over cases and seeds (bootstrap CI).

    python benchmarks/stage1_validation.py \\
        --variant "rank 16=--lora_r 16 --lora_alpha 32" --variant "rank 64=" --seeds 3

A variant given as ``NAME=`` is the config unchanged. Rerun after an interrupt and finished runs are reused (each run
folder is stamped with its settings); ``--overwrite`` starts afresh.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, report_only, write_console_docs  # noqa: E402
from _shared import (  # noqa: E402
    ROOT,
    errors,
    evaluate_resuming,
    file_digest,
    finished,
    fmt_ci,
    launch_together,
    mark_finished,
    run_settings,
)

from dermtrl.cases.splits import STAGE1_VALIDATION_START  # noqa: E402
from dermtrl.metrics import macro_mae, paired_bootstrap  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME=--opt value ..."`` -> (NAME, overrides)."""
    name, sep, overrides = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=OVERRIDES (OVERRIDES may be empty)")
    return name.strip(), shlex.split(overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/demo_sft.yaml"))
    parser.add_argument("--variant", action="append", type=parse_variant, required=True,
                        help="NAME=OVERRIDES for recipes/sft.py (repeat; the first is the reference)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per variant (42, 43, ...)")
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--common", default="", help="overrides added to every variant (e.g. '--max_steps 2')")
    parser.add_argument("--out", default="outputs/stage1_validation")
    parser.add_argument("--overwrite", action="store_true")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"--variant names must differ, got {names}")

    import torch
    from rich.console import Console
    from rich.table import Table

    from dermtrl.cases.controls import mismatched
    from dermtrl.cases.loading import load_cases
    from dermtrl.cases.synthetic import IMAGE_DEPENDENT

    torch.set_num_threads(1)
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cases = load_cases("dermtrl:synthetic", n=args.cases, start=STAGE1_VALIDATION_START)
    experts = list(zip(cases["case_id"], cases["expert_scores"], strict=True))
    inputs = {"true": cases, "mismatched": mismatched(cases)}
    common = shlex.split(args.common)
    seeds = [42 + k for k in range(args.seeds)]
    img = list(IMAGE_DEPENDENT)
    errs: dict[str, dict[str, list[np.ndarray]]] = {name: {"true": [], "mismatched": []} for name in names}
    for seed in seeds:
        runs, stamps, fresh = {}, {}, set()
        for name, overrides in args.variant:
            run = out / f"{name.replace(' ', '_')}-seed{seed}"
            stamps[name] = (run, run_settings(arm="stage1_validation", config=file_digest(args.config),
                                              overrides=[*overrides, *common], seed=seed))
            if args.overwrite or not finished(*stamps[name]):
                runs[f"{name} seed {seed}"] = ("sft.py", ["--config", args.config, *overrides, *common,
                                                          "--seed", str(seed), "--output_dir", str(run)])
                fresh.add(name)
        if runs:
            launch_together(console, runs)
        for name, (run, settings) in stamps.items():
            if name in fresh:
                mark_finished(run, settings)
            for label, data in inputs.items():
                records = evaluate_resuming(str(run), data, run / f"{label}.jsonl", fresh=name in fresh)
                errs[name][label].append(errors(records, experts))
            t, m = errs[name]["true"][-1], errs[name]["mismatched"][-1]
            console.print(f"{name} seed {seed}: image-dependent MAE {macro_mae(t, img):.3f}, "
                          f"mismatched / true {macro_mae(m, img) / macro_mae(t, img):.2f}x")

    report_only(console)
    table = Table(title=f"Stage-1 variants on {args.cases} validation cases (from {STAGE1_VALIDATION_START:,}), "
                        f"seeds {seeds}; image-dependent dimensions")
    for column in ("variant", "MAE, true (per seed)", "mismatched / true (per seed)", "MAE, true", "vs first [95% CI]"):
        table.add_column(column)
    ref = {label: np.stack(errs[names[0]][label]) for label in ("true", "mismatched")}
    for name in names:
        t, m = np.stack(errs[name]["true"]), np.stack(errs[name]["mismatched"])
        per_seed_mae = ", ".join(f"{macro_mae(x, img):.3f}" for x in t)
        per_seed_ratio = ", ".join(f"{macro_mae(b, img) / macro_mae(a, img):.2f}x" for a, b in zip(t, m, strict=True))
        diff = "" if name == names[0] else fmt_ci(paired_bootstrap(
            lambda a, b: macro_mae(b, img) - macro_mae(a, img), [ref["true"], t]))
        table.add_row(name, per_seed_mae, per_seed_ratio, f"{macro_mae(t, img):.3f}", diff)
    console.print(table)
    console.print(f"Wall time: {(time.time() - started) / 60:.1f} min; runs and per-case records in {out}")
    if args.write_docs:
        write_console_docs("stage1_validation", "Stage-1 settings on validation cases", console)


if __name__ == "__main__":
    main()
