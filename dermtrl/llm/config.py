"""Where and how to call a model: :class:`ClientConfig`, the one set of endpoint settings every client in dermtrl
takes (base URL, model, key variable, concurrency, timeout, deadline, retries, generation settings, cache)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dermtrl.prompts import PROMPT_VERSION

__all__ = ["ClientConfig"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    deadline: float | None = None  # seconds one call may take in all: waits, retries and backoff included
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
        if self.deadline is not None and (not _is_number(self.deadline) or self.deadline <= 0):
            raise ValueError(f"deadline must be None or a number of seconds > 0, got {self.deadline!r}")
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
