"""The package works outside the repository (issue 13): build the wheel, install it in a fresh virtualenv, and run
``dermtrl data build --synthetic`` and ``dermtrl eval`` from a folder that is not the checkout.

Nothing is downloaded: the wheel is built with ``--no-build-isolation`` (this environment's setuptools) and
installed with ``--no-deps``; the fresh virtualenv sees the dependencies (torch, transformers, datasets, ...)
through ``--system-site-packages`` plus a ``.pth`` line naming this interpreter's site-packages, written after
the install so that pip never sees the project's own editable install. ``.pth`` files inside that folder are not
run, so the editable finder stays off and ``dermtrl`` can only come from the wheel (checked).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(cmd)} exited {done.returncode}\n"
                                  f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("cannot build a wheel: setuptools is not installed in this environment (pip install setuptools)")
    # from a copy of the tracked files, as a clean clone would be: setuptools never empties an old build/lib, so a
    # build in the checkout could ship files that were moved away since
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist),
          str(source)], cwd=dist, timeout=600)
    (built,) = dist.glob("dermtrl-*.whl")
    return built


def test_wheel_ships_the_card_templates_and_no_repository_paths(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for card in sorted((REPO_ROOT / "datasets_cards").glob("*.md")):
        assert f"dermtrl/templates/datasets_cards/{card.name}" in names
    assert "dermtrl/templates/soreb_model_card.md" in names
    assert "dermtrl/cli/__main__.py" in names
    assert not any(n.startswith(("tests/", "recipes/", "benchmarks/")) for n in names)
    assert "dermtrl/testing/hub_server.py" not in names  # the test Hub is test code (tests/hub_server.py)
    shipped = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "dermtrl" / "assets").rglob("*")
                     if p.is_file())
    assert shipped and set(shipped) <= names  # the prebuilt tiny base and demo adapter, with their checksums


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed; returns its ``bin`` folder."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=venv, timeout=300)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)], cwd=venv, timeout=600)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=venv, timeout=120).strip().splitlines()[-1])
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "zz_dermtrl_test_dependencies.pth").write_text("\n".join(ours) + "\n", encoding="utf-8")
    return venv / "bin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_installed_package_comes_from_the_wheel(installed, tmp_path):
    out = _run([str(installed / "python"), "-c",
                "import dermtrl, dermtrl.data.cards as c; print(dermtrl.__file__); print(c.TEMPLATES_DIR)"],
               cwd=tmp_path, timeout=300, env=_env())
    package_file, templates = out.strip().splitlines()[-2:]
    venv = installed.parent
    assert Path(package_file).is_relative_to(venv), package_file
    assert Path(templates).is_relative_to(venv) and Path(templates, "dermeval.md").is_file(), templates


def test_data_build_and_eval_run_from_another_folder(installed, tmp_path):
    from dermtrl.tiny import tiny_llava_path

    tiny = tiny_llava_path()  # the cached tiny model (built once per cache), so the subprocess builds nothing
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env()
    build_log = _run([str(installed / "dermtrl"), "data", "build", "--synthetic", "--n", "6", "--run", "run"],
                     cwd=work, timeout=600, env=env)
    assert "Synthetic build" in build_log
    dermeval = work / "run" / "datasets" / "dermeval"
    card = (dermeval / "README.md").read_text(encoding="utf-8")
    assert "## Intended use" in card and "## Not a medical device" in card
    assert (work / "run" / "datasets" / "dermbench" / "README.md").is_file()

    # the train split: which of six images fall in the test split (20%, by a hash of the pixels) changes with every
    # version of the synthetic pictures, and may be none of them
    _run([str(installed / "dermtrl"), "eval", "--model", str(tiny), "--dataset", str(dermeval), "--split", "train",
          "--n", "2", "--max-new-tokens", "8", "--batch-size", "2", "--threads", "1", "--out", "ev"],
         cwd=work, timeout=600, env=env)
    records = [json.loads(line) for line in (work / "ev" / "evaluations.jsonl").read_text().splitlines() if line]
    assert len(records) == 2 and all("case_id" in r and "error" not in r for r in records)
    assert (work / "ev" / "agreement.json").is_file()
    assert not (REPO_ROOT / "run").exists() and not (REPO_ROOT / "ev").exists()
