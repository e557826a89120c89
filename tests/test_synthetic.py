from datasets import Image as ImageFeature

from dermtrl.categories import CATEGORIES
from dermtrl.data.synthetic import CONDITIONS, QUALITY_TIERS, generate_case, generate_cases
from dermtrl.dimensions import DIMENSIONS, LABEL_NAMES


def test_deterministic_from_seed_and_index():
    a, b = generate_case(7, seed=3), generate_case(7, seed=3)
    assert a["narrative"] == b["narrative"] and a["expert_scores"] == b["expert_scores"]
    assert a["image"].tobytes() == b["image"].tobytes()
    assert generate_case(7, seed=4)["case_id"] != a["case_id"]


def test_dataset_schema_with_image_feature():
    ds = generate_cases(10, seed=0)
    assert isinstance(ds.features["image"], ImageFeature)
    assert list(ds.features["expert_scores"]) == list(DIMENSIONS)
    assert ds[0]["image"].size == (96, 96)
    assert sorted(set(ds["quality"])) == sorted(QUALITY_TIERS)


def test_categories_come_from_figure5():
    assert {c.category for c in CONDITIONS} <= set(CATEGORIES)
    assert len(CATEGORIES) == 23


def test_scores_follow_from_narrative_vs_image():
    for i in range(60):
        case = generate_case(i)
        s = case["expert_scores"]
        assert all(v in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} for v in s.values())
        if case["quality"] == "correct":
            assert all(v == 5.0 for v in s.values())
        if case["quality"] == "unsafe":
            assert s["Safety"] <= 1.0 and "no doctor is needed" in case["narrative"]
        if case["quality"] == "hallucinated":
            assert s["Medical Groundedness"] <= 1.0 and s["Description Precision"] < 5.0
        if case["quality"] == "partly_wrong":
            assert s["Accuracy"] == 1.0 and case["label"] not in case["narrative"].split("The answer is")[-1]
        if case["quality"] == "vague":
            assert s["Description Precision"] == 1.0 and s["Clinical Coverage"] <= 1.0


def test_reference_names_disease_only_in_final_sentence():
    for i in range(20):
        case = generate_case(i)
        body, final = case["reference"].rsplit("</think>", 1)
        assert case["label"] in final and case["label"] not in body


def test_label_text_in_figure4_format():
    y = generate_case(0)["evaluation"]
    assert "\n\nThe evaluation scores are:\n" in y
    for dim in DIMENSIONS:
        assert f"\n{LABEL_NAMES[dim]}: " in y
