"""Read the six scores out of whatever an evaluator, a judge, or a rationale writer produced.

One rule-based parser serves DermBench's LLM judge, DermEval's generated evaluations (Figure 4's label
format) and the Section 3.1 rationales, so that every score in the project is read the same way. Two rules
matter most:

* **Last field wins.** When a dimension is given several times (a judge revising itself, a final score block
  after the discussion) the last structured occurrence counts. Structured forms (``Name: score`` fields,
  JSON, markdown tables) are read everywhere; titled sections and prose restatements only fill dimensions
  that no structured field mentioned.
* **Echo safe.** A score must be tied to a dimension name by a field separator, a table cell, a JSON key, a
  section title, or a scoring verb in the same sentence; ranges ("from 0 to 5", "0-5") are never scores. An
  echoed prompt therefore yields nothing (prometheus-eval once shipped a regex that matched its own prompt
  and scored everything 5).

Out-of-range values (``Accuracy: 7``, ``12/10``, ``-1``) and ``N/A``/``missing`` make a dimension missing;
nothing is clamped. :func:`parse_scores_with_llm` asks an LLM (Figure 4's parser prompt) only for what the
rules could not read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from dermtrl.dimensions import ALIASES, DIMENSIONS, Scores, normalize_name, valid_score
from dermtrl.prompts import parser_prompt

__all__ = ["OfficialAnswer", "ParsedScores", "parse_official_answer", "parse_scores", "parse_scores_with_llm",
           "split_thinking"]


@dataclass(frozen=True)
class ParsedScores:
    """Scores found in ``raw`` (canonical name -> value on 0-5, only dimensions found), how each was found."""

    scores: dict[str, float]
    sources: dict[str, str]
    raw: str
    llm_error: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(d for d in DIMENSIONS if d not in self.scores)

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_scores(self) -> Scores:
        return Scores(dict(self.scores))

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": {d: self.scores.get(d) for d in DIMENSIONS},
            "missing": list(self.missing),
            "sources": {d: self.sources[d] for d in DIMENSIONS if d in self.sources},
            "llm_error": self.llm_error,
        }


# --- regular expressions (compiled once) --------------------------------------------------------------

#: Patterns are written in lower case and run on ``text.lower()``, computed once per call: two to three times
#: faster than ``re.IGNORECASE`` on Python's regex engine.
_FLAGS = re.VERBOSE

#: Words that may be spelled between the parts of a multi-word dimension name ("Safety/Harmfulness").
_NAME_JOIN = r"(?:[ \t]*(?:&|\+|/|-|–|—|\band\b)[ \t]*|[ \t_]+)"


def _alias_pattern(aliases: list[str]) -> str:
    """One regex for many names, factored as a trie (much faster than a flat alternation) and greedy, so
    the longest name wins ("safety harmfulness" before "safety")."""
    trie: dict[str, Any] = {}
    for alias in aliases:
        node = trie
        for ch in alias:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        branches = [
            (_NAME_JOIN if ch == " " else re.escape(ch)) + emit(child) for ch, child in node.items() if ch
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return "(?:" + emit(trie) + ")"


_ALL_NAMES = _alias_pattern(list(ALIASES))
_FIRST_LETTERS = "".join(sorted({a[0] for a in ALIASES}))
#: Generic words that name a dimension in a field or a title but are too common to trust in free prose.
_WEAK_ALIASES = frozenset({"acc", "safe", "harm", "reason", "cover", "desc", "description", "precision"})
_STRONG_NAMES = _alias_pattern([a for a in ALIASES if a not in _WEAK_ALIASES])

#: Optional markdown emphasis with the spaces after it. Every optional token starts with a non-space
#: character and eats its own trailing spaces, so no two ``[ \t]*`` can compete for the same run of spaces
#: (adjacent ones backtrack polynomially on long runs: a parser of model output must stay linear).
_M = r"(?:[*_]{1,2}[ \t]*)?"
#: A score value: number, optional denominator (/5, /10, /100, "out of"), optional %, never part of a range
#: ("0-5", "0 to 5") and never a measurement ("3 mm"). Lookaheads start with a character class so that the
#: common case (a line end after the number) fails them in one step.
_VALUE = r"""
    (?P<neg>[-−](?=\d))?
    (?<![\d.])(?P<num>\d{1,3}(?:\.\d+)?)(?![\d]|,\d)      # "4,5" is ambiguous: not a score
    [*_]{0,2}
    (?:
        [ \t]*(?:/|\(?out[ \t]+of)[ \t]*[*_]{0,2}(?P<den>\d{1,3}(?:\.0+)?)(?![\d.]\d)
      | [ \t]*(?P<pct>%)
    )?
    (?![ \t]*(?:[-–—]|to\b|and\b)[ \t]*\d)
    (?![ \t]*(?=[cdhlmtwxy])(?:mm|cm|years?|yrs?|months?|weeks?|days?|hours?|lesions?|times|x\b|mg|ml))
"""
#: In prose the window before a number may hold "from" or "between": "a score from 0 to 5" is not a score.
_PVALUE = r"(?<!from\ )(?<!between\ )" + _VALUE
#: Explicit "no score" answers; they must fill the rest of the field.
_NA = r"""
    (?P<na>n[ \t]*/[ \t]*a|missing|not[ \t]+(?:applicable|available|scored|rated|provided|stated|given)
        |cannot[ \t]+be[ \t]+(?:determined|assessed|evaluated|scored)|unknown|none)
    (?=[ \t*_"'`)\]]*(?:[\n.,;|}]|$))
"""
_SCORE_WORD = r"(?:score|rating|grade)"

# Group order matters: _fields() unpacks m.groups() as (name, neg, num, den, pct, na).
_FIELD_RE = re.compile(
    rf"""
    [\n,;:|{{(\[.!?]                        # a field starts a line, follows , ; : | {{ ( [ or a sentence
    (?:
        (?<=\n)[ \t>]*(?:\#{{1,6}}[ \t]*)?{_M}
            (?:(?:[-*•+◦▪‣]|\(?\d{{1,2}}[.)]|\([a-h]\)|[a-h]\))[ \t]+)?    # list marker: never a score
      | (?<=[,;:|{{(\[])[ \t]*
      | (?<=[.!?])[ \t]+
    )
    (?=[*_"'`{_FIRST_LETTERS}])                 # cheap reject: most starters are not followed by a name
    {_M}["'`]?
    (?P<name>{_ALL_NAMES})(?!\w)
    ["'`]?[ \t]*{_M}
    (?:{_SCORE_WORD}(?!\w)[ \t]*)?{_M}           # "Accuracy score: 4"
    (?:
        (?:\([^()\n]{{0,40}}\)[ \t]*)?{_M}         # "Accuracy (on a 0-5 scale): 4"
        [:=|\-–—][ \t]*{_M}                       # the field separator
        (?:(?:{_SCORE_WORD}|rated)(?!\w)[ \t]*(?:(?:[:=]|of\b|is\b)[ \t]*)?{_M})?
        (?:[\["'(][ \t]*)?
      | [\[(][ \t]*(?:{_SCORE_WORD}(?!\w)[ \t]*(?:[:=][ \t]*)?)?      # "Safety (5)", "Accuracy (Score: 4/5)"
    )
    (?:{_VALUE}|{_NA})
    """,
    _FLAGS,
)

#: One line of a plain score block ("Safety Harmfulness: 5.0"), the shape of Figure 4's label text.
_PLAIN_LINE_RE = re.compile(
    rf"[ \t]*(?P<name>{_ALL_NAMES})[ \t]*:[ \t]*(?P<num>\d{{1,3}}(?:\.\d+)?)[ \t]*", _FLAGS
)
_TAIL_CHARS = 1024

_VALUE_ONLY_RE = re.compile(
    rf"""[ \t*_`"']*(?:{_VALUE}|{_NA})[ \t*_`"']*(?:[(\-–—:,;.].*)?$""", _FLAGS | re.DOTALL
)

_TABLE_SEP_CELL = re.compile(r"^\s*:?-{2,}:?\s*$")
_SCORE_HEADER = re.compile(r"\b(?:score|rating|grade|points?|value|mark)s?\b", re.IGNORECASE)

_SECTION_HEAD_RE = re.compile(
    rf"""
    ^[ \t>]*(?:\#{{1,6}}[ \t]*)?{_M}(?:(?:\d{{1,2}}[.)]|[-*•])[ \t]*)?{_M}
    (?P<name>{_ALL_NAMES})(?!\w)
    [ \t]*{_M}(?::[ \t]*)?{_M}$
    """,
    _FLAGS | re.MULTILINE,
)
_VERB = (
    r"(?:scor(?:e|es|ed|ing)|rat(?:e|es|ed|ing)|grade[sd]?|give[sn]?|gave|giving"
    r"|assign(?:s|ed|ing)?|award(?:s|ed|ing)?)"
)
#: Inside a titled section, the restated score: "Score: 4", "The score is 4/5", or a line that is only "4/5";
#: failing that, a scoring verb ("I rate this 4"). The first one in the section counts (later mentions are
#: typically the suggestion: "a score of 5 would need ...").
_SECTION_SCORE_RE = re.compile(
    rf"""
    \b(?:{_SCORE_WORD}|rated)\b[^.!?\n\d]{{0,30}}?{_PVALUE}
    | ^[ \t*_]*{_VALUE.replace("(?P<", "(?P<l")}[*_.]*[ \t]*$
    """,
    _FLAGS | re.MULTILINE,
)
_SECTION_VERB_RE = re.compile(rf"\b(?:{_VERB}|deserves?|earns?)\b[^.!?\n\d]{{0,30}}?{_PVALUE}", _FLAGS)

# Prose is read from each mention of a (strong) dimension name, never past the next mention: the value after
# the name with a scoring verb on either side or an explicit scale, or "a score of 4 for <name>" before it.
_NAME_SCAN_RE = re.compile(rf"(?P<name>{_STRONG_NAMES})(?!\w)", _FLAGS)
_AFTER_NAME_VERB_RE = re.compile(
    rf"""[^.!?\n\d]{{0,60}}?\b(?:{_VERB}|deserves?|earns?|gets?|merits?)\b[^.!?\n\d]{{0,30}}?{_PVALUE}""",
    _FLAGS,
)
_AFTER_NAME_RE = re.compile(rf"[^.!?\n\d]{{0,25}}?{_PVALUE}", _FLAGS)
_VERB_RE = re.compile(rf"\b{_VERB}\b", _FLAGS)
_CLAUSE_BREAK_RE = re.compile(r"[.!?\n\d]")
_BEFORE_NAME_RE = re.compile(
    rf"""\b(?:{_SCORE_WORD}|mark)[ \t]+of[ \t]+{_PVALUE}
    [^.!?\n\d]{{0,15}}?\b(?:for|on|in)\b[^.!?\n\d]{{0,12}}?\Z""",
    _FLAGS,
)

_JSON_NAME_KEYS = ("dimension", "name", "metric", "criterion", "criteria", "category", "aspect")
_JSON_SCORE_KEYS = ("score", "rating", "value", "grade", "points")
_DENOMINATORS = (5.0, 10.0, 100.0)
_MAX_JSON_ATTEMPTS = 64
_MAX_JSON_DEPTH = 8

_NAME_CACHE: dict[str, Any] = {}  # matched spelling -> canonical dimension (or None)
_ABSENT = object()  # a JSON value or table cell that is not a score at all (skip; do not mark missing)


# --- helpers ------------------------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _canon(name: str) -> str | None:
    """Canonical dimension for a spelling, also for keys such as ``accuracy_score``; ``None`` if unknown."""
    key = normalize_name(name)
    if key in ALIASES:
        return ALIASES[key]
    trimmed = re.sub(r"\b(?:scores?|ratings?|grades?|points?)\b", " ", key).split()
    return ALIASES.get(" ".join(trimmed))


def _value_from_match(m: re.Match[str], prefix: str = "") -> float | None:
    """The 0-5 value of a matched number, or ``None`` (missing: N/A, out of range, bad denominator)."""
    num = m.group(prefix + "num")
    if num is None:  # an explicit N/A
        return None
    if m.group(prefix + "neg"):
        return None
    value = float(num)
    den = m.group(prefix + "den")
    if den is not None:
        d = float(den)
        if d not in _DENOMINATORS or value > d:
            return None
        value = value if d == 5.0 else round(value * 5.0 / d, 6)
    elif m.group(prefix + "pct"):
        if value > 100.0:
            return None
        value = round(value * 5.0 / 100.0, 6)
    return value if valid_score(value) else None


def _cell_value(text: str) -> object:
    """A table cell or JSON string read as a score: float, ``None`` (explicit missing) or ``_ABSENT``."""
    m = _VALUE_ONLY_RE.match(text.strip())  # the whole cell must be the value
    if m is None:
        return _ABSENT
    return _value_from_match(m)


# --- strategies ---------------------------------------------------------------------------------------
# Each adds (position, value or None, source) per dimension to ``found``; a later position replaces an earlier
# one, so the last occurrence wins. Positions are offsets into "\n" + text.

_Found = dict[str, tuple[int, Any, str]]


def _put(found: _Found, dim: str, pos: int, value: float | None, source: str) -> None:
    old = found.get(dim)
    if old is None or pos >= old[0]:
        found[dim] = (pos, value, source)


def _fields(text: str, found: _Found) -> None:
    # The hot path (every Figure 4 evaluation goes through here): inlined, one group() call per match.
    for m in _FIELD_RE.finditer(text):
        name, neg, num, den, pct, _na = m.groups()
        dim = _NAME_CACHE.get(name, _ABSENT)
        if dim is _ABSENT:
            dim = _canon(name)
            if len(_NAME_CACHE) < 4096:
                _NAME_CACHE[name] = dim
        if dim is None:
            continue
        if num is None or neg:
            value = None
        elif den is None and pct is None:
            value = float(num)
            if value > 5.0:
                value = None
        else:
            value = _value_from_match(m)
        found[dim] = (m.start(1), value, "field")  # in text order: the last field wins


def _json_value(v: object, depth: int) -> object:
    if isinstance(v, bool):
        return _ABSENT
    if isinstance(v, (int, float)):
        return float(v) if -1 < v < 6 and valid_score(float(v)) else None  # no float() of a 400-digit int
    if isinstance(v, str):
        return _cell_value(v)
    if v is None:
        return None
    if isinstance(v, dict) and depth < _MAX_JSON_DEPTH:
        for k, sub in v.items():
            if isinstance(k, str) and k.strip().lower() in _JSON_SCORE_KEYS:
                return _json_value(sub, depth + 1)
    return _ABSENT


def _walk_json(obj: object, out: dict[str, float | None], depth: int) -> None:
    if depth > _MAX_JSON_DEPTH:
        return
    if isinstance(obj, list):
        for item in obj:
            _walk_json(item, out, depth + 1)
        return
    if not isinstance(obj, dict):
        return
    # [{"dimension": "Accuracy", "score": 4}, ...]
    named = None
    for k, v in obj.items():
        if isinstance(k, str) and isinstance(v, str) and k.strip().lower() in _JSON_NAME_KEYS:
            named = _canon(v)
            if named is not None:
                break
    if named is not None:
        value = _json_value(obj, depth)
        if value is not _ABSENT:
            out.pop(named, None)
            out[named] = value  # type: ignore[assignment]
            return
    for k, v in obj.items():
        dim = _canon(k) if isinstance(k, str) else None
        if dim is not None:
            value = _json_value(v, depth)
            if value is not _ABSENT:
                out.pop(dim, None)
                out[dim] = value  # type: ignore[assignment]
                continue
        if isinstance(v, (dict, list)):
            _walk_json(v, out, depth + 1)


def _json(text: str, found: _Found) -> None:
    decoder = json.JSONDecoder()
    attempts = 0
    i = text.find("{")
    while i != -1 and attempts < _MAX_JSON_ATTEMPTS:
        attempts += 1
        try:
            obj, end = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            i = text.find("{", i + 1)
            continue
        out: dict[str, float | None] = {}
        _walk_json(obj, out, 0)
        for dim, value in out.items():
            _put(found, dim, end, value, "json")
        i = text.find("{", end)


def _split_row(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip() for c in s.split("|")]


def _table_block(rows: list[tuple[int, list[str]]], found: _Found) -> None:
    rows = [(end, cells) for end, cells in rows if not all(_TABLE_SEP_CELL.match(c) or not c for c in cells)]
    if not rows:
        return
    header = rows[0][1]
    header_dims = [_canon(c) for c in header]
    if sum(d is not None for d in header_dims) >= 2:  # dimensions are the columns
        for end, cells in rows[1:]:
            for dim, cell in zip(header_dims, cells, strict=False):
                if dim is not None:
                    value = _cell_value(cell)
                    if value is not _ABSENT:
                        _put(found, dim, end, value, "table")  # type: ignore[arg-type]
        return
    score_col = next((i for i, c in enumerate(header) if _SCORE_HEADER.search(c) and _canon(c) is None), None)
    for end, cells in rows:
        for i, cell in enumerate(cells):
            dim = _canon(cell)
            if dim is None:
                continue
            if score_col is not None and score_col != i and score_col < len(cells):
                value = _cell_value(cells[score_col])
            else:
                value = next((v for v in map(_cell_value, cells[i + 1 :]) if v is not _ABSENT), _ABSENT)
            if value is not _ABSENT:
                _put(found, dim, end, value, "table")  # type: ignore[arg-type]
            break


def _tables(text: str, found: _Found) -> None:
    block: list[tuple[int, list[str]]] = []
    pos = 0
    for line in text.split("\n"):
        end = pos + len(line)
        if "|" in line and line.strip():
            block.append((end, _split_row(line)))
        else:
            if len(block) >= 2:
                _table_block(block, found)
            block = []
        pos = end + 1
    if len(block) >= 2:
        _table_block(block, found)


def _sections(text: str, found: _Found, wanted: set[str]) -> None:
    heads = [(m, _canon(m.group("name"))) for m in _SECTION_HEAD_RE.finditer(text)]
    for k, (m, dim) in enumerate(heads):
        if dim is None or dim not in wanted:
            continue
        stop = heads[k + 1][0].start() if k + 1 < len(heads) else len(text)
        s = _SECTION_SCORE_RE.search(text, m.end(), stop) or _SECTION_VERB_RE.search(text, m.end(), stop)
        if s is None:
            continue
        prefix = "" if s.group("num") is not None else "l"
        _put(found, dim, s.start(), _value_from_match(s, prefix), "section")


def _prose(text: str, found: _Found, wanted: set[str]) -> None:
    names = []
    for m in _NAME_SCAN_RE.finditer(text):
        start = m.start()
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue  # inside a word: "inaccuracy"
        names.append((start, m.end(), _canon(m.group("name"))))
    for k, (start, end, dim) in enumerate(names):
        if dim is None or dim not in wanted:
            continue
        lo = names[k - 1][1] if k else 0
        hi = names[k + 1][0] if k + 1 < len(names) else len(text)
        # "The accuracy score is 3.", "Safety: I give this a 5"
        m = _AFTER_NAME_VERB_RE.match(text, end, hi)
        if m is None:
            # "I would rate Accuracy at 4 out of 5", "... and Accuracy 4/5"
            m = _AFTER_NAME_RE.match(text, end, hi)
            if m is not None and m.group("den") is None and m.group("pct") is None:
                verbs = list(_VERB_RE.finditer(text, max(lo, start - 40), start))
                if not verbs or _CLAUSE_BREAK_RE.search(text, verbs[-1].end(), start):
                    m = None  # no scoring verb earlier in the same clause
        if m is None:
            # "a score of 4 for accuracy"
            m = _BEFORE_NAME_RE.search(text, max(lo, start - 80), start)
        if m is not None:
            _put(found, dim, start, _value_from_match(m), "prose")


# --- public API ---------------------------------------------------------------------------------------


def _plain_tail_block(text: str) -> dict[str, float] | None:
    """Fast path: the six scores when ``text`` ends with six plain ``Name: number`` lines naming six different
    dimensions (Figure 4's label format, most evaluator and judge answers), else ``None``.

    Exactly what the full parser returns for such a text: the block is the last structured content, so under
    last-wins nothing before it can matter, and every line is a field the full field regex reads the same way.
    """
    tail = text[-_TAIL_CHARS:].rstrip().lower()
    if "\r" in tail:
        tail = tail.replace("\r\n", "\n")
    lines = tail.rsplit("\n", 6)
    if len(lines) == 7:
        del lines[0]
    elif len(lines) != 6 or len(text) > _TAIL_CHARS:
        return None
    block: dict[str, float] = {}
    for line in lines:
        m = _PLAIN_LINE_RE.fullmatch(line)
        if m is None:
            return None
        name, num = m.groups()
        dim = _NAME_CACHE.get(name, _ABSENT)
        if dim is _ABSENT:
            dim = _canon(name)
        value = float(num)
        if dim is None or dim in block or value > 5.0:
            return None
        block[dim] = value
    return {d: block[d] for d in DIMENSIONS}


def parse_scores(text: str) -> ParsedScores:
    """Rule-based scores from ``text``; never raises, never returns a value outside [0, 5]."""
    if not isinstance(text, str):
        return ParsedScores({}, {}, "")
    try:
        block = _plain_tail_block(text)
    except Exception:  # noqa: BLE001
        block = None
    if block is not None:
        return ParsedScores(block, dict.fromkeys(block, "field"), text)
    return _parse_full(text)


def _parse_full(text: str) -> ParsedScores:
    t = "\n" + text.lower()
    if "\r" in t:
        t = t.replace("\r\n", "\n").replace("\r", "\n")
    found: _Found = {}
    try:
        _fields(t, found)  # fast path: the Figure 4 label format and most judge answers end here
    except Exception:  # noqa: BLE001 - a parser for untrusted model output must not raise
        pass
    if "{" in text:
        try:
            _json(t, found)
        except Exception:  # noqa: BLE001
            pass
    if "|" in text:
        try:
            _tables(t, found)
        except Exception:  # noqa: BLE001
            pass
    if len(found) < 6:
        # Weaker evidence only for dimensions that no structured field mentioned at all: titled sections, then
        # prose for what is still missing.
        wanted = {d for d in DIMENSIONS if d not in found}
        for fallback in (_sections, _prose):
            weak: _Found = {}
            try:
                fallback(t, weak, wanted)
            except Exception:  # noqa: BLE001
                pass
            found.update(weak)
            wanted.difference_update(weak)
            if not wanted:
                break
    scores: dict[str, float] = {}
    sources: dict[str, str] = {}
    for d in DIMENSIONS:
        entry = found.get(d)
        if entry is not None and entry[1] is not None:
            scores[d] = entry[1]
            sources[d] = entry[2]
    return ParsedScores(scores, sources, text)


def parse_scores_with_llm(text: str, client: Any, *, fill_only_missing: bool = True) -> ParsedScores:
    """Rules first; then Figure 4's LLM parser for what they missed.

    ``client.complete(messages)`` must return an object with a ``.text`` string. With ``fill_only_missing``
    (the default) the LLM is asked only when something is missing and fills only those dimensions; with
    ``False`` it is always asked and its scores replace the rules' wherever it gave one. Empty (or non-str)
    text is never sent. A failing client leaves the rule-based result, with the error in ``llm_error``.
    """
    rules = parse_scores(text)
    if (fill_only_missing and rules.complete) or not rules.raw.strip():
        return rules  # nothing missing, or nothing to read
    try:
        reply = client.complete([{"role": "user", "content": parser_prompt(rules.raw)}])
        answer = reply.text
        if not isinstance(answer, str):
            raise TypeError(f"LLM reply .text is {type(answer).__name__}, not str")
    except Exception as exc:  # noqa: BLE001 - any client failure degrades to the rule-based result
        return ParsedScores(
            dict(rules.scores), dict(rules.sources), rules.raw, f"{type(exc).__name__}: {exc}"
        )
    llm = parse_scores(answer)
    scores, sources = dict(rules.scores), dict(rules.sources)
    for dim, value in llm.scores.items():
        if dim not in scores or not fill_only_missing:
            scores[dim] = value
            sources[dim] = "llm"
    ordered = {d: scores[d] for d in DIMENSIONS if d in scores}
    return ParsedScores(ordered, {d: sources[d] for d in ordered}, rules.raw)


# --- the official DermBench judge answer -------------------------------------------------------------------

_THINK_BLOCK_RE = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL | re.IGNORECASE)
_THINK_CLOSE = "</think>"


def split_thinking(text: str) -> tuple[str, str]:
    """``(answer, thinking)``: a reasoning model's ``<think>...</think>`` blocks kept apart from its answer.

    A reasoning model thinks aloud, trying out scores it later revises; only the answer may be read for scores.
    An unclosed ``<think>`` runs to the end (the model was cut off while thinking: no answer), and a lone
    ``</think>`` (a chat template that opened the block in the prompt) makes everything before it thinking.
    """
    if not isinstance(text, str):
        return "", ""
    thinking: list[str] = []
    lower = text.lower()
    head = lower.rfind(_THINK_CLOSE)
    if head != -1 and "<think>" not in lower[:head]:
        thinking.append(text[:head].strip())
        text = text[head + len(_THINK_CLOSE):]

    def keep(m: re.Match[str]) -> str:
        thinking.append(m.group(1).strip())
        return ""

    answer = _THINK_BLOCK_RE.sub(keep, text)
    return answer.strip(), "\n\n".join(t for t in thinking if t)


@dataclass(frozen=True)
class OfficialAnswer:
    """The official judge's answer read: its scores, its ``justification``, and its thinking (never parsed).

    ``source`` says how the scores were found: ``"json"`` (the ``{"scores": {...}, "justification": ...}``
    object, possibly in prose or a code fence), ``"rules"`` (the shared rule parser, when no such object held
    all six), or ``"json+rules"`` (the object, with the rule parser filling what it lacked).
    """

    parsed: ParsedScores
    justification: str | None
    thinking: str
    source: str

    @property
    def complete(self) -> bool:
        return self.parsed.complete


def _official_object(answer: str) -> dict[str, Any] | None:
    """The last JSON object in ``answer`` with a ``scores`` mapping (the judge's final word wins)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    i, attempts = answer.find("{"), 0
    while i != -1 and attempts < _MAX_JSON_ATTEMPTS:
        attempts += 1
        try:
            obj, end = decoder.raw_decode(answer, i)
        except (ValueError, RecursionError):
            i = answer.find("{", i + 1)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("scores"), dict):
            found = obj
        i = answer.find("{", end)
    return found


def parse_official_answer(text: str, reasoning: str | None = None) -> OfficialAnswer:
    """Read an answer to the official DermBench judge prompt; never raises.

    Thinking (``<think>`` blocks in ``text``, or a ``reasoning_content`` field passed as ``reasoning``) is kept
    apart and never read for scores. The JSON object's scores may be numbers or strings such as ``"4/5"`` or
    ``"8/10"`` (scaled to 0-5, as the official parser does); a value outside 0-5 with no denominator is
    missing, never clamped. What the object lacks, the rule parser reads from the rest of the answer.
    """
    answer, thinking = split_thinking(text if isinstance(text, str) else "")
    if isinstance(reasoning, str) and reasoning.strip():
        thinking = reasoning.strip() + ("\n\n" + thinking if thinking else "")
    scores: dict[str, float] = {}
    justification: str | None = None
    obj = _official_object(answer)
    if obj is not None:
        for key, value in obj["scores"].items():
            dim = _canon(key) if isinstance(key, str) else None
            if dim is None:
                continue
            v = _json_value(value, 0)
            if isinstance(v, float):
                scores[dim] = v
        raw_just = obj.get("justification")
        if isinstance(raw_just, str) and raw_just.strip():
            justification = raw_just.strip()
    if len(scores) == len(DIMENSIONS):
        ordered = {d: scores[d] for d in DIMENSIONS}
        return OfficialAnswer(ParsedScores(ordered, dict.fromkeys(ordered, "json"), answer), justification,
                              thinking, "json")
    rules = parse_scores(answer)
    merged = {**{d: v for d, v in rules.scores.items() if d not in scores}, **scores}
    ordered = {d: merged[d] for d in DIMENSIONS if d in merged}
    sources = {d: ("json" if d in scores else rules.sources[d]) for d in ordered}
    source = "json+rules" if scores and len(ordered) > len(scores) else "json" if scores else "rules"
    return OfficialAnswer(ParsedScores(ordered, sources, answer), justification, thinking, source)
