"""Test helpers shipped with the package, so downstream projects and our own tests share them.

:class:`FakeOpenAIServer` is a real loopback HTTP server speaking the OpenAI chat-completions protocol, with
scripted and random faults (rate limits, server errors, timeouts, malformed bodies) for testing
:mod:`dermtrl.llm.client` without a network or a model.
"""

from __future__ import annotations

from dermtrl.testing.openai_server import (
    DEFAULT_SCORE_TEXT,
    FAULT_KINDS,
    FakeOpenAIServer,
    Fault,
    Reply,
    last_user_text,
)

__all__ = ["DEFAULT_SCORE_TEXT", "FAULT_KINDS", "Fault", "FakeOpenAIServer", "Reply", "last_user_text"]
