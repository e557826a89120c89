"""The one OpenAI-compatible client behind every LLM/VLM call in dermtrl.

Captioning, hierarchical reasoning, judging, score parsing and candidate generation all call
:class:`LLMClient`, so they share one policy for each of the things that are easy to get subtly wrong:

Retries
    The ``openai`` package retries 408/409/429/5xx answers, timeouts and connection errors with
    exponential backoff (0.5 s doubling, at most 8 s, 0-25 % jitter), honouring ``Retry-After`` and
    ``retry-after-ms``. It does not retry a 200 whose body is not a usable completion (not JSON, no
    choices); we do, with the same backoff. Both share one budget: at most ``max_retries`` retries, so at
    most ``max_retries + 1`` HTTP requests per completion.
Caching
    Only *deterministic* requests are cached: temperature 0, or a fixed ``seed``. Sampling at a temperature
    above 0 without a seed is meant to vary (e.g. drawing several candidates), so it always reaches the
    server. The key covers the prompt version, model, messages and every generation setting
    (:func:`dermtrl.cache.cache_key`); an answer is committed as soon as it arrives, so an interrupted
    batch resumes where it stopped.
Secrets
    The config holds only the *name* of the environment variable with the API key. The key is read once,
    sent only in the ``Authorization`` header, never cached, and replaced by ``***`` (:func:`redact`) in
    every error message and log line this module writes.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import openai
from openai.types.chat import ChatCompletion

from dermtrl.cache import ResponseCache, cache_key
from dermtrl.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from rich.console import Console
    from rich.table import Table

log = logging.getLogger(__name__)

REDACTED = "***"
#: Keyword overrides accepted by :meth:`LLMClient.complete` and :meth:`LLMClient.complete_many`.
OVERRIDES: frozenset[str] = frozenset({"temperature", "max_tokens", "seed", "model"})

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INITIAL_RETRY_DELAY = 0.5  # the same backoff as openai's own (openai._constants)
_MAX_RETRY_DELAY = 8.0
_MAX_RETRY_AFTER = 120.0


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
    ``api_key_env`` names is unset. ``cache_path`` ``None`` disables the cache.
    """

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 8
    max_retries: int = 5
    timeout: float = 60.0
    temperature: float = 0.0
    max_tokens: int | None = 1024
    seed: int | None = None
    cache_path: str | None = None
    prompt_version: str = PROMPT_VERSION
    extra_body: dict[str, Any] | None = None

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientConfig:
        """Build from a mapping (e.g. a YAML section); unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown client config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)


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


class LLMError(Exception):
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


_USAGE_FIELDS = ("calls", "cache_hits", "failures", "retries", "prompt_tokens", "completion_tokens")
_USAGE_LABELS = {
    "calls": "API calls (succeeded)",
    "cache_hits": "cache hits",
    "failures": "failures",
    "retries": "retries",
    "prompt_tokens": "prompt tokens",
    "completion_tokens": "completion tokens",
}


@dataclass
class Usage:
    """Running totals for one client; updates are thread-safe (use :meth:`add`).

    ``calls`` counts completions the API returned (not cache hits, not failed attempts); ``retries``
    counts re-sent requests, those inside ``openai`` included.
    """

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        unknown = set(counts) - set(_USAGE_FIELDS)
        if unknown:
            raise KeyError(f"unknown usage counter(s) {sorted(unknown)}")
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + int(value))

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in _USAGE_FIELDS}

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def table(self, title: str = "LLM usage") -> Table:
        from rich.table import Table

        counts = self.as_dict()
        table = Table(title=title)
        table.add_column("counter")
        table.add_column("value", justify="right")
        for name in _USAGE_FIELDS:
            table.add_row(_USAGE_LABELS[name], f"{counts[name]:,}")
        return table

    def summary(self) -> str:
        c = self.as_dict()
        return (
            f"{c['calls']} calls, {c['cache_hits']} cache hits, {c['failures']} failures, {c['retries']} "
            f"retries, {c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens"
        )


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


def _retries_taken(err: BaseException) -> int:
    """How many retries openai made before giving up (it numbers them in a request header)."""
    request = getattr(err, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) if request is not None else 0
    except (TypeError, ValueError):
        return 0


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
            max_retries=self.config.max_retries,
            timeout=self.config.timeout,
        )
        self._by_budget: dict[int, openai.OpenAI] = {self.config.max_retries: self._openai}
        self._budget_lock = threading.Lock()

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

    def _client_with_budget(self, retries_left: int) -> openai.OpenAI:
        with self._budget_lock:
            client = self._by_budget.get(retries_left)
            if client is None:
                client = self._by_budget[retries_left] = self._openai.with_options(max_retries=retries_left)
            return client

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
                    bar.advance(result)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # finished answers are already in the cache
            raise
        pool.shutdown(wait=True)
        return cast("list[Completion | CallError]", results)

    def print_usage(self, console: Console | None = None) -> None:
        from rich.console import Console

        (console or Console()).print(self.usage.table())

    def close(self) -> None:
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
        key: str | None = None
        if self.cache is not None and self.is_deterministic(settings):
            key = cache_key(self.config.prompt_version, model, messages, settings)
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
        completion = self._request(messages, model, settings)
        if key is not None and self.cache is not None:
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
        return completion

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
        budget = self.config.max_retries
        retries = 0
        while True:
            client = self._client_with_budget(budget - retries)
            try:
                raw = client.chat.completions.with_raw_response.create(**kwargs)
            except openai.OpenAIError as err:
                retries += _retries_taken(err)
                self.usage.add(failures=1, retries=retries)
                wrapped = self._wrap(err, model, retries)
                log.debug("%s", wrapped)
                if self._api_key is not None and self._api_key in _describe_fully(err):
                    raise wrapped from None  # the server echoed the key: keep it out of tracebacks
                raise wrapped from err
            retries += raw.retries_taken
            try:
                completion = _to_completion(raw.parse(), model)
            except Exception as exc:
                problem = self.redact(f"{type(exc).__name__}: {exc}")[:300]
                if retries < budget:
                    delay = _retry_delay(retries, raw.headers)
                    log.warning(
                        self.redact(
                            f"unusable response from {self.base_url} (model {model}): {problem}; "
                            f"retry {retries + 1} of {budget} in {delay:.2f} s"
                        )
                    )
                    time.sleep(delay)
                    retries += 1
                    continue
                self.usage.add(failures=1, retries=retries)
                raise LLMError(
                    f"request to {self.base_url} (model {model!r}) got HTTP {raw.status_code} with an "
                    f"unusable body after {retries} retries: {problem}",
                    status=raw.status_code,
                    base_url=self.base_url,
                    model=model,
                    retries=retries,
                ) from None
            self.usage.add(
                calls=1,
                retries=retries,
                prompt_tokens=completion.prompt_tokens or 0,
                completion_tokens=completion.completion_tokens or 0,
            )
            return completion

    def _wrap(self, err: BaseException, model: str, retries: int) -> LLMError:
        status = getattr(err, "status_code", None)
        if isinstance(err, openai.APITimeoutError):
            what = f"timed out after {self.config.timeout:g} s"
        elif isinstance(err, openai.APIConnectionError):
            cause = err.__cause__
            what = f"connection error ({type(cause).__name__}: {cause})" if cause else "connection error"
        elif isinstance(err, openai.APIStatusError):
            what = f"HTTP {status} {type(err).__name__}: {err.message}"
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


class _BatchProgress:
    """A rich progress bar for complete_many (description, count, cache hits, failures, ETA), or nothing."""

    def __init__(self, progress: bool | str, total: int) -> None:
        self.enabled = bool(progress)
        self.hits = self.failed = 0
        self._progress: Any = None
        self._task: Any = None
        if not self.enabled:
            return
        from dermtrl.progress import progress_bar

        self._progress = progress_bar("cached {task.fields[hits]} · failed {task.fields[failed]}")
        description = progress if isinstance(progress, str) else "LLM calls"
        self._task = self._progress.add_task(description, total=total, hits=0, failed=0)

    def __enter__(self) -> _BatchProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, result: Completion | CallError) -> None:
        if isinstance(result, CallError):
            self.failed += 1
        elif result.cached:
            self.hits += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, hits=self.hits, failed=self.failed)


# --- messages and images -------------------------------------------------------------------------------


def image_to_data_url(
    image: PILImage.Image | str | os.PathLike[str] | bytes, *, max_side: int | None = 1024
) -> str:
    """A base64 ``data:`` URL for an image (a PIL image, a file path, or encoded bytes).

    The image is read by the project's one image reader (:func:`dermtrl.data.images.read_image`: every mode to
    8-bit RGB, 16-bit and float scaled, alpha flattened onto white, EXIF orientation applied, size checked), so
    a model behind an endpoint sees what DermEval sees. The longer side is shrunk to ``max_side`` (``None``:
    never). An unchanged RGB JPEG keeps its own bytes, a resized JPEG stays JPEG (quality 95), everything else
    becomes PNG. A string that already is a ``data:image/`` URL is returned unchanged. Raises
    ``FileNotFoundError``/``ValueError`` naming the file when it is missing or not a readable image. The same
    input always gives the same URL (stable cache keys).
    """
    from PIL import Image

    from dermtrl.data.images import read_image, to_rgb

    if max_side is not None and (not _is_int(max_side) or max_side < 1):
        raise ValueError(f"max_side must be None or an integer >= 1, got {max_side!r}")
    if isinstance(image, str) and image.startswith("data:image/"):
        return image
    if isinstance(image, Image.Image):
        img, source_format, original = to_rgb(image), image.format, None
    else:
        if isinstance(image, (bytes, bytearray, memoryview)):
            loaded = read_image(bytes(image), f"the given image bytes ({len(image)} bytes)")
        elif isinstance(image, (str, os.PathLike)):
            path = Path(image).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"image file {str(path)!r} does not exist")
            loaded = read_image(path, f"image file {str(path)!r}")
        else:
            raise TypeError(f"image must be a PIL image, a path or bytes, got {type(image).__name__}")
        img, source_format = loaded.image, loaded.source_format
        original = loaded.unchanged_jpeg
    if max_side is not None and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        original = None
    if original is not None:
        data, mime = original, "image/jpeg"
    else:
        buffer = io.BytesIO()
        if source_format == "JPEG":
            img.save(buffer, format="JPEG", quality=95)
            mime = "image/jpeg"
        else:
            img.save(buffer, format="PNG")
            mime = "image/png"
        data = buffer.getvalue()
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_url(image: Any, max_side: int | None) -> str:
    if isinstance(image, str) and image.startswith(("http://", "https://", "data:image/")):
        return image
    return image_to_data_url(image, max_side=max_side)


def user_message(text: str, images: Sequence[Any] = (), *, max_side: int | None = 1024) -> dict[str, Any]:
    """A user message in OpenAI content parts: the images first (data URLs; http(s) URLs pass), then text."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
        images = [images]  # one image given bare
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(image, max_side)}} for image in images
    ]
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def system_message(text: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return {"role": "system", "content": text}
