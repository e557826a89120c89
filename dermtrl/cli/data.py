"""``dermtrl data ...`` (the Section 3.1 construction steps) and ``dermtrl publish dataset``.

:func:`register` adds both to the main parser and returns the ``publish`` sub-subparsers, so other modules can
add ``publish adapter`` and the like beside ``publish dataset``. Every command is a thin shell over a function of
:mod:`dermtrl.data`; user errors raise :class:`dermtrl.errors.CLIError` (printed without a traceback, exit 2).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from dermtrl.cli._common import CLIError, allow_failures_arg, endpoint_args, endpoint_config, finish, user_errors
from dermtrl.console import console, err_console

__all__ = ["register", "register_publish"]

out, err = console, err_console


# --- shared options ---------------------------------------------------------------------------------------


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="the run folder (records of every step; resumable)")


def _add_client(p: argparse.ArgumentParser) -> None:
    endpoint_args(p, "pipeline", model_required=False)  # --cache-path defaults to RUN/llm-cache.sqlite


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="discard this step's earlier records instead of resuming")


def _client(args: argparse.Namespace) -> Any:
    from dermtrl.llm.client import LLMClient

    if args.cache_path is None:
        args.cache_path = str(Path(args.run) / "llm-cache.sqlite")
    Path(args.cache_path).parent.mkdir(parents=True, exist_ok=True)
    with user_errors(also=(TypeError,)):
        config = endpoint_config(args)
    return LLMClient(config)


def _vocabulary(path: str | None) -> Any:
    from dermtrl.data.vocabulary import Vocabulary

    with user_errors():
        return Vocabulary.from_file(path) if path else None


def _finish(summary: Any, args: argparse.Namespace | None = None) -> int:
    """Print the step's summary; exit 1 when requests failed or answers were unusable (a rerun retries them),
    unless ``--allow-failures``: the one rule of every resumable command."""
    summary.print(err)
    failed = int(summary.extra.get("failed", 0))
    return finish(failed, summary.total, "items", allow_failures=bool(getattr(args, "allow_failures", False)))


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a step; its user-facing errors (bad input, settings mismatch) become CLIError (endpoint errors already
    are user errors: :class:`~dermtrl.llm.client.LLMError` is a DermtrlError)."""
    with user_errors():
        return fn(*args, **kwargs)


# --- data commands ----------------------------------------------------------------------------------------


def _ingest(args: argparse.Namespace, source: str, *, overwrite: bool) -> None:
    from dermtrl.data.inputs import ingest

    dataset = args.dataset_source
    vocabulary = None
    if dataset is not None:
        from dermtrl.data.sources.labels import is_label_map, vocabulary_for
        from dermtrl.data.sources.registry import get_source

        spec = _guard(get_source, dataset)
        dataset = spec.name
        err.print(spec.describe(), markup=False, highlight=False)
        if args.vocabulary:
            err.print(f"Labels are checked against {args.vocabulary} instead of the shipped mapping table.")
            if _guard(is_label_map, args.vocabulary):  # a copy of label_map.csv: this dataset's rows
                vocabulary = _guard(vocabulary_for, spec.label_datasets, args.vocabulary)
    if vocabulary is None:
        vocabulary = _vocabulary(args.vocabulary)
    summary = _guard(ingest, source, args.run, vocabulary=vocabulary, split=args.split,
                     max_pixels=args.max_pixels, oversize="refuse" if args.refuse_oversize else "downscale",
                     overwrite=overwrite, progress=True, dataset=dataset)
    _finish(summary)
    if summary.extra.get("unmapped labels"):
        err.print(f"Labels not in the mapping table ({summary.extra['unmapped labels']}): their items were skipped. "
                  "To keep them, add dataset,label,category rows to a copy of dermtrl/data/label_map.csv and pass "
                  "it with --vocabulary.", markup=False, highlight=False)


def cmd_ingest(args: argparse.Namespace) -> int:
    _ingest(args, args.source, overwrite=args.overwrite)
    return 0


def cmd_sources(args: argparse.Namespace) -> int:
    from dermtrl.data.sources.registry import SOURCES

    for spec in SOURCES.values():
        out.print(spec.describe(), markup=False, highlight=False)
        out.print(f"  Files: {spec.layout}", markup=False, highlight=False)
        out.print(f"  Command: dermtrl data ingest --source {spec.name} "
                  f"{spec.hub_id or 'PATH'} --run RUN", markup=False, highlight=False)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from dermtrl.data.captioning import caption_items

    if args.input:  # resumes an earlier ingest; --overwrite here redoes the captions only
        _ingest(args, args.input, overwrite=False)
    with _client(args) as client:
        summary = _guard(caption_items, args.run, client, overwrite=args.overwrite)
        client.print_usage(err)
    return _finish(summary, args)


