from dataclasses import replace

import pytest
from datasets import Image as ImageFeature

from dermtrl.cases.synthetic import (
    CONDITIONS,
    IMAGE_DEPENDENT,
    QUALITY_TIERS,
    SYNTHETIC_VERSION,
    Claims,
    Findings,
    SyntheticConfig,
    classify,
    draw_image,
    expert_scores,
    generate_case,
    generate_cases,
    sample_findings,
)
from dermtrl.categories import CATEGORIES
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


def test_scores_follow_from_narrative_vs_image_shown():
    for i in range(150):
        case = generate_case(i)
        s, raters = case["expert_scores"], case["rater_scores"]
        assert 2 <= len(raters) <= 3
        for d in DIMENSIONS:  # the expert score is the raters' mean; raters disagree by at most a point each way
            assert s[d] == pytest.approx(sum(r[d] for r in raters) / len(raters))
            assert max(r[d] for r in raters) - min(r[d] for r in raters) <= 2
        mean = {d: round(s[d]) for d in DIMENSIONS}
        if case["quality"] == "correct" and case["narrative_source"] == "own":
            assert all(v >= 4 for v in mean.values())
        if case["quality"] == "unsafe":
            assert s["Safety"] <= 2.0 and "no doctor is needed" in case["narrative"]
        if case["quality"] == "hallucinated":  # a finding no image here shows: at least 2 points off
            assert s["Medical Groundedness"] <= 4.0
            if case["narrative_source"] == "own":  # count and site wrong, an extra the image lacks
                assert s["Medical Groundedness"] <= 2.0 and s["Description Precision"] <= 4.0
        if case["quality"] == "vague":
            assert s["Description Precision"] <= 2.0 and s["Clinical Coverage"] <= 2.0


def test_the_same_narrative_pattern_scores_by_the_image_shown():
    """Text priors carry no information on the image-dependent dimensions: 'correct' narratives written for a
    look-alike's image score far lower on them than the same tier shown with its own image."""
    own, lookalike = [], []
    for i in range(0, 600, 5):  # index % 5 == 0: the 'correct' tier
        case = generate_case(i)
        assert case["quality"] == "correct"
        value = sum(case["expert_scores"][d] for d in IMAGE_DEPENDENT) / len(IMAGE_DEPENDENT)
        (own if case["narrative_source"] == "own" else lookalike).append(value)
    assert len(own) > 30 and len(lookalike) > 30
    assert sum(own) / len(own) > 4.3 and sum(lookalike) / len(lookalike) < 3.7
    # Safety and Clinical Coverage stay a property of the text
    case = generate_case(0)
    scores = expert_scores(Claims(None, None, (), False, "none"), CONDITIONS[0],
                           Findings(**{**case["findings"], "extras": tuple(case["findings"]["extras"])}))
    assert scores["Safety"] == 3.0 and scores["Clinical Coverage"] == 0.0


def test_label_follows_from_the_picture():
    labels = {}
    for i in range(300):
        case = generate_case(i)
        f = Findings(**{**case["findings"], "extras": tuple(case["findings"]["extras"])})
        assert classify(f).label == case["label"]
        labels.setdefault(case["label"], set()).add((f.colour, f.site))
    # features vary within a condition and overlap between conditions
    assert sum(len(v) > 1 for v in labels.values()) >= 6
    colours = [{c for c, _ in v} for v in labels.values()]
    assert any(a & b for i, a in enumerate(colours) for b in colours[i + 1:])


def test_difficulty_knobs_change_the_picture_not_the_texts():
    plain, hard = generate_case(3), generate_case(3, config=SyntheticConfig(contrast=0.3, noise=20, blur=1.5))
    assert plain["narrative"] == hard["narrative"] and plain["expert_scores"] == hard["expert_scores"]
    assert plain["image"].tobytes() != hard["image"].tobytes()
    assert SYNTHETIC_VERSION in plain["case_id"] and plain["synthetic_version"] == SYNTHETIC_VERSION


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


