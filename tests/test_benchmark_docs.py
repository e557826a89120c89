"""``--write-docs``: a benchmark replaces its own section of docs/source/benchmarks.md and leaves the others."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

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


def test_the_page_itself_does_not_make_the_commit_dirty(docs, tmp_path, monkeypatch):
    """Benchmarks run one after another: the sections written by the earlier ones are not a change of the code."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false"]
    (tmp_path / "docs" / "source").mkdir(parents=True)
    page, code = tmp_path / "docs" / "source" / "benchmarks.md", tmp_path / "code.py"
    page.write_text("# Benchmarks\n")
    code.write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "start"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True, timeout=30)
    monkeypatch.setattr(docs, "ROOT", tmp_path)
    monkeypatch.setattr(docs, "DOCS_PAGE", page)
    docs.write_docs("parse_speed", "Parse speed", "fast", "python y.py", page=page)
    assert re.fullmatch(r"[0-9a-f]{4,}", docs.commit())
    code.write_text("x = 2\n")
    assert docs.commit().endswith("-dirty")


def test_report_only_leaves_progress_out_of_the_section(docs, tmp_path):
    console = Console(record=True, width=80, file=io.StringIO())
    console.print("Stage 1: accelerate launch recipes/sft.py ...")
    docs.report_only(console)
    console.print("macro MAE 0.412")
    page = tmp_path / "b.md"
    docs.write_console_docs("vision_reliance", "Vision", console, page=page)
    text = page.read_text()
    assert "macro MAE 0.412" in text and "accelerate launch" not in text


def test_printed_text_is_kept_and_still_printed(docs, tmp_path, capsys):
    with docs.recording_stdout() as printed:
        print("arm  reward gain")
        print("dermeval  +0.12")
    print("after the report")
    assert capsys.readouterr().out == "arm  reward gain\ndermeval  +0.12\nafter the report\n"
    assert printed.getvalue() == "arm  reward gain\ndermeval  +0.12\n"
    page = tmp_path / "b.md"
    docs.write_text_docs("closed_loop", "Closed loop", "\n" + printed.getvalue(), page=page)
    assert "```text\narm  reward gain\ndermeval  +0.12\n```" in page.read_text()


SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").iterdir()
                 if p.suffix in (".py", ".sh") and not p.name.startswith("_"))


def _help(script: str) -> subprocess.CompletedProcess:
    command = ["bash"] if script.endswith(".sh") else [sys.executable]
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([*command, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


#: Scripts that do not write their section yet; each fails loudly (strict xfail) once it does: then remove it here.
NOT_YET: set[str] = set()


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.xfail(
    strict=True, reason=f"benchmarks/{s} has no --write-docs yet")) if s in NOT_YET else s for s in SCRIPTS])
def test_every_benchmark_can_write_its_section(script):
    """A benchmark without ``--write-docs`` keeps its numbers out of docs/source/benchmarks.md: a new one fails here."""
    result = _help(script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--write-docs" in result.stdout, f"benchmarks/{script} has no --write-docs (see benchmarks/_docs.py)"


def test_the_index_of_the_page_says_yes_for_every_script_with_the_flag():
    text = (ROOT / "docs" / "source" / "benchmarks.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `benchmarks/([\w.]+)`[^\n]*\| ([^|\n]+) \|$", text, re.M)}
    for script in SCRIPTS:
        if "add_write_docs_argument(" in (ROOT / "benchmarks" / script).read_text() or script == "gpu_smoke.sh":
            assert rows.get(script, "").startswith("yes"), f"the index row of benchmarks/{script} should say yes"


def test_a_smoke_run_of_the_closed_loop_is_not_published():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "closed_loop.py"), "--smoke", "--write-docs"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "measures nothing to publish" in result.stderr


def test_the_gpu_smoke_dry_run_refuses_to_write_docs():
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), "--dry-run", "--write-docs"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "nothing to publish" in result.stderr
