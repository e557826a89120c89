"""A real OpenAI-compatible HTTP server on the loopback interface: the scripted model behind
``dermtrl data build --synthetic`` (a product feature, so it lives here, not in test code) and the server the
client's tests run against (re-exported by :mod:`dermtrl.testing`).

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` with genuine OpenAI JSON, over real sockets,
so the code under test runs its whole stack (the ``openai`` package, its HTTP client, retries, timeouts)
with nothing mocked. Faults are either scripted (:meth:`FakeOpenAIServer.inject`, consumed one per request,
in arrival order), random (``fault_rate`` and ``fault_kinds``, from a seeded generator), or chosen per
request by the responder raising :class:`Fault`. Fault kinds:

``"429"``, ``"500"``, ``"503"``
    that status, a JSON error body and ``Retry-After: 0`` plus ``retry-after-ms`` (default 10 ms, so
    clients that honour it, as ``openai`` does, retry quickly).
``"timeout"``
    no answer: the handler waits ``timeout_sleep`` seconds (longer than the client's timeout; cut short
    by :meth:`~FakeOpenAIServer.stop`) and closes the connection.
``"disconnect"``
    closes the connection at once without answering (a connection error).
``"malformed"``
    200 with ``Content-Type: application/json`` and a body that is not JSON.
``"empty"``
    200 with valid JSON but ``"choices": []``.

Beyond faults, the server behaves like the real ones the client meets (llama.cpp's and vLLM's servers):

* an answer longer than the request's ``max_tokens`` (counted in words) is cut there with
  ``finish_reason="length"``; a responder may also return a :class:`Reply` to set the finish reason or the
  reported ``prompt_tokens`` itself, or leave ``usage`` out of the answer;
* ``string_content_only=True`` is a chat template that takes only string content: a message whose content is
  a list of parts is dropped before the "model" (the responder) sees it, and the prompt tokens reported
  shrink accordingly (what llama.cpp's built-in chat formats do);
* ``slots=N`` answers at most N requests at a time; the others wait in a queue, their wait counting against
  the client's timeout (a single-process server under load);
* ``usage.prompt_tokens`` counts the words of every text the model sees plus ``image_tokens`` per image.

Everything is bounded: handler sockets time out, sleeps wake on stop, and :meth:`~FakeOpenAIServer.stop`
closes open connections and joins the server thread with a timeout.
"""

from __future__ import annotations

import json
import random
import re
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.loopback import LoopbackHTTPServer, LoopbackServer

FAULT_KINDS: tuple[str, ...] = ("429", "500", "503", "timeout", "disconnect", "malformed", "empty")

#: What the default responder answers: a six-line score block in the paper's dimension order.
DEFAULT_SCORE_TEXT = "\n".join(
    f"{dim}: {score}" for dim, score in zip(DIMENSIONS, (4, 5, 4, 3, 4, 4), strict=True)
)

_STATUS_TEXT = {"429": "Rate limit reached", "500": "Internal server error", "503": "Service unavailable"}


