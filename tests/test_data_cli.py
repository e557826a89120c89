"""The `dermtrl data ...` and `dermtrl publish` commands, run through the real argument parser."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from datasets import load_from_disk

from dermtrl.cases.synthetic import SYNTHETIC_VERSION
from dermtrl.data.synthetic_pipeline import SyntheticOracle, synthetic_cases


def run_cli(argv: list[str]) -> tuple[int, str]:
    """dermtrl's main parser with `data` and `publish` registered (as dermtrl/cli.py does); (exit code, output)."""
    from rich.console import Console

    import dermtrl.cli.data as data_cli
    from dermtrl.cli import CLIError, build_parser

    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if hasattr(a, "choices"))  # type: ignore[union-attr]
    if "data" not in sub.choices:
        data_cli.register(sub)
    buffer = io.StringIO()
    saved = data_cli.out, data_cli.err
    data_cli.out, data_cli.err = Console(file=buffer, width=200), Console(file=buffer, width=200)
    try:
        with redirect_stdout(buffer), redirect_stderr(buffer):
            args = parser.parse_args(argv)
            try:
                code = args.func(args)
            except CLIError as exc:
                buffer.write(f"error: {exc}\n")
                code = 2
    finally:
        data_cli.out, data_cli.err = saved
    return code, buffer.getvalue()


def test_build_synthetic_runs_the_whole_pipeline_offline(tmp_path: Path, make_openai_server) -> None:
    cases = synthetic_cases(16, seed=1)
    server = make_openai_server(responder=SyntheticOracle(cases))
    run = tmp_path / "run"
    code, output = run_cli(["data", "build", "--synthetic", "--n", "16", "--seed", "1", "--run", str(run),
                            "--base-url", server.base_url, "--model", "oracle", "--test-fraction", "0.25",
                            "--allow-eval-images-in-train"])
    assert code == 0, output
    bench = load_from_disk(str(run / "datasets" / "dermbench"))
    evaluation = load_from_disk(str(run / "datasets" / "dermeval"))
    assert len(bench["test"]) == 16
    assert len(evaluation["train"]) + len(evaluation["test"]) == 32
    assert set(evaluation["train"]["stream"]) == {"certified", "regular"}
    # certified references are fixed at 5; some were revised by the synthetic rater
    train = evaluation["train"]
    assert all(all(v == 5.0 for v in s.values())
               for s, st in zip(train["expert_scores"], train["stream"], strict=True) if st == "certified")
    assert any(bench["test"]["reference_revised"])
    for name in ("dermbench", "dermeval"):
        card = (run / "datasets" / name / "README.md").read_text()
        assert "Synthetic data" in card and "## Not a medical device" in card
    # every LLM step went to the server, with the paper's prompts, and records carry prompt version and model
    assert server.calls >= 16 * 4
    caption = json.loads((run / "captions.jsonl").read_text().splitlines()[0])
    assert caption["model"] == "oracle" and caption["prompt_version"]
    # the oracle slips on purpose for some cases: the caption retry removed the diagnosis it named
    retried = [json.loads(line) for line in (run / "captions.jsonl").read_text().splitlines()]
    assert any(r["attempts"] == 2 and r["first_caption"] and not r["flags"] for r in retried)
    assert "Synthetic build" in output and "dermeval/train" in output


def test_build_synthetic_without_endpoint_uses_the_embedded_oracle(tmp_path: Path) -> None:
    # with the Section 3.4 selection flags: per-stream counts and a score bound, reported in the card
    code, output = run_cli(["data", "build", "--synthetic", "--n", "8", "--run", str(tmp_path / "run"),
                            "--test-fraction", "0.25", "--certified-count", "2", "--certified-min-score", "5",
                            "--regular-count", "2", "--regular-max-score", "5"])
    assert code == 0, output
    assert "embedded synthetic oracle" in output
    datasets = tmp_path / "run" / "datasets"
    bench, evaluation = load_from_disk(str(datasets / "dermbench")), load_from_disk(str(datasets / "dermeval"))
    assert sorted(evaluation["train"]["stream"]) == ["certified", "certified", "regular", "regular"]
    # dermbench, the evaluation set, holds no image DermEval trains on; the others' references are all there
    train_images = set(evaluation["train"]["image_sha256"])
    assert not train_images & set(bench["test"]["image_sha256"])
    card = (datasets / "dermeval" / "README.md").read_text()
    assert "| certified | score >= 5, 2 rows |" in card and "| regular | score <= 5, 2 rows |" in card
    assert "are never in `train`" in card
    left_out = int(re.search(r"(\d+) certified reference\(s\) of training images were left out",
                             (datasets / "dermbench" / "README.md").read_text()).group(1))
    assert left_out == len(train_images) and len(bench["test"]) == 8 - left_out
    # a count the train split cannot meet is an error naming the flag
    code, output = run_cli(["data", "build", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "again"),
                            "--regular-count", "99"])
    assert code == 2 and "--regular-count 99: only" in output


