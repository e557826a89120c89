"""The one OpenAI-compatible client behind every LLM/VLM call in dermtrl.

Captioning, hierarchical reasoning, judging, score parsing and candidate generation all call
:class:`LLMClient`, so they share one policy for each of the things that are easy to get subtly wrong:

Retries
    Every retry is ours (requests go out over :mod:`dermtrl.llm.transport`), so each kind is counted and reported
    the same way (:class:`~dermtrl.llm.usage.Usage`: one line per kind, never a warning per retry): 408/409/429
    and 5xx answers, timeouts, dropped connections, and 200s whose body is not a usable completion (not
    JSON, no choices). Backoff is openai's (0.5 s doubling, at most 8 s, 0-25 % jitter), honouring
    ``Retry-After``/``retry-after-ms`` and ``x-should-retry``. At most ``max_retries`` retries, so at most
    ``max_retries + 1`` HTTP requests per completion. An error names the status and the body's first line.
    Errors that retrying cannot fix are not retried (:mod:`dermtrl.llm.endpoint`): an answer saying the input
    is unsupported, and, once an endpoint has answered every request so far with one and the same HTTP error,
    that error, unless it says "later" (408, 429, 503, 529).
Deadline
    ``deadline`` bounds one call in all: the wait for a slot, every attempt, every backoff. When it passes the
    call stops, its retries with it, and an attempt cut short by it does not count as a timeout against the
    concurrency (it is the caller giving up, not the server falling behind), so one caller's hung request
    never lowers what others get. A user-facing service sets it to the time it promises to answer in.
Concurrency
    At most ``max_concurrency`` requests are in flight. A single-process server (llama.cpp) queues what it
    cannot answer at once, and a request's timeout runs while it waits in that queue (the protocol gives no
    sign of when the server starts on a request). So the client adapts (:mod:`dermtrl.llm.concurrency`): it starts
    with a few requests in flight and adds one per answer; when requests time out it halves them (down to 1)
    and adds one per round of answers, so the server's queue stays short instead of every queued request
    timing out and being sent again. It also halves them when answers come back slowed down by waiting (over
    half the timeout, over twice the fastest answer), before anything times out, and on a 429/503/529 answer (the
    server over capacity), once per round. A request sent again after a
    timeout waits twice as long (four times after a second one): the server is still working through the
    requests that were abandoned. Identical deterministic requests in flight at the same time are sent
    once and share the answer (``Usage.shared``).
Dropped content
    A server whose chat template takes only string content silently drops a message made of content parts
    (llama.cpp's built-in formats do). Text-only turns are therefore sent as plain strings
    (:func:`user_message`). A reported ``usage.prompt_tokens`` far below what the text sent must take (one
    token per 10 characters) is only a hint, warned about once: prompt caches count only new tokens and some
    gateways report 0. For a request with content parts it triggers one probe of the endpoint (the same text as
    parts and as a string, compared: :mod:`dermtrl.llm.endpoint`); only a probe showing the parts dropped fails
    such items, with a message saying so, instead of recording answers to prompts the model never saw.
Caching
    Only *deterministic* requests are cached: temperature 0, or a fixed ``seed``. Sampling at a temperature
    above 0 without a seed is meant to vary (e.g. drawing several candidates), so it always reaches the
    server. The key covers the prompt version, model, messages and every generation setting
    (:func:`dermtrl.llm.cache.cache_key`); an answer is committed as soon as it arrives, so an interrupted
    batch resumes where it stopped; :meth:`LLMClient.close` (also on Ctrl-C) first waits for the requests in
    flight, up to ``timeout``, so what they bring back is cached too.
Secrets
    The config holds only the *name* of the environment variable with the API key. The key is read once,
    sent only in the ``Authorization`` header, never cached, and replaced by ``***`` (:func:`redact`) in
    every error message and log line this module writes.
"""

from __future__ import annotations

