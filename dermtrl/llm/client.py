"""The one OpenAI-compatible client behind every LLM/VLM call in dermtrl.

Captioning, hierarchical reasoning, judging, score parsing and candidate generation all call
:class:`LLMClient`, so they share one policy for each of the things that are easy to get subtly wrong:

Retries
    Every retry is ours (the ``openai`` package is told to make none), so each kind is counted and reported
    the same way (:class:`~dermtrl.llm.usage.Usage`: one line per kind, never a warning per retry): 408/409/429
    and 5xx answers, timeouts, dropped connections, and 200s whose body is not a usable completion (not
    JSON, no choices). Backoff is openai's (0.5 s doubling, at most 8 s, 0-25 % jitter), honouring
    ``Retry-After``/``retry-after-ms`` and ``x-should-retry``. At most ``max_retries`` retries, so at most
    ``max_retries + 1`` HTTP requests per completion. An error names the status and the body's first line.
Concurrency
    At most ``max_concurrency`` requests are in flight. A single-process server (llama.cpp) queues what it
    cannot answer at once, and a request's timeout runs while it waits in that queue (the protocol gives no
    sign of when the server starts on a request). So the client adapts (:mod:`dermtrl.llm.concurrency`): it starts
    with a few requests in flight and adds one per answer; when requests time out it halves them (down to 1)
    and adds one per round of answers, so the server's queue stays short instead of every queued request
    timing out and being sent again. It also halves them when answers come back slowed down by waiting (over
    half the timeout, over twice the fastest answer), before anything times out. A request sent again after a
    timeout waits twice as long (four times after a second one): the server is still working through the
    requests that were abandoned. Identical deterministic requests in flight at the same time are sent
    once and share the answer (``Usage.shared``).
Dropped content
    A server whose chat template takes only string content silently drops a message made of content parts
    (llama.cpp's built-in formats do). Text-only turns are therefore sent as plain strings
    (:func:`user_message`), and an answer whose reported ``usage.prompt_tokens`` is far below what the text
    sent must take (one token per 10 characters) fails that item with a message saying the server dropped
    the content, instead of recording an answer to a prompt the model never saw.
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
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import openai
from openai.types.chat import ChatCompletion

from dermtrl.cases.images import image_to_data_url  # re-exported: user_message encodes images with it
from dermtrl.errors import DermtrlError
from dermtrl.llm.cache import ResponseCache, cache_key
from dermtrl.llm.concurrency import AdaptiveLimit
from dermtrl.llm.usage import Usage
from dermtrl.progress import JobBar
from dermtrl.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

REDACTED = "***"
#: Keyword overrides accepted by :meth:`LLMClient.complete` and :meth:`LLMClient.complete_many`.
OVERRIDES: frozenset[str] = frozenset({"temperature", "max_tokens", "seed", "model", "response_format"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INITIAL_RETRY_DELAY = 0.5  # the same backoff as openai's own (openai._constants)
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0
#: A request sent again after a timeout waits this many times longer (at most twice): see "Concurrency".
_TIMEOUT_GROWTH = 2.0
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


# --- configuration -------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ClientConfig:
    """Where and how to call the model: plain fields, so a YAML/JSON mapping loads with :meth:`from_dict`.

    ``base_url`` ``None`` means the OpenAI API (or ``$OPENAI_BASE_URL``); set it for a local
    OpenAI-compatible server (vLLM, llama.cpp, ...), which gets the key ``"EMPTY"`` when the variable
    ``api_key_env`` names is unset. ``cache_path`` ``None`` disables the cache. ``response_format``
    ``"scores"`` asks for structured output, the six scores as a JSON object (for a judge or the LLM parser:
    small models that cannot keep to a free-text format can keep to a schema); any OpenAI ``response_format``
    dict is sent as given.
    """

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    timeout: float = 120.0  # a long answer from a slow local server takes a minute
    temperature: float = 0.0
    max_tokens: int | None = 1024
    seed: int | None = None
    cache_path: str | None = None
    prompt_version: str = PROMPT_VERSION
    extra_body: dict[str, Any] | None = None
    response_format: str | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cache_path, os.PathLike):
            self.cache_path = os.fspath(self.cache_path)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field."""
        if self.base_url is not None and (
            not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://"))
        ):
            raise ValueError(f"base_url must be None or an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.api_key_env, str) or not _ENV_NAME.match(self.api_key_env):
            # Never echo the value: a common mistake is pasting the key itself here.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable holding the key (letters, digits "
                "and underscores, e.g. 'OPENAI_API_KEY'), not the key itself; the value given is not shown"
            )
        if not _is_int(self.max_concurrency) or self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}")
        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if not _is_number(self.timeout) or self.timeout <= 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {self.timeout!r}")
        _check_generation(self.temperature, self.max_tokens, self.seed)
        if self.cache_path is not None and (not isinstance(self.cache_path, str) or not self.cache_path):
            raise ValueError(f"cache_path must be None or a non-empty path, got {self.cache_path!r}")
        if not isinstance(self.prompt_version, str) or not self.prompt_version:
            raise ValueError(f"prompt_version must be a non-empty string, got {self.prompt_version!r}")
        if self.extra_body is not None and not isinstance(self.extra_body, dict):
            raise TypeError(f"extra_body must be None or a dict, got {type(self.extra_body).__name__}")
        _response_format(self.response_format)  # raises naming the field

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown client config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_prefixed(cls, settings: object, prefix: str) -> ClientConfig:
        """The config held as ``<prefix><field>`` attributes of another settings object (e.g. ``SOREBConfig``'s
        ``llm_parser_*``): every field it has is taken, the rest keep their defaults."""
        values = {f.name: getattr(settings, prefix + f.name) for f in dataclasses.fields(cls)
                  if hasattr(settings, prefix + f.name)}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)


