"""What the client learns about an endpoint, against loopback servers that behave like real ones: usage figures
that are only a hint (0, 1, only the uncached part, none at all), a chat template that really drops content
parts, and errors that retrying cannot fix (llama-server's "image input is not supported")."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from dermtrl.bench import DermBench
from dermtrl.cases.synthetic import generate_case
from dermtrl.llm.client import CallError, ClientConfig, LLMClient, LLMError, user_message
from dermtrl.llm.endpoint import PROBE_WORD, is_unsupported
from dermtrl.testing import DEFAULT_SCORE_TEXT, Fault, Reply, last_user_text

pytestmark = pytest.mark.timeout(120)

MMPROJ = ("image input is not supported - hint: if this is unexpected, you may need to provide the mmproj "
          "(multimodal projector) file")
LONG = "Erythematous plaques with silvery scale on both elbows and knees; nail pitting. " * 4


def client_for(server, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5.0)
    return LLMClient(ClientConfig(base_url=server.base_url, model="m", **kw))


def cases(n: int) -> tuple[list[dict], dict[str, list[dict]]]:
    rows, candidates = [], []
    for i in range(n):
        case = generate_case(i, seed=0)
        rows.append({"case_id": case["case_id"], "reference": case["reference"], "category": case["category"]})
        candidates.append({"case_id": case["case_id"], "text": f"[{i}] {case['narrative']}"})
    return rows, {"model-a": candidates}


class PromptCache:
    """A server with a prompt cache (llama.cpp, Ollama): it reports only the tokens it had not seen before."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, body: dict) -> Reply:
        words = last_user_text(body).split()
        new = [w for w in words if w not in self.seen]
        self.seen.update(words)
        return Reply(DEFAULT_SCORE_TEXT, prompt_tokens=len(new))


@pytest.mark.parametrize("usage", ["0", "1", "uncached part", "none"])
def test_a_usage_figure_never_fails_a_valid_answer(make_openai_server, tmp_path, caplog, usage):
    """The judge's answers parse, whatever the server reports as prompt_tokens: every judgment is scored, and a
    low figure is warned about once for the endpoint and recorded in the usage table."""
    responder = {
        "0": lambda body: Reply(DEFAULT_SCORE_TEXT, prompt_tokens=0),
        "1": lambda body: Reply(DEFAULT_SCORE_TEXT, prompt_tokens=1),
        "uncached part": PromptCache(),
        "none": lambda body: Reply(DEFAULT_SCORE_TEXT, usage=False),
    }[usage]
    server = make_openai_server(responder=responder)
    rows, candidates = cases(4)
    caplog.set_level(logging.WARNING, logger="dermtrl")
    with DermBench(ClientConfig(base_url=server.base_url, model="judge"), progress=False) as bench:
        records = bench.judge(rows, candidates, tmp_path / "judgments.jsonl")
        usage_table = bench.usage
    assert [r["status"] for r in records] == ["scored"] * 4, [r.get("error") for r in records]
    assert server.calls == 4  # text-only requests: no probe
    checks = usage_table.checks_found()
    warnings = [r for r in caplog.records if "usage figures are taken as a hint" in r.getMessage()]
    if usage == "none":
        assert warnings == [] and checks == {}
    else:
        assert len(warnings) == 1  # once for the endpoint, not once per answer
        assert "answers kept" in checks["reported prompt tokens"]


def test_content_parts_read_by_a_server_that_reports_no_prompt_tokens_are_kept(make_openai_server):
    """A gateway that zeroes usage, in front of a model that reads content parts: the probe's answers show the
    parts are read, so the answers stay; the verdict is in the usage table."""

    def model(body: dict) -> Reply:
        text = last_user_text(body)
        return Reply(PROBE_WORD if PROBE_WORD in text else DEFAULT_SCORE_TEXT, prompt_tokens=0)

    server = make_openai_server(responder=model)
    image = Image.new("RGB", (16, 16), (200, 60, 60))
    with client_for(server) as client:
        results = client.complete_many([[user_message(f"{LONG} case {i}", [image])] for i in range(3)])
        assert [r.text for r in results] == [DEFAULT_SCORE_TEXT] * 3
        assert client.usage.checks_found()["text as content parts"].startswith("read")
        assert client.usage.calls == 5 and server.calls == 5  # three answers and the probe's two requests, once
        table = client.usage.table()
    assert "endpoint check: text as content parts" in table.columns[0]._cells


