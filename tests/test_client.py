"""LLMClient, ResponseCache and FakeOpenAIServer, end to end over real loopback HTTP (nothing mocked)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from dermtrl.llm.cache import RECORD_FIELDS, ResponseCache, cache_key
from dermtrl.llm.client import (
    CallError,
    ClientConfig,
    Completion,
    LLMClient,
    LLMError,
    image_to_data_url,
    redact,
    system_message,
    user_message,
)
from dermtrl.prompts import PROMPT_VERSION
from dermtrl.testing import DEFAULT_SCORE_TEXT, FakeOpenAIServer, Fault, last_user_text

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-test-SECRET-1234567890"
REPO_ROOT = Path(__file__).resolve().parents[1]


def echo(body: dict) -> str:
    return "echo: " + last_user_text(body)


def make_client(server: FakeOpenAIServer, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5.0)
    return LLMClient(ClientConfig(base_url=server.base_url, model="fake-model", **kw))


def ask(text: str) -> list[dict]:
    return [system_message("You are a dermatology expert."), user_message(text)]


# --- basics ----------------------------------------------------------------------------------------------


def test_basic_completion_text_usage_and_summary(openai_server):
    with make_client(openai_server) as client:
        out = client.complete(ask("Describe the lesion."))
    assert isinstance(out, Completion) and out.ok
    assert out.text == DEFAULT_SCORE_TEXT and len(out.text.splitlines()) == 6
    assert (out.cached, out.model, out.finish_reason) == (False, "fake-model", "stop")
    assert out.prompt_tokens == 8 and out.completion_tokens == len(DEFAULT_SCORE_TEXT.split())
    body = openai_server.chat_requests[0]["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    assert body["messages"][0] == {"role": "system", "content": "You are a dermatology expert."}
    assert client.usage.as_dict() == {
        "calls": 1,
        "cache_hits": 0,
        "shared": 0,
        "failures": 0,
        "retries": 0,
        "prompt_tokens": 8,
        "completion_tokens": 16,
    }
    assert client.usage.summary().startswith("1 calls, 0 cache hits, 0 failures, 0 retries, 8 prompt")
    console = Console(record=True, width=100)
    client.print_usage(console)
    rendered = console.export_text()
    assert "cache hits" in rendered and "completion tokens" in rendered


def test_image_data_url_reaches_server_intact(openai_server):
    image = Image.new("RGB", (2000, 1000), (200, 80, 60))
    message = user_message("What do you see?", [image])
    assert [p["type"] for p in message["content"]] == ["image_url", "text"]
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (1024, 512)  # longer side shrunk to max_side
    assert image_to_data_url(image) == url  # deterministic: stable cache keys
    with make_client(openai_server) as client:
        client.complete([message])
    content = openai_server.chat_requests[0]["body"]["messages"][0]["content"]
    assert content == message["content"]


def test_image_from_jpeg_file_and_bytes(tmp_path):
    path = tmp_path / "lesion.jpg"
    Image.new("RGB", (64, 32), (10, 20, 30)).save(path, format="JPEG")
    url = image_to_data_url(path)
    assert url.startswith("data:image/jpeg;base64,")
    assert image_to_data_url(path.read_bytes()) == url
    assert image_to_data_url(str(path), max_side=None) == url
    assert image_to_data_url(url) == url  # data URLs pass through
    assert user_message("x", ["https://example.org/a.png"])["content"][0]["image_url"]["url"].startswith(
        "https"
    )


def test_bad_image_inputs_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        image_to_data_url(missing)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        image_to_data_url(text_file)
    with pytest.raises(ValueError, match="notes.txt"):
        user_message("look", [str(text_file)])
    with pytest.raises(ValueError, match="not a readable image"):
        image_to_data_url(b"\x00\x01garbage")
    with pytest.raises(TypeError):
        image_to_data_url(12345)  # type: ignore[arg-type]


def test_models_endpoint(openai_server):
    with urllib.request.urlopen(openai_server.base_url + "/models", timeout=5) as resp:
        data = json.load(resp)
    assert data["object"] == "list" and data["data"][0]["id"] == "fake-model"


# --- retries ---------------------------------------------------------------------------------------------


def test_429_then_500_then_success(openai_server):
    openai_server.inject("429", "500")
    with make_client(openai_server) as client:
        out = client.complete(ask("hi"))
    assert out.text == DEFAULT_SCORE_TEXT
    assert openai_server.calls == 3
    assert openai_server.faults_served == {"429": 1, "500": 1}
    assert client.usage.retries == 2 and client.usage.calls == 1 and client.usage.failures == 0


@pytest.mark.parametrize("kind", ["malformed", "empty", "503", "disconnect"])
def test_one_fault_then_success(openai_server, kind):
    openai_server.inject(kind)
    with make_client(openai_server) as client:
        out = client.complete(ask("hi"))
    assert out.text == DEFAULT_SCORE_TEXT
    assert openai_server.calls == 2
    assert client.usage.retries == 1


def test_malformed_and_openai_retries_share_one_budget(openai_server):
    openai_server.inject("malformed", "500", "malformed", "500")
    with make_client(openai_server, max_retries=3) as client, pytest.raises(LLMError) as info:
        client.complete(ask("hi"))
    assert openai_server.calls == 4  # max_retries + 1 requests in all, never more
    assert info.value.retries == 3


def test_persistent_500_raises_llm_error_naming_status(openai_server):
    openai_server.inject(*["500"] * 3)
    with make_client(openai_server, max_retries=2) as client, pytest.raises(LLMError) as info:
        client.complete(ask("hi"))
    err = info.value
    assert err.status == 500 and "500" in str(err)
    assert openai_server.base_url in str(err) and "fake-model" in str(err)
    assert openai_server.calls == 3
    assert client.usage.failures == 1 and client.usage.calls == 0 and client.usage.retries == 2


def test_persistent_malformed_raises_clear_error(openai_server):
    openai_server.inject(*["malformed"] * 3)
    with make_client(openai_server, max_retries=2) as client, pytest.raises(LLMError, match="unusable body"):
        client.complete(ask("hi"))
    assert openai_server.calls == 3


def test_complete_many_isolates_a_failing_item(make_openai_server):
    def responder(body: dict) -> str:
        text = last_user_text(body)
        if text == "item 2":
            raise Fault("500")
        return "echo: " + text

    server = make_openai_server(responder=responder)
    with make_client(server, max_retries=1, max_concurrency=3) as client:
        results = client.complete_many([ask(f"item {i}") for i in range(5)])
    assert isinstance(results[2], CallError) and not results[2].ok
    assert results[2].status == 500 and results[2].index == 2 and "500" in results[2].error
    assert [r.text for r in results if isinstance(r, Completion)] == [f"echo: item {i}" for i in (0, 1, 3, 4)]
    assert server.calls == 4 + 2
    assert client.usage.failures == 1 and client.usage.calls == 4


def test_complete_many_bad_item_and_bad_override(openai_server):
    with make_client(openai_server) as client:
        results = client.complete_many([ask("ok"), "not a conversation", [{"content": "no role"}]])
        assert isinstance(results[0], Completion)
        assert isinstance(results[1], CallError) and results[1].status is None and results[1].index == 1
        assert isinstance(results[2], CallError) and "role" in results[2].error
        calls = openai_server.calls
        with pytest.raises(TypeError, match="temprature"):
            client.complete_many([ask("x")], temprature=0.5)
        with pytest.raises(ValueError, match="temperature"):
            client.complete(ask("x"), temperature=7)
        assert openai_server.calls == calls
        assert client.complete_many([]) == []


def test_random_faults_all_recovered(make_openai_server):
    server = make_openai_server(responder=echo, fault_rate=0.3, seed=1234)
    with make_client(server, max_retries=8, max_concurrency=1) as client:
        results = client.complete_many([ask(f"q{i}") for i in range(20)])
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(20)]  # type: ignore[union-attr]
    served = sum(server.faults_served.values())
    assert served > 0 and server.calls == 20 + served
    assert client.usage.retries == served


# --- timeouts --------------------------------------------------------------------------------------------


def test_timeout_is_retried(make_openai_server):
    server = make_openai_server(timeout_sleep=5.0)
    server.inject("timeout")
    start = time.monotonic()
    with make_client(server, timeout=0.5, max_retries=2) as client:
        out = client.complete(ask("hi"))
    elapsed = time.monotonic() - start
    assert out.text == DEFAULT_SCORE_TEXT
    assert server.calls == 2 and client.usage.retries == 1
    assert elapsed < 3.0  # gave up after 0.5 s instead of waiting out the server's 5 s


def test_timeout_without_retries_names_it(make_openai_server):
    server = make_openai_server(timeout_sleep=5.0, faults=["timeout"])
    with make_client(server, timeout=0.3, max_retries=0) as client, pytest.raises(LLMError) as info:
        client.complete(ask("hi"))
    assert "timed out" in str(info.value) and info.value.status is None


def test_server_stop_is_bounded_with_a_sleeping_handler():
    server = FakeOpenAIServer(timeout_sleep=30.0, faults=["timeout"]).start()
    url = server.base_url + "/chat/completions"
    errors: list[BaseException] = []

    def post() -> None:
        req = urllib.request.Request(
            url, data=b'{"messages": []}', headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(req, timeout=10)
        except (urllib.error.URLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 5
    while server.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.stop()
    thread.join(5)
    assert time.monotonic() - start < 3.0 and not thread.is_alive() and errors


# --- cache -----------------------------------------------------------------------------------------------


def test_second_identical_call_hits_cache(openai_server, tmp_path):
    with make_client(openai_server, cache_path=str(tmp_path / "c.sqlite")) as client:
        first = client.complete(ask("hi"))
        second = client.complete(ask("hi"))
    assert not first.cached and second.cached
    assert second.text == first.text and second.prompt_tokens == first.prompt_tokens
    assert openai_server.calls == 1
    assert client.usage.cache_hits == 1 and client.usage.calls == 1


def test_cache_key_covers_prompt_version_model_and_settings(openai_server, tmp_path):
    path = str(tmp_path / "c.sqlite")
    with make_client(openai_server, cache_path=path) as client:
        client.complete(ask("hi"))
        client.complete(ask("hi"), model="other-model")
        client.complete(ask("hi"), max_tokens=50)
        client.complete(ask("hi"), seed=7)
        client.complete(ask("hi"), temperature=0.5, seed=7)
        client.complete(ask("hi "))  # different messages
        assert openai_server.calls == 6
        assert client.complete(ask("hi"), temperature=0).cached  # 0 and 0.0 are the same setting
        for kw in (
            {},
            {"model": "other-model"},
            {"max_tokens": 50},
            {"seed": 7},
            {"temperature": 0.5, "seed": 7},
        ):
            assert client.complete(ask("hi"), **kw).cached
        assert openai_server.calls == 6
    with make_client(openai_server, cache_path=path, prompt_version=PROMPT_VERSION + "-next") as client:
        assert not client.complete(ask("hi")).cached
    assert openai_server.calls == 7


def test_nondeterministic_requests_are_not_cached(openai_server, tmp_path):
    with make_client(openai_server, cache_path=str(tmp_path / "c.sqlite"), temperature=0.7) as client:
        a = client.complete(ask("hi"))
        b = client.complete(ask("hi"))
        assert not a.cached and not b.cached and openai_server.calls == 2
        assert len(client.cache) == 0  # type: ignore[arg-type]
        client.complete(ask("hi"), seed=3)
        assert client.complete(ask("hi"), seed=3).cached  # a fixed seed counts as deterministic
        assert openai_server.calls == 3


def test_interrupted_batch_resumes_only_unfinished(make_openai_server, tmp_path):
    broken = {"item 3", "item 7"}

    def responder(body: dict) -> str:
        text = last_user_text(body)
        if text in broken:
            raise Fault("503")
        return "echo: " + text

    server = make_openai_server(responder=responder)
    path = str(tmp_path / "batch.sqlite")
    batch = [ask(f"item {i}") for i in range(10)]
    with make_client(server, cache_path=path, max_retries=1, max_concurrency=4) as client:
        first = client.complete_many(batch, progress=True)
    assert [i for i, r in enumerate(first) if isinstance(r, CallError)] == [3, 7]
    assert server.calls == 8 + 2 * 2
    broken.clear()
    server.reset()
    with make_client(server, cache_path=path, max_retries=1, max_concurrency=4) as client:
        second = client.complete_many(batch)
    assert server.calls == 2
    assert sorted(last_user_text(r["body"]) for r in server.chat_requests) == ["item 3", "item 7"]
    assert [r.text for r in second] == [f"echo: item {i}" for i in range(10)]  # type: ignore[union-attr]
    assert [r.cached for r in second] == [i not in (3, 7) for i in range(10)]  # type: ignore[union-attr]
    assert client.usage.cache_hits == 8 and client.usage.calls == 2


_KILLED_BATCH = """
import sys
from dermtrl.llm.client import ClientConfig, LLMClient, user_message
base_url, cache_path = sys.argv[1], sys.argv[2]
config = ClientConfig(base_url=base_url, model="fake-model", cache_path=cache_path, max_concurrency=2)
LLMClient(config).complete_many([[user_message(f"case {i}")] for i in range(40)])
print("finished")
"""


def test_killed_process_loses_no_finished_answer(make_openai_server, tmp_path):
    server = make_openai_server(responder=echo, latency=0.05)
    path = tmp_path / "killed.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_BATCH), server.base_url, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while server.calls < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    with ResponseCache(path) as cache:
        done = len(cache)
    assert 5 <= done < 40
    server.reset()
    with LLMClient(
        ClientConfig(base_url=server.base_url, model="fake-model", cache_path=str(path))
    ) as client:
        results = client.complete_many([[user_message(f"case {i}")] for i in range(40)])
    assert [r.text for r in results] == [f"echo: case {i}" for i in range(40)]  # type: ignore[union-attr]
    assert server.calls == 40 - done and client.usage.cache_hits == done


def test_response_cache_unit(tmp_path):
    key = cache_key(PROMPT_VERSION, "m", [{"role": "user", "content": "x"}], {"temperature": 0.0})
    assert key == cache_key(PROMPT_VERSION, "m", [{"content": "x", "role": "user"}], {"temperature": 0.0})
    assert key != cache_key("other", "m", [{"role": "user", "content": "x"}], {"temperature": 0.0})
    assert len(key) == 64
    path = tmp_path / "sub" / "u.sqlite"
    with ResponseCache(path) as cache:
        with pytest.raises(ValueError, match="api_key"):
            cache.put(key, {"text": "t", "api_key": "x"})
        cache.put(key, {"text": "t", "model": "m"})
        assert key in cache and "nope" not in cache and len(cache) == 1
        assert cache.get("nope") is None

        def writer(t: int) -> None:
            for i in range(50):
                cache.put(f"k{t}-{i}", {"text": str(i)})

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(cache) == 401
    with ResponseCache(path) as cache:  # persisted
        record = cache.get(key)
        assert record is not None and record["text"] == "t" and set(record) <= RECORD_FIELDS
    with pytest.raises(RuntimeError, match="closed"):
        cache.get(key)


# --- concurrency -----------------------------------------------------------------------------------------


def test_concurrency_limit(make_openai_server):
    server = make_openai_server(responder=echo, latency=0.2)
    start = time.monotonic()
    with make_client(server, max_concurrency=4) as client:
        results = client.complete_many([ask(f"q{i}") for i in range(16)])
    elapsed = time.monotonic() - start
    assert all(isinstance(r, Completion) for r in results)
    assert 2 <= server.max_in_flight <= 4
    assert elapsed >= 0.75  # 16 calls of 0.2 s, 4 at a time


# --- secrets ---------------------------------------------------------------------------------------------


def test_secret_never_written_logged_or_raised(make_openai_server, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("DERMTRL_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)

    def responder(body: dict) -> str:
        text = last_user_text(body)
        if text.startswith("leak"):  # a misbehaving server that echoes the key in its error body
            raise RuntimeError(f"invalid key {SECRET}")
        if text.startswith("fail"):
            raise Fault("500")
        return "echo: " + text

    server = make_openai_server(responder=responder, faults=["429", "malformed"])
    cache_dir = tmp_path / "cache"
    config = ClientConfig(
        base_url=server.base_url,
        model="fake-model",
        api_key_env="DERMTRL_TEST_KEY",
        cache_path=str(cache_dir / "c.sqlite"),
        max_retries=2,
    )
    client = LLMClient(config)
    assert (
        SECRET not in repr(client)
        and SECRET not in repr(config)
        and SECRET not in json.dumps(config.to_dict())
    )
    assert client.complete(ask("hello")).text == "echo: hello"
    errors: list[str] = []
    for text in ("leak now", "fail now"):
        with pytest.raises(LLMError) as info:
            client.complete(ask(text))
        errors.append(str(info.value))
        errors.append("".join(traceback.format_exception(info.value)))
    assert "***" in errors[0]  # the echoed key was redacted, not merely absent
    results = client.complete_many([ask("leak 2"), ask("fine"), ask("fail 2")], progress="secret test")
    assert isinstance(results[1], Completion)
    errors += [r.error for r in results if isinstance(r, CallError)]
    assert len(errors) == 6 and "***" in errors[4]
    client.print_usage()
    # Files while open (the WAL holds recent writes) and after close (checkpointed).
    on_disk = [p.read_bytes() for p in cache_dir.iterdir()]
    client.close()
    on_disk += [p.read_bytes() for p in cache_dir.iterdir()]
    captured = capsys.readouterr()

    assert server.saw_text(SECRET)  # the key was sent, as a bearer token
    assert server.chat_requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert all(SECRET.encode() not in blob for blob in on_disk)
    assert all(SECRET not in e for e in errors)
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    assert "HTTP 429 from" in caplog.text and "unusable body from" in caplog.text  # logs were captured at all
    assert redact(f"key={SECRET}!", SECRET) == "key=***!" and redact("abc", "ab") == "abc"


def test_api_key_env_must_be_a_name_and_is_not_echoed():
    with pytest.raises(ValueError, match="api_key_env") as info:
        ClientConfig(api_key_env=SECRET)
    assert SECRET not in str(info.value)


def test_missing_key_for_openai_api_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("DERMTRL_NO_SUCH_KEY", raising=False)
    with LLMClient(ClientConfig(api_key_env="DERMTRL_NO_SUCH_KEY")) as client:
        with pytest.raises(LLMError, match="DERMTRL_NO_SUCH_KEY"):
            client.complete(ask("hi"))


def test_local_server_gets_empty_key(openai_server, monkeypatch):
    monkeypatch.delenv("DERMTRL_NO_SUCH_KEY", raising=False)
    with make_client(openai_server, api_key_env="DERMTRL_NO_SUCH_KEY") as client:
        client.complete(ask("hi"))
    assert openai_server.chat_requests[0]["headers"]["authorization"] == "Bearer EMPTY"


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrency", 0),
        ("max_concurrency", 2.5),
        ("max_retries", -1),
        ("timeout", 0),
        ("temperature", 3.0),
        ("max_tokens", 0),
        ("seed", "7"),
        ("base_url", "localhost:8000"),
        ("model", ""),
        ("prompt_version", ""),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        ClientConfig(**{field: value})


def test_config_from_dict():
    config = ClientConfig.from_dict({"model": "m", "max_concurrency": 2, "cache_path": "x.sqlite"})
    assert (config.model, config.max_concurrency, config.cache_path) == ("m", 2, "x.sqlite")
    assert ClientConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="max_concurency"):
        ClientConfig.from_dict({"max_concurency": 2})
    assert ClientConfig(cache_path=Path("a/b.sqlite")).cache_path == str(Path("a/b.sqlite"))  # type: ignore[arg-type]
