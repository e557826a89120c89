"""The release's official protocol beside the paper's: its prompts, its judge, its file formats.

``protocol: official`` runs DermBench as the release's own scripts do, with what they lack (resume, retries,
cache, concurrency):

* candidates answer the release's candidate prompt, and the judge gets the release's judge prompt, both read
  word for word from the user's checkout (:meth:`~dermtrl.bench.release.Release.prompt`; dermtrl ships neither);
* the judge answers a JSON object ``{"scores": {six names: number}, "justification": ...}``:
  :func:`dermtrl.parsing.parse_official_answer` reads it (in prose or a code fence too), keeps the
  justification, falls back to the rule parser and re-asks once; a reasoning model's thinking is kept apart
  and never read for scores;
* the judge defaults are the paper's (DeepSeek-R1: ``deepseek-reasoner`` at DeepSeek's OpenAI-compatible URL,
  key from ``$DEEPSEEK_API_KEY``);
* files interchange with the official scripts: :func:`read_official_candidates` reads the official runner's
  candidates (``id``, ``candidate_text``, ``model``) and :func:`write_official_scores` writes judgments that
  ``scripts/summarize_scores.py`` reads unchanged.

The release renders its judge prompt with ``str.format``, which its own JSON example (literal braces) breaks;
:func:`render_judge_prompt` substitutes the two placeholders only, so the text sent is the file's text with the
two passages in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dermtrl.bench.judge import Judge, JudgeItem
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.parsing import ParsedScores, parse_official_answer

__all__ = ["OFFICIAL_JUDGE", "OFFICIAL_REMINDER", "OFFICIAL_RESPONSE_FORMAT", "PROTOCOLS", "OfficialJudge",
           "official_judge_config", "official_score_rows", "read_official_candidates", "render_judge_prompt",
           "write_official_scores"]

#: ``paper``: dermtrl's prompts and judge format (Section 3.2); ``official``: the release's own.
PROTOCOLS: tuple[str, ...] = ("paper", "official")

#: The judge the paper used (DeepSeek-R1), at the settings the release's scoring script defaults to.
OFFICIAL_JUDGE: dict[str, Any] = {
    "base_url": "https://api.deepseek.com",
    "model": "deepseek-reasoner",
    "api_key_env": "DEEPSEEK_API_KEY",
    "max_tokens": None,  # a reasoning model's thinking counts against a cap: leave it to the server
}

#: Structured output for the official answer (the release's JSON object), sent with ``--structured-output`` /
#: ``response_format: scores`` under the official protocol, for endpoints that support json_schema.
OFFICIAL_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "dermbench_official_judgment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "object",
                    "properties": {d: {"type": "number"} for d in DIMENSIONS},
                    "required": list(DIMENSIONS),
                    "additionalProperties": False,
                },
                "justification": {"type": "string"},
            },
            "required": ["scores", "justification"],
            "additionalProperties": False,
        },
    },
}

#: The follow-up turn when an official answer misses a score (dermtrl's words, not the release's).
OFFICIAL_REMINDER = (
    "Your answer did not give all six scores in a form that can be read. Reply with only the JSON object the "
    "instructions ask for: a \"scores\" object with a number from 0 to 5 for each of Accuracy, Safety, Medical "
    "Groundedness, Clinical Coverage, Reasoning Coherence and Description Precision, and a \"justification\"."
)

_SECTION_HEADER = re.compile(r"^\[[A-Z][A-Z0-9_ ]*\]$", re.MULTILINE)


def official_judge_config(**overrides: Any) -> ClientConfig:
    """The paper's judge (``deepseek-reasoner`` on DeepSeek's API, key from ``$DEEPSEEK_API_KEY``), any field
    overridden (``base_url``, ``model``, ``cache_path``, ...)."""
    return ClientConfig(**{**OFFICIAL_JUDGE, **overrides})


def _headers(template: str) -> list[str]:
    return sorted(set(_SECTION_HEADER.findall(template)), key=len, reverse=True)


def _contain(passage: str, headers: Sequence[str]) -> str:
    """``passage`` with the template's section headers (``[GOLD_STANDARD_REFERENCE]``) defused: a candidate
    cannot open a section of its own."""
    for header in headers:
        passage = re.sub(re.escape(header), "(" + header[1:-1] + ")", passage, flags=re.IGNORECASE)
    return passage


def render_judge_prompt(template: str, candidate: str, reference: str) -> str:
    """The release's judge prompt with the two passages in place (``{candidate_text}``, ``{reference_text}``),
    every other character as in the file. The candidate and reference cannot carry the template's section
    headers in (they are defused), nor placeholders (substitution is single-pass)."""
    for name in ("{candidate_text}", "{reference_text}"):
        if name not in template:
            raise ValueError(f"the official judge prompt has no {name} placeholder (is this the release's file?)")
    headers = _headers(template)
    values = {"candidate_text": _contain(candidate.strip(), headers),
              "reference_text": _contain(reference.strip(), headers)}
    return re.sub(r"\{(candidate_text|reference_text)\}", lambda m: values[m.group(1)], template)


class OfficialJudge(Judge):
    """The DermBench judge under the release's protocol: its prompt, its JSON answer, one re-ask by default."""

    def __init__(self, client: LLMClient, template: str, *, parse_retries: int = 1) -> None:
        super().__init__(client, parse_retries=parse_retries)
        render_judge_prompt(template, "", "")  # checks the placeholders now, not at the first item
        self.template = template
        self.reminder = OFFICIAL_REMINDER

    def with_order(self, order: str) -> Judge:
        if order != "candidate_first":
            raise ValueError("the order probe swaps dermtrl's prompt; the official prompt has one fixed order "
                             "(use protocol 'paper' for probes)")
        return self

    def settings(self, variant: str = "none") -> dict[str, Any]:
        digest = hashlib.sha256(self.template.encode("utf-8")).hexdigest()
        return {**super().settings(variant), "protocol": "official", "prompt_sha256": digest}

    def messages(self, item: JudgeItem) -> list[dict[str, Any]]:
        return [{"role": "user", "content": render_judge_prompt(self.template, item.candidate or "",
                                                                 item.reference or "")}]

    def read_answer(self, completion: Any) -> tuple[ParsedScores, dict[str, Any]]:
        answer = parse_official_answer(completion.text, getattr(completion, "reasoning", None))
        kept = {"justification": answer.justification, "thinking": answer.thinking or None,
                "score_source": answer.source}
        return answer.parsed, kept


