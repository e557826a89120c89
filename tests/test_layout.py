"""The package layout: rooms (trainer, dermeval, llm, hub, cases), and the old flat import paths still working for
one release with a DeprecationWarning, giving the very same module objects (patches and isinstance checks agree)."""

import subprocess
import sys

import pytest

MOVED = {
    "dermtrl.soreb_config": "dermtrl.trainer.soreb_config",
    "dermtrl.soreb_trainer": "dermtrl.trainer.soreb_trainer",
    "dermtrl.evaluator": "dermtrl.dermeval.evaluator",
    "dermtrl.eval_job": "dermtrl.dermeval.eval_job",
    "dermtrl.held_out": "dermtrl.dermeval.held_out",
    "dermtrl.client": "dermtrl.llm.client",
    "dermtrl.cache": "dermtrl.llm.cache",
    "dermtrl.concurrency": "dermtrl.llm.concurrency",
    "dermtrl.usage": "dermtrl.llm.usage",
    "dermtrl.publish_adapter": "dermtrl.hub.adapter",
    "dermtrl.data.publish": "dermtrl.hub.dataset",
    "dermtrl.data.loading": "dermtrl.cases.loading",
    "dermtrl.data.images": "dermtrl.cases.images",
    "dermtrl.data.synthetic": "dermtrl.cases.synthetic",
    "dermtrl.data.controls": "dermtrl.cases.controls",
}


@pytest.mark.parametrize(("old", "new"), MOVED.items())
def test_an_old_import_path_warns_and_gives_the_same_module(old, new):
    code = (f"import warnings; warnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as w:\n"
            f"    import {old} as a\n"
            f"import {new} as b\n"
            f"assert a is b, (a, b)\n"
            f"assert any(issubclass(x.category, DeprecationWarning) and '{new}' in str(x.message) for x in w), w\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_package_itself_never_uses_an_old_path():
    code = ("import warnings; warnings.filterwarnings('error', message='.*old import path.*')\n"
            "import dermtrl.cli.dispatch, dermtrl.trainer.soreb_trainer, dermtrl.dermeval.eval_job, "
            "dermtrl.hub.adapter, dermtrl.bench.dermbench, dermtrl.data.build, dermtrl.data.synthetic_pipeline\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_rooms_import_nothing_on_their_own():
    """Importing one module of a room must not pull in its siblings (the trainer's torch and TRL, the client's
    openai): each room's __init__ holds only its docstring."""
    import ast
    from pathlib import Path

    import dermtrl

    for room in ("trainer", "dermeval", "llm", "hub", "cases"):
        tree = ast.parse((Path(dermtrl.__file__).parent / room / "__init__.py").read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], room
