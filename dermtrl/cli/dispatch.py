"""The ``dermtrl`` command line: the parser and ``main``. Each subcommand is a thin shell over a Python function
users can call; ``bench``, ``data``/``publish`` come from their own modules, registered in :func:`build_parser`."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.markup import escape
from rich.table import Table

from dermtrl.cases.splits import TEST_START
from dermtrl.cli._common import (
    EXIT_FAILURES,
    EXIT_USER_ERROR,
    CLIError,
    DermtrlError,
    allow_failures_arg,
    console,
    endpoint_args,
    endpoint_config,
    err_console,
    finish,
    user_errors,
)
from dermtrl.cli.scores_view import score_table, summary_table
from dermtrl.dimensions import DIMENSIONS, LABEL_NAMES, Overall

#: What ``dermtrl --help`` says first: what the tool is, and the three commands a first hour needs.
DESCRIPTION = """\
DermEval scores a diagnostic narrative against its skin image on six dimensions (0-5, higher is better);
DermBench judges a model's narratives against reference narratives. A research tool, not a medical device.

first steps:
  dermtrl score IMAGE "NARRATIVE" --adapter ADAPTER     score one narrative
  dermtrl eval --dataset cases.jsonl --adapter ADAPTER --out runs/eval
  dermtrl sft --config recipes/configs/demo_sft.yaml    train Stage 1 (--help lists its options)

