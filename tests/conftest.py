"""Shared test setup: offline everywhere, the repository importable, and a real loopback OpenAI server."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

# Set before anything imports huggingface_hub / datasets / transformers / gradio: tests never touch the net.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


import pytest  # noqa: E402

from dermtrl.testing import FakeOpenAIServer  # noqa: E402


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A started :class:`FakeOpenAIServer` with default behaviour (score-block answers, no faults)."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def make_openai_server() -> Iterator[Callable[..., FakeOpenAIServer]]:
    """Factory: ``make_openai_server(latency=0.2, faults=["429"])`` -> a started server, stopped after."""
    servers: list[FakeOpenAIServer] = []

    def make(**kwargs: Any) -> FakeOpenAIServer:
        server = FakeOpenAIServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the tiny model (caption pretraining, about 2 minutes once per cache) before any test's timeout runs."""
    from dermtrl.tiny import default_cache_dir, tiny_llava_path

    print(f"dermtrl: tiny model at {tiny_llava_path()} (built once, cached under {default_cache_dir()})")


@pytest.fixture(scope="session")
def demo_adapter():
    """The Space's demo Stage-1 adapter (recipes/sft.py, demo config, 1,200 steps), trained once per cache.

    DermEval's, DermBench's and the Space's tests all use this one adapter, so the suite trains it once.
    """
    from tests.test_space import load_space_module

    space = load_space_module()
    path, _ = space.demo_adapter_path(space.Settings.from_env({**os.environ, "DERMEVAL_DEMO": "1"}))
    assert path is not None, "recipes/sft.py should be beside the Space in this repository"
    return path


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], Any]:
    """Import a script of benchmarks/ by name (they are scripts, not a package), once per session."""
    import functools
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    @functools.cache
    def load(name: str) -> Any:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


# Fixtures of the local Hub (tests/hub_server.py): `local_hub`, `run_against_hub`, available to every test by name.
pytest_plugins = ["tests.hub_fixtures"]
