"""A newcomer's first hour, following only the documented commands (README, docs/source/, --help):

1. score one narrative against one image (``dermtrl score``; ``dermtrl eval`` on a one-line JSONL);
2. judge a model's narratives against references with an OpenAI-compatible judge (the stand-in judge server of
   docs/source/offline_judge.md and ``dermtrl bench run`` with a candidates file, docs/source/data_formats.md);
3. train Stage 1 on one's own 20 cases (a JSONL with relative image paths, y* built with ``format_evaluation``
   as data_formats.md shows), then evaluate them with the constant baseline beside the model.

The commands run as users run them: the ``dermtrl`` console script in a subprocess, from the data's folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dermtrl.cases.loading import SYNTHETIC, load_cases
from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import format_evaluation

ROOT = Path(__file__).resolve().parents[1]
DERMTRL = [sys.executable, "-m", "dermtrl.cli"]
pytestmark = pytest.mark.timeout(600)


def run(args: list[str], cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([*DERMTRL, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


def write_cases(folder: Path, start: int, n: int, *, with_training_columns: bool) -> Path:
    """A user's own data in the documented layout: images in a folder, a JSONL naming them relative to itself."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    cases = load_cases(SYNTHETIC, n=n, start=start)  # stand-ins for the user's photographs and narratives
    rows = []
    for case in cases:
        name = f"images/{case['case_id']}.png"
        case["image"].save(folder / name)
        row = {"case_id": case["case_id"], "image": name, "narrative": case["narrative"],
               "expert_scores": case["expert_scores"]}
        if with_training_columns:  # data_formats.md, "When you have only scores"
            row["evaluation"] = format_evaluation("The findings were compared with the image.", case["expert_scores"])
        rows.append(row)
    path = folder / ("train.jsonl" if with_training_columns else "test.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- task 1: score one narrative against one image -----------------------------------------------------------


def test_task1_score_one_narrative(demo_adapter, tmp_path):
    case = load_cases(SYNTHETIC, "test", n=1)[0]
    case["image"].save(tmp_path / "lesion.png")

    done = run(["score", "lesion.png", case["narrative"], "--adapter", str(demo_adapter)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = " ".join(done.stdout.split())
    assert all(dim in out for dim in DIMENSIONS) and "Overall:" in out
    assert "higher is better on every dimension" in out and "Expected" in out and "Spread" in out
    assert "Safety Harmfulness" in out  # the critique's name, mapped in the output
    assert max(len(line) for line in done.stdout.splitlines()) <= 100
    assert "Loading weights" not in done.stderr and "Generating" not in done.stderr

    data = json.loads(run(["score", "lesion.png", case["narrative"], "--adapter", str(demo_adapter), "--json"],
                          tmp_path).stdout)
    assert set(data["scores"]) == set(DIMENSIONS)

    # the same pair as a one-line JSONL: `eval` prints the scores on screen, not only a records file
    (tmp_path / "one.jsonl").write_text(json.dumps({"image": "lesion.png", "narrative": case["narrative"]}) + "\n")
    done = run(["eval", "--dataset", "one.jsonl", "--adapter", str(demo_adapter), "--out", "runs/one"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = " ".join(done.stdout.split())
    assert "DermEval scores over the evaluated cases" in out and "1 case(s); mean overall" in out
    assert "Generating train split" not in done.stderr and "resolving image paths" not in done.stderr


# --- task 2: judge my model's narratives with an OpenAI-compatible judge ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_task2_judge_my_models_narratives(tmp_path):
    """docs/source/offline_judge.md's stand-in judge, and a `bench run` config whose candidates are a file."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "dermtrl.llm.server", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-2000:]
                assert time.monotonic() < deadline, "the stand-in judge did not answer within 30 s"
                time.sleep(0.2)
        cases = load_cases(SYNTHETIC, "test", n=3)
        (tmp_path / "cands.jsonl").write_text("".join(  # data_formats.md, "Candidates"
            json.dumps({"model": "my-model", "case_id": c, "text": "Red scaly plaques. The answer is psoriasis."})
            + "\n" for c in cases["case_id"]))
        config = {"out": "runs/bench", "dataset": {"source": SYNTHETIC, "n": 3},
                  "judge": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "stand-in"},
                  "candidates": [{"name": "my-model", "file": "cands.jsonl"}]}
        (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
        done = run(["bench", "run", "--config", "bench.yaml", "--no-progress"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "my-model" in done.stdout
        judgments = [json.loads(line) for line in (tmp_path / "runs/bench/judgments.jsonl").read_text().splitlines()]
        assert len(judgments) == 3 and all(j["status"] == "scored" for j in judgments)
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- task 3: train Stage 1 on my own 20 cases, then evaluate ---------------------------------------------------


def test_task3_train_on_my_own_cases_then_evaluate(tmp_path):
    data = tmp_path / "mydata"
    train = write_cases(data, 0, 20, with_training_columns=True)
    write_cases(data, 200_000, 6, with_training_columns=False)
    config = ROOT / "recipes" / "configs" / "demo_sft.yaml"

    # first try without y*: refused at once, naming the column and the page that describes it
    no_y = data / "scores_only.jsonl"
    no_y.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "evaluation"}) + "\n"
                            for line in train.read_text().splitlines()))
    error = one_line_error(run(["sft", "--config", str(config), "--dataset_name", "mydata/scores_only.jsonl",
                                "--output_dir", "runs/my-sft"], tmp_path))
    assert "missing column 'evaluation'" in error and "docs/source/data_formats.md" in error

    # with y*: image paths relative to the file are read (as `eval` reads them); 20 epochs of 3 steps, long enough
    # for the adapter to write score fields that differ between cases, and not over the over-training warning
    done = run(["sft", "--config", str(config), "--dataset_name", "mydata/train.jsonl", "--output_dir",
                "runs/my-sft", "--max_steps", "60", "--per_device_train_batch_size", "8", "--logging_steps", "30",
                "--disable_tqdm", "true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pass over the 20 training cases" not in done.stderr
    assert (tmp_path / "runs/my-sft/adapter_config.json").is_file()

    done = run(["eval", "--adapter", "runs/my-sft", "--dataset", "mydata/test.jsonl", "--baseline-train",
                "mydata/train.jsonl", "--out", "runs/my-eval"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = " ".join(done.stdout.replace("│", " ").split())
    assert "DermEval scores over the evaluated cases" in out
    assert ("Constant train-mean baseline: the mean expert score per dimension of the 20 cases of "
            "mydata/train.jsonl") in out
    report = json.loads((tmp_path / "runs/my-eval/agreement.json").read_text())
    assert report[0]["label"] == "DermEval" and report[0]["baseline"]["label"] == "Constant train-mean baseline"
    assert "Constant train-mean baseline" in (tmp_path / "runs/my-eval/agreement.md").read_text()  # its row


def test_task3_a_long_run_on_a_small_set_is_warned_about():
    from trl import SFTConfig

    from dermtrl.scripts.script_args import epochs_warning

    args = SFTConfig(output_dir="unused", max_steps=300, per_device_train_batch_size=8, use_cpu=True, bf16=False)
    warning = epochs_warning(20, args)
    assert warning is not None and "pass over the 20 training cases 100 times" in warning
    assert epochs_warning(2400, SFTConfig(output_dir="unused", num_train_epochs=4, use_cpu=True, bf16=False)) is None