@dataclass(frozen=True)
class Reply:
    """A responder's answer with more than text: how it ended, and the prompt size the server reports."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # None: the server's own count
    usage: bool = True  # False: no "usage" in the answer at all (some gateways and proxies)
    reasoning: str | None = None  # sent as ``reasoning_content`` beside the content, as DeepSeek-R1 and vLLM do


class Fault(Exception):
    """Raise from a responder to answer that request with a fault (one of :data:`FAULT_KINDS`); ``message`` replaces
    the error body's message of an HTTP fault (e.g. llama.cpp's ``image input is not supported``)."""

    def __init__(self, kind: str, message: str | None = None) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        super().__init__(kind)
        self.kind = kind
        self.message = message


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message in a chat-completions request body ('' if none)."""
    for message in reversed(list(body.get("messages") or [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            return "\n".join(texts)
    return ""


def _default_responder(body: Mapping[str, Any]) -> str:
    return DEFAULT_SCORE_TEXT


def _count_tokens(body: Mapping[str, Any], image_tokens: int = 0) -> int:
    """A crude, deterministic token count: whitespace-separated words of all message text, plus
    ``image_tokens`` per image part."""
    words = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    words += len(str(part.get("text", "")).split())
                elif isinstance(part, dict) and part.get("type") == "image_url":
                    words += image_tokens
    return words


def _string_content_only(body: dict[str, Any]) -> dict[str, Any]:
    """The request as a string-only chat template sees it: messages with list content are gone."""
    messages = [m for m in body.get("messages") or [] if not isinstance(m, dict) or isinstance(m.get("content"), str)]
    return {**body, "messages": messages}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real API; every answer sends Content-Length
    server: LoopbackHTTPServer
    timeout = 10.0  # an idle keep-alive connection frees its thread after this long

    # --- plumbing -------------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass  # keep test output clean; everything is recorded in FakeOpenAIServer.requests

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _send_bytes(self, status: int, data: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:12]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # --- routes ---------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        owner = self.server.owner
        owner._record(self, b"", None)
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": owner.model, "object": "model", "created": 0, "owned_by": "dermtrl"}],
                },
            )
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request"}})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        owner = self.server.owner
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        owner._record(self, raw, body)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request"}})
            return
        if not isinstance(body, dict):
            self._send_json(400, {"error": {"message": "body is not a JSON object", "type": "invalid"}})
            return
        owner._enter()
        try:
            self._chat(owner, body)
        finally:
            owner._leave()

    def _chat(self, owner: FakeOpenAIServer, body: dict[str, Any]) -> None:
        if owner._slots is None:
            self._answer(owner, body)
            return
        with owner._slots:  # a server with few slots: the rest wait here, as in its queue
            self._answer(owner, body)

    def _answer(self, owner: FakeOpenAIServer, body: dict[str, Any]) -> None:
        if owner.latency > 0:
            owner._stopping.wait(owner.latency)
        if owner.string_content_only:
            body = _string_content_only(body)
        kind = owner._next_fault()
        text = ""
        finish_reason = "stop"
        prompt_tokens = _count_tokens(body, owner.image_tokens)
        report_usage = True
        reasoning = None
        message = None
        if kind is None:
            try:
                reply = owner.responder(body)
                if isinstance(reply, Reply):
                    text, finish_reason, report_usage = reply.text, reply.finish_reason, reply.usage
                    reasoning = reply.reasoning
                    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_tokens
                else:
                    text = reply
            except Fault as fault:
                kind, message = fault.kind, fault.message
            except Exception as exc:  # a bug in a test's responder: answer 500, do not retry, keep it
                owner._note_responder_error(exc)
                error = {"message": f"responder raised {type(exc).__name__}: {exc}", "type": "responder"}
                self._send_json(500, {"error": error}, {"x-should-retry": "false"})
                return
        if kind is not None:
            owner._count_fault(kind)
            self._fault(owner, kind, message)
            return
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        words = list(re.finditer(r"\S+", text))
        if isinstance(limit, int) and limit > 0 and len(words) > limit:
            text, finish_reason = text[: words[limit - 1].end()], "length"
        owner._count_answer()
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or owner.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
        }
        if reasoning is not None:
            payload["choices"][0]["message"]["reasoning_content"] = reasoning
        if report_usage:
            payload["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                                "total_tokens": prompt_tokens + len(text.split())}
        self._send_json(200, payload)

    def _fault(self, owner: FakeOpenAIServer, kind: str, message: str | None = None) -> None:
        retry_headers = {"Retry-After": "0", "retry-after-ms": str(owner.retry_after_ms)}
        if kind in _STATUS_TEXT:
            error = {"message": message or _STATUS_TEXT[kind], "type": "server_error", "code": kind}
            self._send_json(int(kind), {"error": error}, retry_headers)
        elif kind == "malformed":
            self._send_bytes(200, b'{"id": "chatcmpl-broken", "choices": [ <<not json', retry_headers)
        elif kind == "empty":
            payload = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": owner.model,
                "choices": [],
            }
            self._send_json(200, payload, retry_headers)
        elif kind == "timeout":
            owner._stopping.wait(owner.timeout_sleep)
            self.close_connection = True
        elif kind == "disconnect":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeOpenAIServer(LoopbackServer):
    """A threaded OpenAI-compatible server on ``127.0.0.1`` (a free port), for tests.

    Use as a context manager (``with FakeOpenAIServer() as srv: ...``) or call :meth:`start` and
    :meth:`stop`. Point a client at :attr:`base_url`. Observations (all thread-safe): :attr:`requests`
    (method, path, headers, parsed body of every request), :attr:`calls` (chat-completion requests received,
    faulted ones included), :attr:`faults_served`, :attr:`max_in_flight` (peak concurrent chat requests) and
    :meth:`saw_text` (whether a string occurred anywhere in the raw bytes received).

    ``responder`` maps a request body to the assistant's text; it may raise :class:`Fault` to fail that
    request. ``faults`` pre-loads the scripted fault queue; ``fault_rate`` adds random faults, drawn from
    ``fault_kinds`` with a generator seeded by ``seed``, to requests the queue does not fault.
    """

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], str | Reply] | None = None,
        *,
        latency: float = 0.0,
        faults: Iterable[str] = (),
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = ("429", "500", "503", "malformed"),
        seed: int = 0,
        timeout_sleep: float = 3.0,
        retry_after_ms: int = 10,
        model: str = "fake-model",
        string_content_only: bool = False,
        slots: int | None = None,
        image_tokens: int = 64,
    ) -> None:
        if latency < 0 or timeout_sleep < 0:
            raise ValueError("latency and timeout_sleep must be >= 0 seconds")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate!r}")
        self.fault_kinds = tuple(fault_kinds)
        for kind in self.fault_kinds:
            Fault(kind)  # validates
        self.responder: Callable[[dict[str, Any]], str | Reply] = responder or _default_responder
        self.latency = float(latency)
        self.fault_rate = float(fault_rate)
        self.timeout_sleep = float(timeout_sleep)
        self.retry_after_ms = int(retry_after_ms)
        self.model = model
        self.string_content_only = bool(string_content_only)
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be None or >= 1, got {slots!r}")
        self._slots = threading.BoundedSemaphore(slots) if slots is not None else None
        self.image_tokens = int(image_tokens)
        self._answers = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._scripted: deque[str] = deque()
        self._requests: list[dict[str, Any]] = []
        self._raw: list[bytes] = []
        self._calls = 0
        self._faults_served: dict[str, int] = {}
        self._responder_errors: list[BaseException] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._accepted = 0
        self._stopping = threading.Event()
        self.inject(*faults)

    # --- lifecycle (LoopbackServer) ------------------------------------------------------------------
    thread_name = "fake-openai"
    handler_class = _Handler

    def _on_start(self) -> None:
        self._stopping.clear()

    def _on_stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a latency or timeout fault

    def _after_shutdown(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    # --- knobs ----------------------------------------------------------------------------------------
    def inject(self, *kinds: str) -> None:
        """Queue faults: the next ``len(kinds)`` chat requests get them, in order."""
        for kind in kinds:
            Fault(kind)  # validates
        with self._lock:
            self._scripted.extend(kinds)

    def reset(self) -> None:
        """Forget recorded requests and counters (the fault queue and knobs stay)."""
        with self._lock:
            self._requests.clear()
            self._raw.clear()
            self._calls = 0
            self._answers = 0
            self._faults_served.clear()
            self._max_in_flight = self._in_flight

    # --- observations ---------------------------------------------------------------------------------
    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received: ``{"method", "path", "headers", "body"}`` (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/chat/completions")]

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def answers(self) -> int:
        """Chat requests answered with a completion (not faulted)."""
        with self._lock:
            return self._answers

    @property
    def faults_served(self) -> dict[str, int]:
        with self._lock:
            return dict(self._faults_served)

    @property
    def responder_errors(self) -> list[BaseException]:
        """Exceptions (other than :class:`Fault`) the responder raised; each was answered with a 500."""
        with self._lock:
            return list(self._responder_errors)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._scripted)

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far (a client that keeps connections alive opens few)."""
        with self._lock:
            return self._accepted

    def close_idle_connections(self) -> None:
        """Close every open connection now, as a server does with keep-alive connections idle for too long."""
        self._after_shutdown()

    @property
    def in_flight(self) -> int:
        """Chat requests being answered now (a responder may read it to act as a server over capacity)."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def saw_text(self, text: str | bytes) -> bool:
        """Whether ``text`` occurred in the raw bytes (request line, headers, body) of any request."""
        needle = text.encode() if isinstance(text, str) else text
        with self._lock:
            return any(needle in raw for raw in self._raw)

    # --- called by handlers ---------------------------------------------------------------------------
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self._accepted += 1
            else:
                self._connections.discard(conn)

    def _record(self, handler: _Handler, raw_body: bytes, body: Any) -> None:
        # The headers as received, joined by hand: bytes(handler.headers) runs the email package's generator, which
        # took half of the server's CPU per request.
        lines = [handler.requestline, *(f"{name}: {value}" for name, value in handler.headers.items()), "", ""]
        head = "\r\n".join(lines).encode("latin-1", "replace")
        entry = {
            "method": handler.command,
            "path": handler.path,
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "body": body,
        }
        with self._lock:
            self._raw.append(head + raw_body)
            self._requests.append(entry)
            if handler.command == "POST" and handler.path.rstrip("/").endswith("/chat/completions"):
                self._calls += 1

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._scripted:
                return self._scripted.popleft()
            if self.fault_rate > 0 and self.fault_kinds and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.fault_kinds)
        return None

    def _note_responder_error(self, exc: BaseException) -> None:
        with self._lock:
            self._responder_errors.append(exc)

    def _count_answer(self) -> None:
        with self._lock:
            self._answers += 1

    def _count_fault(self, kind: str) -> None:
        with self._lock:
            self._faults_served[kind] = self._faults_served.get(kind, 0) + 1

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1


