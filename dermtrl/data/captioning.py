"""Captioning (Section 3.1, both streams): observation-only captions from a VLM with the paper's prompt.

The caption must report only observable findings ("forbidding diagnostic speculation"). A caption that names a
diagnosis, checked against the label vocabulary (full names and their distinctive words, so 'psoriasis' counts
for 'plaque psoriasis'), is retried once with :data:`dermtrl.prompts.CAPTION_RETRY_INSTRUCTION`, then kept and
flagged. Records go to ``RUN/captions.jsonl`` as each batch finishes, with the prompt version and model.
"""

from __future__ import annotations

import os

from dermtrl.data.retry import Attempt, LLMStep, Unusable, run_step
from dermtrl.data.run import RunDir
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.jsonl import RecordLog
from dermtrl.llm.client import LLMClient, user_message
from dermtrl.prompts import CAPTION_PROMPT, CAPTION_RETRY_INSTRUCTION, PROMPT_VERSION

__all__ = ["CAPTION_PREFIX", "caption_items", "caption_problems"]

CAPTION_PREFIX = "This image shows"


def caption_problems(caption: str, vocabulary: Vocabulary) -> list[str]:
    """Why a caption breaks the captioning rule (empty list: it does not); retried problems come first."""
    text = caption.strip()
    if not text:
        return ["empty caption"]
    named = vocabulary.named_in(text, key_terms=True)
    return [f"names a diagnosis: {', '.join(named)}"] if named else []


def caption_items(
    run: RunDir | str | os.PathLike[str],
    client: LLMClient,
    *,
    vocabulary: Vocabulary | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> StepSummary:
    """Caption every ingested item not captioned yet; returns what was done, skipped and flagged."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    vocabulary = vocabulary or run.vocabulary()
    items = run.require_items()
    summary = StepSummary("caption", total=len(items))
    settings = {"step": "caption", "prompt_version": PROMPT_VERSION, "model": client.config.model}
    with RecordLog(run.captions_path, settings, overwrite=overwrite) as log:
        done = log.done()
        todo = [item for item_id, item in items.items() if item_id not in done]
        summary.reused = len(items) - len(todo)
        for item_id in done & set(items):
            _report(summary, log.get(item_id) or {})

        def record(item: dict, attempt: Attempt) -> dict | Unusable:
            text = (attempt.text or "").strip()
            if not text:
                return Unusable("empty-caption", f"empty caption after {attempt.attempts} attempt(s)")
            flags = list(attempt.problems)
            if not text.startswith(CAPTION_PREFIX):
                flags.append(f"does not start with {CAPTION_PREFIX!r}")
            return {"caption": text, "flags": flags, "attempts": attempt.attempts,
                    "first_caption": attempt.first_text if attempt.retried else None, "served_by": attempt.model}

        step = LLMStep(
            "caption",
            conversation=lambda item: [user_message(CAPTION_PROMPT, [str(run.image_path(item))])],
            check=lambda item, text: caption_problems(text, vocabulary),
            retry_text=lambda item, text, problems: CAPTION_RETRY_INSTRUCTION.format(
                names=", ".join(vocabulary.named_in(text, key_terms=True)) or "; ".join(problems)),
            record=record, ids=lambda item: {"id": item["id"]}, report=_report,
        )
        run_step(step, todo, client, log, summary, batch_size=batch_size, progress=progress)
    return summary


def _report(summary: StepSummary, record: dict) -> None:
    for flag in record.get("flags") or []:
        summary.flag(record["id"], "caption", f"{flag} (kept after {record.get('attempts', 1)} attempt(s))")
