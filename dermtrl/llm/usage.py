"""What one :class:`~dermtrl.llm.client.LLMClient` did: calls, cache hits, failures, tokens, and every retry by kind.

Retries of every kind (rate limits, server errors, timeouts, dropped connections, unusable bodies) are counted
here the same way and reported as one summarised line per kind (:meth:`Usage.retry_lines`), never as a warning
per retry for some and silence for others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["USAGE_FIELDS", "Usage"]

USAGE_FIELDS = ("calls", "cache_hits", "shared", "failures", "retries", "prompt_tokens", "completion_tokens")
_LABELS = {
    "calls": "API calls (succeeded)",
    "cache_hits": "cache hits",
    "shared": "shared with an identical call in flight",
    "failures": "failures",
    "retries": "retries",
    "prompt_tokens": "prompt tokens",
    "completion_tokens": "completion tokens",
}


@dataclass
class Usage:
    """Running totals for one client; updates are thread-safe (use :meth:`add` and :meth:`add_retry`).

    ``calls`` counts completions the API returned (not cache hits, not failed attempts); ``shared`` counts
    answers taken from an identical request already in flight (no request of their own); ``retries`` counts
    re-sent requests, of every kind, and :attr:`retry_kinds` splits them by kind (``"HTTP 429"``, ``"HTTP 503"``,
    ``"timeout"``, ``"connection error"``, ``"unusable body"``). :attr:`checks` holds what checks of the endpoint
    found (:mod:`dermtrl.llm.endpoint`), shown in :meth:`table`.
    """

    calls: int = 0
    cache_hits: int = 0
    shared: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_kinds: dict[str, int] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        unknown = set(counts) - set(USAGE_FIELDS)
        if unknown:
            raise KeyError(f"unknown usage counter(s) {sorted(unknown)}")
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + int(value))

    def add_retry(self, kind: str) -> None:
        """Count one re-sent request and why it was re-sent."""
        with self._lock:
            self.retries += 1
            self.retry_kinds[kind] = self.retry_kinds.get(kind, 0) + 1

    def set_check(self, name: str, verdict: str) -> None:
        """Record what a check of the endpoint found (e.g. whether it reads text sent as content parts)."""
        with self._lock:
            self.checks[name] = verdict

    def checks_found(self) -> dict[str, str]:
        with self._lock:
            return dict(self.checks)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {name: getattr(self, name) for name in USAGE_FIELDS}

    def retries_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.retry_kinds.items()))

    def retry_lines(self) -> list[str]:
        """One line per kind of retry, e.g. ``"retries after HTTP 429: 3"``."""
        return [f"retries after {kind}: {n}" for kind, n in self.retries_by_kind().items()]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def table(self, title: str = "LLM usage") -> Table:
        from rich.table import Table

        counts = self.as_dict()
        table = Table(title=title)
        table.add_column("counter")
        table.add_column("value", justify="right")
        for name in USAGE_FIELDS:
            table.add_row(_LABELS[name], f"{counts[name]:,}")
            if name == "retries":
                for kind, n in self.retries_by_kind().items():
                    table.add_row(f"  after {kind}", f"{n:,}")
        for name, verdict in self.checks_found().items():
            table.add_row(f"endpoint check: {name}", verdict)
        return table

    def summary(self) -> str:
        c = self.as_dict()
        kinds = self.retries_by_kind()
        split = f" ({', '.join(f'{n} × {k}' for k, n in kinds.items())})" if kinds else ""
        return (
            f"{c['calls']} calls, {c['cache_hits']} cache hits, {c['failures']} failures, {c['retries']} "
            f"retries{split}, {c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens"
        )
