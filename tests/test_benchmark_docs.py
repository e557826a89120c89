"""``--write-docs``: a benchmark replaces its own section of docs/source/benchmarks.md and leaves the others."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("benchmarks_docs", ROOT / "benchmarks" / "_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_section_is_replaced_not_appended_and_others_are_kept(docs, tmp_path):
    page = tmp_path / "benchmarks.md"
    docs.write_docs("judge_throughput", "Judge throughput", "| a |\n|---|\n| 1 |", "python x.py", page=page)
    docs.write_docs("parse_speed", "Parse speed", "fast", "python y.py", page=page)
    docs.write_docs("judge_throughput", "Judge throughput", "| a |\n|---|\n| 2 |", "python x.py", page=page)
    text = page.read_text()
    assert text.startswith("# Benchmarks")
    assert text.count("<!-- benchmark:judge_throughput -->") == 1
    assert "| 2 |" in text and "| 1 |" not in text
    assert "fast" in text and text.index("judge_throughput") < text.index("parse_speed")
    for field in ("Command: `python x.py`", "Commit: `", "Machine: ", "Date: "):
        assert field in text


def test_a_bad_section_name_is_refused(docs, tmp_path):
    with pytest.raises(ValueError, match="section name"):
        docs.write_docs("Judge Throughput!", "t", "b", page=tmp_path / "b.md")


def test_markdown_table_escapes_pipes(docs):
    table = docs.rich_table_markdown(["arm", "value"], [["a|b", 1.5]])
    assert table.splitlines() == ["| arm | value |", "|---|---|", "| a\\|b | 1.5 |"]
