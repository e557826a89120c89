"""Fixtures for tests that talk to a real (local) Hub, loaded for every test by ``pytest_plugins`` in
``tests/conftest.py``: ask for them by name.

``local_hub`` is a started :class:`tests.hub_server.LocalHubServer` on 127.0.0.1 (model, dataset
and Space repos, regular and LFS uploads). huggingface_hub and datasets read ``HF_ENDPOINT`` when first
imported, and the test session runs with ``HF_HUB_OFFLINE=1``, so client code runs in a fresh interpreter:
``run_against_hub(script, *args)`` runs a Python script there with the server's environment (endpoint, Xet off,
online, a private cache, a fake token) and returns the completed process; a failing script fails the test with
its output.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hub_server import LocalHubServer

REPO_ROOT = Path(__file__).resolve().parents[1]
HUB_TOKEN = "hf_localTestToken0123456789abcdef"


@pytest.fixture
def local_hub() -> Iterator[LocalHubServer]:
    with LocalHubServer() as server:
        yield server


@pytest.fixture
def run_against_hub(local_hub: LocalHubServer, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_against_hub(code, *args, timeout=240)``: run ``code`` in a fresh interpreter pointed at the local Hub."""

    def run(code: str, *args: str, timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        script = tmp_path / f"hub_script_{len(list(tmp_path.glob('hub_script_*')))}.py"
        script.write_text(textwrap.dedent(code), encoding="utf-8")
        env = local_hub.client_env(token=HUB_TOKEN, cache_dir=str(tmp_path / "hf-home"))
        env["PYTHONPATH"] = str(REPO_ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=str(tmp_path))
        if check and proc.returncode != 0:
            pytest.fail(f"script against the local Hub failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                        f"{proc.stderr[-6000:]}\nunhandled routes: {local_hub.unhandled}")
        return proc

    return run
