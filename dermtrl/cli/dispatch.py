"""The ``dermtrl`` command line: the parser and ``main``. Each subcommand is a thin shell over a Python function
users can call; ``bench``, ``data``/``publish`` come from their own modules, registered in :func:`build_parser`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

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
from dermtrl.dimensions import DIMENSIONS

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
    from dermtrl.cases.synthetic import generate_cases

    with console.status(f"Generating {args.n} synthetic cases (seed {args.seed})"):
        ds = generate_cases(args.n, seed=args.seed)
        ds.save_to_disk(args.out)
    console.print(f"Wrote {len(ds)} synthetic cases (NOT clinical data) to [bold]{args.out}[/bold]")
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

    from dermtrl.cases.loading import load_cases, validate_cases
    from dermtrl.dermeval.eval_job import agreement_from_records, run_evaluation
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.report import render_table, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    with user_errors():
        ds = load_cases(args.dataset, args.split, n=args.n, seed=args.seed, start=args.start)
        validate_cases(ds, ("image", "narrative"), scores="expert_scores" in ds.column_names, source=args.dataset)
    llm_parser = None
    if args.llm_parser_model:  # Figure 4's LLM parser: the bench CLI's endpoint flags, prefixed --llm-parser-
        with user_errors("--llm-parser-*", also=(TypeError,)):
            llm_parser = endpoint_config(args, prefix="llm-parser-")
    evaluator = DermEval.from_pretrained(args.model, args.adapter, batch_size=args.batch_size,
                                         max_new_tokens=args.max_new_tokens, llm_parser=llm_parser)
    out = Path(args.out)
    try:
        with user_errors(hint=" (--overwrite starts afresh)"):
            records = run_evaluation(evaluator, ds, out / "evaluations.jsonl", overwrite=args.overwrite)
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
    report = agreement_from_records(records, label=args.label, round_predictions=not args.raw)
    if report is not None:
        paths = write_report([report], out)
        console.print(render_table([report]))
        console.print("Report: " + ", ".join(str(p) for p in paths.values()))
    return finish(len(errors), len(records), "cases", allow_failures=args.allow_failures)


def cmd_train(args: argparse.Namespace) -> int:
    """``dermtrl sft|soreb ...``: the training script with its own parser (as ``trl sft``), in this process."""
    import importlib

    script = importlib.import_module(f"dermtrl.scripts.{args.script}")
    script.main(*script.make_parser().parse_args_and_config(args=args.script_args)).end()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dermtrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("parse", help="parse six-dimension scores from an evaluation or judge text")
    p.add_argument("file", help="a text file, or - for standard input")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("synth", help="write synthetic cases (for demos and tests, not clinical data)")
    p.add_argument("--n", type=_count, default=100, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
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

    p = sub.add_parser("eval", help="run DermEval over a dataset; agreement with experts when it has scores")
    p.add_argument("--model", help="base model: Hub id, folder, or dermtrl:tiny (default: the adapter's base)")
    p.add_argument("--adapter", help="DermEval LoRA adapter: Hub id or folder")
    p.add_argument("--dataset", required=True, help="Hub id, local folder or file, or dermtrl:synthetic")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=_count, default=None, help="evaluate the first N cases (synthetic: generate N)")
    p.add_argument("--seed", type=int, default=0, help="synthetic cases: seed")
    p.add_argument("--start", type=int, default=100_000, help="synthetic cases: first index (held out)")
    p.add_argument("--out", required=True, help="folder for evaluations.jsonl (resumable) and the report")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default: the one recorded beside the adapter, else 512)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier results in --out instead of resuming")
    p.add_argument("--raw", action="store_true", help="do not round scores to integers before the MAE")
    p.add_argument("--label", default="DermEval", help="row label in the report")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    allow_failures_arg(p)
    # the same endpoint flags as every `dermtrl bench` endpoint, prefixed; --llm-parser-model turns it on
    endpoint_args(p, "LLM parser", model_required=False, prefix="llm-parser-", structured_output=True)
    p.set_defaults(func=cmd_eval)

    from dermtrl.bench.cli import register as register_bench
    from dermtrl.data.cli import register as register_data
    from dermtrl.hub.adapter import register_publish_adapter

    register_bench(sub)
    publish = register_data(sub)  # `dermtrl data ...` and `dermtrl publish dataset`
    register_publish_adapter(publish)  # `dermtrl publish adapter`
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("sft", "soreb"):  # every flag after it belongs to the script's own parser
        args = argparse.Namespace(func=cmd_train, script=argv[0], script_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DermtrlError as exc:  # CLIError and every other user-facing error of the package
        err_console.print(f"[red]error:[/red] {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        err_console.print("interrupted; finished work is saved where the command writes incrementally")
        return 130

