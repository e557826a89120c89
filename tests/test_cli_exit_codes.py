"""Exit codes and counts a script can trust: `dermtrl bench generate|judge|run` and `dermtrl eval` exit 1 when
records failed (0 with --allow-failures), say "resumed: N of M already done" / "nothing to do" on a rerun, their
progress bars and summaries count the same failures, retries are one line per kind, and every resumable command
can retry its failed records once the server is back."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dermtrl.cli import EXIT_FAILURES
from dermtrl.cli import main as dermtrl_main
from dermtrl.dimensions import DIMENSIONS
from dermtrl.testing import Fault, last_user_text

pytestmark = pytest.mark.timeout(240)
EXAMPLE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "bench_example.yaml"


def flat(text: str) -> str:
    return " ".join(text.split())


VLM_DOWN = "the VLM"


class Flaky:
    """A judge and VLM whose answers fail (HTTP 500), the judge's for the cases in ``down``, the VLM's while
    ``VLM_DOWN`` is in it, until they are removed."""

    def __init__(self, down: set[str]) -> None:
        self.down = down

    def __call__(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        if isinstance(content, list):  # a candidate request (image + instruction)
            if VLM_DOWN in self.down:
                raise Fault("500")
            return "Erythematous plaques with scale. The answer is plaque psoriasis."
        if any(tag in last_user_text(body) for tag in self.down - {VLM_DOWN}):
            raise Fault("500")
        return "\n".join(f"{d}: 4" for d in DIMENSIONS)


def candidates_file(tmp_path: Path, n: int) -> Path:
    from dermtrl.cases.loading import SYNTHETIC, load_cases

    ds = load_cases(SYNTHETIC, "test", n=n)  # the cases `bench` reads by default
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps({"model": "m", "case_id": c, "text": f"[{c}] plaques"}) + "\n"
                            for c in ds["case_id"]))
    return path


def test_bench_judge_exit_status_counts_and_retry_failed(make_openai_server, tmp_path, capsys):
    n = 6
    cands = candidates_file(tmp_path, n)
    ids = [json.loads(line)["case_id"] for line in cands.read_text().splitlines()]
    flaky = Flaky({ids[1], ids[4]})
    server = make_openai_server(responder=flaky)
    out = tmp_path / "j.jsonl"
    judge = ["bench", "judge", "--dataset", "dermtrl:synthetic", "--n", str(n), "--base-url", server.base_url,
             "--model", "judge", "--max-retries", "1", "--candidates", str(cands), "--out", str(out)]

    assert dermtrl_main(judge) == EXIT_FAILURES
    captured = capsys.readouterr()
    err, printed = flat(captured.err), flat(captured.out)
    assert f"4 of {n} candidates scored, 2 failed" in printed
    assert f"2 of {n} judgments failed" in err and "--allow-failures" in err
    assert re.search(r"failed 2\b", err)  # the bar counts the failures the summary counts
    assert "retries after HTTP 500: 2" in err  # one line per kind of retry, not a line per retry
    assert "HTTP 500: Internal server error" in out.read_text()  # the status and the body's first line

    assert dermtrl_main([*judge, "--allow-failures"]) == 0  # a rerun: nothing to do, failures accepted
    captured = capsys.readouterr()
    err = flat(captured.err)
    assert f"nothing to do: all {n} already done" in err and re.search(r"failed 2\b", err)
    assert f"4 of {n} candidates scored, 2 failed" in flat(captured.out)

    flaky.down.clear()  # the server is back
    calls = server.calls
    assert dermtrl_main([*judge, "--retry-failed"]) == 0
    err = flat(capsys.readouterr().err)
    assert f"resumed: 4 of {n} already done" in err and server.calls == calls + 2


def test_bench_generate_exit_status_and_retry_failed(make_openai_server, tmp_path, capsys):
    flaky = Flaky({VLM_DOWN})
    server = make_openai_server(responder=flaky)
    out = tmp_path / "c.jsonl"
    generate = ["bench", "generate", "--dataset", "dermtrl:synthetic", "--n", "3", "--base-url", server.base_url,
                "--model", "vlm", "--max-retries", "0", "--out", str(out), "--no-progress"]
    assert dermtrl_main(generate) == EXIT_FAILURES
    assert "0 of 3 candidates generated, 3 failed" in flat(capsys.readouterr().out)
    flaky.down.clear()
    assert dermtrl_main([*generate, "--retry-failed"]) == 0
    assert "3 of 3 candidates generated, 0 failed" in flat(capsys.readouterr().out)
    assert all(json.loads(line)["text"] for line in out.read_text().splitlines())


def test_bench_run_retry_failed_after_the_server_comes_back(make_openai_server, tmp_path, capsys):
    flaky = Flaky({VLM_DOWN})
    server = make_openai_server(responder=flaky)
    config = yaml.safe_load(EXAMPLE.read_text())
    config.update(out=str(tmp_path / "run"))
    config["dataset"]["n"] = 3
    config["judge"].update(base_url=server.base_url, cache_path=str(tmp_path / "judge.sqlite"), max_retries=0)
    api = config["candidates"][0]["client"]
    api.update(base_url=server.base_url, cache_path=str(tmp_path / "cands.sqlite"), max_retries=0)
    config["candidates"] = [config["candidates"][0], *[c for c in config["candidates"] if c.get("column")]]
    config["report"]["n_bootstrap"] = 50
    for optional in ("probes", "evaluators"):
        config.pop(optional, None)
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))

    assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress"]) == EXIT_FAILURES
    assert "3 candidate(s) and 3 judgment(s) failed" in flat(capsys.readouterr().out)
    flaky.down.clear()
    calls = server.calls
    assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress"]) == EXIT_FAILURES  # no retry
    assert server.calls == calls
    assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress", "--retry-failed"]) == 0
    assert "0 candidate(s) and 0 judgment(s) failed" in flat(capsys.readouterr().out)
    assert server.calls == calls + 3 + 3  # the three candidates, then their three judgments
    judgments = [json.loads(line) for line in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 6 and all(r["status"] == "scored" for r in judgments)


def test_eval_exit_status_and_a_bar_that_counts_every_case(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i in range(4):
        name = f"img{i}.png"
        if i == 2:
            (data / name).write_bytes(b"")  # an empty file: this case is skipped
        else:
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (40 * i, 90, 90)).save(buffer, format="PNG")
            (data / name).write_bytes(buffer.getvalue())
        rows.append({"case_id": f"c{i}", "image": name, "narrative": "Erythematous plaques with scale."})
    cases = data / "cases.jsonl"
    cases.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    args = ["eval", "--model", "dermtrl:tiny", "--dataset", str(cases), "--out", str(tmp_path / "out"),
            "--max-new-tokens", "2", "--batch-size", "4"]
    assert dermtrl_main(args) == EXIT_FAILURES
    captured = capsys.readouterr()
    assert "2 of 3 cases evaluated, 1 skipped" in flat(captured.out) and "1 of 3 cases failed" in flat(captured.err)
    assert "case 'c2'" in flat(captured.err) and "zero-byte file" in flat(captured.err)

    cases.write_text("".join(json.dumps(r) + "\n" for r in rows))  # one more case: the rerun resumes
    assert dermtrl_main([*args, "--allow-failures"]) == 0
    captured = capsys.readouterr()
    err = flat(captured.err)
    assert "resumed: 3 of 4 already done" in err and re.search(r"4/4", err) and re.search(r"skipped 1\b", err)
    assert "3 of 4 cases evaluated, 1 skipped" in flat(captured.out)


# --- bad input: exit status 2, one `error:` line, no traceback, in every command -------------------------------


@pytest.fixture
def bad_inputs(tmp_path, monkeypatch):
    """A folder of the mistakes a newcomer makes: a file without the needed columns, a broken JSONL, a text file
    given as data, a folder that is not an adapter, an empty image."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16), (200, 90, 90)).save(tmp_path / "lesion.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "no_eval.jsonl").write_text(json.dumps({"image": "lesion.png", "narrative": "Red plaques."}) + "\n")
    (tmp_path / "no_narrative.jsonl").write_text(json.dumps({"image": "lesion.png", "text": "Red plaques."}) + "\n")
    (tmp_path / "broken.jsonl").write_text('{"image": "lesion.png", "narrative": "Red plaques."\n')
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "not_an_adapter").mkdir()
    (tmp_path / "runs").mkdir()  # so runs/nothing is a missing local folder, not a Hub id
    return tmp_path