Input formats: docs/source/data_formats.md. Bad input exits 2 with one "error:" line; failed records exit 1
(--allow-failures: 0)."""

__all__ = ["EXIT_FAILURES", "CLIError", "allow_failures_arg", "build_parser", "console", "err_console", "finish",
           "main"]


def _count(value: str) -> int:
    """A number of cases: an empty synthetic dataset or evaluation is a mistake, not a result to save."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of cases, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _read_text(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.is_file():
        raise CLIError(f"{source}: no such file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def cmd_parse(args: argparse.Namespace) -> int:
    from dermtrl.parsing import parse_scores

    text = _read_text(args.file)
    if not text.strip():
        raise CLIError(f"{args.file}: empty text, nothing to parse")
    parsed = parse_scores(text)
    if args.json:
        print(json.dumps(parsed.to_dict(), indent=2))
    else:
        table = Table(title=f"Scores parsed from {args.file if args.file != '-' else 'stdin'}")
        table.add_column("Dimension")
        table.add_column("Score", justify="right")
        table.add_column("Found by")
        for dim in DIMENSIONS:
            if dim in parsed.scores:
                table.add_row(dim, f"{parsed.scores[dim]:g}", parsed.sources.get(dim, ""))
            else:
                table.add_row(dim, "[red]missing[/red]", "")
        console.print(table)
    return 0 if parsed.scores else 1


def cmd_synth(args: argparse.Namespace) -> int:
    from dermtrl.cases.loading import SYNTHETIC, load_cases
    from dermtrl.cases.splits import split_of

    with user_errors():
        ds = load_cases(SYNTHETIC, n=args.n, seed=args.seed, start=args.start)
    with console.status(f"Writing {args.n} synthetic cases (seed {args.seed})"):
        ds.save_to_disk(args.out)
    console.print(f"Wrote {len(ds)} synthetic {split_of(args.start)} cases (indices {args.start:,}.."
                  f"{args.start + len(ds) - 1:,}; NOT clinical data) to [bold]{args.out}[/bold]")
    table = Table(title="Quality tiers and mean expert scores")
    table.add_column("Tier")
    table.add_column("n", justify="right")
    for dim in DIMENSIONS:
        table.add_column(dim, justify="right")
    for tier in sorted(set(ds["quality"])):
        rows = [r for r, q in zip(ds["expert_scores"], ds["quality"], strict=True) if q == tier]
        table.add_row(tier, str(len(rows)), *(f"{sum(r[d] for r in rows) / len(rows):.2f}" for d in DIMENSIONS))
    console.print(table)
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    from dermtrl.tiny import build_tiny_llava

    with console.status("Building the tiny LLaVA: tokenizer, processor, caption and comparison pretraining "
                        "(about 13 minutes on one core)"):
        path = build_tiny_llava(args.out, seed=args.seed)
    console.print(f"Wrote a tiny LLaVA-1.5-shaped model to [bold]{path}[/bold]; load it with "
                  "AutoModelForImageTextToText.from_pretrained / AutoProcessor.from_pretrained.")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from dermtrl.agreement.subgroups import default_column, slice_records, write_slices
    from dermtrl.cases.loading import load_cases, validate_cases
    from dermtrl.dermeval.eval_job import agreement_from_records, run_evaluation
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.report import render_table, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    _check_model_args(args)
    with user_errors():
        ds = load_cases(args.dataset, _eval_split(args), n=args.n, seed=args.seed, start=args.start)
        validate_cases(ds, ("image", "narrative"), scores="expert_scores" in ds.column_names, source=args.dataset)
    with user_errors():
        slice_by = default_column(ds.column_names, args.by)
    llm_parser = None
    if args.llm_parser_model:  # Figure 4's LLM parser: the bench CLI's endpoint flags, prefixed --llm-parser-
        with user_errors("--llm-parser-*", also=(TypeError,)):
            llm_parser = endpoint_config(args, prefix="llm-parser-")
    evaluator = _load_evaluator(args, DermEval, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                llm_parser=llm_parser)
    out = Path(args.out)
    try:
        with user_errors(hint=" (--overwrite starts afresh)"):
            records = run_evaluation(evaluator, ds, out / "evaluations.jsonl", overwrite=args.overwrite,
                                     carry=(slice_by,) if slice_by else ())
    finally:
        if evaluator.llm_parser is not None:
            evaluator.llm_parser.close()
    filled = sum(1 for r in records if r.get("llm_filled"))
    if llm_parser is not None:
        console.print(f"LLM parser filled scores the rules missed in {filled} of {len(records)} evaluation(s) "
                      "(`llm_filled` in the records)")
    errors = [r for r in records if "error" in r]
    for r in errors:
        err_console.print(f"[yellow]skipped[/yellow] case {r['case_id']}: {r['error']}")
    console.print(f"{len(records) - len(errors)} of {len(records)} cases evaluated, {len(errors)} skipped; "
                  f"records in [bold]{out / 'evaluations.jsonl'}[/bold]")
    truncated = sum(1 for r in records if r.get("truncated"))
    if truncated:
        err_console.print(f"[yellow]{truncated} evaluation(s) hit the {evaluator.max_new_tokens}-token budget[/yellow] "
                          "(marked `truncated` in the records); raise --max-new-tokens")
    if len(errors) < len(records):
        console.print(summary_table(records))
    train_experts, source = _baseline_train(args)
    report = agreement_from_records(records, label=args.label, round_predictions=not args.raw,
                                    train_experts=train_experts)
    if report is not None:
        title = "DermEval agreement with expert scores (MAE, lower is better; the constant baseline below)"
        paths = write_report([report], out)
        console.print(render_table([report], title=title))
        if report.baseline is not None:
            console.print(f"{report.baseline.label}: the mean expert score per dimension of {source}, for every "
                          "case (a model whose macro MAE is not below it has learnt nothing usable)")
        if slice_by:
            sliced = slice_records(records, slice_by, label=args.label)
            paths.update({f"slices_{k}": p for k, p in write_slices(sliced, out).items()})
            for line in sliced.lines():
                console.print(line, markup=False, highlight=False)
        console.print("Report: " + ", ".join(str(p) for p in paths.values()))
    return finish(len(errors), len(records), "cases", allow_failures=args.allow_failures)


def calibration_target(out: str | None, adapter: str) -> Path:
    """Where ``dermtrl calibrate`` writes: ``--out`` when it names a ``.json`` file, else ``calibration.json``
    inside ``--out`` (a folder, made if needed), else inside the adapter folder."""
    from dermtrl.agreement.calibration import CALIBRATION_FILE

    if out is None:
        return Path(adapter) / CALIBRATION_FILE
    target = Path(out)
    return target if target.suffix.lower() == ".json" and not target.is_dir() else target / CALIBRATION_FILE


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Evaluate validation cases, fit per-dimension conformal quantiles, write ``calibration.json``."""
    from dermtrl.agreement.calibration import fit
    from dermtrl.cases.loading import load_cases, validate_cases
    from dermtrl.dermeval.eval_job import run_evaluation
    from dermtrl.dermeval.evaluator import DermEval

    _check_model_args(args)
    if not Path(args.adapter).is_dir() and args.out is None:
        raise CLIError(f"--adapter {args.adapter}: a Hub id; give --out FILE for the calibration (then upload it "
                       "beside the adapter, or publish the adapter from a folder that holds it)")
    with user_errors():
        ds = load_cases(args.dataset, args.split, n=args.n, seed=args.seed, start=args.start)
        validate_cases(ds, ("image", "narrative", "expert_scores"), scores=True, source=args.dataset)
    target = calibration_target(args.out, args.adapter)
    target.parent.mkdir(parents=True, exist_ok=True)
    evaluator = _load_evaluator(args, DermEval, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                calibration=None)
    with user_errors(hint=" (delete the records file to start afresh)"):
        records = run_evaluation(evaluator, ds, target.parent / "calibration-records.jsonl")
    with user_errors():
        calibration = fit([r for r in records if "error" not in r], coverages=args.coverages, dataset={
            "name": args.dataset, "split": args.split, "fingerprint": getattr(ds, "_fingerprint", None),
            "n": len(ds), "start": args.start, "model_fingerprint": evaluator.model_fingerprint})
    path = calibration.save(target)
    table = Table(title=f"Conformal quantiles q per dimension (interval = expected +/- q x (spread + "
                        f"{calibration.delta:g}))")
    table.add_column("dimension")
    table.add_column("n", justify="right")
    for c in args.coverages:
        table.add_column(f"q at {c:.0%}", justify="right")
    for dim, qs in calibration.quantiles.items():
        table.add_row(dim, str(calibration.n[dim]), *(f"{q:.2f}" for q in qs.values()))
    console.print(table)
    console.print(f"Wrote [bold]{path}[/bold]: DermEval loads it with the adapter and returns intervals at "
                  "coverage 0.9 (DermEval.from_pretrained(..., coverage=...)); measure the coverage on test cases "
                  "with benchmarks/calibration.py")
    return 0


def _eval_split(args: argparse.Namespace) -> str | None:
    """The split to read: ``--split``, else ``test`` (for synthetic cases only when no ``--start`` picks one)."""
    from dermtrl.cases.loading import SYNTHETIC

    if args.split:
        return args.split
    return None if args.dataset == SYNTHETIC and args.start is not None else "test"


def _check_model_args(args: argparse.Namespace) -> None:
    """Refuse a missing model or adapter before any data is read or weights are loaded (one line, exit 2)."""
    if not args.model and not args.adapter:
        raise CLIError("give --adapter (a DermEval adapter folder written by `dermtrl sft`, or a Hub id) or --model "
                       "(a base model, e.g. dermtrl:tiny)")
    for flag, value, marker in (("--adapter", args.adapter, "adapter_config.json"), ("--model", args.model, None)):
        if not value or value.startswith("dermtrl:"):
            continue
        path = Path(value)
        # owner/name is a Hub id, unless "owner" is a local folder (runs/my-sft, a typo of a local output)
        looks_local = (value.startswith((".", "/", "~")) or path.exists() or value.count("/") != 1
                       or path.parent.is_dir())
        if looks_local and not path.is_dir():
            raise CLIError(f"{flag} {value}: no such folder (and not a Hub id of the form owner/name)")
        if path.is_dir() and marker and not (path / marker).is_file():
            raise CLIError(f"{flag} {value}: no {marker} in this folder; give the output_dir of `dermtrl sft` or "
                           "`dermtrl soreb`")


def _load_evaluator(args: argparse.Namespace, cls: Any, **kwargs: Any) -> Any:
    """``DermEval.from_pretrained`` with what cannot be loaded (a Hub id offline, a broken folder) as one line."""
    with user_errors(also=(OSError,)):
        try:
            return cls.from_pretrained(args.model, args.adapter, **kwargs)
        except OSError as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise OSError(f"cannot load {args.adapter or args.model}: {first}") from exc


#: The synthetic training cases the constant baseline averages: the demo recipe's 2,400.
BASELINE_TRAIN_CASES = 2400


def _baseline_train(args: argparse.Namespace) -> tuple[list[Any] | None, str]:
    """The training cases' expert scores behind the eval report's constant-baseline row, and where they come from.

    ``--baseline-train``: that data. Synthetic cases: the demo's training cases. A dataset with a ``train`` split
    (other than the one evaluated): that split. Otherwise ``None``: the report's baseline is then the evaluated
    cases' own mean, labelled in-sample (a constant that knows the answers' average: harder to beat)."""
    from dermtrl.cases.loading import SYNTHETIC, load_cases, validate_cases
    from dermtrl.cases.splits import TRAIN
    from dermtrl.cases.synthetic import generate_case

    if args.baseline_train:
        with user_errors("--baseline-train"):
            cases = load_cases(args.baseline_train, "train")
            validate_cases(cases, ("narrative",), scores=True, source=args.baseline_train)
        return list(cases["expert_scores"]), f"the {len(cases):,} cases of {args.baseline_train}"
    if args.dataset == SYNTHETIC:
        train = [generate_case(i, args.seed, render_image=False)["expert_scores"]
                 for i in TRAIN[:BASELINE_TRAIN_CASES]]
        return train, f"the {len(train):,} synthetic training cases the demo adapter learnt"
    if _eval_split(args) != "train" and _has_splits(args.dataset):
        try:
            cases = load_cases(args.dataset, "train")
            validate_cases(cases, ("narrative",), scores=True, source=args.dataset)
            return list(cases["expert_scores"]), f"the {len(cases):,} cases of {args.dataset}'s train split"
        except (ValueError, OSError):  # no usable train split: the in-sample mean, labelled as such
            pass
    return None, ("the evaluated cases themselves (no training data given: --baseline-train names it; an in-sample "
                  "mean is harder to beat than a training mean)")


def _has_splits(source: str) -> bool:
    """True for a source that holds named splits: a ``DatasetDict`` folder or a Hub id (a single data file or
    ``Dataset`` folder has one set of rows, whatever split is asked for)."""
    path = Path(source)
    if path.exists():
        return (path / "dataset_dict.json").is_file()
    return ":" not in source


def _is_file(text: str) -> bool:
    """Whether ``text`` names an existing file (a narrative's text is often longer than a file name may be)."""
    try:
        return Path(text).is_file()
    except OSError:
        return False


def cmd_score(args: argparse.Namespace) -> int:
    """``dermtrl score IMAGE NARRATIVE_OR_FILE``: one case, scored and shown with the legend."""
    from dermtrl.cases.images import read_image
    from dermtrl.dermeval.evaluator import DermEval

    _check_model_args(args)
    source = args.narrative
    looks_like_file = not any(c.isspace() for c in source) and Path(source).suffix in (".txt", ".md", ".text")
    if source == "-" or looks_like_file or _is_file(source):
        narrative = _read_text(source)  # a file name that does not exist is refused, never scored as the text
    else:
        narrative = source
    if not narrative.strip():
        raise CLIError("the narrative is empty: give its text, a UTF-8 text file, or - for standard input")
    image = read_image(args.image).image  # a missing or unreadable image is refused before the model loads
    evaluator = _load_evaluator(args, DermEval, batch_size=1, max_new_tokens=args.max_new_tokens)
    result = evaluator.evaluate(image, narrative).to_dict()
    overall = Overall.of(result["scores"])
    if args.json:
        result["overall_text"] = overall.text()
        result["safety_flag"] = overall.unsafe
        result["critique_names"] = dict(LABEL_NAMES)
        print(json.dumps(result, indent=2))
    else:
        console.print(score_table(result, title=f"DermEval scores for {Path(args.image).name}"))
        console.print("[bold]Critique[/bold] (as DermEval wrote it)")
        console.print(result["critique"] or "(none written)", markup=False, highlight=False)
        if result["truncated"]:
            err_console.print(f"[yellow]The evaluation hit the {evaluator.max_new_tokens}-token budget[/yellow]; "
                              "raise --max-new-tokens")
    return 0 if result["scores"] and not any(v is None for v in result["scores"].values()) else EXIT_FAILURES


def cmd_train(args: argparse.Namespace) -> int:
    """``dermtrl sft|soreb ...``: the training script with its own parser (as ``trl sft``), in this process.

    ``--help`` lists dermtrl's own options first and the common TRL ones after them; ``--help-all`` prints the
    script's full parser (every field of TRL's config)."""
    import importlib

    from dermtrl.cli.train_help import train_help

    script = importlib.import_module(f"dermtrl.scripts.{args.script}")
    parser = script.make_parser()
    parser.prog = f"dermtrl {args.script}"
    _one_line_usage_errors(parser)
    if "--help-all" in args.script_args:
        parser.print_help()
        return 0
    if "-h" in args.script_args or "--help" in args.script_args:
        print(train_help(parser, args.script))
        return 0
    with user_errors(also=(TypeError,)), warnings.catch_warnings():  # a bad value in the YAML or flags: one line
        # TRL's own config default trips transformers' rename warning; nothing the user set, nothing to act on
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
        parsed = parser.parse_args_and_config(args=args.script_args)
    script.main(*parsed).end()
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as every other bad input is: one ``error:`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{self.prog}: {message} (see {self.prog} --help)")


def _one_line_usage_errors(parser: argparse.ArgumentParser) -> None:
    """Make an existing parser's usage mistakes :class:`CLIError` (one line) instead of usage text and exit."""

    def error(message: str) -> NoReturn:
        raise CLIError(f"{parser.prog}: {message} (see {parser.prog} --help)")

    parser.error = error  # type: ignore[method-assign]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dermtrl", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score one narrative against one image: six scores, the critique, a legend",
                       description="DermEval on one (image, narrative) pair: the six scores (0-5, higher is better), "
                                   "the model's expected score and spread for each, and its critique.")
    p.add_argument("image", metavar="IMAGE", help="the image file (any format PIL reads)")
    p.add_argument("narrative", metavar="NARRATIVE_OR_FILE",
                   help="the narrative's text, a UTF-8 text file holding it, or - for standard input")
    p.add_argument("--adapter", help="DermEval LoRA adapter: a folder written by `dermtrl sft`, or a Hub id")
    p.add_argument("--model", help="base model: Hub id, folder, or dermtrl:tiny (default: the adapter's base)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default: the one recorded beside the adapter, else 512)")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of a table")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("parse", help="parse six-dimension scores from an evaluation or judge text")
    p.add_argument("file", help="a text file, or - for standard input")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("synth", help="write synthetic cases (for demos and tests, not clinical data)")
    p.add_argument("--n", type=_count, default=100, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=TEST_START,
                   help=f"first case index (default: {TEST_START:,}, the test cases; training uses 0-49,999, "
                        "validation 50,000-199,999)")
    p.add_argument("--out", required=True, help="folder for datasets.save_to_disk")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("tiny", help="build the tiny offline LLaVA used by the demo and the tests")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny)

    for name, what in (("sft", "DermEval Stage 1 (SFT)"), ("soreb", "DermEval Stage 2 (SOREB)")):
        p = sub.add_parser(name, add_help=False, help=f"train {what} in this process: the script's own flags "
                           f"(--config YAML, ...; --help lists them); for several processes use accelerate launch "
                           f"recipes/{name}.py")
        p.add_argument("script_args", nargs=argparse.REMAINDER)
        p.set_defaults(func=cmd_train, script=name)

    p = sub.add_parser("eval", help="run DermEval over a dataset: a summary of the scores; agreement with experts "
                       "and a constant baseline when it has expert scores")
    p.add_argument("--model", help="base model: Hub id, folder, or dermtrl:tiny (default: the adapter's base)")
    p.add_argument("--adapter", help="DermEval LoRA adapter: Hub id or folder")
    p.add_argument("--dataset", required=True, help="Hub id, local folder or file, or dermtrl:synthetic")
    p.add_argument("--split", default=None,
                   help="split to read (default: test; synthetic cases: train, validation or test)")
    p.add_argument("--n", type=_count, default=None, help="evaluate the first N cases (synthetic: generate N)")
    p.add_argument("--seed", type=int, default=0, help="synthetic cases: seed")
    p.add_argument("--start", type=int, default=None,
                   help=f"synthetic cases: first index (default: {TEST_START:,}, the first test case)")
    p.add_argument("--out", required=True, help="folder for evaluations.jsonl (resumable) and the report")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default: the one recorded beside the adapter, else 512)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--raw", action="store_true", help="do not round scores to integers before the MAE")
    p.add_argument("--label", default="DermEval", help="the model's row label in the agreement report")
    p.add_argument("--baseline-train", default=None, metavar="DATASET",
                   help="training data whose mean expert scores make the constant-baseline row (default: synthetic "
                        "cases: the demo's training cases; a dataset with a train split: that split; else the "
                        "evaluated cases' own mean, labelled in-sample)")
    p.add_argument("--by", metavar="COLUMN", default=None,
                   help="slice the agreement report by this column (default: skin_tone when the data has it)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    allow_failures_arg(p)
    # the same endpoint flags as every `dermtrl bench` endpoint, prefixed; --llm-parser-model turns it on
    endpoint_args(p, "LLM parser", model_required=False, prefix="llm-parser-", structured_output=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="fit calibrated score intervals (split conformal) on validation cases and "
                                         "write calibration.json beside the adapter")
    p.add_argument("--adapter", required=True, help="DermEval LoRA adapter folder (calibration.json goes in it)")
    p.add_argument("--model", help="base model (default: the adapter's base)")
    p.add_argument("--dataset", required=True, help="cases with expert scores: Hub id, folder, file, or "
                                                    "dermtrl:synthetic")
    p.add_argument("--split", default="validation",
                   help="the split to fit on (default: validation; never the cases you report on)")
    p.add_argument("--n", type=_count, default=None, help="the first N cases (synthetic: generate N)")
    p.add_argument("--seed", type=int, default=0, help="synthetic cases: seed")
    p.add_argument("--start", type=int, default=None, help="synthetic cases: first index (default: the split's)")
    p.add_argument("--coverages", type=float, nargs="+", default=[0.8, 0.9, 0.95],
                   help="coverages to fit (DermEval's coverage must be one of them; default 0.8 0.9 0.95)")
    p.add_argument("--out", default=None,
                   help="a .json file, or a folder to write calibration.json in (default: the adapter folder); the "
                        "evaluation records go beside it in calibration-records.jsonl (resumable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default: the one recorded beside the adapter, else 512)")
    p.set_defaults(func=cmd_calibrate)

    from dermtrl.cli.bench import register as register_bench
    from dermtrl.cli.data import register as register_data
    from dermtrl.hub.adapter import register_publish_adapter

    register_bench(sub)
    publish = register_data(sub)  # `dermtrl data ...` and `dermtrl publish dataset`
    register_publish_adapter(publish)  # `dermtrl publish adapter`

    from dermtrl.dermeval.serve import register as register_serve

    register_serve(sub)  # `dermtrl serve`: DermEval behind an OpenAI-compatible HTTP API
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dermtrl.progress import library_bars_off

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("sft", "soreb"):  # every flag after it belongs to the script's own parser
            args = argparse.Namespace(func=cmd_train, script=argv[0], script_args=argv[1:])
        else:
            args = build_parser().parse_args(argv)
        with library_bars_off():  # no "Loading weights" / "Generating train split" bars: our own bars only
            return args.func(args)
    except DermtrlError as exc:  # CLIError and every other user-facing error of the package
        err_console.print(f"[red]error:[/red] {escape(' '.join(str(exc).split()))}", soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err_console.print("interrupted; finished work is saved where the command writes incrementally")
        return 130

