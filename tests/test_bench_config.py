"""The `bench run` YAML schema: the example loads; every bad field is named; no secret is ever echoed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dermtrl.bench import BenchConfig, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "bench_example.yaml"


@pytest.fixture
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_the_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.judge.base_url == "http://127.0.0.1:8000/v1" and config.judge.api_key_env == "VLLM_API_KEY"
    assert [c.kind for c in config.candidates] == ["client", "local", "column"]
    assert config.candidates[1].local == "dermtrl:tiny"
    assert config.dataset.source == "dermtrl:synthetic" and config.probes.kinds == ["injection", "length", "order"]
    assert config.report.ci == 0.95


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("judge"), r"judge: required field is missing"),
        (lambda c: c.update(colour="red"), r"top level: unknown field\(s\) colour"),
        (lambda c: c["judge"].pop("model"), r"judge\.model: required field is missing"),
        (lambda c: c["judge"].update(max_concurrency=0), r"judge: max_concurrency must be an integer >= 1"),
        (lambda c: c["candidates"][0]["client"].update(modle="x"), r"candidates\[0\]\.client: unknown client"),
        (lambda c: c["candidates"][1].update(column="narrative"), r"candidates\[1\]: give exactly one of"),
        (lambda c: c["candidates"][2].update(name="has space"), r"candidates\[2\]\.name: must be letters"),
        (lambda c: c["candidates"][1].update(batch_size=0), r"candidates\[1\]\.batch_size: must be an integer"),
        (lambda c: c["candidates"].append(copy.deepcopy(c["candidates"][1])), r"tiny-local are used twice"),
        (lambda c: c["dataset"].update(n=-3), r"dataset\.n: must be an integer >= 1"),
        (lambda c: c["probes"].update(kinds=["tone"]), r"probes\.kinds: must be a non-empty list"),
        (lambda c: c["report"].update(ci=1.5), r"report\.ci: must be a number in \(0, 1\)"),
        (lambda c: c.update(parse_retries=-1), r"parse_retries: must be an integer >= 0"),
        (lambda c: c.update(candidates=[]), r"candidates: must be a non-empty list"),
    ],
)
def test_bad_fields_are_named(example, edit, message):
    edit(example)
    with pytest.raises(ConfigError, match=message) as info:
        BenchConfig.from_dict(example, source="bench.yaml")
    assert str(info.value).startswith("bench.yaml: ")


def test_a_pasted_api_key_is_never_echoed(example):
    example["judge"]["api_key_env"] = "sk-live-THIS-IS-A-SECRET-KEY-123"
    with pytest.raises(ConfigError) as info:
        BenchConfig.from_dict(example)
    assert "SECRET" not in str(info.value) and "judge: api_key_env must be the NAME" in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level: expected a mapping"):
        load_config(bad)


def test_candidate_files_and_the_official_protocol(example, tmp_path):
    cands = tmp_path / "mine.jsonl"
    cands.write_text('{"case_id": "0", "text": "A narrative."}\n', encoding="utf-8")
    example["candidates"].append({"name": "from-file", "file": str(cands)})
    config = BenchConfig.from_dict(example)
    assert config.candidates[-1].kind == "file" and config.candidates[-1].file == str(cands)
    assert config.protocol == "paper" and config.parse_retries == 2 and not config.exclude_flagged
    example["candidates"][-1]["file"] = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(ConfigError, match=r"candidates\[3\]\.file: .*nowhere.jsonl' is not a file"):
        BenchConfig.from_dict(example)
    example["candidates"][-1].update(file=str(cands), column="narrative")
    with pytest.raises(ConfigError, match=r"candidates\[3\]: give exactly one of client, local, column or file"):
        BenchConfig.from_dict(example)


def test_official_protocol_defaults_to_the_papers_judge(example):
    example.update(protocol="official", probes=None, exclude_flagged=True)
    example.pop("judge")
    config = BenchConfig.from_dict(example)
    assert (config.judge.model, config.judge.base_url, config.judge.api_key_env) == (
        "deepseek-reasoner", "https://api.deepseek.com", "DEEPSEEK_API_KEY")
    assert config.judge.max_tokens is None and config.exclude_flagged
    example["judge"] = {"base_url": "http://127.0.0.1:8000/v1", "model": "local-judge"}
    assert BenchConfig.from_dict(example).judge.model == "local-judge"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(protocol="mine"), r"protocol: must be 'paper' or 'official'"),
    (lambda c: c.update(exclude_flagged="yes"), r"exclude_flagged: must be true or false"),
    (lambda c: c.update(protocol="official"), r"probes.kinds: the order probe swaps dermtrl's prompt"),
    (lambda c: c["dataset"].update(image_root=""), r"dataset.image_root: must be a non-empty path"),
])
def test_release_fields_are_checked(example, edit, message):
    edit(example)
    with pytest.raises(ConfigError, match=message):
        BenchConfig.from_dict(example)
