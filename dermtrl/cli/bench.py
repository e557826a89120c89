"""``dermtrl bench``: generate, judge, report, probe, run. Each subcommand is a thin shell over dermtrl.bench.

:func:`register` adds the ``bench`` command to the ``dermtrl`` parser. Heavy imports happen inside the commands,
so ``dermtrl --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dermtrl.cases.splits import TEST_START
from dermtrl.errors import user_errors

__all__ = ["register"]


def finish(failed: int, total: int, what: str, *, allow_failures: bool, notes: Sequence[str] = ()) -> int:
    from dermtrl.cli._common import finish as finish_job

    return finish_job(failed, total, what, allow_failures=allow_failures, notes=notes)


def _failure_args(p: argparse.ArgumentParser, *, retry: bool = True) -> None:
    from dermtrl.cli._common import allow_failures_arg

    allow_failures_arg(p)
    if retry:
        p.add_argument("--retry-failed", action="store_true",
                       help="redo records that failed (a server that was down, a call that failed)")


def _consoles() -> tuple[Any, Any]:
    from dermtrl.cli._common import console, err_console

    return console, err_console


# --- shared arguments ----------------------------------------------------------------------------------


def _dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cases")
    g.add_argument("--dataset", required=True,
                   help="Hub id, local folder or file, dermtrl:synthetic, or a checkout of the DermBench release")
    g.add_argument("--image-root", default=None,
                   help="DermBench release: root of your DermNet test images (default: $DERMNET_TEST_ROOT; "
                        "without it, judging works and generation does not)")
    g.add_argument("--exclude-flagged", action="store_true",
                   help="DermBench release: leave out references the audit's rule pass flags")
    g.add_argument("--protocol", choices=("paper", "official"), default="paper",
                   help="paper: dermtrl's prompts; official: the release's candidate and judge prompts, read from "
                        "the checkout (default: paper)")
    g.add_argument("--split", default="test")
    g.add_argument("--n", type=int, default=None, help="use the first N cases (synthetic: generate N)")
    g.add_argument("--seed", type=int, default=0, help="synthetic cases: seed")
    g.add_argument("--start", type=int, default=TEST_START, help="synthetic cases: first index (default: test cases)")


def _client_args(p: argparse.ArgumentParser, who: str, *, model_required: bool = True, prefix: str = "") -> None:
    from dermtrl.cli._common import endpoint_args

    endpoint_args(p, who, prefix=prefix, model_required=model_required,
                  structured_output=who in ("judge", "LLM parser"))


def _client_config(args: argparse.Namespace, prefix: str = "", **extra: Any) -> Any:
    from dermtrl.cli._common import endpoint_config

    return endpoint_config(args, prefix, **extra)


def _judge_config(args: argparse.Namespace) -> Any:
    """The judge's client: the flags given, and under ``--protocol official`` the paper's judge for the rest
    (``deepseek-reasoner`` at DeepSeek's API, key from ``$DEEPSEEK_API_KEY``)."""
    import dataclasses

    from dermtrl.cli._common import CLIError
    from dermtrl.llm.client import ClientConfig

    if getattr(args, "protocol", "paper") == "official":
        from dermtrl.bench.official import OFFICIAL_JUDGE

        defaults = {f.name: f.default for f in dataclasses.fields(ClientConfig)}
        for name, value in OFFICIAL_JUDGE.items():
            if getattr(args, name, None) in (None, defaults.get(name)):
                setattr(args, name, value)
        config = _client_config(args)
        return config if args.max_tokens is not None else config.replace(max_tokens=None)
    if args.model is None:
        raise CLIError("--model: the judge model is required (or --protocol official for the paper's judge, "
                       "deepseek-reasoner)")
    return _client_config(args)


def _loaded(args: argparse.Namespace) -> Any:
    """The cases (a dataset or the release), with the release's checks printed."""
    from dermtrl.bench.dermbench import load_bench_cases

    _, err = _consoles()
    loaded = load_bench_cases(args.dataset, args.split, n=args.n, seed=args.seed, start=args.start,
                              image_root=args.image_root, exclude_flagged=args.exclude_flagged)
    for line in loaded.notes:
        err.print(line)
    return loaded


def _cases(args: argparse.Namespace) -> Any:
    return _loaded(args).cases


def _candidate_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("candidates")
    g.add_argument("--candidates", nargs="+", default=[], metavar="JSONL",
                   help="candidates files from `dermtrl bench generate` (one per model)")
    g.add_argument("--dataset-narratives", metavar="NAME", default=None,
                   help="also judge the dataset's own 'narrative' column as model NAME (with its expert scores)")


def _dermeval_model_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--dermeval-base", default=None, help="DermEval's base model (default: the adapter's)")
    p.add_argument("--dermeval-batch-size", type=int, default=8)