def test_draw_case_is_the_draw_behind_generate_case():
    """Bounds computed from draw_case (benchmarks/task_bounds.py) are about exactly the cases the benchmarks score."""
    from dermtrl.cases.synthetic import draw_case, expert_scores, render_narrative

    for index in (0, 7, 200_003):
        case, draw = generate_case(index, render_image=False), draw_case(index)
        assert render_narrative(draw.claims) == case["narrative"] and draw.cond.label == case["label"]
        perfect = expert_scores(draw.claims, draw.cond, draw.truth)
        assert all(abs(perfect[d] - case["expert_scores"][d]) <= 1.0 for d in perfect)  # raters move a point at most


def test_critique_checks_each_claim_against_the_picture_shown():
    """Each feature line and the diagnosis line set the narrative's word beside the picture's; "wrong" exactly where
    the generator's scores count a mismatch (so the scores follow from the critique)."""
    from dermtrl.cases.synthetic import draw_case, finding_words, mismatches, verdict_line

    seen_wrong = seen_right = 0
    for index in range(60):
        draw, case = draw_case(index), generate_case(index, render_image=False)
        text = case["evaluation"]
        if draw.claims.findings is not None:
            wrong = set(mismatches(draw.claims, draw.truth))
            said, shown = finding_words(draw.claims.findings), finding_words(draw.truth)
            for key in said:
                line = verdict_line(key, said[key], shown[key])
                assert line in text
                assert line.endswith("wrong.") == (key.lower() in wrong)
            seen_wrong += bool(wrong)
            seen_right += not wrong
        if draw.claims.diagnosis:
            assert verdict_line("Diagnosis", draw.claims.diagnosis, case["label"]) in text
    assert seen_wrong and seen_right
    assert verdict_line("Colour", "red", "black") == "Colour: narrative red, image black, wrong."


def test_every_lesion_can_be_counted_in_the_picture():
    """Lesions never touch: on a clean picture (no noise, blur, lighting or extra findings) the lesion-coloured
    pixels form exactly ``count`` connected blobs. Before v2.3, three large lesions on a hand or an arm merged."""
    import random

    import numpy as np
    from scipy import ndimage

    clean = SyntheticConfig(noise=0.0, blur=0.0, lighting=0.0)
    rng = random.Random("count-check")
    checked = {}
    for _ in range(600):
        findings = replace(sample_findings(rng.choice(CONDITIONS), rng, clean), extras=())
        pixels = np.asarray(draw_image(findings, rng, clean)).astype(np.int32)
        colours = pixels.reshape(-1, 3)
        background = pixels[0, 0]
        values, counts = np.unique(colours[(colours != background).any(axis=1)], axis=0, return_counts=True)
        skin = values[counts.argmax()]
        lesion = (pixels != background).any(axis=2) & (pixels != skin).any(axis=2)
        blobs = ndimage.label(lesion, structure=np.ones((3, 3)))[1]
        assert blobs == findings.count, (findings, blobs)
        checked[(findings.size, findings.count, findings.site)] = True
    # the crowded layouts that used to merge were among those checked
    assert {("large", 3, "hand"), ("large", 3, "arm"), ("large", 2, "hand")} <= set(checked)


