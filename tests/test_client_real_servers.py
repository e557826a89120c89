"""The client against what real OpenAI-compatible servers do (llama.cpp's, vLLM's), simulated by the loopback
server: string-only chat templates, short ``prompt_tokens``, ``finish_reason=length``, a single slot with a queue,
retries of every kind, Ctrl-C with calls in flight, structured output."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from dermtrl.llm.cache import ResponseCache
from dermtrl.llm.client import CallError, ClientConfig, LLMClient, LLMError, system_message, user_message
from dermtrl.testing import Fault, last_user_text

pytestmark = pytest.mark.timeout(120)
REPO_ROOT = Path(__file__).resolve().parents[1]
LONG = ("Erythematous, well-demarcated plaques with silvery scale on the extensor surfaces of both elbows and "
        "knees; nail pitting; no mucosal involvement. ") * 3


def client_for(server, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5.0)
    return LLMClient(ClientConfig(base_url=server.base_url, model="m", **kw))


def test_text_only_turns_are_plain_strings_which_a_string_only_server_reads(make_openai_server):
    server = make_openai_server(responder=lambda body: "saw: " + last_user_text(body)[:20], string_content_only=True)
    with client_for(server) as client:
        out = client.complete([system_message("Be brief."), user_message(LONG)])
    (request,) = server.chat_requests
    assert request["body"]["messages"][1] == {"role": "user", "content": LONG}  # a string, not content parts
    assert out.text == "saw: " + LONG[:20] and out.prompt_tokens == len(LONG.split()) + 2


@pytest.mark.parametrize("images", [0, 1])
def test_content_a_server_drops_fails_the_item_and_is_never_recorded_as_an_answer(make_openai_server, tmp_path,
                                                                                  images):
    """A string-only template drops a message of content parts; a text-only server drops the image."""
    server = make_openai_server(responder=lambda body: "Sure! Here is a garbage answer.", string_content_only=True)
    image = Image.new("RGB", (32, 32), (200, 60, 60))
    message = user_message(LONG, [image] * images) if images else {"role": "user", "content": [
        {"type": "text", "text": LONG}]}  # what user_message sent before: parts even for text only
    with client_for(server, cache_path=str(tmp_path / "c.sqlite")) as client:
        (result, fine) = client.complete_many([[message], [user_message(LONG)]])
        assert isinstance(result, CallError) and "the server dropped the content" in result.error
        assert ("image" in result.error) == bool(images) and "string content" in result.error
        assert not isinstance(fine, CallError) and client.usage.failures == 1
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert len(cache) == 1  # the garbage answer was not cached as a success
    with client_for(server) as client, pytest.raises(LLMError, match="does not read text sent as content parts"):
        client.complete([message])


def test_retries_of_every_kind_are_counted_by_kind_in_one_line_each(make_openai_server, caplog):
    kinds = ["429", "503", "500", "disconnect", "malformed", "empty", "timeout", "429"]
    server = make_openai_server(faults=kinds, timeout_sleep=3.0)
    caplog.set_level(logging.INFO)
    with client_for(server, max_retries=len(kinds), timeout=0.5, max_concurrency=1) as client:
        client.complete([user_message("hi")])
        assert client.usage.retries_by_kind() == {"HTTP 429": 2, "HTTP 503": 1, "HTTP 500": 1, "connection error": 1,
                                                  "unusable body": 2, "timeout": 1}
        assert client.usage.retries == len(kinds) == server.calls - 1
        notes = client.notes()
    assert [n for n in notes if n.startswith("retries after")] == [
        "retries after HTTP 429: 2", "retries after HTTP 500: 1", "retries after HTTP 503: 1",
        "retries after connection error: 1", "retries after timeout: 1", "retries after unusable body: 2"]
    noisy = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(("dermtrl", "openai"))]
    assert noisy == []  # no line per retry, for any kind


def test_http_errors_keep_the_status_and_the_first_line_of_the_body(make_openai_server):
    def responder(body):
        raise Fault("503")

    server = make_openai_server(responder=responder)
    with client_for(server, max_retries=1) as client, pytest.raises(LLMError) as info:
        client.complete([user_message("hi")])
    assert "HTTP 503: Service unavailable" in str(info.value) and info.value.status == 503
    assert "after 1 retries" in str(info.value)


def test_identical_requests_in_flight_are_sent_once(make_openai_server):
    server = make_openai_server(responder=lambda body: "answer " + last_user_text(body), latency=0.3)
    with client_for(server, max_concurrency=8) as client:
        results = client.complete_many([[user_message("same")]] * 6 + [[user_message("other")]])
        assert server.calls == 2 and client.usage.shared == 5 and client.usage.calls == 2
        assert [r.text for r in results] == ["answer same"] * 6 + ["answer other"]
        assert [r.cached for r in results] == [False] * 1 + [True] * 5 + [False] or \
            sum(r.cached for r in results) == 5  # which of the six went out first is up to the threads
        server.reset()
        sampled = client.complete_many([[user_message("same")]] * 3, temperature=0.8)  # draws: each is sent
        assert server.calls == 3 and all(not r.cached for r in sampled)


def test_a_single_slot_server_is_not_flooded_with_resends(make_openai_server):
    """20 requests at 20-way concurrency against a server answering one at a time (0.3 s each) with a 2 s timeout:
    sent all at once, the queue times most of them out and each is sent again (measured with the adaptation
    switched off: 27 resends). The client ramps up and backs off when answers slow down, so every request is
    answered and almost none is sent twice: 0-3 resends in 10 runs with three busy processes on two cores (0-2
    unloaded). The bound of 5 is that spread plus a margin, still five times below the unadapted client."""
    server = make_openai_server(responder=lambda body: "ok " + last_user_text(body), latency=0.3, slots=1)
    with client_for(server, max_concurrency=20, timeout=2.0, max_retries=8) as client:
        results = client.complete_many([[user_message(f"q{i}")] for i in range(20)])
        resends = server.calls - 20
        assert [r.text for r in results] == [f"ok q{i}" for i in range(20)]
        assert server.max_in_flight < 20 and any("requests in flight lowered from 20" in n for n in client.notes())
    assert resends <= 5, resends


def test_a_server_over_capacity_gets_fewer_requests_in_flight(make_openai_server):
    """A server that takes 6 requests at a time and answers 429 to the rest (an API's concurrency limit), against
    a client allowed 32. Each 429 round halves what the client keeps in flight, once per round, so it settles near
    what the server takes instead of resending most of every round."""
    capacity = 6

    def responder(body):
        if server.in_flight > capacity:
            raise Fault("429")
        return "ok " + last_user_text(body)

    server = make_openai_server(responder=responder, latency=0.05, retry_after_ms=20)

    n = 120
    with client_for(server, max_concurrency=32, max_retries=12) as client:
        results = client.complete_many([[user_message(f"q{i}")] for i in range(n)])
        assert [r.text for r in results] == [f"ok q{i}" for i in range(n)]
        assert client.concurrency <= 2 * capacity
        assert any("429/503 over capacity" in note and "lowered from 32" in note for note in client.notes())
    # 45-51 in four runs; without the cut the client stays at 32 and some requests spend all 12 retries on 429s
    assert server.faults_served.get("429", 0) < n


def test_a_fast_server_still_gets_the_full_concurrency(make_openai_server):
    server = make_openai_server(responder=lambda body: "ok", latency=0.2)  # no queue: every answer takes 0.2 s
    with client_for(server, max_concurrency=8, timeout=0.5) as client:  # 0.2 s is 40% of the timeout: not slow
        client.complete_many([[user_message(f"q{i}")] for i in range(40)])
        assert client.concurrency == 8 and server.max_in_flight == 8 and client.notes() == []


_INTERRUPTED = textwrap.dedent("""
    import signal
    import sys
    # A shell without job control starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: take Ctrl-C as a user at a terminal would send it, however the suite was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from dermtrl.llm.client import ClientConfig, LLMClient, user_message
    base_url, cache_path = sys.argv[1], sys.argv[2]
    config = ClientConfig(base_url=base_url, model="m", cache_path=cache_path, max_concurrency=4, timeout=20)
    with LLMClient(config) as client:
        client.complete_many([[user_message(f"case {i}")] for i in range(12)])
""")


def test_ctrl_c_caches_the_answers_of_calls_in_flight(make_openai_server, tmp_path):
    server = make_openai_server(responder=lambda body: "echo " + last_user_text(body), latency=1.5)
    cache = tmp_path / "c.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, server.base_url, str(cache)],
                             env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while server.calls < 4:
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "waiting up to 20 s for 4 request(s) in flight" in err
    assert server.calls == 4 and server.answers == 4
    with ResponseCache(cache) as stored:
        assert len(stored) == 4  # the four answers that arrived after Ctrl-C are kept
    server.reset()
    with LLMClient(ClientConfig(base_url=server.base_url, model="m", cache_path=str(cache), max_concurrency=4)) as c:
        results = c.complete_many([[user_message(f"case {i}")] for i in range(12)])
    assert [r.text for r in results] == [f"echo case {i}" for i in range(12)]
    assert server.calls == 8 and c.usage.cache_hits == 4  # the rerun pays only for what was never asked


def test_response_format_is_sent_and_keys_the_cache(make_openai_server, tmp_path):
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}

    def responder(body):
        return json.dumps({"Accuracy": 4}) if body.get("response_format") == schema else "free text"

    server = make_openai_server(responder=responder)
    with client_for(server, cache_path=str(tmp_path / "c.sqlite")) as client:
        assert client.complete([user_message("x")], response_format=schema).text == '{"Accuracy": 4}'
        assert client.complete([user_message("x")]).text == "free text"  # another cache key
        assert client.complete([user_message("x")], response_format=schema).cached
        with pytest.raises(ValueError, match="response_format"):
            client.complete([user_message("x")], response_format="json")
    assert server.calls == 2


def test_structured_output_lets_a_small_judge_score_where_free_text_fails(make_openai_server, tmp_path, capsys):
    """A small model that rambles in free text but keeps to a JSON schema (as measured with llama.cpp: 0/40
    parseable in free text, 10/10 with the schema)."""
    from dermtrl.cases.splits import TEST
    from dermtrl.cases.synthetic import SYNTHETIC_VERSION
    from dermtrl.cli import main
    from dermtrl.dimensions import DIMENSIONS, SCORES_RESPONSE_FORMAT
    from dermtrl.parsing import parse_scores_with_llm

    def small_model(body):
        if body.get("response_format") == SCORES_RESPONSE_FORMAT:
            return json.dumps({d: 4 for d in DIMENSIONS})
        return "The candidate is quite good overall, I think it deserves a high score on most aspects."

    server = make_openai_server(responder=small_model)
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"model": "m", "case_id": f"synth-{SYNTHETIC_VERSION}-0-{TEST.start + i}",
                                         "text": f"t{i}"})
                             + "\n" for i in range(10)))
    judge = ["bench", "judge", "--dataset", "dermtrl:synthetic", "--n", "10",
             "--base-url", server.base_url, "--model", "small", "--candidates", str(cands), "--no-progress",
             "--allow-failures"]
    assert main([*judge, "--out", str(tmp_path / "free.jsonl")]) == 0
    assert main([*judge, "--out", str(tmp_path / "json.jsonl"), "--structured-output"]) == 0
    capsys.readouterr()
    free = [json.loads(line) for line in (tmp_path / "free.jsonl").read_text().splitlines()]
    structured = [json.loads(line) for line in (tmp_path / "json.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "scored" for r in free) == 0
    assert sum(r["status"] == "scored" for r in structured) == 10
    assert all(r["scores"] == dict.fromkeys(DIMENSIONS, 4.0) and r["judge"]["response_format"] == "scores"
               for r in structured)
    with client_for(server, response_format="scores") as parser:  # the LLM parser takes the same setting
        parsed = parse_scores_with_llm("The narrative is fine.", parser)
    assert parsed.scores == dict.fromkeys(DIMENSIONS, 4.0) and set(parsed.sources.values()) == {"llm"}
    with pytest.raises(ValueError, match="response_format must be None, 'scores' or a dict"):
        ClientConfig(response_format="json")


def test_the_soreb_llm_parser_takes_every_endpoint_setting(make_openai_server, tmp_path):
    """SOREBConfig.llm_parser_* are the client's endpoint settings: no fixed timeout, retries or max_tokens; a
    cache."""
    import dataclasses

    from dermtrl.trainer.soreb_config import SOREBConfig
    from dermtrl.trainer.soreb_trainer import SOREBTrainer

    endpoint = ("base_url", "model", "api_key_env", "max_concurrency", "max_retries", "timeout", "max_tokens",
                "cache_path", "response_format")
    soreb = {f.name: f for f in dataclasses.fields(SOREBConfig)}
    client = {f.name: f for f in dataclasses.fields(ClientConfig)}
    for name in endpoint:
        assert f"llm_parser_{name}" in soreb, name
        if name not in ("base_url", "model"):  # no parser unless a model is named
            assert soreb[f"llm_parser_{name}"].default == client[name].default, name
    server = make_openai_server(latency=0.0)
    args = SOREBConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, bf16=False,
                       llm_parser_base_url=server.base_url,
                       llm_parser_model="parser", llm_parser_timeout=3.5, llm_parser_max_retries=1,
                       llm_parser_max_tokens=64, llm_parser_cache_path=str(tmp_path / "p.sqlite"),
                       llm_parser_max_concurrency=2, llm_parser_response_format="scores")
    with SOREBTrainer._llm_parser(args) as parser:
        cfg = parser.config
        assert (cfg.base_url, cfg.model, cfg.timeout, cfg.max_retries, cfg.max_tokens, cfg.max_concurrency,
                cfg.response_format) == (server.base_url, "parser", 3.5, 1, 64, 2, "scores")
        parser.complete([user_message("x")])
        assert parser.complete([user_message("x")]).cached  # it has a cache
    assert server.chat_requests[0]["body"]["max_tokens"] == 64