def official_response_format(config: ClientConfig) -> ClientConfig:
    """``config`` with the official answer's schema where it asks for structured output (``"scores"``)."""
    if config.response_format == "scores":
        return config.replace(response_format=OFFICIAL_RESPONSE_FORMAT)
    return config


# --- interchange with the release's scripts ----------------------------------------------------------------


def read_official_candidates(path: str | os.PathLike[str]) -> dict[str, list[dict[str, Any]]]:
    """``{model: candidate records}`` from the official runner's JSONL (``id``, ``candidate_text``, ``model``;
    ``text`` is accepted for ``candidate_text``, as the release's scorer does). A bad line raises ``ValueError``
    naming the file, the line and the field; a model that answers a case twice is refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such candidates file")
    sets: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    with path.open("r", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {line_no}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            case_id = row.get("id")
            if not isinstance(case_id, str) or not case_id:
                raise ValueError(f"{path}, line {line_no}, field 'id': missing or not a string")
            text = row.get("candidate_text", row.get("text"))
            if not isinstance(text, str):
                raise ValueError(f"{path}, line {line_no}, field 'candidate_text': missing or not a string")
            model = row.get("model") or path.stem
            if not isinstance(model, str):
                raise ValueError(f"{path}, line {line_no}, field 'model': must be a string, got {model!r:.40}")
            if (model, case_id) in seen:
                raise ValueError(f"{path}, line {line_no}, field 'id': model {model!r} answers {case_id!r} twice")
            seen.add((model, case_id))
            ok = bool(text.strip())
            sets.setdefault(model, []).append({"model": model, "case_id": case_id, "text": text if ok else None,
                                               "error": None if ok else "candidate_text is empty"})
    if not sets:
        raise ValueError(f"{path}: no candidate records")
    return sets


def is_official_candidates(path: str | os.PathLike[str]) -> bool:
    """True when the file's first record has the official runner's ``id`` and ``candidate_text``."""
    try:
        with Path(path).open("r", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    return isinstance(row, dict) and "id" in row and "candidate_text" in row and "case_id" not in row
    except (OSError, ValueError):
        return False
    return False


def official_score_rows(records: Iterable[Mapping[str, Any]], judge_model: str | None = None) -> list[dict[str, Any]]:
    """Judge records as the release's scorer writes them: ``id``, ``candidate_model``, ``judge_model``,
    ``scores`` (the metrics read, by their names), ``missing_metrics``, ``judge_text``. A failed record keeps
    the scores its answer did give (``partial_scores``) and lists the rest as missing, as the scorer would."""
    rows = []
    for r in sorted(records, key=lambda r: (str(r["model"]), str(r["case_id"]))):
        scores = r.get("scores") if r.get("status") == "scored" else r.get("partial_scores")
        scores = {d: float(scores[d]) for d in DIMENSIONS if scores and scores.get(d) is not None}
        model = judge_model or (r.get("judge") or {}).get("model") or ""
        rows.append({"id": r["case_id"], "candidate_model": r["model"], "judge_model": model, "scores": scores,
                     "missing_metrics": [d for d in DIMENSIONS if d not in scores],
                     "judge_text": str(r.get("raw") or "").strip()})
    return rows


def write_official_scores(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *,
                          judge_model: str | None = None) -> Path:
    """Write :func:`official_score_rows` as JSONL (one line per judgment), for ``summarize_scores.py``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in official_score_rows(records, judge_model):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