def _candidate_sets(args: argparse.Namespace, ds: Any) -> dict[str, Any]:
    from dermtrl.bench.dermbench import candidate_sets
    from dermtrl.bench.generate import candidates_from_dataset
    from dermtrl.cli._common import CLIError

    sets = candidate_sets(args.candidates) if args.candidates else {}
    if args.dataset_narratives:
        if args.dataset_narratives in sets:
            raise CLIError(f"--dataset-narratives {args.dataset_narratives!r}: a candidates file has that name")
        if not hasattr(ds, "column_names"):
            raise CLIError("--dataset-narratives: the DermBench release has no narratives of its own; give "
                           "--candidates FILE")
        scores = "expert_scores" if "expert_scores" in ds.column_names else None
        sets[args.dataset_narratives] = candidates_from_dataset(ds, "narrative", expert_scores=scores)
    if not sets:
        raise CLIError("nothing to judge: give --candidates FILE ... and/or --dataset-narratives NAME")
    return sets


def _print_failures(records: Sequence[dict[str, Any]], limit: int = 10) -> None:
    _, err = _consoles()
    failed = [r for r in records if r.get("error")]
    for r in failed[:limit]:
        err.print(f"[yellow]failed[/yellow] {r.get('model')} / {r['case_id']}: {str(r['error'])[:200]}")
    if len(failed) > limit:
        err.print(f"... and {len(failed) - limit} more failed (see the JSONL)")


# --- commands ------------------------------------------------------------------------------------------


@user_errors()
def cmd_generate(args: argparse.Namespace) -> int:
    from dermtrl.bench.generate import OpenAIGenerator, TransformersGenerator, generate_candidates
    from dermtrl.cli._common import CLIError

    console, _ = _consoles()
    from dermtrl.bench.dermbench import _check_images

    if (args.model is None) == (args.local is None):
        raise CLIError("give exactly one of --model (an OpenAI-compatible endpoint) or --local (transformers)")
    loaded = _loaded(args)
    ds = loaded.cases
    _check_images(ds)
    instruction = None
    if args.protocol == "official":
        if loaded.release is None:
            raise CLIError("--protocol official: --dataset must be a checkout of the DermBench release (its "
                           "candidate prompt is read from it)")
        instruction = loaded.release.prompt("candidate")
    if args.local is not None:
        generator: Any = TransformersGenerator(args.local, batch_size=args.batch_size,
                                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                               device=args.device, dtype=args.dtype, instruction=instruction)
    else:
        generator = OpenAIGenerator(_client_config(args, temperature=args.temperature, seed=args.sampling_seed),
                                    instruction=instruction)
    try:
        records = generate_candidates(ds, generator, args.out, name=args.name, overwrite=args.overwrite,
                                      retry_failed=args.retry_failed, progress=not args.no_progress)
    finally:
        generator.close()
    _print_failures(records)
    errors = sum(1 for r in records if r.get("error"))
    console.print(f"{len(records) - errors} of {len(records)} candidates generated, {errors} failed; records in "
                  f"[bold]{args.out}[/bold]")
    notes: list[str] = []
    if isinstance(generator, OpenAIGenerator):
        console.print(generator.client.usage.summary())
        notes = generator.client.notes()
    return finish(errors, len(records), "candidates", allow_failures=args.allow_failures, notes=notes)


@user_errors()
def cmd_judge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dermtrl.bench.dermbench import DermBench
    from dermtrl.bench.official import write_official_scores

    console, _ = _consoles()
    loaded = _loaded(args)
    ds = loaded.cases
    sets = loaded.without_excluded(_candidate_sets(args, ds))
    with DermBench(_judge_config(args), parse_retries=args.parse_retries, progress=not args.no_progress,
                   protocol=args.protocol, release=loaded.release) as bench:
        records = bench.judge(ds, sets, args.out, overwrite=args.overwrite, retry_failed=args.retry_failed)
        _print_failures(records)
        failed = sum(1 for r in records if r["status"] == "failed")
        official = write_official_scores(records, Path(args.out).with_suffix(".official.jsonl"),
                                         judge_model=bench.client.config.model)
        console.print(f"{len(records) - failed} of {len(records)} candidates scored, {failed} failed; records in "
                      f"[bold]{args.out}[/bold] (the release's summarize_scores.py reads {official})")
        console.print(bench.usage.table("Judge usage"))
        notes = bench.client.notes()
    total = len(records)
    if args.dermeval:
        dermeval = _dermeval_step(args, ds, sets, records)
        dermeval_failed = sum(1 for r in dermeval if r.get("error"))
        console.print(f"DermEval: {len(dermeval) - dermeval_failed} of {len(dermeval)} candidates scored, "
                      f"{dermeval_failed} failed")
        failed, total = failed + dermeval_failed, total + len(dermeval)
    return finish(failed, total, "records (judgments and DermEval scores)" if args.dermeval else "judgments",
                  allow_failures=args.allow_failures, notes=notes)


