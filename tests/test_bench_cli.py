"""`dermtrl bench` end to end: the example config against a loopback OpenAI-compatible server (judge and API
candidate) plus the tiny local model, on synthetic cases; then the single-step commands."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import yaml

from dermtrl.cli import main as dermtrl_main
from dermtrl.cli.bench import register
from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import CANDIDATE_CLOSE, CANDIDATE_OPEN, REFERENCE_CLOSE, REFERENCE_OPEN
from dermtrl.testing import last_user_text

pytestmark = pytest.mark.timeout(120)


def main(argv):
    """`dermtrl bench ARGS`, as users type it."""
    return dermtrl_main(["bench", *argv])

EXAMPLE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "bench_example.yaml"
_WORD = re.compile(r"[a-z]+")


def passage(prompt: str, start: str, end: str) -> str:
    return prompt[prompt.index(start) + len(start):prompt.index(end)]


def server_responder(body: dict) -> str:
    """A VLM for image requests; for judge requests, scores that grow with word overlap with the reference."""
    content = body["messages"][-1]["content"]
    if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
        return "Well-demarcated erythematous plaques with silvery scale. The answer is plaque psoriasis."
    prompt = last_user_text(body)
    candidate = set(_WORD.findall(passage(prompt, CANDIDATE_OPEN, CANDIDATE_CLOSE).lower()))
    reference = set(_WORD.findall(passage(prompt, REFERENCE_OPEN, REFERENCE_CLOSE).lower()))
    overlap = len(candidate & reference) / max(len(reference), 1)
    score = round(5 * overlap)
    return "Compared with the reference.\n" + "\n".join(f"{d}: {score}" for d in DIMENSIONS)


def config_for(server, tmp_path: Path) -> Path:
    config = yaml.safe_load(EXAMPLE.read_text())
    config["out"] = str(tmp_path / "run")
    config["dataset"]["n"] = 8
    config["judge"].update(base_url=server.base_url, cache_path=str(tmp_path / "judge.sqlite"))
    api = config["candidates"][0]["client"]
    api.update(base_url=server.base_url, cache_path=str(tmp_path / "candidates.sqlite"))
    config["candidates"][1].update(max_new_tokens=8, batch_size=4)
    config["report"]["n_bootstrap"] = 100
    config["probes"]["n"] = 3
    config.pop("evaluators", None)  # DermEval as second evaluator: tests/test_bench_dermeval.py
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_bench_run_end_to_end_then_resume_makes_no_calls(make_openai_server, tmp_path, capsys):
    server = make_openai_server(responder=server_responder)
    config = config_for(server, tmp_path)
    assert main(["run", "--config", str(config), "--no-progress"]) == 0
    out = tmp_path / "run"
    for name in ("candidates/qwen2.5-vl-7b.jsonl", "candidates/tiny-local.jsonl", "judgments.jsonl",
                 "report/report.md", "report/report.json", "report/leaderboard.csv", "report/categories.csv",
                 "report/leaderboard.png", "report/agreement.md", "probes/probes.md", "probes/probes.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report" / "report.json").read_text())
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {"qwen2.5-vl-7b", "tiny-local", "dataset-narratives"}
    assert all(m["n_scored"] == 8 and m["n_failed"] == 0 for m in models.values())
    assert models["dataset-narratives"]["overall"] > models["tiny-local"]["overall"]  # overlap with references
    assert list(report["agreement"]) == ["dataset-narratives"]
    assert report["judge"]["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 24 and len({(r["model"], r["case_id"]) for r in judgments}) == 24
    printed = capsys.readouterr().out
    assert "DermBench leaderboard" in printed and "robustness probes" in printed

    calls = server.calls
    assert main(["run", "--config", str(config), "--no-progress"]) == 0
    assert server.calls == calls  # everything resumed from the JSONL files: not one request
    assert json.loads((out / "report" / "report.json").read_text()) == report


def test_single_step_commands(make_openai_server, tmp_path, capsys):
    server = make_openai_server(responder=server_responder)
    common = ["--dataset", "dermtrl:synthetic", "--n", "4", "--base-url", server.base_url]
    cands = tmp_path / "vlm.jsonl"
    assert main(["generate", *common, "--model", "vlm", "--out", str(cands), "--no-progress"]) == 0
    judged = tmp_path / "j.jsonl"
    assert main(["judge", *common, "--model", "judge", "--candidates", str(cands), "--dataset-narratives",
                 "narratives", "--out", str(judged), "--no-progress"]) == 0
    records = [json.loads(line) for line in judged.read_text().splitlines()]
    assert sorted({r["model"] for r in records}) == ["narratives", "vlm"] and len(records) == 8
    assert main(["report", str(judged), "--out", str(tmp_path / "report"), "--n-bootstrap", "50"]) == 0
    assert (tmp_path / "report" / "leaderboard.png").is_file()
    assert main(["probe", *common, "--model", "judge", "--candidates", str(cands), "--probes", "order",
                 "--out", str(tmp_path / "probes"), "--n-bootstrap", "50", "--no-progress", "--strict"]) == 0
    capsys.readouterr()


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    def stderr() -> str:
        return " ".join(capsys.readouterr().err.split())  # the console wraps long lines

    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in stderr()
    assert main(["generate", "--dataset", "dermtrl:synthetic", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "exactly one of --model" in stderr()
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such judgments file" in stderr()


def test_register_adds_bench_to_a_parser():
    parser = argparse.ArgumentParser(prog="dermtrl")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "report", "a.jsonl", "--n-bootstrap", "10"])
    assert args.bench_command == "report" and args.judgments == ["a.jsonl"] and args.n_bootstrap == 10


def test_dermtrl_main_runs_bench(tmp_path, capsys):
    """`dermtrl bench ...` through the project's CLI: user errors exit with status 2."""
    import dermtrl.cli

    assert dermtrl.cli.main(["bench", "report", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such judgments file" in " ".join(capsys.readouterr().err.split())
