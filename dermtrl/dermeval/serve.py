"""``dermtrl serve``: a DermEval adapter behind an OpenAI-compatible HTTP API, with dynamic batching.

Evaluation frameworks (inspect_ai's grader, lm-eval, lighteval) and RL loops call judges over HTTP; this puts
DermEval where they can reach it. Endpoints:

``POST /v1/chat/completions``
    OpenAI chat request. The last user message holds one image part (``image_url`` with a ``data:`` URL or bare
    base64) and the narrative as its text part(s). The answer's message is DermEval's critique; the extra field
    ``dermeval`` holds the evaluation record (see :func:`evaluation_record`): ``scores`` (six, ``None`` when not
    parsed), ``expected`` and ``spread`` (from the score-digit probabilities), ``intervals`` (only when a
    ``calibration.json`` is loaded), ``overall``, ``safety_flag`` and the raw ``text``.
``POST /v1/evaluate``
    ``{"items": [{"image": <base64 or data URL>, "narrative": "..."}, ...]}`` -> ``{"model", "results": [record]}``.
``GET /health``, ``GET /v1/models``
    liveness (with the queue's depth) and the served model's id.

**Dynamic batching.** Every request's items join one bounded queue; a single worker takes the first waiting item,
gathers what arrives within a window (up to ``max_batch_size``) and runs them as one ``evaluate_batch``.
A full queue answers 429 with ``Retry-After``; an item not done within ``request_timeout_s`` answers 504.

**The window** is a tenth of one generate call (:data:`WINDOW_SHARE` of the median time of the last batches), unless
``max_wait_ms`` fixes it. Waiting delays the batch's first item by the window; an item that arrives within it is
answered with that batch instead of after the next whole generate call. A tenth bounds the first cost at 10 % of an
answer's time whatever the model and hardware, which no fixed window can: one generate call takes from a fraction of
a second (a small model on a GPU) to many seconds (a 7B model, or any model on CPU cores), while the clients a batch
has just answered send their next requests over some milliseconds. Before the first batch has been timed the window
is :data:`FIRST_WINDOW_MS`.

**Access.** Loopback by default. ``api_key_env`` names an environment variable holding one or more
comma-separated keys; requests then need ``Authorization: Bearer <key>``. Keys are never logged or echoed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import os
import queue
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from dermtrl.dimensions import DIMENSIONS, SAFETY_FLAG_AT
from dermtrl.llm.loopback import LoopbackServer

#: The name of the extra field of a chat completion that carries the evaluation record.
EXTRA_FIELD = "dermeval"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 32 * 1024 * 1024
#: With no fixed ``max_wait_ms``, a batch waits for more items this share of one generate call (module docstring).
WINDOW_SHARE = 0.1
#: The window, in ms, until a generate call has been timed.
FIRST_WINDOW_MS = 5.0
#: The window follows the median time of this many most recent batches (one slow batch does not stretch it).
_TIMED_BATCHES = 8


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, ``param`` the offending field."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches and whom it answers.

    Args:
        max_batch_size: most items in one ``evaluate_batch`` (1 turns batching off).
        max_wait_ms: how long the worker waits for more items after the first one of a batch arrives; ``None``
            (the default): :data:`WINDOW_SHARE` of one generate call, measured as the server runs.
        max_queue: most items waiting; beyond it requests get 429.
        request_timeout_s: a request's items must be evaluated within this, else 504.
        api_key_env: name of the environment variable with the accepted keys (comma-separated); ``None``: open.
        model_name: the id reported by ``/v1/models`` and in answers.
        coverage: the calibrated intervals' nominal coverage (a coverage ``calibration.json`` was fitted at).
    """

    max_batch_size: int = 8
    max_wait_ms: float | None = None
    max_queue: int = 64
    request_timeout_s: float = 120.0
    api_key_env: str | None = None
    model_name: str = "dermeval"
    coverage: float = 0.9

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("max_wait_ms", "request_timeout_s"):
            value = getattr(self, name)
            if name == "max_wait_ms" and value is None:
                continue
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0
                    or (name == "request_timeout_s" and value == 0)):
                raise ValueError(f"{name} must be a number {'> 0' if name == 'request_timeout_s' else '>= 0'}, "
                                 f"got {value!r}")

    def api_keys(self) -> tuple[str, ...]:
        """The accepted keys, read from the environment at each call (so a rotated key takes effect)."""
        if not self.api_key_env:
            return ()
        raw = os.environ.get(self.api_key_env, "")
        keys = tuple(k.strip() for k in raw.split(",") if k.strip())
        if not keys:
            raise RequestError(f"the server expects API keys in ${self.api_key_env}, which is empty or unset",
                               status=500, kind="server_error")
        return keys