def _dermeval_step(args: argparse.Namespace, ds: Any, sets: dict[str, Any],
                   judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``judge --dermeval ADAPTER``: score the same candidates with DermEval and print both halves of Table 2."""
    from pathlib import Path

    from dermtrl.bench.dermeval_scoring import load_dermeval, score_candidates
    from dermtrl.bench.leaderboard import compare_evaluators
    from dermtrl.bench.render import comparison_tables

    console, _ = _consoles()
    out = Path(args.dermeval_out or Path(args.out).with_suffix(".dermeval.jsonl"))
    evaluator = load_dermeval(args.dermeval, args.dermeval_base, batch_size=args.dermeval_batch_size)
    records = score_candidates(ds, sets, evaluator, out, overwrite=args.overwrite, progress=not args.no_progress)
    for table in comparison_tables(compare_evaluators(judged, records, n_bootstrap=0)):
        console.print(table)
    console.print(f"DermEval records in [bold]{out}[/bold] (`dermtrl bench report ... --dermeval {out}` for CIs)")
    return records


@user_errors()
def cmd_report(args: argparse.Namespace) -> int:
    from dermtrl.bench.dermbench import read_judgments
    from dermtrl.bench.leaderboard import build_leaderboard
    from dermtrl.bench.render import render_tables, write_report

    console, _ = _consoles()
    from dermtrl.bench.render import notes_lines

    board = build_leaderboard(read_judgments(*args.judgments), n_bootstrap=args.n_bootstrap, seed=args.seed, ci=args.ci,
                              by=args.by)
    for table in render_tables(board):
        console.print(table)
    for line in notes_lines(board):
        console.print(line)
    if args.out:
        paths = write_report(board, args.out)
        console.print("Report: " + ", ".join(str(p) for p in paths.values()))
    if args.dermeval:
        from dermtrl.bench.leaderboard import compare_evaluators
        from dermtrl.bench.render import comparison_tables, write_comparison

        comparison = compare_evaluators(read_judgments(*args.judgments), read_judgments(*args.dermeval),
                                        n_bootstrap=args.n_bootstrap, seed=args.seed, ci=args.ci)
        for table in comparison_tables(comparison):
            console.print(table)
        if args.out:
            console.print("Comparison: " + ", ".join(str(p) for p in write_comparison(comparison, args.out).values()))
    return 0


@user_errors()
def cmd_table1(args: argparse.Namespace) -> int:
    """Table 1 in one command: DermBench and DermEval against expert scores on the same rated narratives."""
    from dermtrl.bench.dermeval_scoring import load_dermeval
    from dermtrl.bench.table1 import run_table1
    from dermtrl.report import render_table

    console, _ = _consoles()
    evaluator = load_dermeval(args.dermeval, args.dermeval_base, batch_size=args.dermeval_batch_size)
    table, paths = run_table1(_cases(args), _client_config(args), evaluator, args.out,
                              parse_retries=args.parse_retries, n_bootstrap=args.n_bootstrap,
                              seed=args.bootstrap_seed, overwrite=args.overwrite, progress=not args.no_progress,
                              by=args.by)
    console.print(render_table([table.dermbench, table.dermeval],
                               title="Table 1: MAE against expert scores (rounded scores) [CI]"))
    diff = table.difference["Macro"]
    if diff is not None:
        console.print(f"Macro MAE, DermEval minus DermBench: {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}] "
                      f"(paired bootstrap, {table.n_paired} narratives)")
    for sliced in table.slices:
        for line in sliced.lines():
            console.print(line, markup=False, highlight=False)
    console.print("Table 1: " + ", ".join(str(p) for p in paths.values()))
    return 0


@user_errors()
def cmd_probe(args: argparse.Namespace) -> int:
    from dermtrl.bench.dermbench import DermBench
    from dermtrl.bench.render import probe_table
    from dermtrl.cli._common import CLIError

    console, _ = _consoles()
    kinds = [k.strip() for k in args.probes.split(",") if k.strip()]
    loaded = _loaded(args)
    ds = loaded.cases
    sets = loaded.without_excluded(_candidate_sets(args, ds))
    if args.protocol == "official" and "order" in kinds:
        raise CLIError("--probes order: the order probe swaps dermtrl's prompt; --protocol official has one fixed "
                       "prompt (drop order, or use --protocol paper)")
    with DermBench(_judge_config(args), parse_retries=args.parse_retries, progress=not args.no_progress,
                   protocol=args.protocol, release=loaded.release) as bench:
        report = bench.probe(ds, sets, args.out, kinds=kinds, n=args.probe_n, threshold=args.threshold,
                             n_bootstrap=args.n_bootstrap, overwrite=args.overwrite)
        console.print(probe_table(report))
        console.print(bench.usage.table("Judge usage"))
    console.print(f"Probe report: {args.out}/probes.md, {args.out}/probes.json")
    return 1 if args.strict and report.flagged else 0


@user_errors()
def cmd_audit(args: argparse.Namespace) -> int:
    """The reference audit: a rule pass (and optionally an LLM) over every reference; a table of the flagged."""
    from dermtrl.bench.audit import audit_rows, confirm_with_llm, summary_line, write_audit
    from dermtrl.bench.cases import case_rows
    from dermtrl.bench.release import find_release, load_release
    from dermtrl.cli._common import CLIError

    console, err = _consoles()
    if find_release(args.references) is not None:
        release = load_release(args.references)
        err.print(release.summary())
        for line in release.problems:
            err.print(line)
        rows = release.rows()
        label = args.label_column or "diagnosis"
        flags = audit_rows(rows, label_column=label, sha_mismatch=release.sha_mismatch)
    else:
        from dermtrl.cases.loading import load_cases

        ds = load_cases(args.references, args.split)
        label = args.label_column or "label"
        rows = list(case_rows(ds, ("reference", label, "category"), required=("reference",)))
        flags = audit_rows(rows, label_column=label)
    if args.llm:
        if args.llm_model is None:
            raise CLIError("--llm: give --llm-model (and --llm-base-url for a local server)")
        from dermtrl.llm.client import LLMClient

        with LLMClient(_client_config(args, "llm-")) as client:
            flags, cleared, failed = confirm_with_llm(flags, client)
        err.print(f"LLM pass: {cleared} rule mismatch(es) cleared, {failed} call(s) failed")
    paths = write_audit(len(rows), flags, args.out)
    console.print(f"{summary_line(len(rows), flags)}; table in {paths['csv']} and {paths['md']}")
    return 0


@user_errors()
def cmd_run(args: argparse.Namespace) -> int:
    from dermtrl.bench.config import load_config
    from dermtrl.bench.dermbench import run_config
    from dermtrl.bench.render import probe_table, render_tables

    console, _ = _consoles()
    config = load_config(args.config)
    result = run_config(config, overwrite=args.overwrite, retry_failed=args.retry_failed,
                        progress=not args.no_progress)
    for table in render_tables(result.leaderboard):
        console.print(table)
    if result.comparison is not None:
        from dermtrl.bench.render import comparison_tables

        for table in comparison_tables(result.comparison):
            console.print(table)
    if result.probes is not None:
        console.print(probe_table(result.probes))
    from dermtrl.bench.render import notes_lines

    for line in notes_lines(result.leaderboard):
        console.print(line)
    u = result.usage
    console.print(f"Judge: {u['calls']} calls, {u['cache_hits']} cache hits, {u['failures']} failures")
    console.print("Report: " + ", ".join(str(p) for p in result.paths.values()))
    failed = result.failed
    dermeval = (f" and {failed['dermeval']} DermEval score(s)" if result.totals.get("dermeval") else "")
    console.print(f"{failed['candidates']} candidate(s){',' if dermeval else ' and'} {failed['judgments']} "
                  f"judgment(s){dermeval} failed")
    return finish(sum(failed.values()), sum(result.totals.values()),
                  "records (candidates, judgments and DermEval scores)" if dermeval else
                  "records (candidates and judgments)", allow_failures=args.allow_failures, notes=result.notes)


# --- parser --------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``bench`` and its subcommands to the ``dermtrl`` CLI's subparsers."""
    bench = subparsers.add_parser("bench", help="DermBench: generate candidates, judge, report, probe the judge",
                                  description="DermBench (paper Section 3.2): candidate narratives from any VLM, "
                                              "judged against certified references on six dimensions.")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="STEP")

    p = sub.add_parser("generate", help="candidate narratives from one VLM (endpoint or local), one JSONL")
    _dataset_args(p)
    _client_args(p, "candidate", model_required=False)
    g = p.add_argument_group("local transformers model (instead of --model)")
    g.add_argument("--local", default=None, help="AutoModelForImageTextToText: Hub id, folder or dermtrl:tiny")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--device", default=None)
    g.add_argument("--dtype", default=None, help="e.g. bfloat16")
    p.add_argument("--temperature", type=float, default=0.0, help="0: deterministic (and cached)")
    p.add_argument("--sampling-seed", type=int, default=None, help="endpoint sampling seed")
    p.add_argument("--name", default=None, help="model name in the records (default: --model / --local)")
    p.add_argument("--out", required=True, help="candidates JSONL (written as it goes, resumable)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier records instead of resuming")
    _failure_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="score candidates against certified references (six dimensions, 0-5)")
    _dataset_args(p)
    _candidate_args(p)
    _client_args(p, "judge", model_required=False)
    p.add_argument("--parse-retries", type=int, default=None,
                   help="re-asks of an answer that misses a score (default 2; --protocol official: 1)")
    p.add_argument("--out", required=True, help="judgments JSONL (written as it goes, resumable; the release's "
                                                 "score format goes beside it, .official.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier records instead of resuming")
    _failure_args(p)
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("DermEval as a second evaluator (Table 2's second half)")
    g.add_argument("--dermeval", metavar="ADAPTER", default=None, help="also score with DermEval (folder or Hub id)")
    _dermeval_model_args(g)
    g.add_argument("--dermeval-out", default=None, help="DermEval records JSONL (default: beside --out)")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("report", help="leaderboard, categories, rank stability, agreement: tables and files")
    p.add_argument("judgments", nargs="+", help="judgments JSONL file(s)")
    p.add_argument("--out", default=None, help="folder for report.md/.json, leaderboard.csv/.png, ...")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--ci", type=float, default=0.95)
    p.add_argument("--by", metavar="FIELD", default=None,
                   help="slice each model's scores by this record field (default: skin_tone when records carry it)")
    p.add_argument("--dermeval", nargs="+", default=None, metavar="JSONL",
                   help="DermEval records (from judge --dermeval): Table 2 for both evaluators, Figure 6, agreement")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("table1", help="Table 1: DermBench and DermEval vs expert scores on rated narratives")
    _dataset_args(p)
    _client_args(p, "judge")
    p.add_argument("--dermeval", metavar="ADAPTER", required=True, help="DermEval adapter (folder or Hub id)")
    _dermeval_model_args(p)
    p.add_argument("--parse-retries", type=int, default=2)
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--out", required=True, help="folder: judgments.jsonl, dermeval.jsonl, table1.md/.csv/.json")
    p.add_argument("--by", metavar="COLUMN", default=None,
                   help="slice the report by this column (default: skin_tone when the data has it)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_table1)

    p = sub.add_parser("probe", help="judge robustness: injection, length padding, reference order")
    _dataset_args(p)
    _candidate_args(p)
    _client_args(p, "judge", model_required=False)
    p.add_argument("--probes", default="injection,length,order", help="comma-separated probes")
    p.add_argument("--probe-n", type=int, default=None, help="probe the first N candidates of each model")
    p.add_argument("--threshold", type=float, default=0.25, help="flag a mean shift of at least this")
    p.add_argument("--n-bootstrap", type=int, default=1000)
    p.add_argument("--parse-retries", type=int, default=None, help="default 2; --protocol official: 1")
    p.add_argument("--out", required=True, help="folder for the probe runs and probes.md/.json")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when a probe is flagged")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("audit", help="flag certified references not to trust: wrong diagnosis, short, duplicate, ...")
    p.add_argument("references", metavar="RELEASE_OR_DATASET",
                   help="a checkout of the DermBench release (or its data/ folder), or a dataset with a reference "
                        "column")
    p.add_argument("--label-column", default=None,
                   help="the column holding each case's diagnosis label (default: diagnosis for the release, "
                        "label for a dataset)")
    p.add_argument("--split", default="test", help="a dataset's split")
    p.add_argument("--out", default="runs/audit", help="folder for audit.csv and audit.md (default: runs/audit)")
    p.add_argument("--llm", action="store_true",
                   help="ask an LLM (the --llm-* endpoint flags) about each mismatch the rules flag; cached")
    _client_args(p, "audit LLM", model_required=False, prefix="llm-")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("run", help="generate + judge + report (+ probes) from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (see recipes/configs/bench_example.yaml)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier records instead of resuming")
    _failure_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)