def cmd_reason(args: argparse.Namespace) -> int:
    from dermtrl.data.reasoning import reason_items

    with _client(args) as client:
        summary = _guard(reason_items, args.run, client, args.stream, overwrite=args.overwrite)
        client.print_usage(err)
    return _finish(summary, args)


def cmd_export(args: argparse.Namespace) -> int:
    from dermtrl.data.reviews import export_for_review

    target = args.out or str(Path(args.run) / "review-sheet.csv")
    raters = [r.strip() for r in (args.raters or "").split(",") if r.strip()]
    streams = [args.stream] if args.stream else ["certified", "regular"]
    rows = _guard(export_for_review, args.run, target, streams=streams, raters=raters, pending_only=args.pending)
    out.print(f"Wrote {rows} rows to [bold]{target}[/bold]: fill rater_id, the six scores (0-5) and, for a "
              "certified text scored below 5, revised_text; then `dermtrl data import-reviews`.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from dermtrl.data.reviews import import_reviews

    summary = _guard(import_reviews, args.run, args.sheets)
    return _finish(summary)


def cmd_rationale(args: argparse.Namespace) -> int:
    from dermtrl.data.rationale import rationale_items

    with _client(args) as client:
        summary = _guard(rationale_items, args.run, client, overwrite=args.overwrite)
        client.print_usage(err)
    return _finish(summary, args)


def _print_build(result: Any) -> None:
    from rich.table import Table

    table = Table(title="Built datasets")
    table.add_column("dataset/split")
    table.add_column("rows", justify="right")
    for name, count in result.counts().items():
        table.add_row(name, str(count))
    out.print(table)
    for name, path in result.paths.items():
        out.print(f"{name}: [bold]{path}[/bold] (card: {path / 'README.md'})")


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    """``--certified-count``, ``--regular-max-score``, ...: one ``StreamSelection`` per stream."""
    from dermtrl.data.build import STREAMS, StreamSelection

    out = {}
    for stream in STREAMS:
        values = {k: getattr(args, f"{stream}_{k}") for k in ("count", "min_score", "max_score")}
        if any(v is not None for v in values.values()):
            with user_errors(f"--{stream}-*"):
                out[stream] = StreamSelection(**values)
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from dermtrl.data.build import build_datasets, evaluation_hashes

    started = time.perf_counter()
    options = {"selection": _selection(args), "allow_eval_images_in_train": args.allow_eval_images_in_train}
    if args.synthetic:
        from dermtrl.data.synthetic_pipeline import build_synthetic

        run = args.run or "outputs/synthetic-run"
        client = None
        if args.base_url:
            args.run = run
            client = _client(args)
        else:
            err.print("LLM steps are answered by the embedded synthetic oracle on a loopback server "
                      "(pass --base-url to use a real model)")
        try:
            built = _guard(build_synthetic, run, n=args.n, seed=args.seed, client=client,
                           test_fraction=args.test_fraction, progress=True, on_step=lambda s: s.print(err),
                           build_options={**options, "out_dir": args.out})
        finally:
            if client is not None:
                client.close()
        _print_build(built.result)
        out.print(f"Synthetic build (NOT clinical data) of {args.n} cases in {built.seconds:.1f} s; run folder "
                  f"[bold]{run}[/bold]")
        return 0
    if not args.run:
        raise CLIError("--run is required (or --synthetic for the embedded default)")
    exclude = _guard(evaluation_hashes, args.exclude_from_train) if args.exclude_from_train else set()
    result = _guard(build_datasets, args.run, args.out, test_fraction=args.test_fraction, seed=args.seed,
                    exclude_from_train=exclude, keep_flagged=args.keep_flagged, license=args.license, **options)
    result.summary.print(err)
    _print_build(result)
    out.print(f"Built in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_publish_dataset(args: argparse.Namespace) -> int:
    from dermtrl.hub.dataset import publish_dataset

    if not args.dry_run and not args.repo_id:
        raise CLIError("give --repo-id NAMESPACE/NAME to push to the Hub, or --dry-run FOLDER")
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        raise CLIError(f"environment variable {args.token_env} is not set")
    result = publish_dataset(args.path, args.repo_id, dry_run=args.dry_run, private=args.private, token=token)
    where = "folder" if args.dry_run else "Hub repo"
    out.print(f"Published to {where} [bold]{result.target}[/bold]: "
              + ", ".join(f"{k} {v} rows" for k, v in result.splits.items()))
    for name in result.files:
        out.print(f"  {name}")
    if result.skipped_splits:
        err.print(f"left out empty split(s): {', '.join(result.skipped_splits)}")
    return 0


# --- registration -----------------------------------------------------------------------------------------


def register_publish(subparsers: Any) -> Any:
    """Add ``publish`` with its ``dataset`` subcommand; returns ``publish``'s sub-subparsers to extend."""
    publish = subparsers.add_parser("publish", help="push datasets and DermEval adapters to the Hugging Face Hub")
    targets = publish.add_subparsers(dest="publish_target", required=True, metavar="WHAT")
    p = targets.add_parser("dataset", help="push a built dataset and its card (README.md) to the Hub")
    p.add_argument("path", help="a dataset folder written by `dermtrl data build` (with README.md)")
    p.add_argument("--repo-id", default=None, help="NAMESPACE/NAME on the Hub (endpoint: $HF_ENDPOINT)")
    p.add_argument("--dry-run", metavar="FOLDER", default=None,
                   help="write the files that would be uploaded to FOLDER instead of pushing")
    p.add_argument("--private", action="store_true")
    p.add_argument("--token-env", default=None,
                   help="NAME of a variable holding a Hub token (default: huggingface_hub's own: HF_TOKEN or login)")
    p.set_defaults(func=cmd_publish_dataset)
    return targets


def register(subparsers: Any) -> Any:
    """Add ``data`` and ``publish`` to the main parser's subcommands; returns ``publish``'s sub-subparsers."""
    data = subparsers.add_parser("data", help="build the DermBench and DermEval datasets (Section 3.1)")
    steps = data.add_subparsers(dest="data_command", required=True, metavar="STEP")

    def ingest_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--vocabulary", default=None,
                       help="label vocabulary: CSV label,category / JSON / text (default: the synthetic labels; "
                            "with --source, the shipped mapping table dermtrl/data/label_map.csv)")
        p.add_argument("--source", dest="dataset_source", default=None, metavar="NAME",
                       help="read a public dataset in its own layout: fitzpatrick17k, ddi, scin, pad-ufes-20, "
                            "ham10000, skincap (see `dermtrl data sources`)")
        p.add_argument("--split", default="train", help="split to read from a dataset folder or Hub id")
        p.add_argument("--max-pixels", type=int, default=50_000_000, help="larger images are downscaled or refused")
        p.add_argument("--refuse-oversize", action="store_true", help="refuse images over --max-pixels")

    p = steps.add_parser("ingest", help="check and store labelled images: folder, CSV/JSONL, dataset folder, Hub id")
    p.add_argument("source", help="image folder, .csv/.jsonl table, save_to_disk folder or Hub dataset id (with "
                                  "--source NAME: the named dataset's folder or Hub id)")
    _add_run(p)
    ingest_options(p)
    _add_overwrite(p)
    p.set_defaults(func=cmd_ingest)

    p = steps.add_parser("sources", help="the public datasets ingest reads by name: licence, access, skin tone")
    p.set_defaults(func=cmd_sources)

    p = steps.add_parser("caption", help="observation-only captions (the paper's captioning prompt)")
    _add_run(p)
    p.add_argument("--input", default=None, help="ingest this source first (see `data ingest`)")
    ingest_options(p)
    _add_client(p)
    _add_overwrite(p)
    allow_failures_arg(p)
    p.set_defaults(func=cmd_caption)

    p = steps.add_parser("reason", help="hierarchical reasoning texts for one stream")
    _add_run(p)
    p.add_argument("--stream", required=True, choices=["certified", "regular"],
                   help="certified: caption + ground-truth label; regular: caption + image, no label")
    _add_client(p)
    _add_overwrite(p)
    allow_failures_arg(p)
    p.set_defaults(func=cmd_reason)

    p = steps.add_parser("export-for-review", help="write the reviewer sheet (CSV)")
    _add_run(p)
    p.add_argument("--out", default=None, help="CSV path (default: RUN/review-sheet.csv)")
    p.add_argument("--stream", choices=["certified", "regular"], default=None, help="one stream only")
    p.add_argument("--raters", default=None, help="comma-separated rater ids: one row per text and rater")
    p.add_argument("--pending", action="store_true", help="only texts not yet reviewed or awaiting revision")
    p.set_defaults(func=cmd_export)

    p = steps.add_parser("import-reviews", help="validate and record filled reviewer sheets")
    _add_run(p)
    p.add_argument("sheets", nargs="+", help="filled reviewer sheet(s) (CSV)")
    p.set_defaults(func=cmd_import)

    p = steps.add_parser("rationale", help="per-dimension rationales and y* for every scored text")
    _add_run(p)
    _add_client(p)
    _add_overwrite(p)
    allow_failures_arg(p)
    p.set_defaults(func=cmd_rationale)

    p = steps.add_parser("build", help="build dermbench and dermeval (save_to_disk) with their cards")
    p.add_argument("--run", default=None, help="the run folder (with --synthetic: default outputs/synthetic-run)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/datasets)")
    p.add_argument("--synthetic", action="store_true",
                   help="run the whole pipeline offline on synthetic cases (the embedded default)")
    p.add_argument("--n", type=int, default=40, help="--synthetic: number of cases")
    p.add_argument("--seed", type=int, default=0, help="split seed (and synthetic cases' seed)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of images in DermEval's test split")
    p.add_argument("--exclude-from-train", nargs="*", default=[], metavar="PATH",
                   help="evaluation images kept out of DermEval training: hash list, image folder or dataset")
    p.add_argument("--keep-flagged", action="store_true",
                   help="keep texts whose rationale restates other scores than the experts'")
    p.add_argument("--license", default="cc-by-nc-4.0", help="license id for the cards (that of your images)")
    g = p.add_argument_group("training-set selection (Section 3.4: 2,000 certified exemplars with perfect scores "
                             "plus 2,000 imperfect low-score texts); score = mean of the six expert scores")
    for stream in ("certified", "regular"):
        g.add_argument(f"--{stream}-count", type=int, default=None, metavar="N",
                       help=f"keep N {stream} rows in DermEval's train split (seeded choice; default: all)")
        g.add_argument(f"--{stream}-min-score", type=float, default=None, metavar="X",
                       help=f"keep only {stream} train rows scoring at least X")
        g.add_argument(f"--{stream}-max-score", type=float, default=None, metavar="X",
                       help=f"keep only {stream} train rows scoring at most X")
    g.add_argument("--allow-eval-images-in-train", action="store_true",
                   help="keep in dermbench the references of images DermEval trains on (by default dermbench, the "
                        "evaluation set, holds only images not in DermEval's train split)")
    _add_client(p)
    p.set_defaults(func=cmd_build)

    register_records(steps)
    return register_publish(subparsers)


# --- DermEval records in the official schema (import-records / export-records) ---------------------------------


def register_records(steps: Any) -> None:
    """Add ``import-records`` and ``export-records``: official DermEval records <-> the ``dermeval`` dataset."""
    p = steps.add_parser("import-records", help="official DermEval records (JSON/JSONL) -> a dermeval dataset")
    p.add_argument("records", help="records in the official schema: id, image, diagnostic_text, evaluation_text, "
                                   "scores (snake_case keys)")
    p.add_argument("--out", required=True, help="a .jsonl data file, or a dataset folder (needs --image-root)")
    p.add_argument("--image-root", default=None, help="the folder the records' image paths are relative to")
    p.add_argument("--split", default="train", help="the split of a dataset folder (default: train)")
    p.set_defaults(func=cmd_import_records)
    p = steps.add_parser("export-records", help="a dermeval dataset (folder or .jsonl) -> official DermEval records")
    p.add_argument("dataset", help="a dermeval dataset folder or data file")
    p.add_argument("--out", required=True, help="the records JSONL to write")
    p.set_defaults(func=cmd_export_records)


@user_errors()
def cmd_import_records(args: argparse.Namespace) -> int:
    from dermtrl.data.records import import_records

    n = import_records(args.records, args.out, image_root=args.image_root, split=args.split)
    out.print(f"{n} DermEval record(s) imported into [bold]{args.out}[/bold]")
    return 0


@user_errors()
def cmd_export_records(args: argparse.Namespace) -> int:
    from dermtrl.data.records import export_records

    n = export_records(args.dataset, args.out)
    out.print(f"{n} DermEval record(s) exported to [bold]{args.out}[/bold] (the official schema)")
    return 0