def evaluation_record(evaluation: Any, calibration: Any | None = None, coverage: float = 0.9) -> dict[str, Any]:
    """The JSON an evaluation is served as: scores, expected scores, spreads, intervals (when calibrated)."""
    scores = evaluation.scores.to_dict()
    safety = scores.get("Safety")
    record = {
        "scores": scores,
        "missing": list(evaluation.missing),
        "overall": evaluation.overall,
        "safety_flag": safety is not None and safety <= SAFETY_FLAG_AT,
        "expected": dict(evaluation.expected),
        "spread": dict(evaluation.spread),
        "critique": evaluation.critique,
        "text": evaluation.text,
        "truncated": evaluation.truncated,
    }
    if calibration is not None:
        record["intervals"] = {d: list(v) for d, v in
                               calibration.intervals(evaluation.expected, evaluation.spread, coverage).items()}
        record["coverage"] = coverage
    return record


def decode_image(value: Any, field: str) -> Any:
    """A PIL image from base64 or a ``data:image/...;base64,`` URL; ``RequestError`` naming ``field`` otherwise."""
    from dermtrl.cases.images import ImageError, load_image

    if not isinstance(value, str) or not value:
        raise RequestError(f"{field}: expected a base64 image or a data: URL", param=field)
    data = value
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError(f"{field}: a data: URL must be base64 (data:image/png;base64,...)", param=field)
    elif data.startswith(("http://", "https://", "file:", "/")):
        raise RequestError(f"{field}: this server takes images inline (base64 or a data: URL), not URLs or paths",
                           param=field)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field}: not valid base64", param=field) from None
    try:
        return load_image(raw)
    except ImageError as exc:
        raise RequestError(f"{field}: {exc}", param=field) from None


def chat_inputs(body: Mapping[str, Any]) -> tuple[Any, str]:
    """(image, narrative) of an OpenAI chat request: the last user message's image part and its text parts."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: expected a non-empty list", param="messages")
    users = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise RequestError("messages: no user message", param="messages")
    index = users[-1]
    content = messages[index].get("content")
    where = f"messages[{index}].content"
    if not isinstance(content, list):
        raise RequestError(f"{where}: expected a list with one image_url part and the narrative as text",
                           param=where)
    images, texts = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            images.append(decode_image(url, f"{where}[{j}].image_url.url"))
        else:
            raise RequestError(f"{where}[{j}]: unsupported part type {kind!r} (text or image_url)", param=where)
    if len(images) != 1:
        raise RequestError(f"{where}: expected exactly one image_url part, got {len(images)}", param=where)
    narrative = "\n".join(t for t in texts if t.strip()).strip()
    if not narrative:
        raise RequestError(f"{where}: no narrative text", param=where)
    return images[0], narrative


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` items."""


@dataclass
class _Item:
    image: Any
    narrative: str
    future: Future


