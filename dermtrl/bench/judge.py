"""DermBench's LLM judge (Section 3.2, Figure 3): a candidate narrative against the certified reference.

For each (model, case) the judge gets the candidate and the certified reference of the same image in
:data:`~dermtrl.prompts.JUDGE_PROMPT` and scores the six dimensions 0-5. Three safeguards keep a candidate
from steering its own score:

* **The candidate is data.** It sits between delimiters and every look-alike of a delimiter inside it is
  neutralised (:func:`dermtrl.delimiters.neutralise`: read as a model reads it, so spacing, invisible
  characters and look-alike brackets do not hide one), so it can neither close its block nor open another,
  and the instruction tells the judge not to follow instructions found inside it.
* **Scores come from the judge's own final answer.** :func:`final_answer` drops whatever the judge quotes
  (echoed delimited blocks, ``>`` block quotes, text in quotation marks) before the shared parser
  (:func:`dermtrl.parsing.parse_scores`, last field wins) reads it, so a quoted "Accuracy: 5" never counts.
* **A failed parse is retried, then recorded.** Only an answer missing a dimension is retried, up to
  ``parse_retries`` times, with :data:`~dermtrl.prompts.JUDGE_FORMAT_REMINDER` as a follow-up turn; after
  that the item is recorded as failed with the raw answer. Nothing is dropped and nothing becomes a 0.

Concurrency, HTTP retries and the response cache come from the shared :class:`~dermtrl.llm.client.LLMClient`;
records go to a resumable JSONL (:class:`~dermtrl.jsonl.RecordLog`), one per (model, case).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermtrl.bench.cases import case_rows
from dermtrl.bench.jobs import JobProgress, results_file, run_concurrently
from dermtrl.delimiters import neutralise
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import LLMClient, LLMError
from dermtrl.parsing import ParsedScores, parse_scores
from dermtrl.prompts import (
    CANDIDATE_CLOSE,
    CANDIDATE_OPEN,
    JUDGE_FORMAT_REMINDER,
    JUDGE_INSTRUCTION,
    JUDGE_INSTRUCTION_REFERENCE_FIRST,
    JUDGE_PROMPT,
    JUDGE_PROMPT_REFERENCE_FIRST,
    REFERENCE_CLOSE,
    REFERENCE_OPEN,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "ORDERS",
    "Judge",
    "JudgeItem",
    "final_answer",
    "judge_items",
    "judge_prompt",
    "neutralise",
    "read_judgment",
]

#: Where the candidate goes in the prompt: the paper's order, or reference first (the order probe).
ORDERS: tuple[str, ...] = ("candidate_first", "reference_first")
_DELIMITERS = (CANDIDATE_OPEN, CANDIDATE_CLOSE, REFERENCE_OPEN, REFERENCE_CLOSE)
_QUOTED = re.compile(r"\"[^\"\n]*\"|“[^”\n]*”|„[^“”\n]*[“”]|«[^»\n]*»")
_DIGIT, _LETTER = re.compile(r"\d"), re.compile(r"[^\W\d_]")


def judge_prompt(candidate: str, reference: str, *, order: str = "candidate_first") -> str:
    """The comparison prompt for one pair, both passages delimited and neutralised."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    template, instruction = (
        (JUDGE_PROMPT, JUDGE_INSTRUCTION)
        if order == "candidate_first"
        else (JUDGE_PROMPT_REFERENCE_FIRST, JUDGE_INSTRUCTION_REFERENCE_FIRST)
    )
    return template.format(
        candidate_open=CANDIDATE_OPEN,
        candidate=neutralise(candidate.strip()),
        candidate_close=CANDIDATE_CLOSE,
        reference_open=REFERENCE_OPEN,
        reference=neutralise(reference.strip()),
        reference_close=REFERENCE_CLOSE,
        instruction=instruction,
    )


def final_answer(text: str) -> str:
    """The judge's own words: ``text`` without what it quotes.

    Everything up to the last delimiter it echoes is a copy of the prompt; ``>`` block-quote lines are
    citations, and so is a quotation that holds a name and a number (``"Safety: 5"``), which is emptied. What
    remains is what the judge itself asserts (a JSON answer keeps its keys and values).
    """
    cut = max((text.rfind(d) + len(d) for d in _DELIMITERS if d in text), default=0)
    lines = [line for line in text[cut:].split("\n") if not line.lstrip().startswith(">")]
    return _QUOTED.sub(_empty_quoted_score, "\n".join(lines))


def _empty_quoted_score(m: re.Match[str]) -> str:
    """Empty a quotation holding words and a number ("Accuracy: 5"); JSON keys and values ("Accuracy", "4") stay."""
    quoted = m.group()
    return quoted[0] + quoted[-1] if _DIGIT.search(quoted) and _LETTER.search(quoted) else quoted


