"""The synthetic oracle: the experts' rule applied to any narrative in the synthetic vocabulary."""

from __future__ import annotations

import pytest

from dermtrl.cases.synthetic import (
    QUALITY_TIERS,
    draw_case,
    expert_scores,
    generate_case,
    oracle,
    read_claims,
    reference_narrative,
    render_narrative,
)


def test_it_reads_every_generated_narrative_and_gives_the_experts_scores():
    tiers = {t: 0 for t in QUALITY_TIERS}
    for i in range(600):
        d = draw_case(i, seed=i % 3)
        reading = oracle(render_narrative(d.claims), d.truth, d.cond.label)
        assert reading.readable, (i, reading.reason)
        assert reading.claims == d.claims
        assert reading.scores == expert_scores(d.claims, d.cond, d.truth)
        tiers[d.tier] += 1
    assert min(tiers.values()) > 0  # every quality tier, unsafe, hallucinated and vague ones included


def test_a_case_row_is_enough_and_references_are_readable():
    case = generate_case(12, seed=1)
    reading = oracle(case["narrative"], case["findings"], case["label"])
    assert reading.readable and reading.macro == pytest.approx(sum(reading.scores.values()) / 6)
    d = draw_case(12, seed=1)
    ref = oracle(reference_narrative(d.cond, d.truth), d.truth, d.cond.label)
    # the reference names the right answer from a complete, true description, but gives no advice
    assert ref.scores["Accuracy"] == 5 and ref.scores["Description Precision"] == 5 and ref.scores["Safety"] == 3


def test_claims_that_change_the_scores_are_read():
    d = next(draw_case(i) for i in range(100) if draw_case(i).tier == "correct" and draw_case(i).own)
    narrative = render_narrative(d.claims)
    base = oracle(narrative, d.truth, d.cond.label).scores
    assert base["Medical Groundedness"] == 5 and base["Safety"] == 5
    invented = narrative.replace("Differential", "I also note satellite pustules. Differential")
    assert oracle(invented, d.truth, d.cond.label).scores["Medical Groundedness"] == 3
    repeated = narrative.replace("Differential", "I also note satellite pustules. I also note satellite pustules. "
                                                 "Differential")
    assert oracle(repeated, d.truth, d.cond.label).scores["Medical Groundedness"] == 3  # a repeated claim counts once
    assert oracle(narrative + " No doctor is needed, cut it off at home.", d.truth, d.cond.label).readable is False


@pytest.mark.parametrize(("narrative", "why"), [
    ("", "empty"),
    ("Lorem ipsum dolor sit amet.", "no complete description"),
    ("The image shows a red lesion on the arm. The answer is melanoma.", "no complete description"),
    ("The image shows two small red lesions with well-defined round borders on the trunk. The answer is shingles.",
     "unknown diagnosis 'shingles'"),
    ("The image shows two small red lesions with well-defined round borders on the trunk. The answer is melanoma. "
     "The answer is vitiligo.", "two different diagnoses"),
    ("The image shows two small red lesions with well-defined round borders on the trunk. The image shows a single "
     "large black lesion with irregular, asymmetric borders on the arm.", "two different ways"),
    ("The image shows two small red lesions with well-defined round borders on the trunk. Differential diagnoses "
     "include melanoma and gout.", "unknown differential diagnosis 'gout'"),
])
def test_an_unreadable_narrative_is_reported_never_scored_zero(narrative, why):
    d = draw_case(0)
    reading = oracle(narrative, d.truth, d.cond.label)
    assert not reading.readable and reading.scores is None and reading.macro is None
    assert why in reading.reason
    assert isinstance(read_claims(narrative), str)


def test_a_vague_narrative_is_read_as_vague():
    d = draw_case(4)  # index 4: the vague tier
    assert d.tier == "vague"
    reading = oracle(render_narrative(d.claims), d.truth, d.cond.label)
    assert reading.readable and reading.claims.findings is None and reading.scores["Description Precision"] == 1


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="unknown condition label 'gout'"):
        oracle("x", draw_case(0).truth, "gout")
