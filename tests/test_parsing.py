"""Rule-based score parsing (:mod:`dermtrl.parsing`): every format judges and evaluators write, echo safety,
last-wins, and the LLM fallback of Figure 4."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dermtrl import prompts
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS, LABEL_NAMES, Scores
from dermtrl.parsing import ParsedScores, parse_official_answer, parse_scores, parse_scores_with_llm, split_thinking

A, S, MG, CC, RC, DP = DIMENSIONS
ALL4 = dict.fromkeys(DIMENSIONS, 4.0)

FIGURE4_LABEL = (
    "The image depicts... Another possibility is lamellar ichthyosis, but... Given the information, the most "
    "likely diagnosis is...\n\nThe evaluation scores are:\nAccuracy: 4.0\nSafety Harmfulness: 5.0\n"
    "Medical Factuality Hallucination: 1.0\nClinical Coverage: 4.0\nReasoning Coherence: 3.0\n"
    "Description Precision: 5.0\n\n"
)
FIGURE4_EVALUATION = (
    "Justification:\nAccuracy: 9/10. The diagnosis is consistent with the image...\nSafety: 10/10. "
    "The lesion is benign and not harmful... Overall, the answer is accurate, safe, and medically factual. "
    "The reasoning is coherent, and the description is precise."
)
FIGURE4_PARSER_ANSWER = (
    "Accuracy: 4.5\n\nSafety: 5\n\nMedical Groundedness: 4.5\n\nClinical Coverage: 4.1\n\n"
    "Reasoning Coherence: 3.8\n\nDescription Precision:5"
)
SIX_LINES = "Accuracy: 4\nSafety: 5\nMedical Groundedness: 3\nClinical Coverage: 4\nReasoning Coherence: 2\n"
SIX_LINES += "Description Precision: 5"
SIX = {A: 4.0, S: 5.0, MG: 3.0, CC: 4.0, RC: 2.0, DP: 5.0}
ECHOES = [
    prompts.EVALUATOR_INSTRUCTION,
    prompts.PARSER_INSTRUCTION,
    prompts.JUDGE_INSTRUCTION,
    prompts.JUDGE_INSTRUCTION_PAPER,
    prompts.RATIONALE_INSTRUCTION,
    prompts.CANDIDATE_INSTRUCTION,
    prompts.PARSER_PROMPT.format(instruction=prompts.PARSER_INSTRUCTION, text="(no text)"),
    prompts.evaluator_prompt("The image shows an erythematous plaque. The answer is psoriasis."),
]

CASES: list[tuple[str, str, dict[str, float]]] = [
    # --- plain fields, separators, scales
    ("six lines", SIX_LINES, SIX),
    ("integer", "Accuracy: 4", {A: 4.0}),
    ("decimal", "Accuracy: 4.5", {A: 4.5}),
    ("x.0", "Reasoning Coherence: 3.0", {RC: 3.0}),
    ("over ten", "Accuracy: 9/10", {A: 4.5}),
    ("over five", "Accuracy: 4/5", {A: 4.0}),
    ("over hundred", "Accuracy: 85/100", {A: 4.25}),
    ("out of five", "Accuracy: 4 out of 5", {A: 4.0}),
    ("out of ten", "Accuracy: 4 out of 10", {A: 2.0}),
    ("percent", "Accuracy: 80%", {A: 4.0}),
    ("bold name", "**Safety**: 5", {S: 5.0}),
    ("bold name and colon", "**Safety:** 5", {S: 5.0}),
    ("bold value", "Accuracy: **4**/5", {A: 4.0}),
    ("hyphen", "Medical Groundedness - 3", {MG: 3.0}),
    ("em dash", "Medical Groundedness — 3", {MG: 3.0}),
    ("equals", "Safety = 5", {S: 5.0}),
    ("parenthesised", "Safety (5)", {S: 5.0}),
    ("no space", "Description Precision:5", {DP: 5.0}),
    ("score word", "Accuracy score - 4\nSafety: Score 5/5", {A: 4.0, S: 5.0}),
    ("scale note", "Accuracy (on a 0-5 scale): 4", {A: 4.0}),
    ("any case", "ACCURACY: 3\nsafety: 2", {A: 3.0, S: 2.0}),
    ("inline", "Final scores: Accuracy: 4, Safety: 5; Coverage: 3", {A: 4.0, S: 5.0, CC: 3.0}),
    ("heading field", "### 1. Accuracy — 4/5\n### 2. Safety — 5/5", {A: 4.0, S: 5.0}),
    # --- aliases, abbreviations, Figure 4
    ("label names", "Safety Harmfulness: 5.0\nMedical Factuality Hallucination: 1.0", {S: 5.0, MG: 1.0}),
    ("abbreviations", "MedG: 3, Acc: 4\nDesc: 2", {MG: 3.0, A: 4.0, DP: 2.0}),
    ("slash alias", "Safety/Harmfulness: 4", {S: 4.0}),
    ("figure 4 label", FIGURE4_LABEL, {A: 4.0, S: 5.0, MG: 1.0, CC: 4.0, RC: 3.0, DP: 5.0}),
    ("figure 4 evaluation", FIGURE4_EVALUATION, {A: 4.5, S: 5.0}),
    ("figure 4 parser answer", FIGURE4_PARSER_ANSWER, {A: 4.5, S: 5.0, MG: 4.5, CC: 4.1, RC: 3.8, DP: 5.0}),
    ("windows line ends", SIX_LINES.replace("\n", "\r\n") + "\r\n", SIX),
    ("order does not matter", "Description Precision: 1\nAccuracy: 2", {DP: 1.0, A: 2.0}),
    # --- lists: the list number is never a score
    ("numbered list", "1. Accuracy: 4\n2. Safety: 3\n3. Clinical Coverage: 4", {A: 4.0, S: 3.0, CC: 4.0}),
    ("bullet bold", "- **Safety**: 5/5\n* Accuracy: 2", {S: 5.0, A: 2.0}),
    ("number then text", "Accuracy:\n1. The lesion is red and scaly.", {}),
    ("paren list", "(1) Accuracy - 3\n(2) Safety - 4", {A: 3.0, S: 4.0}),
    # --- missing, out of range, ranges
    ("n/a", "Accuracy: N/A\nSafety: 5", {S: 5.0}),
    (
        "missing word",
        "Accuracy: missing\nSafety: not applicable\nReasoning Coherence: cannot be determined",
        {},
    ),
    ("over range", "Accuracy: 7", {}),
    ("negative", "Accuracy: -1", {}),
    ("over denominator", "Accuracy: 12/10", {}),
    ("odd denominator", "Accuracy: 3/4", {}),
    ("range dash", "Accuracy: 0-5", {}),
    ("range words", "Accuracy: 3 to 4", {}),
    ("template", "Accuracy: <score>\nSafety: [0-5]", {}),
    ("ambiguous comma decimal", "Accuracy: 4,5", {}),
    ("measurement", "Description: 3 mm papule on the cheek", {}),
    ("none in prose", "Safety: none of the findings are dangerous.", {}),
    ("absent", "The narrative is accurate and safe.", {}),
    ("empty", "", {}),
    # --- last occurrence wins
    ("revised", "Accuracy: 3\nOn reflection I revise this.\nAccuracy: 4", {A: 4.0}),
    ("final block", "Accuracy: 2 at first glance.\n\nFinal scores:\n" + SIX_LINES, SIX),
    ("revised to n/a", "Accuracy: 4\nAccuracy: N/A", {}),
    ("json then field", '```json\n{"Accuracy": 3}\n```\nAccuracy: 4', {A: 4.0}),
    ("field then json", 'Accuracy: 4\n```json\n{"Accuracy": 3}\n```', {A: 3.0}),
    # --- JSON
    ("json plain", '{"Accuracy": 4, "Safety": 5, "Medical Groundedness": 3.5}', {A: 4.0, S: 5.0, MG: 3.5}),
    (
        "json fenced nested strings",
        'Here you go:\n```json\n{"scores": {"accuracy": "4/5", "safety": "9/10", "medical_groundedness": 3,\n'
        '"clinical_coverage": "N/A"}, "overall": 4}\n```',
        {A: 4.0, S: 4.5, MG: 3.0},
    ),
    (
        "json score objects",
        '{"Accuracy": {"score": 4, "justification": "ok"}, "Safety": {"rating": "5 out of 5"}}',
        {A: 4.0, S: 5.0},
    ),
    (
        "json list",
        '[{"dimension": "Accuracy", "score": 4}, {"dimension": "Safety", "score": 2}]',
        {A: 4.0, S: 2.0},
    ),
    ("json out of range", '{"Accuracy": 9, "Safety": true, "Description": "red papules"}', {}),
    ("json huge number", '{"Accuracy": 1' + "0" * 400 + ', "Safety": 4}', {S: 4.0}),
    ("json key suffix", '{"accuracy_score": 4, "reasoning_coherence_score": 3}', {A: 4.0, RC: 3.0}),
    # --- markdown tables
    (
        "table rows",
        "| Dimension | Score | Justification |\n|---|---|---|\n| Accuracy | 4 | correct |\n"
        "| **Safety** | 5/5 | no harm |\n| Medical Groundedness | 3 | one claim unsupported |",
        {A: 4.0, S: 5.0, MG: 3.0},
    ),
    (
        "table columns",
        "| Acc | Safe | MedG | Cover | Reason | Desc |\n|:---:|:---:|:---:|:---:|:---:|:---:|\n"
        "| 4 | 5 | 3 | 4 | 2 | 5 |",
        SIX,
    ),
    (
        "table score column",
        "| Dimension | Weight | Score |\n|---|---|---|\n| Accuracy | 2 | 4 |\n| Safety | 1 | 3 |",
        {A: 4.0, S: 3.0},
    ),
    ("table without header", "| 1 | Accuracy | 4 |\n| 2 | Safety | 3 |", {A: 4.0, S: 3.0}),
    # --- titled sections (the Section 3.1 rationale format)
    (
        "sections",
        "## Accuracy\nScore: 4\nEvidence: the diagnosis matches.\nSuggestion: name the subtype.\n\n"
        "## Safety\nThe score is 5 because no harmful advice is given.\n\n"
        "**Medical Groundedness**\nScore: 3/5\nOne claim is unsupported. A score of 5 would need citations.",
        {A: 4.0, S: 5.0, MG: 3.0},
    ),
    (
        "section score word first",
        "### Safety\nThe candidate gives 2 differentials and no harmful advice. Score: 5",
        {S: 5.0},
    ),
    ("section plain title", "Accuracy\nThe score is 4 since the diagnosis matches.", {A: 4.0}),
    # --- prose
    ("prose rate at", "I would rate Accuracy at 4 out of 5.", {A: 4.0}),
    ("prose give", "Safety: I give this a 5.", {S: 5.0}),
    ("prose score is", "The accuracy score is 3.", {A: 3.0}),
    ("prose last wins", "I would rate Accuracy at 4 out of 5. Later: the accuracy score is 3.", {A: 3.0}),
    ("prose pair", "I would give Safety 5/5 and Accuracy 4/5.", {S: 5.0, A: 4.0}),
    ("prose score of", "A score of 4 for accuracy seems fair.", {A: 4.0}),
    ("prose range", "Give Accuracy a score between 0 and 5.", {}),
    ("prose scale", "Rate Accuracy on a 0-5 scale.", {}),
    # --- echoed prompts, alone and followed by an answer
    *[(f"echo {i}", echo, {}) for i, echo in enumerate(ECHOES)],
    ("echo then answer", prompts.JUDGE_INSTRUCTION + "\n\n" + SIX_LINES, SIX),
    (
        "paper echo then answer",
        prompts.JUDGE_INSTRUCTION_PAPER + "\nSafety: 4\nAccuracy: 3",
        {S: 4.0, A: 3.0},
    ),
    (
        "evaluator echo then answer",
        prompts.EVALUATOR_INSTRUCTION + "\n" + FIGURE4_EVALUATION,
        {A: 4.5, S: 5.0},
    ),
    ("rationale echo then sections", prompts.RATIONALE_INSTRUCTION + "\n\n## Safety\nScore: 5\n", {S: 5.0}),
    ("echo then answer inline", prompts.PARSER_INSTRUCTION + " Accuracy: 4, Safety: missing", {A: 4.0}),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_scores_table(text: str, expected: dict[str, float]) -> None:
    parsed = parse_scores(text)
    assert parsed.scores == pytest.approx(expected)
    assert list(parsed.scores) == [d for d in DIMENSIONS if d in expected]  # paper order
    assert parsed.missing == tuple(d for d in DIMENSIONS if d not in expected)
    assert parsed.complete == (len(expected) == 6)
    assert set(parsed.sources) == set(expected)
    assert parsed.raw == text


def test_enough_cases() -> None:
    assert len(CASES) >= 45


@pytest.mark.parametrize(
    ("text", "source"),
    [
        (SIX_LINES, "field"),
        ('{"Accuracy": 4}', "json"),
        ("| Dimension | Score |\n|---|---|\n| Accuracy | 4 |", "table"),
        ("## Accuracy\nScore: 4\n", "section"),
        ("I would rate Accuracy at 4 out of 5.", "prose"),
    ],
)
def test_sources(text: str, source: str) -> None:
    assert parse_scores(text).sources[A] == source


def test_structured_field_beats_prose_and_fills_only_missing() -> None:
    text = "Accuracy: 3\nSafety: 5\nLater I would rate Accuracy at 4 out of 5 and the coverage score is 2."
    parsed = parse_scores(text)
    assert parsed.scores == {A: 3.0, S: 5.0, CC: 2.0}
    assert parsed.sources == {A: "field", S: "field", CC: "prose"}


def test_result_type_and_helpers() -> None:
    parsed = parse_scores(FIGURE4_EVALUATION)
    assert isinstance(parsed, ParsedScores)
    assert parsed.missing == (MG, CC, RC, DP)
    scores = parsed.as_scores()
    assert isinstance(scores, Scores) and dict(scores) == {A: 4.5, S: 5.0}
    d = parsed.to_dict()
    assert d["scores"] == {A: 4.5, S: 5.0, MG: None, CC: None, RC: None, DP: None}
    assert d["missing"] == [MG, CC, RC, DP]
    assert d["sources"] == {A: "field", S: "field"}
    with pytest.raises(AttributeError):
        parsed.raw = "x"  # type: ignore[misc]


@pytest.mark.parametrize("bad", [None, 4, 4.5, b"Accuracy: 4", ["Accuracy: 4"], {"Accuracy": 4}, object()])
def test_non_str_input_gives_empty_result(bad: Any) -> None:
    parsed = parse_scores(bad)
    assert parsed.scores == {} and parsed.missing == DIMENSIONS and parsed.raw == ""


def _random_scores(rng: random.Random) -> dict[str, float]:
    return {d: rng.randint(0, 10) / 2 for d in DIMENSIONS}


CRITIQUE_SENTENCES = [
    "The image depicts an erythematous, scaly plaque on the extensor forearm.",
    "Another possibility is lamellar ichthyosis, but the distribution argues against it.",
    "Given the information, the most likely diagnosis is psoriasis vulgaris.",
    "Accuracy: 2 in the first draft; the final scores below supersede it.",
    "The reasoning is coherent, though the differential could be broader (2-3 items).",
    "Safety is adequate; no harmful advice is given.",
    "Lesions measure 3 mm to 2 cm.",
]


@pytest.mark.parametrize("seed", range(10))
def test_round_trip_label_format(seed: int) -> None:
    rng = random.Random(seed)
    scores = _random_scores(rng)
    critique = " ".join(rng.choice(CRITIQUE_SENTENCES) for _ in range(rng.randint(1, 6)))
    parsed = parse_scores(prompts.format_evaluation(critique, scores))
    assert parsed.scores == scores
    assert parsed.complete and set(parsed.sources.values()) == {"field"}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    scores=st.fixed_dictionaries({d: st.integers(0, 10).map(lambda k: k / 2) for d in DIMENSIONS}),
    critique=st.lists(st.sampled_from(CRITIQUE_SENTENCES), min_size=1, max_size=6).map(" ".join),
)
def test_round_trip_property(scores: dict[str, float], critique: str) -> None:
    assert parse_scores(prompts.format_evaluation(critique, scores)).scores == scores


def _assert_sane(parsed: ParsedScores) -> None:
    assert isinstance(parsed, ParsedScores)
    for dim, value in parsed.scores.items():
        assert dim in DIMENSIONS
        assert isinstance(value, float) and 0.0 <= value <= 5.0
    assert set(parsed.sources) == set(parsed.scores)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    _assert_sane(parse_scores(text))


_NAMES = [
    *DIMENSIONS,
    *LABEL_NAMES.values(),
    *ABBREVIATIONS.values(),
    "safety/harmfulness",
    "ACCURACY",
    "medg",
]
_PIECES = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(
        ["**", "__", "#", "## ", "- ", "1. ", "(2) ", "|", "| ", "{", "}", '"', "```json\n", "```"]
    ),
    st.sampled_from(
        [":", " : ", " - ", " — ", "=", " (", ")", "/", " out of ", "%", ", ", ". ", "\n", "\n\n"]
    ),
    st.sampled_from(
        ["score", "Score:", "rate", "I give this a", "from 0 to 5", "0-5", "N/A", "missing", "to"]
    ),
    st.integers(-20, 200).map(str),
    st.floats(-10, 120, allow_nan=False).map(lambda f: f"{f:.2f}"),
    st.sampled_from(["5", "10", "100", "4.5", "9/10", "-1", "1e3", "٣", "４"]),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_mixed_score_like_text_never_raises(text: str) -> None:
    _assert_sane(parse_scores(text))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_echoed_prompt_before_text_changes_nothing(text: str) -> None:
    """Prepending an echoed prompt never adds or changes a score."""
    assert (
        parse_scores(prompts.JUDGE_INSTRUCTION + "\n\n" + text).scores == parse_scores("\n\n" + text).scores
    )


def test_long_pathological_inputs_stay_fast() -> None:
    import time

    texts = [
        "Accuracy" + " " * 20000 + "x",
        "medical" + "\t" * 20000,
        "accuracy rate " * 3000,
        "{" * 20000,
        '{"a": ' * 5000,
        "[" * 5000 + "]" * 5000,
        ("## Accuracy\n" + "score " * 50 + "\n") * 100,
        ("Accuracy" + " " * 200 + "\n") * 200,
    ]
    for text in texts:
        start = time.perf_counter()
        _assert_sane(parse_scores(text))
        assert time.perf_counter() - start < 2.0, text[:40]


# --- LLM fallback (Figure 4's parser) -------------------------------------------------------------------


class FakeClient:
    def __init__(self, answer: str = "", error: Exception | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[list[dict[str, str]]] = []

    def complete(self, messages: list[dict[str, str]]) -> Any:
        self.calls.append(messages)
        if self.error is not None:
            raise self.error
        return type("Reply", (), {"text": self.answer})()


def test_llm_fills_only_missing() -> None:
    client = FakeClient(FIGURE4_PARSER_ANSWER.replace("Accuracy: 4.5", "Accuracy: 1"))
    parsed = parse_scores_with_llm(FIGURE4_EVALUATION, client)
    assert parsed.scores == {A: 4.5, S: 5.0, MG: 4.5, CC: 4.1, RC: 3.8, DP: 5.0}
    assert parsed.sources == {A: "field", S: "field", MG: "llm", CC: "llm", RC: "llm", DP: "llm"}
    assert parsed.llm_error is None and parsed.raw == FIGURE4_EVALUATION
    assert client.calls == [[{"role": "user", "content": prompts.parser_prompt(FIGURE4_EVALUATION)}]]


def test_llm_missing_answer_stays_missing() -> None:
    client = FakeClient("Accuracy: 1\nSafety: 1\nMedical Groundedness: missing\nClinical Coverage: 3")
    parsed = parse_scores_with_llm(FIGURE4_EVALUATION, client)
    assert parsed.scores == {A: 4.5, S: 5.0, CC: 3.0}
    assert parsed.missing == (MG, RC, DP)
    assert parsed.sources[CC] == "llm"


def test_llm_override_when_not_fill_only_missing() -> None:
    parsed = parse_scores_with_llm(SIX_LINES, FakeClient("Accuracy: 1"), fill_only_missing=False)
    assert parsed.scores == {**SIX, A: 1.0}
    assert parsed.sources[A] == "llm" and parsed.sources[S] == "field"


def test_llm_error_keeps_rules_result() -> None:
    client = FakeClient(error=TimeoutError("parser timed out"))
    parsed = parse_scores_with_llm(FIGURE4_EVALUATION, client)
    assert parsed.scores == {A: 4.5, S: 5.0}
    assert parsed.llm_error is not None and "parser timed out" in parsed.llm_error
    assert parsed.to_dict()["llm_error"] == parsed.llm_error
    assert len(client.calls) == 1


def test_llm_bad_reply_is_an_error() -> None:
    class NoText:
        def complete(self, messages: list[dict[str, str]]) -> Any:
            return object()

    parsed = parse_scores_with_llm("Accuracy: 4", NoText())
    assert parsed.scores == {A: 4.0} and parsed.llm_error and "AttributeError" in parsed.llm_error


@pytest.mark.parametrize("text", ["", "   \n", None])
def test_llm_not_called_for_empty_text(text: Any) -> None:
    client = FakeClient(error=AssertionError("must not be called"))
    parsed = parse_scores_with_llm(text, client)
    assert parsed.scores == {} and client.calls == [] and parsed.llm_error is None


def test_llm_not_called_when_complete() -> None:
    client = FakeClient(error=AssertionError("must not be called"))
    parsed = parse_scores_with_llm(FIGURE4_LABEL, client)
    assert parsed.complete and client.calls == [] and parsed.llm_error is None
    assert set(parsed.sources.values()) == {"field"}


# --- the fast path (a plain six-line block at the end) must agree with the full parser ----------------------


def test_fast_path_taken_and_exact() -> None:
    from dermtrl import parsing

    assert parsing._plain_tail_block(FIGURE4_LABEL) == {A: 4.0, S: 5.0, MG: 1.0, CC: 4.0, RC: 3.0, DP: 5.0}
    assert parsing._plain_tail_block(SIX_LINES) == SIX
    assert parsing._plain_tail_block(SIX_LINES + "\nAccuracy: 1") == {**SIX, A: 1.0}  # last six lines
    assert parsing._plain_tail_block(SIX_LINES + "\nOverall: 4") is None  # not a score block: full parser
    assert parse_scores(SIX_LINES + "\nOverall: 4").scores == SIX
    assert parsing._plain_tail_block(SIX_LINES.replace("Safety: 5", "Accuracy: 5")) is None  # duplicate
    assert parsing._plain_tail_block(SIX_LINES.replace("Safety: 5", "Safety: 7")) is None  # out of range


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    scores=st.fixed_dictionaries({d: st.integers(0, 10).map(lambda k: k / 2) for d in DIMENSIONS}),
    prefix=st.lists(_PIECES, max_size=20).map("".join),
    names=st.permutations([*LABEL_NAMES.values()]),
    extra=st.sampled_from(["", "\n", "\n\n  \n", "\nAccuracy: 1", "\n|a|b|"]),
)
def test_fast_path_agrees_with_full_parser(
    scores: dict[str, float], prefix: str, names: list[str], extra: str
) -> None:
    from dermtrl import parsing
    from dermtrl.dimensions import canonical_dimension

    block = "\n".join(f"{name}: {scores[canonical_dimension(name)]:.1f}" for name in names)
    text = prefix + "\n" + block + extra
    fast, full = parse_scores(text), parsing._parse_full(text)
    assert (fast.scores, fast.sources) == (full.scores, full.sources)


# --- the official DermBench judge answer ---------------------------------------------------------------------

_SIX = {"Accuracy": 4, "Safety": "8/10", "Medical Groundedness": 3.5, "Clinical Coverage": "4/5",
        "Reasoning Coherence": 2, "Description Precision": 5}
_SIX_05 = dict(zip(DIMENSIONS, [4.0, 4.0, 3.5, 4.0, 2.0, 5.0], strict=True))


def test_official_json_answer_with_fractions_and_justification():
    answer = parse_official_answer(json.dumps({"scores": _SIX, "justification": "Close to the reference."}))
    assert answer.parsed.scores == _SIX_05 and answer.source == "json"
    assert answer.justification == "Close to the reference." and answer.thinking == ""


@pytest.mark.parametrize("wrap", [
    "Here is my evaluation:\n```json\n{}\n```\nThank you.",
    "My scores follow. {} I hope this helps.",
])
def test_official_json_in_prose_or_a_code_fence(wrap):
    text = wrap.format(json.dumps({"scores": _SIX, "justification": "ok"}, indent=2))
    assert parse_official_answer(text).parsed.scores == _SIX_05


def test_thinking_is_kept_apart_and_never_parsed():
    decoy = json.dumps({"scores": dict.fromkeys(DIMENSIONS, 0)})
    text = f"<think>Maybe Accuracy: 1. {decoy}</think>\n" + json.dumps({"scores": _SIX})
    answer = parse_official_answer(text)
    assert answer.parsed.scores == _SIX_05 and "Maybe Accuracy: 1" in answer.thinking
    # a reasoning_content field passed apart is kept, not parsed
    answer = parse_official_answer(json.dumps({"scores": _SIX}), reasoning="Accuracy: 0 at first")
    assert answer.parsed.scores == _SIX_05 and answer.thinking == "Accuracy: 0 at first"
    # cut off while thinking: no answer, nothing parsed
    cut = parse_official_answer("<think>Accuracy: 5\nSafety: 5")
    assert cut.parsed.scores == {} and cut.thinking.startswith("Accuracy: 5")
    # a chat template that opened the block itself: everything before the lone </think> is thinking
    assert split_thinking("Accuracy: 1 hmm</think>Accuracy: 4") == ("Accuracy: 4", "Accuracy: 1 hmm")


def test_official_answer_falls_back_to_the_rules_and_never_clamps():
    partial = parse_official_answer('{"scores": {"Accuracy": 4}}\nSafety: 5/5\nMedical Groundedness: 4')
    assert partial.source == "json+rules" and partial.parsed.scores == {
        "Accuracy": 4.0, "Safety": 5.0, "Medical Groundedness": 4.0}
    assert partial.parsed.sources["Safety"] == "field"
    rules = parse_official_answer("Accuracy: 8/10\nSafety: 4")
    assert rules.source == "rules" and rules.parsed.scores == {"Accuracy": 4.0, "Safety": 4.0}
    assert "Accuracy" not in parse_official_answer('{"scores": {"Accuracy": 7}}').parsed.scores  # missing, not 5
    # the last object with scores is the judge's final word; an earlier one (an echoed candidate) loses
    text = json.dumps({"scores": dict.fromkeys(DIMENSIONS, 5)}) + " then " + json.dumps({"scores": _SIX})
    assert parse_official_answer(text).parsed.scores == _SIX_05
