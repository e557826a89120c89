"""``python -m dermtrl.llm.server``: the stand-in judge a newcomer runs to try DermBench offline, started as a
subprocess on a free port and talked to over HTTP, as docs/source/offline_judge.md tells people to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dermtrl.dimensions import DIMENSIONS

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """The server on a free port; its base URL from the line it prints (a bounded wait)."""
    proc = subprocess.Popen([sys.executable, "-m", "dermtrl.llm.server", "--port", str(free_port()), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the server prints one line once it listens, or exits
    if "at http://" not in line:
        proc.kill()
        raise AssertionError(f"no start line: {line!r} {proc.communicate(timeout=10)}")
    return proc, line.split(" at ")[1].split()[0]


@pytest.fixture
def judge_server() -> Iterator[str]:
    proc, url = start()
    yield url
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def chat(url: str, content: str, **extra: object) -> dict:
    body = json.dumps({"model": "any", "messages": [{"role": "user", "content": content}], **extra}).encode()
    request = urllib.request.Request(url + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


def test_help_is_written_for_users():
    out = subprocess.run([sys.executable, "-m", "dermtrl.llm.server", "--help"], capture_output=True, text=True,
                         env=ENV, timeout=60)
    assert out.returncode == 0
    for needed in ("--port", "--host", "--mode", "stand-in DermBench judge", "offline", "dermtrl bench judge",
                   "--base-url http://127.0.0.1:8011/v1", "hang", "flaky", "docs/source/offline_judge.md"):
        assert needed in out.stdout, needed
    assert max(len(line) for line in out.stdout.splitlines()) <= 100
    missing = subprocess.run([sys.executable, "-m", "dermtrl.llm.server"], capture_output=True, text=True, env=ENV,
                             timeout=60)
    assert missing.returncode == 2 and "--port" in missing.stderr


def test_the_stand_in_judge_answers_over_http(judge_server):
    first = chat(judge_server, "Judge candidate A")
    text = first["choices"][0]["message"]["content"]
    scores = dict(line.split(": ") for line in text.splitlines())
    assert list(scores) == list(DIMENSIONS) and all(1 <= int(v) <= 5 for v in scores.values())
    assert chat(judge_server, "Judge candidate A")["choices"][0]["message"]["content"] == text  # deterministic
    structured = chat(judge_server, "Judge candidate A", response_format={"type": "json_object"})
    assert json.loads(structured["choices"][0]["message"]["content"]) == {d: int(v) for d, v in scores.items()}
    with urllib.request.urlopen(judge_server + "/models", timeout=20) as response:
        assert json.load(response)["data"][0]["id"] == "dermtrl-stand-in-judge"
    assert judge_server.startswith("http://127.0.0.1:")  # loopback unless asked otherwise


def test_dermbench_runs_offline_against_it(judge_server, tmp_path, capsys):
    """The documented command, as written in docs/source/offline_judge.md."""
    from dermtrl.cli import main

    out = tmp_path / "judgments.jsonl"
    code = main(["bench", "judge", "--dataset", "dermtrl:synthetic", "--n", "4", "--dataset-narratives", "synthetic",
                 "--base-url", judge_server, "--model", "stand-in", "--out", str(out), "--no-progress"])
    capsys.readouterr()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and len(records) == 4 and all(r["status"] == "scored" for r in records)
    assert len({json.dumps(r["scores"], sort_keys=True) for r in records}) > 1  # scores differ between cases


def test_hang_mode_never_answers_and_the_port_in_use_is_a_clear_error():
    proc, url = start("--mode", "hang")
    try:
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(OSError):  # TimeoutError (socket) or URLError wrapping it
            urllib.request.urlopen(request, timeout=1.0)
        port = url.rsplit(":", 1)[1].split("/")[0]
        taken = subprocess.run([sys.executable, "-m", "dermtrl.llm.server", "--port", port], capture_output=True,
                               text=True, env=ENV, timeout=60)
        assert taken.returncode == 2 and taken.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
