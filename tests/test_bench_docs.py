"""The Python example of docs/source/dermbench.md runs as written, and the shapes it warns about fail clearly."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

from dermtrl.bench import DermBench
from dermtrl.bench.dermbench import candidate_sets
from dermtrl.llm.client import ClientConfig

pytestmark = pytest.mark.timeout(120)
DOC = Path(__file__).resolve().parents[1] / "docs" / "source" / "dermbench.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_the_documented_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks(DOC.read_text(encoding="utf-8"))
    script = tmp_path / "snippet.py"
    script.write_text(block, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(script))
    records = namespace["records"]
    assert [(r["case_id"], r["status"]) for r in sorted(records, key=lambda r: r["case_id"])] == [
        ("case-1", "scored"), ("case-2", "scored")]
    assert (tmp_path / "runs" / "judgments.jsonl").is_file() and (tmp_path / "runs" / "report" / "report.md").is_file()
    assert "/5 from 6 of 6" in capsys.readouterr().out


def test_a_list_of_strings_is_refused_with_the_shape_wanted(tmp_path):
    with pytest.raises(ValueError, match=r"candidates of 'my-model', item 0: expected a record such as "
                                         r"\{'case_id'.*got str 'Red scaly plaques'.*which case each one answers"):
        candidate_sets({"my-model": ["Red scaly plaques", "Wheals"]})
    with pytest.raises(ValueError, match=r"candidates of 'my-model': expected a list of records or a candidates "
                                         r"JSONL path, got int"):
        candidate_sets({"my-model": 3})
    with pytest.raises(ValueError, match=r"candidates: 'Red scaly plaques' is not a candidates file"):
        candidate_sets(["Red scaly plaques"])
    with DermBench(ClientConfig(base_url="http://127.0.0.1:9/v1", model="m"), progress=False) as bench:
        with pytest.raises(ValueError, match="a list of narratives alone"):
            bench.judge([{"case_id": "1", "reference": "r"}], {"m": ["text"]}, tmp_path / "j.jsonl")


def test_official_runner_records_in_memory_are_read():
    sets = candidate_sets({"m": [{"id": "dermbench_0001", "model": "m", "candidate_text": "A narrative."}]})
    assert sets == {"m": [{"case_id": "dermbench_0001", "text": "A narrative.", "model": "m", "error": None}]}
