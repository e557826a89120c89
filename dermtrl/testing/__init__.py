"""Test helpers shipped with the package, so downstream projects and our own tests share them.

:class:`FakeOpenAIServer` (defined in :mod:`dermtrl.llm.server`, where ``dermtrl data build --synthetic`` uses it
as its scripted loopback model) is a real loopback HTTP server speaking the OpenAI chat-completions protocol, with
scripted and random faults (rate limits, server errors, timeouts, malformed bodies) for testing
:mod:`dermtrl.llm.client` without a network or a model. :mod:`dermtrl.testing.llava7b` builds LLaVA-1.5-7B's
exact architecture with random weights (memory and tokenisation checks).
"""

from __future__ import annotations

from dermtrl.llm.server import (
    DEFAULT_SCORE_TEXT,
    FAULT_KINDS,
    FakeOpenAIServer,
    Fault,
    Reply,
    last_user_text,
)

__all__ = ["DEFAULT_SCORE_TEXT", "FAULT_KINDS", "Fault", "FakeOpenAIServer", "Reply", "last_user_text"]