def test_cli_user_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    code, output = run_cli(["data", "caption", "--run", str(tmp_path / "empty"), "--base-url", "http://127.0.0.1:9/v1"])
    assert code == 2 and "no ingested items" in output
    code, output = run_cli(["data", "ingest", str(tmp_path / "nope"), "--run", str(tmp_path / "r")])
    assert code == 2 and "no such folder or file" in output
    code, output = run_cli(["publish", "dataset", str(tmp_path)])
    assert code == 2 and "--repo-id" in output
    code, output = run_cli(["data", "build"])
    assert code == 2 and "--run is required" in output


def test_every_step_through_the_cli(tmp_path: Path, make_openai_server) -> None:
    from dermtrl.data.run import RunDir
    from dermtrl.data.synthetic_pipeline import fill_review_sheet, write_image_folder

    cases = synthetic_cases(6, seed=4)
    oracle = SyntheticOracle(cases)
    server = make_openai_server(responder=oracle)
    source = write_image_folder(cases, tmp_path / "images", seed=4)
    run = str(tmp_path / "run")
    llm = ["--base-url", server.base_url, "--model", "oracle"]
    steps = [
        ["data", "caption", "--run", run, "--input", str(source), *llm],
        ["data", "reason", "--run", run, "--stream", "certified", *llm],
        ["data", "reason", "--run", run, "--stream", "regular", *llm],
        ["data", "export-for-review", "--run", run, "--raters", "dr_a"],
    ]
    for argv in steps:
        code, output = run_cli(argv)
        assert code == 0, (argv, output)
    sheet = Path(run) / "review-sheet.csv"
    filled = fill_review_sheet(sheet, tmp_path / "filled.csv", RunDir(run), oracle)
    for argv in (["data", "import-reviews", "--run", run, str(filled)], ["data", "rationale", "--run", run, *llm],
                 ["data", "build", "--run", run, "--test-fraction", "0.5", "--license", "cc-by-4.0"],
                 ["publish", "dataset", str(Path(run) / "datasets" / "dermbench"), "--dry-run",
                  str(tmp_path / "dry")]):
        code, output = run_cli(argv)
        assert code == 0, (argv, output)
    assert "Published to folder" in output and (tmp_path / "dry" / "data" / "test-00000-of-00001.parquet").is_file()
    assert "license: cc-by-4.0" in (tmp_path / "dry" / "README.md").read_text()
    assert len(load_from_disk(str(Path(run) / "datasets" / "dermeval"))["train"]) + \
        len(load_from_disk(str(Path(run) / "datasets" / "dermeval"))["test"]) == 12
    # a second caption run with another model is refused, not mixed in
    code, output = run_cli(["data", "caption", "--run", run, "--base-url", server.base_url, "--model", "other"])
    assert code == 2 and "model: file has 'oracle'" in output and "overwrite" in output


def test_build_synthetic_writes_where_out_says(tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    code, output = run_cli(["data", "build", "--synthetic", "--n", "6", "--run", str(tmp_path / "run"),
                            "--out", str(out), "--allow-eval-images-in-train"])
    assert code == 0, output
    assert (out / "dermbench" / "README.md").exists() and (out / "dermeval" / "README.md").exists()
    assert not (tmp_path / "run" / "datasets").exists()
    assert f"synthetic cases {SYNTHETIC_VERSION}" in (out / "dermeval" / "README.md").read_text()


def test_a_step_whose_every_request_failed_exits_1_unless_failures_are_allowed(tmp_path: Path, make_openai_server):
    """A text-only llama-server answers every image with "image input is not supported": `data caption` records
    each error (a rerun retries them) and exits 1, as every resumable command does; --allow-failures exits 0."""
    from dermtrl.data.synthetic_pipeline import write_image_folder
    from dermtrl.llm.server import Fault

    def text_only_model(body: dict) -> str:
        raise Fault("500", message="image input is not supported - hint: provide the mmproj")

    server = make_openai_server(responder=text_only_model)
    source = write_image_folder(synthetic_cases(3, seed=5), tmp_path / "images", seed=5)
    run = str(tmp_path / "run")
    argv = ["data", "caption", "--run", run, "--input", str(source), "--base-url", server.base_url, "--model", "m"]
    code, output = run_cli(argv)
    assert code == 1 and "3 of 3 items failed" in output and "failed 3" in output
    code, output = run_cli([*argv, "--allow-failures"])
    assert code == 0
