"""A persistent cache of LLM/VLM responses in one SQLite file.

Keys come from :func:`cache_key`: a SHA-256 of the canonical JSON of everything that determines an answer
(cache schema, :data:`~dermtrl.prompts.PROMPT_VERSION`, model, messages, generation settings), so changing
any prompt, model or setting misses the cache instead of reusing a stale answer. Which requests get cached
is the client's policy (:mod:`dermtrl.llm.client`: deterministic ones only); this module only stores.

Every :meth:`ResponseCache.put` commits at once, so a batch killed half-way keeps every answer it got and a
rerun makes calls only for the rest. The file is in WAL mode (readers do not block the writer; several
processes may share it) with ``synchronous=NORMAL``: a killed *process* loses nothing committed; a power cut
may lose the last few commits, which a rerun simply recomputes.

Records hold only what an answer needs (:data:`RECORD_FIELDS`): text, a reasoning model's thinking, finish
reason, model, prompt version, token usage, creation time. :meth:`ResponseCache.put` rejects any other field, so
request headers and API keys can never end up on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Part of every key: bump it when the key recipe or the record layout changes.
CACHE_SCHEMA_VERSION = "dermtrl-cache-v1"

#: The only fields a record may hold.
RECORD_FIELDS: frozenset[str] = frozenset(
    {"text", "reasoning", "finish_reason", "model", "prompt_version", "usage", "created"}
)


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept (equal values give equal strings)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def cache_key(
    prompt_version: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> str:
    """The cache key (64 hex digits) of one request.

    ``settings`` are the generation settings that change the answer (temperature, max_tokens, seed, extra
    body...). Anything not JSON-serialisable raises ``TypeError``; NaN or infinity raises ``ValueError``.
    """
    payload = {
        "schema": CACHE_SCHEMA_VERSION,
        "prompt_version": prompt_version,
        "model": model,
        "messages": list(messages),
        "settings": dict(settings),
    }
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class ResponseCache:
    """``key -> record`` (a JSON object) in one SQLite file; thread-safe, every put committed at once.

    ``path`` may be ``":memory:"`` for a throwaway cache. Use :meth:`close` (or ``with``) when done; a
    process that dies without closing loses nothing already put.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OSError(f"cannot create the cache directory {parent}: {exc}") from exc
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, record TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise OSError(f"cannot open the response cache {self.path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"response cache {self.path} is closed")
        return self._conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or ``None`` (also for a record that no longer parses)."""
        with self._lock:
            row = self._connection().execute("SELECT record FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            record = json.loads(row[0])
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store ``record`` under ``key`` (replacing any), committed before returning.

        Only :data:`RECORD_FIELDS` are allowed; ``created`` defaults to now.
        """
        unknown = set(record) - RECORD_FIELDS
        if unknown:
            raise ValueError(
                f"cache records may hold only {sorted(RECORD_FIELDS)}; got unexpected {sorted(unknown)}"
            )
        data = dict(record)
        data.setdefault("created", time.time())
        text = canonical_json(data)
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO responses (key, record, created) VALUES (?, ?, ?)",
                (key, text, float(data["created"])),
            )

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            row = self._connection().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def keys(self) -> list[str]:
        with self._lock:
            rows = self._connection().execute("SELECT key FROM responses ORDER BY created").fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        """Close the file (idempotent). The WAL is checkpointed so the one ``.sqlite`` file holds it all."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"ResponseCache({self.path!r}, {state})"