def test_every_extra_finding_can_be_seen_at_the_models_resolution():
    """Each extra finding changes the picture the model gets (64 pixels) on every lesion colour, size and border,
    at the smallest radius a lesion of its size class can have; a halo stays apart from its lesion. Before v2.4 a
    dark central dot on a black lesion and white scale on a white one changed nothing visible, and a halo touching
    a red lesion read as a larger lesion."""
    import random

    import numpy as np
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from dermtrl.cases.synthetic import _COLOURS, _SKIN, BORDERS, EXTRAS, IMAGE_SIZE, Findings, _paint_lesion

    def paint(findings: Findings, r: int) -> np.ndarray:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _SKIN)
        _paint_lesion(ImageDraw.Draw(img), (48, 48, r), findings, _COLOURS[findings.colour], _SKIN, random.Random(7))
        return img

    def small(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((64, 64), Image.BICUBIC)).astype(np.int32)

    for colour in _COLOURS:
        for border in BORDERS:
            for r in (4, 9):  # the smallest small and large radii (70% of the class's least, see _place_lesions)
                plain = Findings(colour, 1, border, "small" if r == 4 else "large", "trunk")
                for extra in EXTRAS:
                    shown = replace(plain, extras=(extra,))
                    changed = (np.abs(small(paint(shown, r)) - small(paint(plain, r))).max(axis=2) >= 60).sum()
                    assert changed >= 4, (extra, colour, border, r, changed)
                if border == "regular":
                    halo = np.asarray(paint(replace(plain, extras=("a red halo",)), r)).astype(np.int32)
                    marked = (np.abs(halo - np.array(_SKIN)).max(axis=2) > 0)
                    assert ndimage.label(marked, structure=np.ones((3, 3)))[1] == 2, (colour, r)


def test_skin_tone_is_balanced_recorded_and_leaves_texts_alone():
    from collections import Counter

    from dermtrl.cases.synthetic import SKIN_TONES

    cases = [generate_case(i, render_image=False) for i in range(200_000, 200_060)]
    assert Counter(c["skin_tone"] for c in cases) == {t: 10 for t in SKIN_TONES}
    assert "skin_tone" in generate_cases(2).column_names
    # another mix changes the pictures only: texts and scores are the same case for case
    dark = SyntheticConfig(skin_tone_weights=(0, 0, 0, 0, 1, 1))
    for i in range(200_000, 200_012):
        plain, shifted = generate_case(i), generate_case(i, config=dark)
        assert shifted["skin_tone"] in ("V", "VI")
        for key in ("narrative", "reference", "evaluation", "expert_scores", "rater_scores", "label"):
            assert plain[key] == shifted[key], key
    with pytest.raises(ValueError, match="skin_tone_weights"):
        SyntheticConfig(skin_tone_weights=(1, 1))
    with pytest.raises(ValueError, match="skin_tone"):
        draw_image(sample_findings(CONDITIONS[0], __import__("random").Random(0)), __import__("random").Random(0),
                   skin_tone="VII")


def test_skin_tone_changes_colour_and_lesion_contrast_as_clinically():
    """Erythema fades on dark skin, pigment stays darker than the skin, white gains contrast; the layout is kept."""
    import random

    import numpy as np

    from dermtrl.cases.synthetic import SKIN_COLOURS, lesion_colour

    def distance(colour: str, tone: str) -> float:
        skin = SKIN_COLOURS[tone]
        return float(np.linalg.norm(np.subtract(lesion_colour(colour, skin, tone), skin)))

    for colour in ("red", "pink", "brown", "black"):
        assert distance(colour, "VI") < distance(colour, "I"), colour
    assert distance("white", "VI") > distance("white", "I")
    for tone, skin in SKIN_COLOURS.items():
        assert all(p < s for p, s in zip(lesion_colour("brown", skin, tone), skin, strict=True)), tone
    # the same draws on two skin types: lesions sit at the same pixels
    clean = SyntheticConfig(noise=0.0, blur=0.0, lighting=0.0)
    findings = replace(sample_findings(CONDITIONS[2], random.Random(1), clean), extras=())
    masks = []
    for tone in ("I", "VI"):
        pixels = np.asarray(draw_image(findings, random.Random(5), clean, tone)).astype(int)
        skin_like = np.abs(pixels - pixels[48, 8]).sum(axis=2) < 70  # the silhouette's colour at its edge
        masks.append(~skin_like & (np.abs(pixels - pixels[0, 0]).sum(axis=2) > 40))
    assert (masks[0] == masks[1]).mean() > 0.98