def read_judgment(text: str) -> ParsedScores:
    """The six scores of a judge answer, read from its final answer only (see :func:`final_answer`)."""
    parsed = parse_scores(final_answer(text))
    return ParsedScores(parsed.scores, parsed.sources, text)


@dataclass(frozen=True)
class JudgeItem:
    """One candidate to judge. ``error`` set means it cannot be judged (it is recorded as failed)."""

    model: str
    case_id: str
    candidate: str | None
    reference: str | None
    category: str | None = None
    expert_scores: Mapping[str, float] | None = None
    error: str | None = None
    skin_tone: str | None = None  # when the dataset has it: the leaderboards slice by it


def judge_items(
    cases: Dataset | Sequence[Mapping[str, Any]], candidates: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[JudgeItem]:
    """Pair every candidate record with its case's certified reference, category and expert scores.

    ``candidates`` maps a model name to its records (``case_id``, ``text``, optional ``error`` and
    ``expert_scores``), as :func:`dermtrl.bench.generate.read_candidates` returns them. A case without a
    reference, a candidate whose generation failed, or one whose case is not in the dataset becomes an item
    with an ``error``: recorded as failed, while the rest proceeds.
    """
    rows = {r["case_id"]: r for r in case_rows(cases, ("reference", "category", "expert_scores", "skin_tone"),
                                                 required=("reference",))}
    items: list[JudgeItem] = []
    for model, records in candidates.items():
        seen: set[str] = set()
        for i, record in enumerate(records):
            if "case_id" not in record:
                raise ValueError(f"candidates of {model!r}, record {i}: no case_id")
            case_id = str(record["case_id"])
            if case_id in seen:
                raise ValueError(f"candidates of {model!r}: case {case_id!r} appears twice")
            seen.add(case_id)
            row = rows.get(case_id)
            expert = record.get("expert_scores") or None
            error = None
            text = record.get("text")
            reference = row.get("reference") if row is not None else None
            if row is None:
                error = f"unknown case: case {case_id!r} is not in the dataset"
            elif record.get("error"):
                error = f"no candidate: {record['error']}"
            elif not isinstance(text, str) or not text.strip():
                error = "no candidate: the candidate text is empty"
            elif not isinstance(reference, str) or not reference.strip():
                error = f"missing reference: case {case_id!r} has no certified reference text"
            items.append(JudgeItem(
                model=str(model),
                case_id=case_id,
                candidate=text if isinstance(text, str) else None,
                reference=reference if isinstance(reference, str) else None,
                category=row.get("category") if row is not None else None,
                expert_scores=dict(expert) if expert else None,
                error=error,
                skin_tone=_text_or_none(row.get("skin_tone")) if row is not None else None,
            ))
    return items


def _text_or_none(value: Any) -> str | None:
    return None if value is None or (isinstance(value, str) and not value.strip()) else str(value)


def _tally(answers: Sequence[Mapping[str, Any]], *, failed_call: bool = False) -> dict[str, Any]:
    """What a record says about the questions asked: ``attempts`` (answers, plus a call that failed),
    ``requests`` (those sent to the judge; the rest came from the response cache) and every ``answers``."""
    sent = sum(1 for a in answers if not a["cached"]) + int(failed_call)
    return {"attempts": len(answers) + int(failed_call), "requests": sent, "answers": list(answers)}


def _requests_text(tally: Mapping[str, Any]) -> str:
    cached = tally["attempts"] - tally["requests"]
    return f"{tally['requests']} sent to the judge" + (f", {cached} answered from the cache" if cached else "")


class Judge:
    """The DermBench judge on one client: score items, each into one record (scored or failed, with why)."""

    def __init__(self, client: LLMClient, *, parse_retries: int = 2, order: str = "candidate_first") -> None:
        if not isinstance(parse_retries, int) or isinstance(parse_retries, bool) or parse_retries < 0:
            raise ValueError(f"parse_retries must be an integer >= 0, got {parse_retries!r}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.client = client
        self.parse_retries = parse_retries
        self.order = order

    #: The follow-up turn of a re-ask (an answer that missed a score).
    reminder: str = JUDGE_FORMAT_REMINDER

    def read_answer(self, completion: Any) -> tuple[ParsedScores, dict[str, Any]]:
        """The scores of one answer, and what else its record keeps (nothing for the paper's protocol)."""
        return read_judgment(completion.text), {}

    def with_order(self, order: str) -> Judge:
        return Judge(self.client, parse_retries=self.parse_retries, order=order)

    def settings(self, variant: str = "none") -> dict[str, Any]:
        """What makes two judgments comparable; stored in every record and checked when resuming."""
        cfg = self.client.config
        return {
            "model": cfg.model,
            "prompt_version": cfg.prompt_version,
            "temperature": float(cfg.temperature),
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "extra_body": cfg.extra_body,
            "response_format": cfg.response_format,
            "order": self.order,
            "parse_retries": self.parse_retries,
            "variant": variant,
        }

    def messages(self, item: JudgeItem) -> list[dict[str, Any]]:
        """The conversation sent for ``item`` (text only: the judge compares two texts, as in the paper)."""
        return [{"role": "user", "content": judge_prompt(item.candidate or "", item.reference or "",
                                                          order=self.order)}]

    def score(self, item: JudgeItem) -> dict[str, Any]:
        """Judge one item; never raises for a failed call or an unreadable answer (the record says why)."""
        record: dict[str, Any] = {
            "model": item.model,
            "case_id": item.case_id,
            "category": item.category,
            "status": "failed",
            "scores": None,
            "error": None,
            "attempts": 0,
            "requests": 0,
            "raw": None,
            "expert_scores": dict(item.expert_scores) if item.expert_scores else None,
        }
        if item.skin_tone is not None:
            record["skin_tone"] = item.skin_tone
        if item.error is not None:
            return {**record, "error": item.error}
        messages = self.messages(item)
        answers: list[dict[str, Any]] = []  # every answer, in order: text, finish reason, from the cache or not
        parsed: ParsedScores | None = None
        kept: dict[str, Any] = {}
        for _ in range(self.parse_retries + 1):
            try:
                completion = self.client.complete(messages)
            except LLMError as exc:
                return {**record, **_tally(answers, failed_call=True), "error": f"judge call failed: {exc}",
                        "raw": answers[-1]["text"] if answers else None}
            answers.append({"text": completion.text, "finish_reason": completion.finish_reason,
                            "cached": completion.cached})
            parsed, kept = self.read_answer(completion)
            if parsed.complete:
                return {**record, **_tally(answers), **kept, "status": "scored", "raw": completion.text,
                        "scores": {d: parsed.scores[d] for d in DIMENSIONS}}
            # The re-ask continues the whole conversation, so each one is a new question: re-sending an earlier
            # one (a model may give the same answer twice) would be answered by the response cache, not the model.
            messages = [*messages, {"role": "assistant", "content": completion.text},
                        {"role": "user", "content": self.reminder}]
        assert parsed is not None
        tally = _tally(answers)
        cut = any(a["finish_reason"] == "length" for a in answers)
        why = (f"answer cut at max_tokens ({self.client.config.max_tokens}): raise --max-tokens; " if cut else "")
        return {
            **record,
            **tally,
            **kept,
            "raw": answers[-1]["text"],
            "partial_scores": dict(parsed.scores),
            "error": f"unparseable: {why}the judge's final answer lacked {', '.join(parsed.missing)} after "
                     f"{tally['attempts']} attempt(s) ({_requests_text(tally)})",
        }

    def run(
        self,
        items: Sequence[JudgeItem],
        out: str | Path,
        *,
        variant: str = "none",
        overwrite: bool = False,
        retry_failed: bool = False,
        progress: bool = True,
        label: str = "DermBench judge",
    ) -> list[dict[str, Any]]:
        """Judge every item not yet in ``out`` (JSONL), writing each record as it finishes; all records.

        Resumes where an earlier run stopped; refuses a file made with other judge settings. Failed records
        are final unless ``retry_failed`` (then failed *calls*, and items that had no candidate, are tried
        again; parse failures would get the same cached answers, so they stay).
        """

        def redo(record: dict[str, Any]) -> bool:  # a failed call, or a candidate that may exist by now
            return retry_failed and str(record.get("error") or "").startswith(("judge call failed", "no candidate"))

        with results_file(out, "judge", self.settings(variant),
                         overwrite=overwrite, redo=redo) as results:
            keys = [(i.model, i.case_id) for i in items]
            if len(set(keys)) != len(keys):
                raise ValueError("items repeat a (model, case_id) pair")
            todo = [i for i in items if (i.model, i.case_id) not in results]
            wanted = set(keys)
            failed = sum(1 for r in results.records.values() if (r["model"], r["case_id"]) in wanted and r.get("error"))
            bar = JobProgress(label, len(items), len(items) - len(todo), failed=failed, usage=self.client.usage,
                              enabled=progress)
            run_concurrently(
                todo, self.score, results, bar, workers=self.client.config.max_concurrency,
                on_error=lambda item, exc: self.score(
                    replace(item, error=self.client.redact(f"{type(exc).__name__}: {exc}"))
                ),
            )
            return [r for r in results.records.values() if (r["model"], r["case_id"]) in wanted]