import dataclasses
import http
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from dermtrl.cases.images import image_to_data_url  # re-exported: user_message encodes images with it
from dermtrl.errors import DermtrlError
from dermtrl.llm.cache import ResponseCache, cache_key
from dermtrl.llm.concurrency import AdaptiveLimit
from dermtrl.llm.config import ClientConfig, _check_generation, _is_int, _response_format
from dermtrl.llm.endpoint import DROPPED, EndpointHealth, is_unsupported, probe_content_parts
from dermtrl.llm.transport import HTTPTransport, TransportError
from dermtrl.llm.usage import Usage
from dermtrl.progress import JobBar

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

REDACTED = "***"
#: Keyword overrides accepted by :meth:`LLMClient.complete` and :meth:`LLMClient.complete_many`.
OVERRIDES: frozenset[str] = frozenset({"temperature", "max_tokens", "seed", "model", "response_format"})

_INITIAL_RETRY_DELAY = 0.5  # the same backoff as openai's own (openai._constants)
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0
#: A request sent again after a timeout waits this many times longer (at most twice): see "Concurrency".
_TIMEOUT_GROWTH = 2.0
#: Answers that say the server is over capacity: fewer requests in flight (see "Concurrency").
_OVERLOADED = frozenset({429, 503, 529})
#: Answers that say "try later": always retried, never taken for an endpoint's permanent error.
_LATER = _OVERLOADED | {408}
#: A prompt of N characters of text takes at least N / this many tokens in any tokenizer we know of.
_CHARS_PER_TOKEN_MAX = 10
#: Below this many expected tokens, the dropped-content check says nothing (short prompts vary too much).
_MIN_TOKENS_CHECKED = 20


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret of at least 4 characters replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


# --- results -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One answer. ``cached`` is true when it came from the cache (no HTTP request was made)."""

    text: str
    cached: bool
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    #: A reasoning model's thinking, when the server returns it apart (``reasoning_content``, as DeepSeek-R1 and
    #: vLLM's reasoning parsers do): kept for the record, never read for scores.
    reasoning: str | None = None

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True)
class CallError:
    """A failed item of :meth:`LLMClient.complete_many` (the others are unaffected); ``error`` is redacted."""

    error: str
    status: int | None
    index: int

    @property
    def ok(self) -> bool:
        return False