def _response_format(value: object) -> dict[str, Any] | None:
    """``None``, ``"scores"`` (:data:`dermtrl.dimensions.SCORES_RESPONSE_FORMAT`, the six scores as JSON) or an
    OpenAI ``response_format`` dict; ``ValueError`` naming the field for anything else."""
    if value is None:
        return None
    if value == "scores":
        from dermtrl.dimensions import SCORES_RESPONSE_FORMAT

        return SCORES_RESPONSE_FORMAT
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        return dict(value)
    raise ValueError(f"response_format must be None, 'scores' or a dict with a 'type' (an OpenAI response_format), "
                     f"got {value!r:.80}")


def _check_generation(temperature: object, max_tokens: object, seed: object) -> None:
    if not _is_number(temperature) or not 0.0 <= float(temperature) <= 2.0:  # type: ignore[arg-type]
        raise ValueError(f"temperature must be a number in [0, 2], got {temperature!r}")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):  # type: ignore[operator]
        raise ValueError(f"max_tokens must be None or an integer >= 1, got {max_tokens!r}")
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be None or an integer, got {seed!r}")


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
    """A 200 answer that is not a usable chat completion (openai does not retry these; we do)."""


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


def _retry_kind(err: BaseException) -> str | None:
    """Why a failed request may be sent again (``None``: it may not): openai's own rule, counted by kind."""
    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection error"
    if isinstance(err, openai.APIStatusError):
        should = err.response.headers.get("x-should-retry")
        if should == "false":
            return None
        status = err.status_code
        if should == "true" or status in (408, 409, 429) or status >= 500:
            return f"HTTP {status}"
    return None


def _body_line(err: BaseException) -> str:
    """The first line of an HTTP error's body, the server's ``error.message`` when it is JSON (at most 200 chars)."""
    response = getattr(err, "response", None)
    try:
        text = response.text if response is not None else ""
    except Exception:  # a streamed or closed body
        text = ""
    body = getattr(err, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, Mapping) else inner
        if isinstance(message, str) and message.strip():
            text = message
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line[:200] + ("…" if len(line) > 200 else "")