# --- a stand-in judge people can run ------------------------------------------------------------------

MODES: dict[str, str] = {
    "judge": "answer every request with six scores, 1 to 5, drawn from a hash of the prompt (the same prompt, the "
             "same scores; another candidate, other scores)",
    "fixed": "answer every request with the same six scores (4 5 4 3 4 4)",
    "flaky": "as judge, but fail a share of requests (--fault-rate) with 429, 500, 503 or a malformed body, as a "
             "busy server does",
    "hang": "accept every request and never answer it (to see what a client does when a judge hangs)",
}


def hashed_scores(body: Mapping[str, Any]) -> str | Reply:
    """Six scores, 1 to 5, from a hash of the request's messages; JSON when the request asks for the scores
    response format (``--structured-output``), else one ``Dimension: score`` line each."""
    import hashlib

    digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).digest()
    scores = {dim: 1 + digest[i] % 5 for i, dim in enumerate(DIMENSIONS)}
    if body.get("response_format"):
        return json.dumps(scores)
    return "\n".join(f"{dim}: {score}" for dim, score in scores.items())


def _parser() -> Any:
    import argparse
    import textwrap

    modes = "\n".join(textwrap.fill(text, 88, initial_indent=f"  {name:7}", subsequent_indent=" " * 9)
                      for name, text in MODES.items())
    return argparse.ArgumentParser(
        prog="python -m dermtrl.llm.server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "A stand-in DermBench judge: an OpenAI-compatible chat-completions server with no model behind it, so "
            "you can try `dermtrl bench judge`, `bench run` and the LLM parser offline, with no API key, before "
            "pointing them at a real judge. Its scores say nothing about the narratives.", 88),
        epilog=f"modes:\n{modes}\n\nexample (two terminals):\n"
               "  python -m dermtrl.llm.server --port 8011\n"
               "  dermtrl bench judge --dataset dermtrl:synthetic --n 8 --dataset-narratives synthetic \\\n"
               "      --base-url http://127.0.0.1:8011/v1 --model stand-in --out judgments.jsonl\n\n"
               "Ctrl-C stops the server. See docs/source/offline_judge.md.",
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m dermtrl.llm.server``: serve a stand-in judge until Ctrl-C (or SIGTERM)."""
    import signal

    parser = _parser()
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port, printed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; the server has no "
                             "authentication, so expose it to a network only on purpose)")
    parser.add_argument("--mode", choices=sorted(MODES), default="judge", help="how to answer (default judge)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="--mode flaky: share of requests failed")
    parser.add_argument("--model", default="dermtrl-stand-in-judge", help="model name listed at /v1/models")
    parser.add_argument("--slots", type=int, default=None,
                        help="answer at most this many requests at a time, queueing the rest (a one-process server)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0 to 65535, got {args.port}")
    if args.latency < 0 or not 0 <= args.fault_rate <= 1 or (args.slots is not None and args.slots < 1):
        parser.error("--latency must be >= 0, --fault-rate in [0, 1], --slots >= 1")
    server = FakeOpenAIServer(
        _default_responder if args.mode == "fixed" else hashed_scores,
        latency=args.latency, model=args.model, slots=args.slots,
        fault_rate=args.fault_rate if args.mode == "flaky" else 0.0, seed=0,
        timeout_sleep=24 * 3600.0, retry_after_ms=200,
    )
    if args.mode == "hang":
        server.responder = _hang
    server.host, server.bind_port = args.host, args.port
    try:
        server.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # a shell without job control starts background jobs with SIGINT ignored: `kill -INT` must still stop it
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"stand-in judge ({args.mode}) at {server.base_url} (model {args.model!r}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(timeout=2.0)
    return 0


def _hang(body: Mapping[str, Any]) -> str:
    raise Fault("timeout")


if __name__ == "__main__":
    sys.exit(main())