def test_a_server_that_really_drops_content_parts_is_caught_even_without_usage_figures(make_openai_server):
    """A string-only chat template behind a gateway that reports 0 tokens: the probe's word comes back for the
    string and not for the parts, so requests with content parts fail, and none is recorded as an answer."""

    def model(body: dict) -> Reply:
        text = last_user_text(body)
        return Reply(PROBE_WORD if PROBE_WORD in text else "Sure! Here is a garbage answer.", prompt_tokens=0)

    server = make_openai_server(responder=model, string_content_only=True)
    image = Image.new("RGB", (16, 16), (200, 60, 60))
    with client_for(server) as client:
        first, second, text_only = client.complete_many(
            [[user_message(LONG, [image])], [user_message(LONG + " again", [image])], [user_message(LONG)]])
        assert isinstance(first, CallError) and "the server dropped the content" in first.error
        assert "does not read text sent as content parts" in first.error and "image support" in first.error
        assert isinstance(second, CallError) and not isinstance(text_only, CallError)
        assert client.usage.checks_found()["text as content parts"].startswith("dropped")
        calls = server.calls
        with pytest.raises(LLMError, match="dropped the content"):
            client.complete([user_message(LONG + " later", [image])])
        assert server.calls == calls  # known: not sent again


def test_an_unsupported_input_is_not_retried(make_openai_server):
    """llama-server with a text-only model answers an image with HTTP 500 "image input is not supported": that
    fails at once instead of after five retries per image."""

    def text_only_model(body: dict) -> str:
        if "image_url" in str(body["messages"]):
            raise Fault("500", message=MMPROJ)
        return DEFAULT_SCORE_TEXT

    server = make_openai_server(responder=text_only_model)
    image = Image.new("RGB", (16, 16), (10, 120, 60))
    with client_for(server, max_retries=5) as client:
        results = client.complete_many([[user_message(f"caption {i}", [image])] for i in range(3)])
        assert all(isinstance(r, CallError) for r in results)
        assert server.calls == 3 and client.usage.retries == 0
        assert "HTTP 500: image input is not supported" in results[0].error
        assert "not retried: the server says the input is unsupported" in results[0].error
        assert client.complete([user_message("text works")]).text == DEFAULT_SCORE_TEXT


def test_the_same_error_for_every_request_stops_the_retries(make_openai_server):
    """An endpoint that has answered every request with one and the same HTTP error: the first request spends its
    retries, the others fail at once, and the notes say so."""
    server = make_openai_server(responder=lambda body: (_ for _ in ()).throw(
        Fault("500", message="llama_model_load: failed to load model")))
    with client_for(server, max_retries=3, max_concurrency=1) as client:
        results = client.complete_many([[user_message(f"q{i}")] for i in range(4)])
        assert all(isinstance(r, CallError) for r in results)
        assert server.calls == 4 + 3  # 3 retries for the first request, none for the other three
        assert "not retried: every request to this endpoint so far got this error" in results[3].error
        assert any(n.startswith("not retried: every request to this endpoint got the same error (4 so far")
                   for n in client.notes())


def test_transient_500s_are_still_retried(make_openai_server):
    """Passing 500s, before and after answers, are retried as before: one answer shows the endpoint works."""
    server = make_openai_server(faults=["500", "500"])
    with client_for(server, max_retries=3, max_concurrency=1) as client:
        assert client.complete([user_message("a")]).text == DEFAULT_SCORE_TEXT
        server.inject("500", "503", "500")
        assert client.complete([user_message("b")]).text == DEFAULT_SCORE_TEXT
        assert client.usage.retries == 5 and client.usage.failures == 0


@pytest.mark.parametrize("status", ["503", "429"])
def test_answers_that_say_later_are_retried_however_many_requests_got_them(make_openai_server, status):
    """A server still loading its model (llama.cpp answers 503 "Loading model") or rate-limiting: the first request
    spends its 2 retries on three of them and fails, and the next one still retries the fourth and is answered,
    where an error that no retry fixes would fail it at once."""
    server = make_openai_server(faults=[status] * 4)
    with client_for(server, max_retries=2, max_concurrency=1) as client:
        results = client.complete_many([[user_message(f"q{i}")] for i in range(3)])
        assert isinstance(results[0], CallError) and f"HTTP {status}" in results[0].error
        assert [r.text for r in results[1:]] == [DEFAULT_SCORE_TEXT] * 2
        assert not any(n.startswith("not retried") for n in client.notes())


@pytest.mark.parametrize(("line", "unsupported"), [
    (MMPROJ, True),
    ("This model does not support image input", True),
    ("Unsupported content type: input_audio", True),
    ("Internal server error", False),
    ("Service unavailable", False),
    ("CUDA out of memory", False),
])
def test_what_counts_as_unsupported(line, unsupported):
    assert is_unsupported(line) == unsupported
