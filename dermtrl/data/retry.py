"""Ask, check, retry once as a follow-up turn, then keep and flag: the rule every Section 3.1 LLM step follows.

A caption naming a diagnosis, a reasoning text out of the hierarchical form and a rationale restating other
scores are all handled the same way, so the policy lives here once. The retry is a follow-up turn after the
model's own answer: an identical fresh request would only return the cached answer, and the follow-up tells the
model what to fix. Calls go through :class:`dermtrl.llm.client.LLMClient` (concurrency, retries on transport
errors, cache); a call that fails after those retries is an error for that item only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dermtrl.llm.client import CallError, LLMClient

__all__ = ["Attempt", "LLMStep", "Unusable", "ask_with_retry", "run_step"]

Check = Callable[[int, str], list[str]]
RetryText = Callable[[int, str, list[str]], str]


@dataclass
class Attempt:
    """The answer kept for one item, the problems it still has, and what happened on the way."""

    text: str | None = None
    problems: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None
    first_text: str | None = None
    first_problems: list[str] = field(default_factory=list)
    model: str | None = None

    @property
    def retried(self) -> bool:
        return self.attempts > 1


def ask_with_retry(
    client: LLMClient,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    check: Check,
    retry_text: RetryText,
    *,
    progress: bool | str = False,
) -> list[Attempt]:
    """One completion per conversation; those whose answer ``check`` faults get one follow-up turn.

    ``check(i, text)`` returns the problems of item ``i``'s answer (empty: fine); ``retry_text(i, text,
    problems)`` is the follow-up user turn. Of the two answers the one with fewer problems is kept (the first
    on a tie), with the problems it still has.
    """
    first = client.complete_many(conversations, progress=progress)
    out: list[Attempt] = []
    retry_index: list[int] = []
    retry_batch: list[list[Mapping[str, Any]]] = []
    for i, result in enumerate(first):
        if isinstance(result, CallError):
            out.append(Attempt(error=result.error, attempts=1))
            continue
        problems = check(i, result.text)
        out.append(Attempt(text=result.text, problems=problems, attempts=1, first_text=result.text,
                           first_problems=list(problems), model=result.model))
        if problems:
            retry_index.append(i)
            follow_up = {"role": "user", "content": retry_text(i, result.text, problems)}
            retry_batch.append([*conversations[i], {"role": "assistant", "content": result.text}, follow_up])
    if retry_batch:
        second = client.complete_many(retry_batch, progress=f"{progress} (retries)" if isinstance(progress, str)
                                      else progress)
        for i, result in zip(retry_index, second, strict=True):
            attempt = out[i]
            attempt.attempts = 2
            if isinstance(result, CallError):
                attempt.problems = [*attempt.problems, f"retry failed: {result.error}"]
                continue
            problems = check(i, result.text)
            if len(problems) < len(attempt.first_problems):
                attempt.text, attempt.problems, attempt.model = result.text, problems, result.model
    return out


@dataclass(frozen=True)
class Unusable:
    """An answer a step cannot keep (empty, unparseable): the skip reason and a message a person can act on."""

    reason: str
    message: str


@dataclass
class LLMStep:
    """What one Section 3.1 step asks about each item and what it records; :func:`run_step` does the rest.

    ``conversation(item)`` is the request; ``check(item, text)`` the answer's problems (one follow-up turn when
    there are any); ``retry_text(item, text, problems)`` that turn; ``record(item, attempt)`` the fields to record,
    or :class:`Unusable`; ``ids(item)`` the id fields written with every record, errors included; ``report``
    adds a written record's flags to the summary.
    """

    label: str
    conversation: Callable[[Any], list[dict[str, Any]]]
    check: Callable[[Any, str], list[str]]
    retry_text: Callable[[Any, str, list[str]], str]
    record: Callable[[Any, Attempt], dict[str, Any] | Unusable]
    ids: Callable[[Any], dict[str, Any]]
    report: Callable[[Any, dict[str, Any]], None]


def run_step(step: LLMStep, todo: Sequence[Any], client: LLMClient, log: Any, summary: Any, *, batch_size: int,
             progress: bool) -> None:
    """Ask about ``todo`` in batches (with the retry rule above), writing each item's record to ``log`` (a
    :class:`dermtrl.jsonl.RecordLog`) as its batch finishes: a failed call or an unusable answer is recorded as
    an error and skipped in ``summary``, so a rerun retries it."""
    from dermtrl.progress import JobBar

    with JobBar(step.label, len(todo), enabled=progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = list(todo[start:start + batch_size])
            attempts = ask_with_retry(
                client, [step.conversation(item) for item in batch],
                check=lambda i, text, batch=batch: step.check(batch[i], text),
                retry_text=lambda i, text, problems, batch=batch: step.retry_text(batch[i], text, problems),
            )
            for item, attempt in zip(batch, attempts, strict=True):
                ids = step.ids(item)
                result = (Unusable("llm-error", attempt.error) if attempt.error is not None
                          else step.record(item, attempt))
                if isinstance(result, Unusable):
                    log.write({**ids, "error": result.message})
                    summary.skip(ids["id"], result.reason, result.message)
                    summary.extra["failed"] = summary.extra.get("failed", 0) + 1  # decides the exit status
                    continue
                record = log.write({**ids, **result})
                summary.done += 1
                step.report(summary, record)
            bar.advance(len(batch))
