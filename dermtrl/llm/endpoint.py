"""What a client learns about its endpoint while it works: errors that retrying cannot fix, and whether the server
reads text sent as content parts.

Errors that retrying cannot fix
    A server that says the input is unsupported (llama.cpp's ``image input is not supported - hint: ... provide
    the mmproj`` for an image sent to a text-only model, "does not support", "not implemented") answers the same
    way every time, so that answer is not retried (:func:`is_unsupported`). And an endpoint that has answered
    every request so far with one and the same HTTP error, never with a completion, gets no more retries for
    that error (:class:`EndpointHealth`): the first request spent its retries finding out, the others fail at
    once. One answer from the endpoint ends that, so a server's passing 500s are still retried. Answers that say
    "later" (408, 429, 503, 529: a rate limit, llama.cpp's 503 "Loading model" while it starts) never count.
Content parts
    A chat template that takes only string content silently drops a message made of content parts (llama.cpp's
    built-in formats do), and the model answers a prompt it never saw. The reported ``usage.prompt_tokens`` is
    only a hint of that: prompt caches (llama.cpp, Ollama) count only the new tokens, and some gateways report 0
    or nothing. So a short figure never fails an answer by itself; it triggers one probe per endpoint
    (:func:`probe_content_parts`): the same short text sent as content parts, then as a string, compared. Only
    a probe that shows the parts dropped fails requests with content parts. Every verdict, and a warning that
    the figures are low, go into the run's usage table.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from dermtrl.errors import DermtrlError

__all__ = ["PROBE_WORD", "EndpointHealth", "is_unsupported", "probe_content_parts", "probe_messages"]

_UNSUPPORTED = re.compile(
    r"\bnot supported\b|\bunsupported\b|\bdoes(?: not|n't) support\b|\bnot implemented\b|\bmmproj\b", re.IGNORECASE)

#: The word the probe asks the model to repeat: present in an answer to a prompt the model saw.
PROBE_WORD = "dermtrl-probe-kq7"
_PROBE_TEXT = ("This is a connection check of an evaluation client, sent twice in two message formats. "
               "Please ignore everything else in this message. "
               f"Reply with exactly this word and nothing else: {PROBE_WORD}")

#: Verdicts of :func:`probe_content_parts`.
READ, DROPPED, UNKNOWN = "read", "dropped", "not determined"


def is_unsupported(line: str) -> bool:
    """Whether a server's error message says the input is unsupported (retrying cannot change that)."""
    return bool(_UNSUPPORTED.search(line or ""))


class EndpointHealth:
    """Whether an endpoint has given one and the same HTTP error for every request so far (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = 0
        self.errors: dict[str, int] = {}  # error -> requests that ended with it
        self.not_retried = 0

    def success(self) -> None:
        with self._lock:
            self.answered += 1

    def failed(self, signature: str | None) -> None:
        if signature is None:
            return
        with self._lock:
            self.errors[signature] = self.errors.get(signature, 0) + 1

    def hopeless(self, signature: str | None) -> bool:
        """True when every request that ended so far ended with this same error, and none was answered."""
        if signature is None:
            return False
        with self._lock:
            hopeless = self.answered == 0 and list(self.errors) == [signature]
            self.not_retried += hopeless
            return hopeless

    def note(self) -> str | None:
        with self._lock:
            if not self.not_retried or len(self.errors) != 1:
                return None
            (error, count), = self.errors.items()
        return (f"not retried: every request to this endpoint got the same error ({count} so far, none answered), "
                f"so later ones failed at once: {error}")


def probe_messages() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The probe's two requests: the same text as content parts (sent first) and as a string."""
    parts = [{"role": "user", "content": [{"type": "text", "text": _PROBE_TEXT}]}]
    string = [{"role": "user", "content": _PROBE_TEXT}]
    return parts, string


def probe_content_parts(ask: Callable[[list[dict[str, Any]]], tuple[str, int | None]]) -> tuple[str, str]:
    """(verdict, why): whether the endpoint reads text sent as content parts.

    ``ask(messages)`` returns the answer's text and reported prompt tokens (raises ``LLMError`` when the call fails).
    The parts go first: a prompt cache then counts the string's repeat as cached (a small figure), never the
    parts', so a cache cannot make a server that reads both look as if it dropped one. Usage figures decide when
    the string's is large enough to mean something; otherwise the answers do (the word asked for, repeated to the
    string and missing from the parts' answer). Anything else is ``"not determined"``, which fails nothing.
    """
    parts, string = probe_messages()
    try:
        parts_text, parts_tokens = ask(parts)
        string_text, string_tokens = ask(string)
    except DermtrlError as exc:  # the client's LLMError
        return UNKNOWN, f"the probe's request failed: {str(exc)[:160]}"
    words = len(_PROBE_TEXT.split())
    if string_tokens is not None and parts_tokens is not None and string_tokens >= words // 2:
        if parts_tokens < string_tokens // 2:
            return DROPPED, (f"the same text reported as {parts_tokens} prompt tokens as content parts and "
                             f"{string_tokens} as a string")
        return READ, f"{parts_tokens} prompt tokens as content parts, {string_tokens} as a string"
    said_parts, said_string = PROBE_WORD in parts_text, PROBE_WORD in string_text
    if said_string and not said_parts:
        return DROPPED, "the model repeated the probe's word sent as a string, not sent as content parts"
    if said_parts:
        return READ, "the model repeated the probe's word sent as content parts"
    return UNKNOWN, "usage figures too small and the model repeated the word in neither format"