TRAIN = ["--model_name_or_path", "dermtrl:tiny", "--output_dir", "out", "--use_cpu", "true", "--bf16", "false"]
BAD_INPUTS = {
    "score without a model": (["score", "lesion.png", "Red plaques."], "give --adapter"),
    "score, missing adapter": (["score", "lesion.png", "Red plaques.", "--adapter", "runs/nothing"],
                               "--adapter runs/nothing: no such folder"),
    "score, not an adapter": (["score", "lesion.png", "Red plaques.", "--adapter", "not_an_adapter"],
                              "no adapter_config.json"),
    "score, missing image": (["score", "missing.png", "Red plaques.", "--model", "dermtrl:tiny"],
                             "missing.png: no such image file"),
    "score, empty image": (["score", "empty.png", "Red plaques.", "--model", "dermtrl:tiny"], "zero-byte"),
    "score, missing narrative file": (["score", "lesion.png", "narrative.txt", "--model", "dermtrl:tiny"],
                                      "narrative.txt: no such file"),
    "eval, missing dataset": (["eval", "--dataset", "nonexistent_dir", "--model", "dermtrl:tiny", "--out", "o"],
                              "nonexistent_dir: no such file or folder"),
    "eval, missing column": (["eval", "--dataset", "no_narrative.jsonl", "--model", "dermtrl:tiny", "--out", "o"],
                             "missing column 'narrative'"),
    "eval, wrong format": (["eval", "--dataset", "notes.txt", "--model", "dermtrl:tiny", "--out", "o"],
                           "unsupported data file type '.txt'"),
    "eval, broken jsonl": (["eval", "--dataset", "broken.jsonl", "--model", "dermtrl:tiny", "--out", "o"],
                           "broken.jsonl: not a readable jsonl data file"),
    "eval, missing adapter": (["eval", "--dataset", "no_eval.jsonl", "--adapter", "./gone", "--out", "o"],
                              "--adapter ./gone: no such folder"),
    "eval, test split from a training index": (["eval", "--dataset", "dermtrl:synthetic", "--split", "test",
                                                "--start", "0", "--model", "dermtrl:tiny", "--out", "o"],
                                               "are train cases, not test"),
    "eval, missing --out": (["eval", "--dataset", "no_eval.jsonl"], "the following arguments are required: --out"),
    "synth across two splits": (["synth", "--n", "5", "--start", "49998", "--out", "s"], "run from the train into"),
    "parse, missing file": (["parse", "gone.txt"], "gone.txt: no such file"),
    "unknown command": (["scroe", "lesion.png"], "invalid choice: 'scroe'"),
    "sft, missing dataset": (["sft", "--dataset_name", "nonexistent_dir", *TRAIN], "nonexistent_dir: no such file"),
    "sft, missing column": (["sft", "--dataset_name", "no_eval.jsonl", *TRAIN],
                            "missing column 'evaluation'"),
    "sft, unknown option": (["sft", "--dataset_name", "no_eval.jsonl", "--learnig_rate", "1e-3", *TRAIN],
                            "--learnig_rate"),
    "sft, bad value": (["sft", "--dataset_name", "no_eval.jsonl", "--num_train_epochs", "many", *TRAIN],
                       "--num_train_epochs"),
    "soreb, unknown option": (["soreb", "--dataset_name", "no_eval.jsonl", "--no_such_flag", "1", *TRAIN],
                              "--no_such_flag"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_error_line(bad_inputs, capsys, monkeypatch, case):
    """The contract of docs/source/cli.md, walked through every command's common mistakes; training refuses its
    data before any model or processor is loaded."""
    import dermtrl.scripts.sft as sft

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(sft, "load_model", never)
    monkeypatch.setattr(sft.AutoProcessor, "from_pretrained", never)
    import dermtrl.dermeval.evaluator as evaluator

    monkeypatch.setattr(evaluator.DermEval, "from_pretrained", never)  # every case here fails before loading
    argv, message = BAD_INPUTS[case]
    assert dermtrl_main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err + captured.out
    if "column" in case:
        assert "docs/source/data_formats.md" in lines[0]
