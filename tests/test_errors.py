"""One base class for the errors the CLI shows to users (issue 13): every user-facing exception subclasses
:class:`dermtrl.errors.DermtrlError`, keeps its old name and built-in base, and ``main`` prints it on one line
with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dermtrl.errors import CLIError, DermtrlError


def _user_facing() -> list[tuple[type, type]]:
    from dermtrl.bench.config import ConfigError
    from dermtrl.cases.images import ImageError
    from dermtrl.data.build import SplitLeak
    from dermtrl.hub.adapter import PublishError as AdapterPublishError
    from dermtrl.hub.dataset import PublishError as DatasetPublishError
    from dermtrl.jsonl import SettingsMismatch
    from dermtrl.llm.client import LLMError

    return [(CLIError, Exception), (ConfigError, ValueError), (SplitLeak, ValueError), (ImageError, ValueError),
            (DatasetPublishError, RuntimeError), (SettingsMismatch, ValueError), (AdapterPublishError, ValueError),
            (DatasetPublishError, ValueError),
            (LLMError, Exception)]


@pytest.mark.parametrize(("cls", "builtin"), _user_facing(), ids=lambda c: getattr(c, "__qualname__", str(c)))
def test_user_facing_errors_share_one_base_and_keep_their_old_base(cls, builtin):
    assert issubclass(cls, DermtrlError)
    assert issubclass(cls, builtin)


def test_old_import_paths_give_the_same_classes():
    import dermtrl.cli
    from dermtrl.cli import CLIError as from_cli
    from dermtrl.data.build import DERMBENCH_FEATURES, DERMEVAL_FEATURES
    from dermtrl.data.schema import DERMBENCH_FEATURES as bench
    from dermtrl.data.schema import DERMEVAL_FEATURES as evaluation

    assert from_cli is CLIError
    assert DERMBENCH_FEATURES is bench and DERMEVAL_FEATURES is evaluation
    assert callable(dermtrl.cli.main) and dermtrl.cli.EXIT_FAILURES == 1


def test_main_prints_any_user_error_without_traceback(monkeypatch, capsys):
    from dermtrl.cli import dispatch
    from dermtrl.jsonl import SettingsMismatch

    def boom(args):
        raise SettingsMismatch("results.jsonl: made with other settings")

    parser = dispatch.build_parser()
    monkeypatch.setattr(dispatch, "build_parser", lambda: parser)
    parser.set_defaults(func=boom)
    for action in parser._subparsers._group_actions[0].choices.values():  # every subcommand
        action.set_defaults(func=boom)
    assert dispatch.main(["parse", "-"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "made with other settings" in err and "Traceback" not in err


def test_python_dash_m_dermtrl_cli_runs_main():
    done = subprocess.run([sys.executable, "-m", "dermtrl.cli", "parse", "/nonexistent/file.txt"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no such file" in done.stderr and "Traceback" not in done.stderr
