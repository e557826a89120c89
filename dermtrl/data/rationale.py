"""Evaluation rationales (Section 3.1): a justification per dimension from image + narrative + expert scores.

The model gets the paper's rationale instruction (six titled sections, score restated, evidence, one suggestion,
no new diagnosis) through :func:`dermtrl.prompts.rationale_prompt`. Its restated scores are read back with the
project's parser (:func:`dermtrl.parsing.parse_scores`); an answer whose scores differ from the given ones, or
miss one, is retried once (:data:`dermtrl.prompts.RATIONALE_RETRY_INSTRUCTION`), then kept and flagged. A
rationale naming a vocabulary diagnosis the narrative does not name is flagged as proposing a new diagnosis.
The record also holds y*, the evaluation text in Figure 4's label format (:func:`dermtrl.prompts.format_evaluation`),
which DermEval is trained to produce.

A rationale belongs to one (narrative, scores) pair: when a review changes them (a revision, another rater), the
stale rationale is redone on the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from dermtrl.data.retry import Attempt, LLMStep, Unusable, run_step
from dermtrl.data.reviews import review_status
from dermtrl.data.run import RunDir
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.dimensions import DIMENSIONS
from dermtrl.jsonl import RecordLog
from dermtrl.llm.client import LLMClient, user_message
from dermtrl.parsing import parse_scores
from dermtrl.prompts import PROMPT_VERSION, RATIONALE_RETRY_INSTRUCTION, format_evaluation, rationale_prompt

__all__ = ["SCORE_TOLERANCE", "rationale_items", "score_mismatches"]

#: Restated scores may be rounded to two decimals (a mean of raters like 4.6667 restated as 4.67).
SCORE_TOLERANCE = 0.01


def score_mismatches(text: str, scores: dict[str, float]) -> list[str]:
    """Dimensions whose score, parsed back from ``text``, is missing or differs from ``scores``."""
    parsed = parse_scores(text)
    problems = []
    for dim in DIMENSIONS:
        if dim not in parsed.scores:
            problems.append(f"{dim} not restated")
        elif abs(parsed.scores[dim] - scores[dim]) > SCORE_TOLERANCE:
            problems.append(f"{dim} restated as {parsed.scores[dim]:g}, given {scores[dim]:g}")
    return problems


def _input_hash(narrative: str, scores: dict[str, float]) -> str:
    payload = json.dumps([narrative, [round(scores[d], 6) for d in DIMENSIONS]], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def rationale_items(
    run: RunDir | str | os.PathLike[str],
    client: LLMClient,
    *,
    vocabulary: Vocabulary | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> StepSummary:
    """Elicit a rationale for every scored (and, in the certified stream, certified) text that lacks one."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    vocabulary = vocabulary or run.vocabulary()
    items = run.require_items()
    texts = run.all_texts()
    statuses = review_status(run)
    summary = StepSummary("rationale", total=len(statuses))
    settings = {"step": "rationale", "prompt_version": PROMPT_VERSION, "model": client.config.model}
    with RecordLog(run.rationales_path, settings, overwrite=overwrite) as log:
        done = log.done()
        todo: list[tuple[str, Any, dict[str, Any]]] = []
        for tid, st in statuses.items():
            if not st.final:
                summary.skip(tid, st.status, f"{tid}: {st.status} ({st.note})")
                continue
            assert st.scores is not None
            key = _input_hash(st.narrative, st.scores)
            record = log.get(tid)
            if tid in done and record is not None and record.get("input_hash") == key:
                summary.reused += 1
                _report(summary, record)
                continue
            todo.append((tid, st, items[texts[tid]["item_id"]]))

        def retry_text(entry: tuple[str, Any, dict[str, Any]], text: str, problems: list[str]) -> str:
            scores = "\n".join(f"{d}: {entry[1].scores[d]:g}" for d in DIMENSIONS)
            return RATIONALE_RETRY_INSTRUCTION.format(problems="; ".join(problems), scores=scores)

        def record(entry: tuple[str, Any, dict[str, Any]], attempt: Attempt) -> dict[str, Any] | Unusable:
            _, st, _ = entry
            rationale = (attempt.text or "").strip()
            if not rationale:
                return Unusable("empty-rationale", f"empty rationale after {attempt.attempts} attempt(s)")
            flags = [f"score mismatch: {p}" for p in attempt.problems]
            new = [d for d in vocabulary.named_in(rationale) if d not in vocabulary.named_in(st.narrative)]
            if new:
                flags.append(f"proposes a diagnosis the narrative does not name: {', '.join(new)}")
            return {"stream": st.stream, "status": st.status, "narrative": st.narrative, "scores": st.scores,
                    "rationale": rationale, "evaluation": format_evaluation(rationale, st.scores),
                    "parsed_scores": parse_scores(rationale).scores, "flags": flags,
                    "score_mismatch": bool(attempt.problems), "attempts": attempt.attempts,
                    "input_hash": _input_hash(st.narrative, st.scores), "served_by": attempt.model}

        step = LLMStep(
            "rationale",
            conversation=lambda entry: [user_message(rationale_prompt(entry[1].narrative, entry[1].scores),
                                                     [str(run.image_path(entry[2]))])],
            check=lambda entry, text: score_mismatches(text, entry[1].scores),
            retry_text=retry_text, record=record, ids=lambda entry: {"id": entry[0]}, report=_report,
        )
        run_step(step, todo, client, log, summary, batch_size=batch_size, progress=progress)
    return summary


def _report(summary: StepSummary, record: dict[str, Any]) -> None:
    for flag in record.get("flags") or []:
        summary.flag(record["id"], "rationale", f"{flag} (kept after {record.get('attempts', 1)} attempt(s))")
