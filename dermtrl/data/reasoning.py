"""Hierarchical reasoning (Section 3.1): the certified stream (caption + ground-truth label) and the regular
stream (caption + image, no label), normalised into the paper's hierarchical chain of thought.

The normal form (Figure 2) is::

    <think> First, <observed features> Next, <coarse disease family> Then, <intermediate descriptors> </think>
    Finally, based on the above analysis, <the specific diagnosis>.

:func:`normalize_reasoning` produces it from whatever the model wrote (markdown, headings, numbered steps,
``<think>`` tags) and reports violations of the paper's rules: the concluded disease named before the final
sentence, no diagnosis (or, in the certified stream, not the ground truth) in the final sentence, no coarse
disease-family step, too little reasoning to form a hierarchy. A text with violations is retried once
(:data:`dermtrl.prompts.REASONING_RETRY_INSTRUCTION`), then kept with its violations recorded, so reviewers see
them in the review sheet.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from dermtrl.data.retry import Attempt, LLMStep, Unusable, run_step
from dermtrl.data.run import STREAMS, RunDir, text_id
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.jsonl import RecordLog
from dermtrl.llm.client import LLMClient, user_message
from dermtrl.prompts import PROMPT_VERSION, REASONING_RETRY_INSTRUCTION, reasoning_prompt

__all__ = ["Normalized", "normalize_reasoning", "reason_items"]

#: Words that mark the coarse step: a disease family, group or class rather than one disease.
_FAMILY_CUES = re.compile(
    r"\b(famil(?:y|ies)|categor(?:y|ies|i[sz]e[sd]?|i[sz]ation)|group|class|broad(?:ly)?|high[- ]level|"
    r"general disease|type of|disorders?|dermatos[ie]s|neoplasms?|tumou?rs|infections?|inflammatory|"
    r"eruptions?|dermatitides|genodermatos[ie]s|proliferations?|carcinomas|conditions)\b",
    re.IGNORECASE,
)
_LEADING_CONNECTIVE = re.compile(
    r"^(?:(?:first(?:ly)?|second(?:ly)?|third(?:ly)?|next|then|finally|lastly|in conclusion|to conclude|"
    r"in summary|overall|therefore|thus|step \d+)\s*[,:.-]\s*)+"
    r"(?:based on (?:the )?(?:above|this|these|preceding|the above) (?:analysis|findings|reasoning)\s*,\s*)?",
    re.IGNORECASE,
)
_ABBREVIATIONS = ("e.g.", "i.e.", "vs.", "approx.", "dr.", "etc.", "cf.", "fig.", "no.")
#: An inline section label at the start of a line ("**Conclusion:** The diagnosis is ..."): dropped, the text stays.
_INLINE_LABEL = re.compile(
    r"^(?:(?:high[- ]level |coarse |specific |final |intermediate |differential )?(?:categori[sz]ation|"
    r"conclusion|diagnosis|answer|summary|refinement|observations?|findings|reasoning|assessment|"
    r"descriptors|family|step \d+)|final answer)\s*:\s*",
    re.IGNORECASE,
)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*)?(?:\*\*|__)?[\w /&()-]{1,60}(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*$")


@dataclass
class Normalized:
    """A reasoning text in the hierarchical form, the diagnosis it concludes, and the rules it breaks."""

    text: str
    diagnosis: list[str]
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stages: dict[str, list[str]] = field(default_factory=dict)


def _clean(text: str) -> str:
    text = re.sub(r"</?\s*think\s*>", " ", text, flags=re.IGNORECASE)
    lines = []
    for line in text.splitlines():
        if _HEADING.match(line) or (re.match(r"^\s*#{1,6}\s", line) and not re.search(r"[.!?]\s*$", line)):
            continue  # "## High-level categorization", "Refinement:": the hierarchy is rebuilt below
        line = re.sub(r"^\s*(?:#{1,6}\s+|[-*•]\s+|\d{1,2}[.)]\s+|>\s*)", "", line)
        line = re.sub(r"(\*\*|__|`)", "", line).strip()
        line = _INLINE_LABEL.sub("", line)
        lines.append(line.strip())
    return " ".join(line for line in lines if line)


def split_sentences(text: str) -> list[str]:
    """Sentences of prose; abbreviations (e.g., i.e., vs.) and decimals do not end one."""
    protected = text
    for i, abbr in enumerate(_ABBREVIATIONS):
        protected = re.sub(re.escape(abbr), f"\x00{i}\x00", protected, flags=re.IGNORECASE)
    parts = re.split(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9<])", protected)
    out = []
    for part in parts:
        for i, abbr in enumerate(_ABBREVIATIONS):
            part = part.replace(f"\x00{i}\x00", abbr)
        if part.strip():
            out.append(part.strip())
    return out


def _strip_connective(sentence: str) -> str:
    stripped = _LEADING_CONNECTIVE.sub("", sentence).strip()
    return stripped or sentence


def _lead(connective: str, sentence: str) -> str:
    body = _strip_connective(sentence)
    first = body.split(" ", 1)[0]
    if first and first not in ("I", "I'm", "I've") and not first.isupper() and first[0].isupper():
        body = body[0].lower() + body[1:]
    return f"{connective}, {body}"


def normalize_reasoning(raw: str, vocabulary: Vocabulary, *, label: str | None = None) -> Normalized:
    """The hierarchical form of ``raw`` and its violations; ``label`` is the ground truth (certified stream)."""
    sentences = split_sentences(_clean(raw))
    if not sentences:
        return Normalized("", [], ["empty text"])
    *body, final = sentences
    violations: list[str] = []
    notes: list[str] = []
    diagnosis = vocabulary.named_in(final)
    if label is not None:
        if label not in diagnosis:
            violations.append(
                f"final sentence does not name the ground truth {label!r}"
                + (f" (names {', '.join(diagnosis)})" if diagnosis else "")
            )
        concluded = [label]
    else:
        if not diagnosis:
            notes.append("the final sentence names no diagnosis of the vocabulary")
        concluded = diagnosis
    early = [s for s in body if any(d in vocabulary.named_in(s) for d in concluded)]
    if early:
        violations.append(f"the diagnosis is named before the final sentence ({len(early)} earlier sentence(s))")
    if len(body) < 2:
        violations.append(f"too little reasoning for a hierarchy ({len(body)} sentence(s) before the conclusion)")
    family_at = next((i for i, s in enumerate(body) if _FAMILY_CUES.search(s)), None)
    if family_at is None and len(body) >= 2:
        violations.append("no coarse disease-family step")
    if family_at is None:
        observed, family, refine = body[:1], [], body[1:]
    else:
        observed, family, refine = body[:family_at], [body[family_at]], body[family_at + 1:]
        if not observed:  # the family came first: the paper's order starts from what is seen
            notes.append("the reasoning starts with the disease family, not the observed features")
    parts: list[str] = []
    for connective, group in (("First", observed), ("Next", family), ("Then", refine)):
        if group:
            parts.append(" ".join([_lead(connective, group[0]), *group[1:]]))
    conclusion = _lead("Finally", final)
    conclusion = "Finally, based on the above analysis, " + conclusion[len("Finally, "):]
    text = (f"<think> {' '.join(parts)} </think> " if parts else "") + conclusion
    return Normalized(text, diagnosis, violations, notes,
                      {"observed": observed, "family": family, "refine": refine, "final": [final]})


def reason_items(
    run: RunDir | str | os.PathLike[str],
    client: LLMClient,
    stream: str,
    *,
    vocabulary: Vocabulary | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> StepSummary:
    """Write one hierarchical reasoning text per captioned item for ``stream`` (certified or regular)."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    run = run if isinstance(run, RunDir) else RunDir(run)
    vocabulary = vocabulary or run.vocabulary()
    items = run.require_items()
    captions = run.captions()
    summary = StepSummary(f"reason ({stream})", total=len(items))
    settings = {"step": "reason", "stream": stream, "prompt_version": PROMPT_VERSION, "model": client.config.model}
    with RecordLog(run.reasoning_path(stream), settings, overwrite=overwrite) as log:
        done = log.done()
        todo: list[dict[str, Any]] = []
        for item_id, item in items.items():
            tid = text_id(item_id, stream)
            if tid in done:
                summary.reused += 1
                _report(summary, log.get(tid) or {})
            elif item_id not in captions:
                summary.skip(tid, "no-caption", f"{item_id}: no caption yet (run `dermtrl data caption` first)")
            else:
                todo.append(item)
        certified = stream == "certified"

        def conversation(item: dict[str, Any]) -> list[dict[str, Any]]:
            caption = captions[item["id"]]["caption"]
            if certified:  # caption + ground truth, text only (Section 3.1)
                return [user_message(reasoning_prompt(caption, item["label"]))]
            return [user_message(reasoning_prompt(caption, None), [str(run.image_path(item))])]  # + image, no label

        def record(item: dict[str, Any], attempt: Attempt) -> dict[str, Any] | Unusable:
            norm = normalize_reasoning(attempt.text or "", vocabulary, label=item["label"] if certified else None)
            if not norm.text:
                return Unusable("empty-reasoning", f"empty reasoning after {attempt.attempts} attempt(s)")
            extra = [p for p in attempt.problems if p.startswith("retry failed")]
            return {"label": item["label"], "caption": captions[item["id"]]["caption"], "narrative": norm.text,
                    "diagnosis": norm.diagnosis, "violations": norm.violations + extra, "notes": norm.notes,
                    "raw": attempt.text, "attempts": attempt.attempts, "served_by": attempt.model}

        step = LLMStep(
            f"reason ({stream})", conversation=conversation,
            check=lambda item, text: normalize_reasoning(
                text, vocabulary, label=item["label"] if certified else None).violations,
            retry_text=lambda item, text, problems: REASONING_RETRY_INSTRUCTION.format(problems="; ".join(problems)),
            record=record, ids=lambda item: {"id": text_id(item["id"], stream), "item_id": item["id"]},
            report=_report,
        )
        run_step(step, todo, client, log, summary, batch_size=batch_size, progress=progress)
    return summary


def _report(summary: StepSummary, record: dict[str, Any]) -> None:
    for violation in record.get("violations") or []:
        summary.flag(record["id"], "form", f"{violation} (kept after {record.get('attempts', 1)} attempt(s))")