class Batcher:
    """One worker thread that runs queued (image, narrative) items through ``evaluator.evaluate_batch`` in batches
    of what arrived within :attr:`window_s` of each batch's first item."""

    def __init__(self, evaluator: Any, config: ServeConfig) -> None:
        self.evaluator = evaluator
        self.config = config
        evaluator.batch_size = config.max_batch_size  # evaluate_batch splits by it; one generate per batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0
        self.batches: list[int] = []  # the size of every batch run, in order (for /health and the benchmark)
        self.windows: list[float] = []  # the window (seconds) each of those batches waited for more items
        self._durations: deque[float] = deque(maxlen=_TIMED_BATCHES)  # seconds of the last evaluate_batch calls
        self._thread = threading.Thread(target=self._run, name="dermtrl-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def generate_s(self) -> float | None:
        """Seconds one generate call takes: the median of the last batches' ``evaluate_batch`` times (``None``
        before the first)."""
        with self._lock:
            durations = list(self._durations)
        return statistics.median(durations) if durations else None

    @property
    def window_s(self) -> float:
        """How long the next batch waits for more items after its first: ``max_wait_ms`` when set, else
        :data:`WINDOW_SHARE` of :attr:`generate_s` (:data:`FIRST_WINDOW_MS` before the first batch)."""
        if self.config.max_wait_ms is not None:
            return self.config.max_wait_ms / 1000
        generate = self.generate_s
        return FIRST_WINDOW_MS / 1000 if generate is None else WINDOW_SHARE * generate

    def submit(self, pairs: Sequence[tuple[Any, str]]) -> list[Future]:
        """Queue every pair or none: ``QueueFull`` when they do not all fit."""
        with self._lock:
            if self._pending + len(pairs) > self.config.max_queue:
                raise QueueFull(f"queue full ({self._pending} of {self.config.max_queue} waiting)")
            self._pending += len(pairs)
        items = [_Item(image, narrative, Future()) for image, narrative in pairs]
        for item in items:
            self._queue.put(item)
        return [item.future for item in items]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            window = self.window_s
            deadline = time.monotonic() + window
            stop = False
            while len(batch) < self.config.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            try:
                if live:
                    self.batches.append(len(live))
                    self.windows.append(window)
                    started = time.monotonic()
                    results = self.evaluator.evaluate_batch([i.image for i in live], [i.narrative for i in live])
                    with self._lock:
                        self._durations.append(time.monotonic() - started)
                    for item, result in zip(live, results, strict=True):
                        item.future.set_result(result)
            except Exception as exc:  # noqa: BLE001 - the error goes back to every request of the batch
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
            finally:
                with self._lock:
                    self._pending -= len(batch)
            if stop:
                return


class _Handler(BaseHTTPRequestHandler):
    server_version = "dermtrl-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        if self.server.owner.verbose:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: RequestError, headers: Mapping[str, str] | None = None) -> None:
        self._send(exc.status, {"error": {"message": str(exc), "type": exc.kind, "param": exc.param,
                                          "code": exc.status}}, headers)

    def _authorised(self) -> bool:
        owner: DermEvalServer = self.server.owner
        try:
            keys = owner.config.api_keys()
        except RequestError as exc:
            self._error(exc)
            return False
        if not keys:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else ""
        if token and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            return True
        self._error(RequestError("missing or wrong API key (Authorization: Bearer <key>)", status=401,
                                 kind="authentication_error"))
        return False

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        owner: DermEvalServer = self.server.owner
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok", "model": owner.config.model_name, "queue": owner.batcher.pending,
                             "max_queue": owner.config.max_queue, "max_batch_size": owner.config.max_batch_size,
                             "window_ms": round(owner.batcher.window_s * 1000, 1),
                             "calibrated": owner.calibration is not None})
            return
        if not self._authorised():
            return
        if path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": owner.config.model_name, "object": "model",
                                                         "created": owner.created, "owned_by": "dermtrl"}]})
            return
        self._error(RequestError(f"no such endpoint: GET {path}", status=404, kind="not_found_error"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        owner: DermEvalServer = self.server.owner
        path = self.path.split("?")[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                raise RequestError(f"request body of {length} bytes is over the {MAX_BODY_BYTES} limit", status=413)
            raw = self.rfile.read(length)
            if not self._authorised():
                return
            if path not in ("/v1/chat/completions", "/v1/evaluate"):
                raise RequestError(f"no such endpoint: POST {path}", status=404, kind="not_found_error")
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                raise RequestError("the request body is not JSON") from None
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            if path == "/v1/chat/completions":
                self._send(200, owner.chat_completion(body))
            else:
                self._send(200, owner.evaluate_json(body))
        except RequestError as exc:
            headers = {"Retry-After": "1"} if exc.status == 429 else None
            self._error(exc, headers)


class DermEvalServer(LoopbackServer):
    """Serve an evaluator (a :class:`~dermtrl.dermeval.evaluator.DermEval`) over HTTP; a context manager."""

    handler_class = _Handler
    thread_name = "dermtrl-serve"

    def __init__(self, evaluator: Any, config: ServeConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, calibration: Any | None = None, verbose: bool = False) -> None:
        self.evaluator = evaluator
        self.config = config or ServeConfig()
        self.host, self.bind_port = host, port
        self.calibration = calibration
        self.verbose = verbose
        self.created = int(time.time())
        self.batcher = Batcher(evaluator, self.config)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.batcher.close()

    def evaluate_pairs(self, pairs: Sequence[tuple[Any, str]]) -> list[Any]:
        """Evaluations of the pairs through the batcher; ``RequestError`` 429 when full, 504 on timeout."""
        try:
            futures = self.batcher.submit(pairs)
        except QueueFull as exc:
            raise RequestError(f"server busy: {exc}; retry later", status=429, kind="rate_limit_error") from None
        deadline = time.monotonic() + self.config.request_timeout_s
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                for f in futures:
                    f.cancel()
                raise RequestError(f"not evaluated within {self.config.request_timeout_s:g} s", status=504,
                                   kind="timeout_error") from None
            except Exception as exc:  # noqa: BLE001 - reported to the caller, the server keeps serving
                raise RequestError(f"evaluation failed: {type(exc).__name__}: {exc}", status=500,
                                   kind="server_error") from None
        return results

    def record(self, evaluation: Any) -> dict[str, Any]:
        return evaluation_record(evaluation, self.calibration, self.config.coverage)

    def chat_completion(self, body: Mapping[str, Any]) -> dict[str, Any]:
        image, narrative = chat_inputs(body)
        evaluation = self.evaluate_pairs([(image, narrative)])[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model_name,
            "choices": [{"index": 0, "finish_reason": "length" if evaluation.truncated else "stop",
                         "message": {"role": "assistant", "content": evaluation.critique}}],
            EXTRA_FIELD: self.record(evaluation),
        }

    def evaluate_json(self, body: Mapping[str, Any]) -> dict[str, Any]:
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise RequestError("items: expected a non-empty list of {image, narrative}", param="items")
        pairs = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise RequestError(f"items[{i}]: expected an object with image and narrative", param=f"items[{i}]")
            narrative = item.get("narrative")
            if not isinstance(narrative, str) or not narrative.strip():
                raise RequestError(f"items[{i}].narrative: expected a non-empty string", param=f"items[{i}].narrative")
            pairs.append((decode_image(item.get("image"), f"items[{i}].image"), narrative))
        results = self.evaluate_pairs(pairs)
        return {"model": self.config.model_name, "results": [self.record(r) for r in results]}


def load_calibration(path: str | None, adapter: str | None, fingerprint: str | None = None) -> Any | None:
    """``calibration.json`` from ``path``, or beside a local adapter when there is one; ``None`` otherwise."""
    from dermtrl.agreement.calibration import CALIBRATION_FILE, Calibration

    if path:
        return Calibration.load(path)
    if adapter and (Path(adapter) / CALIBRATION_FILE).is_file():
        return Calibration.load(adapter)
    return None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``dermtrl serve`` (also ``python -m dermtrl.dermeval.serve``)."""
    p.add_argument("--adapter", help="DermEval LoRA adapter: a folder written by `dermtrl sft`, or a Hub id")
    p.add_argument("--model", help="base model: Hub id, folder, or dermtrl:tiny (default: the adapter's base)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    p.add_argument("--max-batch-size", type=int, default=8, help="most items in one generate batch (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="how long a batch waits for more items (default: a tenth of one generate call, measured as "
                        "the server runs)")
    p.add_argument("--max-queue", type=int, default=64, help="most waiting items; beyond it requests get 429")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a request may wait for its evaluation")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="environment variable holding the accepted API key(s), comma-separated (default: open)")
    p.add_argument("--served-model-name", default="dermeval", help="the model id clients send and /v1/models lists")
    p.add_argument("--calibration", default=None,
                   help="calibration.json for score intervals (default: the adapter folder's, when present)")
    p.add_argument("--coverage", type=float, default=0.9, help="the intervals' coverage (one the file was fitted at)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default: the one recorded beside the adapter, else 512)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true", help="log every request (never the API key)")


def run(args: argparse.Namespace) -> int:
    """Load the evaluator and serve until interrupted."""
    from dermtrl.errors import CLIError

    if not args.adapter and not args.model:
        raise CLIError("give --adapter, --model, or both")
    if args.api_key_env and not os.environ.get(args.api_key_env, "").strip():
        raise CLIError(f"--api-key-env {args.api_key_env}: that environment variable is empty or unset")
    try:
        config = ServeConfig(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, request_timeout_s=args.timeout, api_key_env=args.api_key_env,
                             model_name=args.served_model_name, coverage=args.coverage)
        calibration = load_calibration(args.calibration, args.adapter)
        if calibration is not None:
            calibration.intervals({d: 2.5 for d in DIMENSIONS}, {d: 0.5 for d in DIMENSIONS}, args.coverage)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.host not in LOOPBACK_HOSTS and not args.api_key_env:
        print(f"warning: serving on {args.host} with no API key; anyone who can reach it can use it",
              file=sys.stderr)
    import torch

    from dermtrl.dermeval.evaluator import DermEval

    if args.threads:
        torch.set_num_threads(args.threads)
    evaluator = DermEval.from_pretrained(args.model, args.adapter, max_new_tokens=args.max_new_tokens)
    server = DermEvalServer(evaluator, config, host=args.host, port=args.port, calibration=calibration,
                            verbose=args.verbose)
    server.start()
    print(f"DermEval ({evaluator.model_id}) serving at {server.base_url} as {config.model_name!r}; "
          f"batches of up to {config.max_batch_size}, "
          + (f"{config.max_wait_ms:g} ms window" if config.max_wait_ms is not None
             else f"a window of {WINDOW_SHARE:.0%} of one generate call")
          + (", intervals from calibration.json" if calibration is not None else ""), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.stop()
    return 0


def register(sub: Any) -> None:
    """Add ``serve`` to the ``dermtrl`` command's subparsers."""
    p = sub.add_parser("serve", help="serve DermEval over an OpenAI-compatible HTTP API (dynamic batching)",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    from dermtrl.errors import DermtrlError

    parser = argparse.ArgumentParser(prog="python -m dermtrl.dermeval.serve", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except DermtrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