class LLMError(DermtrlError):
    """A request that failed after all retries; the message names base URL, model and status, not the key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        base_url: str | None = None,
        model: str | None = None,
        retries: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.base_url = base_url
        self.model = model
        self.retries = retries


# --- the client ----------------------------------------------------------------------------------------


class _BadResponse(Exception):
    """A 200 answer that is not a usable chat completion (retried, like a 5xx)."""


@dataclass(frozen=True)
class _Failure:
    """One attempt that brought no completion: why it may be sent again (``kind``; ``None``: it may not), what to
    tell the user, and what makes two failures "the same error" (:class:`~dermtrl.llm.endpoint.EndpointHealth`)."""

    kind: str | None
    what: str
    status: int | None = None
    headers: Mapping[str, str] | None = None
    echoed_key: bool = False

    @property
    def signature(self) -> str | None:
        """HTTP errors only: a slow or unreachable server is not "an error that retrying cannot fix", nor is an
        answer that says "later" (408, 429, 503, 529: llama.cpp's 503 "Loading model" while it starts, a rate
        limit), however many requests got it."""
        return self.what if self.status is not None and self.status not in _LATER else None


def _retry_delay(retry_index: int, headers: Mapping[str, str] | None) -> float:
    """openai's backoff: the server's retry-after(-ms) if given and sane, else 0.5 s doubling up to 8 s."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            delay = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(delay) and 0 < delay <= _MAX_RETRY_AFTER:
            return delay
        break
    delay = min(_INITIAL_RETRY_DELAY * 2.0 ** min(retry_index, 30), _MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def _status_kind(status: int, headers: Mapping[str, str], line: str) -> str | None:
    """Whether an HTTP error may be sent again: openai's rule (408/409/429/5xx, ``x-should-retry``), except an
    answer that says the input is unsupported, which no retry can change."""
    should = headers.get("x-should-retry")
    if should == "false" or is_unsupported(line):
        return None
    if should == "true" or status in (408, 409, 429) or status >= 500:
        return f"HTTP {status}"
    return None


def _body_line(body: bytes) -> str:
    """The first line of an HTTP error's body, the server's ``error.message`` when it is JSON (at most 200 chars)."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping):
        inner = parsed.get("error", parsed)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
        if isinstance(message, str) and message.strip():
            text = message
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line[:200] + ("…" if len(line) > 200 else "")


def _text_chars(messages: Sequence[Mapping[str, Any]]) -> tuple[int, int, bool]:
    """Characters of text, number of images, and whether any text is sent as content parts."""
    chars = images = 0
    parts = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    chars += len(str(part.get("text") or ""))
                    parts = True
                elif isinstance(part, Mapping) and part.get("type") == "image_url":
                    images += 1
    return chars, images, parts


class LLMClient:
    """Chat completions against one OpenAI-compatible endpoint, with retries, a cache and usage counts.

    Thread-safe: :meth:`complete_many` runs up to ``config.max_concurrency`` calls at once. Use it as a
    context manager (or call :meth:`close`) to release the connection pool and the cache file.
    """

    def __init__(self, config: ClientConfig | None = None, *, cache: ResponseCache | None = None) -> None:
        self.config = config if config is not None else ClientConfig()
        self.config.validate()
        self._api_key: str | None = os.environ.get(self.config.api_key_env) or None
        self._owns_cache = cache is None and self.config.cache_path is not None
        if cache is not None:
            self.cache: ResponseCache | None = cache
        elif self.config.cache_path is not None:
            self.cache = ResponseCache(self.config.cache_path)
        else:
            self.cache = None
        self.usage = Usage()
        base = self.config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self._base_url = base.rstrip("/")
        self._transport = HTTPTransport(self._base_url, {
            "Authorization": f"Bearer {self._api_key or 'EMPTY'}",  # the header is the only place the key goes
            "User-Agent": "dermtrl-llm-client",
        })
        self._gate = AdaptiveLimit(self.config.max_concurrency)
        self._in_flight: dict[str, Future[Completion]] = {}
        self._in_flight_lock = threading.Lock()
        self._health = EndpointHealth()
        self._probe_lock = threading.Lock()
        self._parts_verdict: tuple[str | None, str] = (None, "")
        self._low_usage_warned = False

    # --- small helpers --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self._base_url

    def redact(self, text: str) -> str:
        """``text`` with this client's API key replaced by ``***``."""
        return redact(text, self._api_key)

    @staticmethod
    def is_deterministic(settings: Mapping[str, Any]) -> bool:
        """The caching policy: temperature 0 or a fixed seed."""
        return float(settings.get("temperature") or 0.0) == 0.0 or settings.get("seed") is not None

    @property
    def concurrency(self) -> int:
        """Requests the client keeps in flight now (``max_concurrency``, or fewer after timeouts)."""
        return self._gate.current

    def notes(self) -> list[str]:
        """One line per thing worth telling the user about this client's calls: retries by kind, concurrency
        lowered after timeouts."""
        lines = self.usage.retry_lines()
        if self._gate.lowest < self._gate.limit:
            lines.append(f"the server fell behind (answers slowed by its queue, timeouts, or 429/503 over capacity): "
                         f"requests in flight lowered from {self._gate.limit} to as few as {self._gate.lowest} "
                         "(see --max-concurrency)")
        stopped = self._health.note()
        if stopped is not None:
            lines.append(self.redact(stopped))
        return lines

    def _resolve(self, overrides: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        unknown = sorted(set(overrides) - OVERRIDES)
        if unknown:
            raise TypeError(f"unknown override(s) {unknown}; allowed: {sorted(OVERRIDES)}")
        cfg = self.config
        model = overrides.get("model", cfg.model)
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        settings = {
            "temperature": overrides.get("temperature", cfg.temperature),
            "max_tokens": overrides.get("max_tokens", cfg.max_tokens),
            "seed": overrides.get("seed", cfg.seed),
            "extra_body": cfg.extra_body,
        }
        response_format = _response_format(overrides.get("response_format", cfg.response_format))
        if response_format is not None:
            settings["response_format"] = response_format  # in the cache key only when given
        _check_generation(settings["temperature"], settings["max_tokens"], settings["seed"])
        settings["temperature"] = float(settings["temperature"])  # 0 and 0.0 must give one cache key
        return model, settings

    # --- public API -----------------------------------------------------------------------------------
    def complete(self, messages: Sequence[Mapping[str, Any]], **overrides: Any) -> Completion:
        """One chat completion (cache first). Overrides: ``temperature``, ``max_tokens``, ``seed``, ``model``.

        Raises :class:`LLMError` when the request fails after all retries.
        """
        model, settings = self._resolve(overrides)
        return self._complete(messages, model, settings)

    def complete_many(
        self,
        batch: Sequence[Sequence[Mapping[str, Any]]],
        *,
        progress: bool | str = False,
        **overrides: Any,
    ) -> list[Completion | CallError]:
        """Complete every conversation in ``batch``, at most ``max_concurrency`` at a time, in order.

        A failing item becomes a :class:`CallError` and does not stop the others. Each answer is cached as
        soon as it arrives, so rerunning an interrupted batch calls the API only for what did not finish.
        ``progress`` shows a rich progress bar on stderr (a string is its description).
        """
        model, settings = self._resolve(overrides)  # bad overrides fail here, before any call
        items = list(batch)
        results: list[Completion | CallError | None] = [None] * len(items)
        if not items:
            return []

        def run(index: int) -> Completion | CallError:
            try:
                return self._complete(items[index], model, settings)
            except LLMError as exc:
                return CallError(error=self.redact(str(exc)), status=exc.status, index=index)
            except Exception as exc:  # bad input for this item only
                return CallError(error=self.redact(f"{type(exc).__name__}: {exc}"), status=None, index=index)

        bar = _BatchProgress(progress, len(items))
        pool = ThreadPoolExecutor(
            max_workers=min(self.config.max_concurrency, len(items)), thread_name_prefix="dermtrl-llm"
        )
        try:
            with bar:
                futures = {pool.submit(run, i): i for i in range(len(items))}
                for future in as_completed(futures):
                    result = future.result()
                    results[futures[future]] = result
                    bar.advance_result(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # finished answers are already in the cache
            raise
        pool.shutdown(wait=True)
        return cast("list[Completion | CallError]", results)

    def print_usage(self, console: Console | None = None) -> None:

        if console is None:
            from dermtrl.console import console
        console.print(self.usage.table())

    def close(self) -> None:
        """Wait (up to ``timeout``) for requests in flight, so their answers reach the cache, then release all.

        After Ctrl-C the batch stops taking new work at once; what is already asked is still cached when it
        arrives, so a rerun does not pay for it again. A second Ctrl-C stops the wait.
        """
        try:
            if self._gate.working_count:
                log.warning("waiting up to %g s for %d request(s) in flight, so their answers are cached "
                            "(Ctrl-C again to drop them)", self.config.timeout, self._gate.working_count)
                self._gate.drain(self.config.timeout)
        finally:
            self._transport.close()
            if self._owns_cache and self.cache is not None:
                self.cache.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self.config
        return f"LLMClient(base_url={self.base_url!r}, model={cfg.model!r}, cache={cfg.cache_path!r})"

    # --- internals ------------------------------------------------------------------------------------
    def _complete(
        self, messages: Sequence[Mapping[str, Any]], model: str, settings: dict[str, Any]
    ) -> Completion:
        messages = _check_messages(messages)
        deadline = None if self.config.deadline is None else time.monotonic() + self.config.deadline
        if not self.is_deterministic(settings):
            return self._request(messages, model, settings, deadline)  # sampling: every request is its own draw
        key = cache_key(self.config.prompt_version, model, messages, settings)
        if self.cache is not None:
            record = self.cache.get(key)
            if record is not None and isinstance(record.get("text"), str):
                self.usage.add(cache_hits=1)
                usage = record.get("usage") or {}
                return Completion(
                    text=record["text"],
                    cached=True,
                    model=str(record.get("model") or model),
                    prompt_tokens=usage.get("prompt_tokens"),
                    completion_tokens=usage.get("completion_tokens"),
                    finish_reason=record.get("finish_reason"),
                    reasoning=record.get("reasoning") if isinstance(record.get("reasoning"), str) else None,
                )
        with self._in_flight_lock:  # an identical request already in flight: share its answer
            pending = self._in_flight.get(key)
            if pending is None:
                self._in_flight[key] = mine = Future()
        if pending is not None:
            try:  # its LLMError, if it failed, is this item's too
                shared = pending.result(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise self._late(model, 0) from None
            self.usage.add(shared=1)
            return dataclasses.replace(shared, cached=True)
        with self._gate.working():  # close() waits for this, the cache write included
            try:
                completion = self._request(messages, model, settings, deadline)
            except BaseException as exc:
                mine.set_exception(exc)
                raise
            else:
                mine.set_result(completion)
            finally:
                with self._in_flight_lock:
                    self._in_flight.pop(key, None)
            self._store(key, completion)
        return completion

    def _store(self, key: str, completion: Completion) -> None:
        if self.cache is not None:
            record = {
                "text": completion.text,
                "reasoning": completion.reasoning,
                "finish_reason": completion.finish_reason,
                "model": completion.model,
                "prompt_version": self.config.prompt_version,
                "usage": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                },
                "created": time.time(),
            }
            try:
                self.cache.put(key, record)
            except Exception as exc:  # the answer is still good; say loudly that resuming will redo it
                log.warning(self.redact(f"could not write the response cache {self.cache.path}: {exc}"))

    def _payload(self, messages: list[dict[str, Any]], model: str, settings: dict[str, Any]) -> bytes:
        payload: dict[str, Any] = {"model": model, "messages": messages, "temperature": settings["temperature"]}
        if settings["max_tokens"] is not None:
            payload["max_tokens"] = settings["max_tokens"]
        if settings["seed"] is not None:
            payload["seed"] = settings["seed"]
        if settings.get("response_format") is not None:
            payload["response_format"] = settings["response_format"]
        if settings["extra_body"]:
            payload.update(settings["extra_body"])  # as openai's extra_body: merged into the request's JSON
        return json.dumps(payload, ensure_ascii=False).encode()

    def _request(self, messages: list[dict[str, Any]], model: str, settings: dict[str, Any],
                 deadline: float | None, *, probe: bool = False) -> Completion:
        if self._api_key is None and "api.openai.com" in self.base_url:
            self.usage.add(failures=1)
            raise LLMError(
                f"no API key for {self.base_url}: environment variable {self.config.api_key_env} is not set "
                "(set it, or set base_url to a local OpenAI-compatible server)",
                base_url=self.base_url,
                model=model,
            )
        chars, images, parts = _text_chars(messages)
        if parts and not probe and self._parts_verdict[0] == DROPPED:  # known: no request would be read
            self.usage.add(failures=1)
            raise self._dropped(model, chars, images, 0)
        body = self._payload(messages, model, settings)
        budget = self.config.max_retries
        retries = timeouts = 0
        while True:
            # after a timeout the server is still busy with the abandoned request: wait longer for it
            timeout = self.config.timeout * _TIMEOUT_GROWTH ** min(timeouts, 2)
            cut = False  # whether the deadline, not the timeout, bounds this attempt
            try:
                with self._gate.slot(deadline):
                    sent = time.monotonic()
                    if deadline is not None:
                        if deadline - sent <= 0:
                            raise TimeoutError("the deadline passed")
                        cut, timeout = deadline - sent < timeout, min(timeout, deadline - sent)
                    outcome = self._attempt(body, model, timeout)
            except TimeoutError:  # no slot, or no time left, before the deadline
                raise self._late(model, retries) from None
            if isinstance(outcome, Completion):
                break
            if outcome.kind == "timeout":
                if cut:  # the caller's deadline, not a sign of a server falling behind: the limit stays
                    raise self._late(model, retries)
                self._gate.timed_out()
                timeouts += 1
            elif outcome.status in _OVERLOADED:
                self._gate.overloaded(sent)
            retriable = outcome.kind is not None and retries < budget
            hopeless = retriable and self._health.hopeless(outcome.signature)
            if retriable and not hopeless:
                delay = _retry_delay(retries, outcome.headers)
                if deadline is None or time.monotonic() + delay < deadline:
                    self._retry_later(outcome.kind, retries, delay, model)
                    retries += 1
                    continue
            self.usage.add(failures=1)
            if not probe:
                self._health.failed(outcome.signature)
            error = self._wrap(outcome, model, retries, hopeless=hopeless)
            log.debug("%s", error)
            raise error
        completion = outcome
        self._gate.answered(time.monotonic() - sent, timeout)
        self._health.success()
        if not probe:
            self._check_prompt_size(model, completion, chars, images, parts, retries)
        self.usage.add(calls=1, prompt_tokens=completion.prompt_tokens or 0,
                       completion_tokens=completion.completion_tokens or 0)
        return completion

    def _attempt(self, body: bytes, model: str, timeout: float) -> Completion | _Failure:
        """Send the request once: its completion, or why it failed."""
        try:
            status, headers, data = self._transport.post("/chat/completions", body, timeout)
        except TransportError as err:
            if err.kind == "certificate":
                return _Failure(None, f"TLS certificate not accepted ({err}); if the server uses its own CA, set "
                                      "SSL_CERT_FILE to its certificate bundle")
            return _Failure(err.kind, "timed out" if err.kind == "timeout" else f"connection error ({err})")
        if not 200 <= status < 300:
            line = self.redact(_body_line(data))
            what = f"HTTP {status}: {line}" if line else f"HTTP {status} {_status_phrase(status)}"
            return _Failure(_status_kind(status, headers, line), what, status, headers)
        try:
            return _to_completion(data, model)
        except (_BadResponse, ValueError) as exc:
            problem = self.redact(f"{type(exc).__name__}: {exc}")[:300]
            return _Failure("unusable body", f"got HTTP {status} with an unusable body: {problem}", status, headers)

    def _retry_later(self, kind: str, retries: int, delay: float, model: str) -> None:
        self.usage.add_retry(kind)
        log.debug("%s from %s (model %s): retry %d of %d in %.2f s", kind, self.base_url, model, retries + 1,
                  self.config.max_retries, delay)
        time.sleep(delay)

    def _check_prompt_size(self, model: str, completion: Completion, chars: int, images: int, parts: bool,
                           retries: int) -> None:
        """A reported prompt far shorter than what was sent is a hint, never a failure by itself (prompt caches
        and gateways report less): it triggers the content-part probe when parts were sent, and a warning."""
        expected = chars // _CHARS_PER_TOKEN_MAX
        reported = completion.prompt_tokens
        if reported is None or expected < _MIN_TOKENS_CHECKED or reported >= expected:
            return
        if parts and self._probe(model)[0] == DROPPED:
            self.usage.add(failures=1)
            raise self._dropped(model, chars, images, retries)
        with self._probe_lock:
            first, self._low_usage_warned = not self._low_usage_warned, True
        if first:
            message = (f"{self.base_url} (model {model!r}) reported {reported} prompt tokens for {chars:,} characters "
                       f"(at least {expected} tokens): its usage figures are taken as a hint only (prompt caches "
                       "count only new tokens; some gateways report 0), and its answers are kept")
            log.warning(message)
            self.usage.set_check("reported prompt tokens", f"lower than sent (e.g. {reported} for >= {expected}): "
                                                           "a hint only, answers kept")

    def _probe(self, model: str) -> tuple[str, str]:
        """The content-part probe's verdict, run once per client (one endpoint) at the first need."""
        with self._probe_lock:
            if self._parts_verdict[0] is None:
                settings = {"temperature": 0.0, "max_tokens": 16, "seed": None, "extra_body": self.config.extra_body}

                def ask(messages: list[dict[str, Any]]) -> tuple[str, int | None]:
                    answer = self._request(messages, model, settings, None, probe=True)
                    return answer.text, answer.prompt_tokens

                self._parts_verdict = probe_content_parts(ask)
                self.usage.set_check("text as content parts", "{} ({})".format(*self._parts_verdict))
            return self._parts_verdict  # type: ignore[return-value]

    def _dropped(self, model: str, chars: int, images: int, retries: int) -> LLMError:
        sent = f"{chars:,} characters of text" + (f" and {images} image(s)" if images else "")
        return LLMError(
            f"the server dropped the content: {self.base_url} (model {model!r}) does not read text sent as content "
            f"parts ({self._parts_verdict[1]}), so it never saw the {sent} of this request; its chat template may "
            "take only string content" + (", or the model may have no image support" if images else ""),
            status=None, base_url=self.base_url, model=model, retries=retries,
        )

    def _late(self, model: str, retries: int) -> LLMError:
        return LLMError(
            f"request to {self.base_url} (model {model!r}) did not answer within {self.config.deadline:g} s "
            f"(the deadline; the call and its retries were stopped after {retries} retries)",
            status=None, base_url=self.base_url, model=model, retries=retries,
        )

    def _wrap(self, failure: _Failure, model: str, retries: int, *, hopeless: bool) -> LLMError:
        what = failure.what
        if failure.kind == "timeout":
            what = f"timed out (timeout {self.config.timeout:g} s, longer for requests sent again)"
        elif failure.status is not None and is_unsupported(what):
            what += " (not retried: the server says the input is unsupported)"
        elif hopeless:
            what += " (not retried: every request to this endpoint so far got this error)"
        message = f"request to {self.base_url} (model {model!r}) failed: {what} (after {retries} retries)"
        return LLMError(self.redact(message), status=failure.status, base_url=self.base_url, model=model,
                        retries=retries)


def _status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of message dicts, got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise TypeError(f"messages[{i}] must be a dict with a 'role' got {message!r:.80}")
        out.append(dict(message))
    if not out:
        raise ValueError("messages is empty")
    return out


def _to_completion(data: bytes, model: str) -> Completion:
    """A chat completion's JSON body as a :class:`Completion`; :class:`_BadResponse` for anything else."""
    try:
        chat = json.loads(data)
    except ValueError as exc:
        raise _BadResponse(f"not JSON ({exc}): {data[:80]!r}") from None
    if not isinstance(chat, dict):
        raise _BadResponse(f"expected a chat completion, got {type(chat).__name__}: {str(chat)[:80]!r}")
    choices = chat.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _BadResponse("the completion has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _BadResponse("the first choice has no message")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise _BadResponse(f"the message content is a {type(text).__name__}, not text")
    usage = chat.get("usage") if isinstance(chat.get("usage"), dict) else {}
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    return Completion(
        text=text or "",
        cached=False,
        model=str(chat.get("model") or model),
        prompt_tokens=_token_count(usage.get("prompt_tokens")),
        completion_tokens=_token_count(usage.get("completion_tokens")),
        finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
    )


def _token_count(value: object) -> int | None:
    return value if _is_int(value) and value >= 0 else None  # type: ignore[return-value, operator]


class _BatchProgress(JobBar):
    """complete_many's bar: cache hits and failures counted from each result."""

    def __init__(self, progress: bool | str, total: int) -> None:
        super().__init__(progress if isinstance(progress, str) else "LLM calls", total,
                         counters={"cached": 0, "failed": 0}, enabled=bool(progress))

    def advance_result(self, result: Completion | CallError) -> None:
        failed = isinstance(result, CallError)
        self.advance(1, failed=self.counters["failed"] + failed,
                     cached=self.counters["cached"] + (not failed and result.cached))


# --- messages and images -------------------------------------------------------------------------------


def _image_url(image: Any, max_side: int | None) -> str:
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:image/")):
        return image
    return image_to_data_url(image, max_side=max_side)


def user_message(text: str, images: Sequence[Any] = (), *, max_side: int | None = 1024) -> dict[str, Any]:
    """A user message: plain string content for text only; with images, OpenAI content parts (the images first,
    as data URLs; http(s) URLs pass), then the text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        images = [images]  # one image given bare
    if not images:  # text only: a plain string, which every chat template takes (llama.cpp's drop part lists)
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(image, max_side)}} for image in images
    ]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def system_message(text: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return {"role": "system", "content": text}
