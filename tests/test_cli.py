"""The `dermtrl` command line, called as users call it (in-process through its `main`)."""

import io
import json
import sys

import pytest

from dermtrl.cases.loading import load_cases, validate_cases
from dermtrl.cases.synthetic import generate_cases
from dermtrl.cli import main


def test_help_lists_only_existing_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("parse", "eval", "synth", "tiny"):
        assert command in out


def test_parse_prints_table_and_json(tmp_path, capsys):
    f = tmp_path / "evaluation.txt"
    f.write_text("Critique.\n\nAccuracy: 9/10\n**Safety**: 5\nMedG - 3\n")
    assert main(["parse", str(f)]) == 0
    table = capsys.readouterr().out
    assert "Accuracy" in table and "4.5" in table and "missing" in table
    assert main(["parse", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scores"]["Accuracy"] == 4.5 and data["scores"]["Clinical Coverage"] is None
    assert "Clinical Coverage" in data["missing"]


def test_parse_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Safety: 4"))
    assert main(["parse", "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"]["Safety"] == 4.0


@pytest.mark.parametrize(("content", "message"), [(None, "no such file"), ("   \n", "empty text"),
                                                  (b"\xff\xfe\x00bad", "not UTF-8")])
def test_parse_bad_input_names_the_file(tmp_path, capsys, content, message):
    f = tmp_path / "judge-output.txt"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    assert main(["parse", str(f)]) == 2
    err = capsys.readouterr().err
    assert "judge-output.txt" in err and message in err


def test_parse_exit_status_1_when_nothing_found(tmp_path):
    f = tmp_path / "echo.txt"
    f.write_text("Please rate Accuracy, Safety and Clinical Coverage from 0 to 5.")
    assert main(["parse", str(f)]) == 1


def test_synth_writes_a_loadable_dataset(tmp_path, capsys):
    assert main(["synth", "--n", "10", "--out", str(tmp_path / "cases")]) == 0
    ds = load_cases(str(tmp_path / "cases"))
    assert len(ds) == 10 and "NOT clinical data" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["synth", "--out", "cases"],
                                     ["eval", "--dataset", "dermtrl:synthetic", "--out", "o"]])
def test_a_count_of_zero_cases_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--n", "0"]) == 2  # a usage mistake is one `error:` line, as every bad input
    err = capsys.readouterr().err
    assert "--n: must be at least 1, got 0" in err and len(err.strip().splitlines()) == 1
    assert main([*command, "--n", "ten"]) == 2
    assert "--n: expected a whole number of cases, got 'ten'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_validate_names_column_and_row():
    ds = generate_cases(4)
    with pytest.raises(ValueError, match="missing column 'narrative'"):
        validate_cases(ds.remove_columns("narrative"))
    rows = ds.to_list()
    rows[2]["expert_scores"]["Safety"] = 7.0
    from datasets import Dataset

    bad = Dataset.from_list(rows, features=ds.features)
    with pytest.raises(ValueError, match=r"column 'expert_scores', row 2: 'Safety' = 7.0 is outside \[0, 5\]"):
        validate_cases(bad, scores=True, source="cases.jsonl")


def test_eval_refuses_a_dataset_without_narratives(tmp_path, capsys):
    ds = generate_cases(3).remove_columns("narrative")
    ds.save_to_disk(str(tmp_path / "cases"))
    assert main(["eval", "--model", "dermtrl:tiny", "--dataset", str(tmp_path / "cases"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing column 'narrative'" in capsys.readouterr().err


def test_every_endpoint_has_the_same_flags_with_client_config_defaults():
    """One spelling for every OpenAI-compatible endpoint: judge, generator, data pipeline, LLM parser."""
    from dermtrl.cli.dispatch import build_parser
    from dermtrl.llm.client import ClientConfig

    parser = build_parser()
    defaults = ClientConfig()
    bench = ("--dataset", "dermtrl:synthetic", "--out", "o.jsonl")
    commands = {("bench", "judge", "--model", "j", *bench): "", ("bench", "generate", "--model", "g", *bench): "",
                ("data", "caption", "--run", "r"): "",
                ("eval", "--dataset", "dermtrl:synthetic", "--out", "o"): "llm_parser_"}
    for argv, key in commands.items():
        args = parser.parse_args(list(argv))
        assert getattr(args, key + "max_concurrency") == defaults.max_concurrency, argv
        assert getattr(args, key + "timeout") == defaults.timeout, argv
        assert getattr(args, key + "api_key_env") == defaults.api_key_env, argv
    flag = ["--max-concurrency", "3", "--timeout", "7", "--cache-path", "c.sqlite"]
    args = parser.parse_args(["bench", "judge", "--model", "j", *bench, *flag])
    assert (args.max_concurrency, args.timeout, args.cache_path) == (3, 7.0, "c.sqlite")
    old = parser.parse_args(["bench", "judge", "--model", "j", *bench, "--concurrency", "4", "--cache", "o"])
    assert (old.max_concurrency, old.cache_path) == (4, "o")  # the earlier spellings still work


def test_dermtrl_sft_runs_the_training_script_with_its_own_flags(tmp_path):
    """`dermtrl sft --config ...` is the script (as `trl sft`): its own flags, the adapter and its budget written."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo_sft.yaml"
    out = tmp_path / "adapter"
    assert main(["sft", "--config", str(config), "--output_dir", str(out), "--synthetic_train_cases", "8",
                 "--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "generation_config.json").is_file()


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "not a medical device" in top and "dermtrl score IMAGE" in top and "data_formats.md" in top
    assert ":func:" not in top and "``" not in top and "build_parser" not in top


@pytest.mark.parametrize("script", ["sft", "soreb"])
def test_training_help_lists_dermtrls_own_options_first(capsys, script):
    assert main([script, "--help"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == f"usage: dermtrl {script} [--config YAML] [--OPTION VALUE ...]"
    assert max(len(line) for line in lines) <= 100 and len(lines) < 200
    own, trl = text.index("dermtrl options:"), text.index("common TRL options:")
    assert own < text.index("--dataset_name") < trl < text.index("--learning_rate")
    assert f"dermtrl {script} --help-all" in text and "docs/source/data_formats.md" in text
    assert main([script, "--help-all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > 3 * len(lines)  # every TRL option, for those who need it
