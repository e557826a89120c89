"""One caller's hung request must not block the others: a deadline stops a call and its retries, and does not
lower the concurrency other callers get. Against the loopback server's hang mode (a request it never answers)
and through the Space's DermBench compare, which shares one judge client between all its users."""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from dermtrl.llm.client import ClientConfig, LLMClient, LLMError, user_message
from dermtrl.testing import DEFAULT_SCORE_TEXT, Fault, last_user_text

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


def hang_on(word: str):
    """A judge that never answers requests mentioning ``word`` and answers the others at once."""

    def responder(body: dict) -> str:
        if word in last_user_text(body):
            raise Fault("timeout")  # the handler sleeps timeout_sleep (cut short when the server stops)
        return DEFAULT_SCORE_TEXT

    return responder


def test_a_deadline_stops_the_call_and_its_retries_and_keeps_the_concurrency(make_openai_server):
    server = make_openai_server(responder=hang_on("HANG"), timeout_sleep=60.0)
    config = ClientConfig(base_url=server.base_url, model="judge", max_concurrency=4, max_retries=3, timeout=0.6,
                          deadline=0.6)
    with LLMClient(config) as client:
        before = client.concurrency
        for i in range(5):
            with pytest.raises(LLMError, match=r"did not answer within 0.6 s \(the deadline"):
                client.complete([user_message(f"HANG {i}")])
        assert server.calls == 5  # no retry was sent after a deadline
        assert client.concurrency == before and client.notes() == []  # the hangs lowered nothing
        start = time.monotonic()
        assert client.complete([user_message("normal")]).text == DEFAULT_SCORE_TEXT
        assert time.monotonic() - start < 5  # generous: an answer at once, not after the hung calls
        time.sleep(0.3)
        assert server.calls == 6  # still: nothing of the hung calls went on in the background


def test_without_a_deadline_timeouts_still_lower_the_concurrency(make_openai_server):
    """The deadline is the caller giving up; a request timing out within it still means a server behind."""
    server = make_openai_server(responder=hang_on("HANG"), timeout_sleep=60.0)
    config = ClientConfig(base_url=server.base_url, model="judge", max_concurrency=4, max_retries=1, timeout=0.3)
    with LLMClient(config) as client:
        with pytest.raises(LLMError, match="timed out"):
            client.complete([user_message("HANG")])
        assert server.calls == 2 and client.concurrency < 4


def load_space_module() -> ModuleType:
    name = "dermeval_space_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "space" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_after_five_hung_compares_a_normal_compare_answers_in_its_normal_time(make_openai_server):
    """The Space's DermBench tab, with one judge client for every user: five compares whose judge call hangs
    each fail after the configured wait, and then a normal compare is scored at once."""
    import gradio as gr

    space = load_space_module()
    server = make_openai_server(responder=hang_on("HANG"), timeout_sleep=60.0)
    settings = replace(space.Settings.from_env({}), judge_base_url=server.base_url, judge_model="judge",
                       judge_timeout=1)
    app = space.SpaceApp(settings)  # no model: the DermBench tab needs none
    reference = generate_reference()
    for i in range(5):
        start = time.monotonic()
        with pytest.raises(gr.Error, match="did not answer within 1 s"):
            app.compare(f"HANG {i}: a candidate narrative about a plaque.", reference)
        assert time.monotonic() - start < 5
    assert server.calls == 5  # each hung call was stopped with the user's wait, its retry never sent
    client = app._judge.client
    assert client.concurrency == min(settings.judge_concurrency, 4) and client.notes() == []
    start = time.monotonic()
    status, _, overall, rows, raw, payload = app.compare("A candidate narrative about a plaque.", reference)
    assert payload["status"] == "scored" and raw == DEFAULT_SCORE_TEXT and overall is not None
    assert time.monotonic() - start < 5  # generous: the judge answers at once
    app._judge_pool.shutdown(wait=False)


def generate_reference() -> str:
    from dermtrl.cases.synthetic import generate_case

    return generate_case(0, seed=0)["reference"]


def test_a_deadline_longer_than_the_timeout_keeps_the_timeout_and_its_retries(make_openai_server):
    """deadline bounds the call in all; each attempt still times out after ``timeout`` and is retried within it."""
    server = make_openai_server(faults=["timeout"], timeout_sleep=30.0)
    config = ClientConfig(base_url=server.base_url, model="judge", max_retries=2, timeout=0.5, deadline=20.0)
    with LLMClient(config) as client:
        start = time.monotonic()
        assert client.complete([user_message("q")]).text == DEFAULT_SCORE_TEXT
        assert time.monotonic() - start < 10  # the first attempt gave up after 0.5 s, not after the 20 s deadline
        assert server.calls == 2 and client.usage.retries_by_kind() == {"timeout": 1}
