"""The package layout: rooms (trainer, dermeval, llm, hub, cases), lazy top-level exports, and no module that only
re-exports another (no release ever shipped the old flat paths, so none is kept)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dermtrl

PACKAGE = Path(dermtrl.__file__).parent
REMOVED = ("dermtrl.soreb_config", "dermtrl.soreb_trainer", "dermtrl.evaluator", "dermtrl.eval_job", "dermtrl.held_out",
           "dermtrl.client", "dermtrl.cache", "dermtrl.concurrency", "dermtrl.usage", "dermtrl.publish_adapter",
           "dermtrl.data.publish", "dermtrl.data.loading", "dermtrl.data.images", "dermtrl.data.synthetic",
           "dermtrl.data.controls")


@pytest.mark.parametrize("old", REMOVED)
def test_a_removed_flat_path_is_gone(old):
    assert not (PACKAGE.parent / (old.replace(".", "/") + ".py")).exists(), old


def _only_reexports(tree: ast.Module) -> bool:
    """A module whose body is a docstring, imports and a ``sys.modules`` swap or a warning: a shim."""
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if not body:
        return False
    text = ast.unparse(tree)
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return bool(imports) and ("sys.modules[__name__]" in text or "moved to" in text.lower()) and len(body) <= 6


def test_no_module_only_reexports_a_moved_one():
    shims = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
             if _only_reexports(ast.parse(p.read_text()))]
    assert not shims, shims


def test_the_package_root_holds_one_concept_per_module_and_few_of_them():
    """Everything else lives in a room; the root stays small enough to read at a glance."""
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(root) <= 16, root


def test_top_level_exports_are_lazy_and_work():
    code = ("import sys, dermtrl\n"
            "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'import dermtrl pulled in torch/TRL'\n"
            "from dermtrl import DermEval, SOREBConfig, SOREBTrainer, DermBench, LLMClient, Scores\n"
            "assert SOREBTrainer.__name__ == 'SOREBTrainer' and SOREBConfig.__name__ == 'SOREBConfig'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def test_rooms_import_nothing_on_their_own():
    """Importing one module of a room must not pull in its siblings (the trainer's torch and TRL, the client's
    openai): each room's __init__ holds only its docstring."""
    for room in ("trainer", "dermeval", "llm", "hub", "cases", "agreement"):
        tree = ast.parse((PACKAGE / room / "__init__.py").read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], room
