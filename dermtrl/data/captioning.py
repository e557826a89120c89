"""Captioning (Section 3.1, both streams): observation-only captions from a VLM with the paper's prompt.

The caption must report only observable findings ("forbidding diagnostic speculation"). A caption that names a
diagnosis, checked against the label vocabulary (full names and their distinctive words, so 'psoriasis' counts
for 'plaque psoriasis'), is retried once with :data:`dermtrl.prompts.CAPTION_RETRY_INSTRUCTION`, then kept and
flagged. Records go to ``RUN/captions.jsonl`` as each batch finishes, with the prompt version and model.
"""

from __future__ import annotations

import os

from dermtrl.data.retry import ask_with_retry
from dermtrl.data.run import RunDir
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.jsonl import RecordLog
from dermtrl.llm.client import LLMClient, user_message
from dermtrl.progress import JobBar
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
        with JobBar("caption", len(todo), enabled=progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                conversations = []
                for item in batch:
                    conversations.append([user_message(CAPTION_PROMPT, [str(run.image_path(item))])])
                attempts = ask_with_retry(
                    client, conversations,
                    check=lambda i, text: caption_problems(text, vocabulary),
                    retry_text=lambda i, text, problems: CAPTION_RETRY_INSTRUCTION.format(
                        names=", ".join(vocabulary.named_in(text, key_terms=True)) or "; ".join(problems)),
                )
                for item, attempt in zip(batch, attempts, strict=True):
                    if attempt.error is not None:
                        log.write({"id": item["id"], "error": attempt.error})
                        summary.skip(item["id"], "llm-error", attempt.error)
                        continue
                    text = (attempt.text or "").strip()
                    if not text:
                        message = f"empty caption after {attempt.attempts} attempt(s)"
                        log.write({"id": item["id"], "error": message})
                        summary.skip(item["id"], "empty-caption", message)
                        continue
                    flags = list(attempt.problems)
                    if not text.startswith(CAPTION_PREFIX):
                        flags.append(f"does not start with {CAPTION_PREFIX!r}")
                    record = log.write({
                        "id": item["id"], "caption": text, "flags": flags, "attempts": attempt.attempts,
                        "first_caption": attempt.first_text if attempt.retried else None,
                        "served_by": attempt.model,
                    })
                    summary.done += 1
                    _report(summary, record)
                bar.advance(len(batch))
    return summary


def _report(summary: StepSummary, record: dict) -> None:
    for flag in record.get("flags") or []:
        summary.flag(record["id"], "caption", f"{flag} (kept after {record.get('attempts', 1)} attempt(s))")
