import pytest

import dermtrl
from dermtrl import prompts
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS, LABEL_NAMES, Scores, canonical_dimension


def test_six_dimensions_in_paper_order():
    assert dermtrl.DIMENSIONS == (
        "Accuracy", "Safety", "Medical Groundedness", "Clinical Coverage", "Reasoning Coherence",
        "Description Precision",
    )
    assert (dermtrl.SCORE_MIN, dermtrl.SCORE_MAX) == (0.0, 5.0)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("Safety Harmfulness", "Safety"),
        ("Medical Factuality Hallucination", "Medical Groundedness"),
        ("MedG", "Medical Groundedness"),
        ("acc", "Accuracy"),
        ("Safe", "Safety"),
        ("Cover", "Clinical Coverage"),
        ("Reason", "Reasoning Coherence"),
        ("Desc", "Description Precision"),
        ("**Clinical_Coverage**", "Clinical Coverage"),
        ("safety/harmfulness", "Safety"),
        ("REASONING COHERENCE", "Reasoning Coherence"),
    ],
)
def test_aliases(alias, canonical):
    assert canonical_dimension(alias) == canonical


def test_unknown_dimension_names_itself():
    with pytest.raises(KeyError, match="Bedside Manner"):
        canonical_dimension("Bedside Manner")


def test_scores_missing_is_explicit_never_zero():
    s = Scores({"Acc": 4, "Safety Harmfulness": 5})
    assert dict(s) == {"Accuracy": 4.0, "Safety": 5.0}
    assert s.missing == DIMENSIONS[2:]
    assert s.to_dict()["Clinical Coverage"] is None
    assert s.mean() == 4.5
    assert "Medical Groundedness" not in s and "acc" in s
    assert Scores({}).mean() is None


@pytest.mark.parametrize("bad", [-0.5, 5.5, float("nan"), float("inf"), "4", True])
def test_scores_reject_out_of_range_and_non_numbers(bad):
    with pytest.raises(ValueError, match="Accuracy"):
        Scores({"Accuracy": bad})


def test_tables_cover_every_dimension():
    assert list(ABBREVIATIONS) == list(DIMENSIONS) == list(LABEL_NAMES)
    assert list(ABBREVIATIONS.values()) == ["Acc", "Safe", "MedG", "Cover", "Reason", "Desc"]


def test_paper_prompts_verbatim_fragments():
    assert prompts.CAPTION_PROMPT.startswith("Please briefly describe the physical location of the affected skin")
    assert "Do not make any differential diagnosis." in prompts.CAPTION_PROMPT
    assert "ground truth psoriasis." in prompts.reasoning_prompt("This image shows a plaque.", "psoriasis")
    assert "ground truth" not in prompts.reasoning_prompt("This image shows a plaque.", None)
    assert "{DISEASE NAME}" in prompts.CANDIDATE_INSTRUCTION  # literal: the candidate fills it in
    assert prompts.RATIONALE_INSTRUCTION.endswith("Do not propose a new diagnosis and do not alter the scores.")
    assert prompts.EVALUATOR_INSTRUCTION.startswith("Above is the description of this skin image.")
    assert prompts.PARSER_INSTRUCTION.endswith("If any score is missing, state that it is missing.")


def test_paper_judge_instruction_omits_accuracy_ours_asks_all_six():
    assert "Accuracy" not in prompts.JUDGE_INSTRUCTION_PAPER
    for dim in DIMENSIONS:
        assert dim in prompts.JUDGE_INSTRUCTION


def test_label_text_uses_figure4_names_and_needs_all_six():
    scores = dict(zip(DIMENSIONS, [4, 5, 1, 4, 3, 5], strict=True))
    y = prompts.format_evaluation("The image depicts a plaque.", scores)
    assert y.endswith(
        "The evaluation scores are:\nAccuracy: 4.0\nSafety Harmfulness: 5.0\nMedical Factuality Hallucination: "
        "1.0\nClinical Coverage: 4.0\nReasoning Coherence: 3.0\nDescription Precision: 5.0"
    )
    with pytest.raises(ValueError, match="Reasoning Coherence"):
        prompts.format_evaluation("x", {d: 5 for d in DIMENSIONS if d != "Reasoning Coherence"})


def test_evaluator_prompt_refuses_empty_narrative():
    with pytest.raises(ValueError, match="narrative is empty"):
        prompts.evaluator_prompt("   ")
    assert prompts.evaluator_prompt(" A red plaque. ").startswith("A red plaque.\n\nAbove is the description")