def _text_chars(messages: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Characters of text and number of images in a conversation."""
    chars = images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    chars += len(str(part.get("text") or ""))
                elif isinstance(part, Mapping) and part.get("type") == "image_url":
                    images += 1
    return chars, images


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
        self._openai = openai.OpenAI(
            base_url=self.config.base_url,
            api_key=self._api_key or "EMPTY",
            max_retries=0,  # every retry is ours: counted by kind, one budget (module docstring)
            timeout=self.config.timeout,
        )
        self._gate = AdaptiveLimit(self.config.max_concurrency)
        self._in_flight: dict[str, Future[Completion]] = {}
        self._in_flight_lock = threading.Lock()

    # --- small helpers --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return str(self._openai.base_url).rstrip("/")

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
            lines.append(f"the server fell behind (answers slowed by its queue, or timeouts): requests in flight "
                         f"lowered from {self._gate.limit} to as few as {self._gate.lowest} (see --max-concurrency)")
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
            self._openai.close()
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
        if not self.is_deterministic(settings):
            return self._request(messages, model, settings)  # sampling: every request is its own draw
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
                )
        with self._in_flight_lock:  # an identical request already in flight: share its answer
            pending = self._in_flight.get(key)
            if pending is None:
                self._in_flight[key] = mine = Future()
        if pending is not None:
            shared = pending.result()  # its LLMError, if it failed, is this item's too
            self.usage.add(shared=1)
            return dataclasses.replace(shared, cached=True)
        with self._gate.working():  # close() waits for this, the cache write included
            try:
                completion = self._request(messages, model, settings)
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

    def _request(self, messages: list[dict[str, Any]], model: str, settings: dict[str, Any]) -> Completion:
        if self._api_key is None and "api.openai.com" in self.base_url:
            self.usage.add(failures=1)
            raise LLMError(
                f"no API key for {self.base_url}: environment variable {self.config.api_key_env} is not set "
                "(set it, or set base_url to a local OpenAI-compatible server)",
                base_url=self.base_url,
                model=model,
            )
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": settings["temperature"],
        }
        if settings["max_tokens"] is not None:
            kwargs["max_tokens"] = settings["max_tokens"]
        if settings["seed"] is not None:
            kwargs["seed"] = settings["seed"]
        if settings["extra_body"]:
            kwargs["extra_body"] = settings["extra_body"]
        if settings.get("response_format") is not None:
            kwargs["response_format"] = settings["response_format"]
        budget = self.config.max_retries
        retries = timeouts = 0
        while True:
            raw: Any = None
            error: openai.OpenAIError | None = None
            with self._gate.slot():
                sent = time.monotonic()
                try:
                    # after a timeout the server is still busy with the abandoned request: wait longer for it
                    timeout = self.config.timeout * _TIMEOUT_GROWTH ** min(timeouts, 2)
                    raw = self._openai.chat.completions.with_raw_response.create(**kwargs, timeout=timeout)
                except openai.OpenAIError as err:
                    error = err
            if error is not None:
                kind = _retry_kind(error)
                if kind == "timeout":
                    self._gate.timed_out()
                    timeouts += 1
                if kind is not None and retries < budget:
                    headers = getattr(getattr(error, "response", None), "headers", None)
                    self._retry_later(kind, retries, headers, model)
                    retries += 1
                    continue
                self.usage.add(failures=1)
                wrapped = self._wrap(error, model, retries)
                log.debug("%s", wrapped)
                if self._api_key is not None and self._api_key in _describe_fully(error):
                    raise wrapped from None  # the server echoed the key: keep it out of tracebacks
                raise wrapped from error
            try:
                completion = _to_completion(raw.parse(), model)
            except Exception as exc:
                if retries < budget:
                    self._retry_later("unusable body", retries, raw.headers, model)
                    retries += 1
                    continue
                problem = self.redact(f"{type(exc).__name__}: {exc}")[:300]
                self.usage.add(failures=1)
                raise LLMError(
                    f"request to {self.base_url} (model {model!r}) got HTTP {raw.status_code} with an "
                    f"unusable body after {retries} retries: {problem}",
                    status=raw.status_code,
                    base_url=self.base_url,
                    model=model,
                    retries=retries,
                ) from None
            self._gate.answered(time.monotonic() - sent, timeout)
            self._check_prompt_size(messages, completion, model, retries)
            self.usage.add(
                calls=1,
                prompt_tokens=completion.prompt_tokens or 0,
                completion_tokens=completion.completion_tokens or 0,
            )
            return completion

    def _retry_later(self, kind: str, retries: int, headers: Mapping[str, str] | None, model: str) -> None:
        self.usage.add_retry(kind)
        delay = _retry_delay(retries, headers)
        log.debug("%s from %s (model %s): retry %d of %d in %.2f s", kind, self.base_url, model, retries + 1,
                  self.config.max_retries, delay)
        time.sleep(delay)

    def _check_prompt_size(self, messages: list[dict[str, Any]], completion: Completion, model: str,
                           retries: int) -> None:
        """Fail an answer to a prompt the server reports as far shorter than what was sent (dropped content)."""
        chars, images = _text_chars(messages)
        expected = chars // _CHARS_PER_TOKEN_MAX
        reported = completion.prompt_tokens
        if reported is None or expected < _MIN_TOKENS_CHECKED or reported >= expected:
            return
        self.usage.add(failures=1)
        sent = f"{chars:,} characters of text" + (f" and {images} image(s)" if images else "")
        why = "its chat template may take only string content" + (
            ", or the model may have no image support" if images else "")
        raise LLMError(
            f"the server dropped the content: {self.base_url} (model {model!r}) reports a prompt of {reported} "
            f"tokens for {sent} (at least {expected} tokens); {why}",
            status=None, base_url=self.base_url, model=model, retries=retries,
        )

    def _wrap(self, err: BaseException, model: str, retries: int) -> LLMError:
        status = getattr(err, "status_code", None)
        if isinstance(err, openai.APITimeoutError):
            what = f"timed out (timeout {self.config.timeout:g} s, longer for requests sent again)"
        elif isinstance(err, openai.APIConnectionError):
            cause = err.__cause__
            what = f"connection error ({type(cause).__name__}: {cause})" if cause else "connection error"
        elif isinstance(err, openai.APIStatusError):
            line = _body_line(err)
            what = f"HTTP {status}" + (f": {line}" if line else f" {type(err).__name__}")
        else:
            what = f"{type(err).__name__}: {err}"
        message = f"request to {self.base_url} (model {model!r}) failed: {what} (after {retries} retries)"
        return LLMError(
            self.redact(message), status=status, base_url=self.base_url, model=model, retries=retries
        )


def _describe_fully(err: BaseException) -> str:
    parts = [str(err), repr(getattr(err, "body", None))]
    if err.__cause__ is not None:
        parts.append(str(err.__cause__))
    return "\n".join(parts)


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


def _to_completion(chat: Any, model: str) -> Completion:
    if not isinstance(chat, ChatCompletion):
        raise _BadResponse(f"expected a chat completion, got {type(chat).__name__}: {str(chat)[:80]!r}")
    if not chat.choices:
        raise _BadResponse("the completion has no choices")
    choice = chat.choices[0]
    if choice.message is None:
        raise _BadResponse("the first choice has no message")
    usage = chat.usage
    return Completion(
        text=choice.message.content or "",
        cached=False,
        model=chat.model or model,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        finish_reason=choice.finish_reason,
    )


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
