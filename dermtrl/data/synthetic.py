"""Synthetic dermatology-like cases for the embedded demo, the tests and the benchmarks.

These are NOT clinical data and must never be used to judge a model's medical ability. They exist so that
every code path (training, evaluation, judging, reports) runs offline on a laptop and so that tests have a
ground truth: each image is drawn from visible features (lesion colour, count, border, size, body site) that
determine its Figure-5 category, and each candidate narrative's six expert scores are *computed* by comparing
what the narrative claims with what the image shows. The scores are therefore learnable from (image,
narrative), not random, which is what a DermEval training run needs to show that it learns.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

from PIL import Image, ImageDraw, ImageFilter

from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import format_evaluation

IMAGE_SIZE = 96
QUALITY_TIERS: tuple[str, ...] = ("correct", "partly_wrong", "unsafe", "hallucinated", "vague")
SITES: tuple[str, ...] = ("face", "hand", "trunk", "arm")
_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 45),
    "pink": (235, 135, 150),
    "brown": (120, 70, 35),
    "black": (35, 25, 25),
    "white": (248, 244, 238),
}
_SKIN = (222, 184, 150)


@dataclass(frozen=True)
class Condition:
    """One synthetic condition: the visual signature that determines its label and Figure-5 category."""

    label: str
    category: str
    family: str
    colour: str
    count: tuple[int, int]
    border: str  # regular | irregular | annular
    size: str  # small | large
    site: str
    red_flag: bool  # warrants prompt specialist review


CONDITIONS: tuple[Condition, ...] = (
    Condition("acne vulgaris", "Acne and Rosacea Photos", "inflammatory follicular disorders",
              "red", (6, 10), "regular", "small", "face", False),
    Condition("plaque psoriasis", "Psoriasis pictures Lichen Planus and related diseases",
              "papulosquamous disorders", "pink", (2, 3), "regular", "large", "arm", False),
    Condition("melanoma", "Melanoma Skin Cancer Nevi and Moles", "melanocytic neoplasms",
              "black", (1, 1), "irregular", "large", "trunk", True),
    Condition("seborrheic keratosis", "Seborrheic Keratoses and other Benign Tumors",
              "benign epidermal tumours", "brown", (1, 1), "regular", "large", "trunk", False),
    Condition("tinea corporis", "Tinea Ringworm Candidiasis and other Fungal Infections",
              "superficial fungal infections", "red", (1, 2), "annular", "large", "arm", False),
    Condition("cherry angioma", "Vascular Tumors", "benign vascular proliferations",
              "red", (2, 4), "regular", "small", "trunk", False),
    Condition("vitiligo", "Light Diseases and Disorders of Pigmentation", "pigmentary disorders",
              "white", (1, 3), "irregular", "large", "hand", False),
    Condition("basal cell carcinoma",
              "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
              "keratinocyte carcinomas", "pink", (1, 1), "irregular", "small", "face", True),
)
_BY_LABEL = {c.label: c for c in CONDITIONS}
_COUNT_WORDS = {1: "a single", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine", 10: "ten"}
_HALLUCINATIONS = ("ulceration with active bleeding", "a thick yellow crust", "satellite pustules",
                   "a central punctum draining pus", "blue-grey veil with regression structures")


@dataclass(frozen=True)
class Findings:
    """What an image shows, or what a narrative claims it shows."""

    colour: str
    count: int
    border: str
    size: str
    site: str


@dataclass(frozen=True)
class Claims:
    """What a candidate narrative asserts; the expert scores follow from comparing it with the image."""

    findings: Findings | None  # None: no description at all
    diagnosis: str | None
    differentials: tuple[str, ...] = ()
    reasoning: bool = True
    advice: str = "safe"  # safe | unsafe | none
    hallucinations: tuple[str, ...] = field(default_factory=tuple)


def draw_image(cond: Condition, findings: Findings, rng: random.Random) -> Image.Image:
    """Draw the body site as a skin-coloured silhouette and the lesions on it."""
    s = IMAGE_SIZE
    bg = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in (70, 90, 110))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    skin = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in _SKIN)
    if findings.site == "face":
        d.ellipse((14, 6, s - 14, s - 4), fill=skin)
    elif findings.site == "hand":
        d.rounded_rectangle((20, 40, s - 20, s - 4), 10, fill=skin)
        for i in range(4):
            x = 22 + i * 14
            d.rounded_rectangle((x, 8, x + 10, 46), 5, fill=skin)
    elif findings.site == "trunk":
        d.rectangle((4, 4, s - 4, s - 4), fill=skin)
    else:  # arm
        d.rounded_rectangle((0, 26, s, s - 26), 16, fill=skin)
    colour = _COLOURS[findings.colour]
    radius = (4, 6) if findings.size == "small" else (12, 17)
    centre_box = {"face": (30, 20, 66, 80), "hand": (30, 50, 66, 84), "trunk": (20, 20, 76, 76),
                  "arm": (20, 38, 76, 58)}[findings.site]
    for _ in range(findings.count):
        r = rng.randint(*radius)
        cx, cy = rng.randint(centre_box[0], centre_box[2]), rng.randint(centre_box[1], centre_box[3])
        box = (cx - r, cy - r, cx + r, cy + r)
        if findings.border == "annular":
            d.ellipse(box, outline=colour, width=3)
        elif findings.border == "irregular":
            pts = []
            for k in range(10):
                ang = 2 * math.pi * k / 10
                rr = r * rng.uniform(0.6, 1.25)
                pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
            d.polygon(pts, fill=colour)
        else:
            d.ellipse(box, fill=colour)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def describe(f: Findings) -> str:
    noun = "lesion" if f.count == 1 else "lesions"
    border = {"regular": "well-defined round borders", "irregular": "irregular, asymmetric borders",
              "annular": "an annular border with central clearing"}[f.border]
    return f"{_COUNT_WORDS[f.count]} {f.size} {f.colour} {noun} with {border} on the {f.site}"


def reference_narrative(cond: Condition, f: Findings) -> str:
    """A certified-style narrative in the paper's hierarchical form; the disease is named only at the end."""
    return (
        f"<think> First, I observe {describe(f)}. "
        f"Next, I consider the broad family: these features point to {cond.family}. "
        f"The {f.colour} colour, {f.border} border and {f.size} size narrow the possibilities within that family. "
        + ("These features warrant prompt specialist review. " if cond.red_flag else "")
        + f"</think> Finally, based on the above analysis, the most likely diagnosis is {cond.label}."
    )


def _wrong(rng: random.Random, value, options):
    return rng.choice([o for o in options if o != value])


def make_claims(tier: str, cond: Condition, truth: Findings, rng: random.Random) -> Claims:
    """Candidate claims of a given quality tier (the narrative is rendered from these)."""
    others = [c.label for c in CONDITIONS if c.label != cond.label]
    diffs = tuple(rng.sample(others, 2))
    if tier == "correct":
        return Claims(truth, cond.label, diffs, True, "safe")
    if tier == "partly_wrong":
        wrong = _wrong(rng, cond.label, [c.label for c in CONDITIONS])
        wc = _BY_LABEL[wrong]
        f = replace(truth, colour=wc.colour if wc.colour != truth.colour else truth.colour,
                    border=wc.border)
        return Claims(f, wrong, diffs[:1], True, "safe")
    if tier == "unsafe":
        return Claims(truth, cond.label, diffs[: rng.randint(0, 2)], True, "unsafe")
    if tier == "hallucinated":
        f = replace(truth, count=_wrong(rng, truth.count, range(1, 11)), site=_wrong(rng, truth.site, SITES))
        return Claims(f, cond.label, diffs[:1], True, "safe", tuple(rng.sample(_HALLUCINATIONS, 2)))
    if tier == "vague":
        return Claims(None, rng.choice([None, cond.label]), (), False, "none")
    raise ValueError(f"unknown quality tier {tier!r}; expected one of {QUALITY_TIERS}")


def render_narrative(c: Claims, cond: Condition) -> str:
    parts: list[str] = []
    if c.findings is None:
        parts.append("There is something on the skin. It could be a rash or some irritation.")
    else:
        parts.append(f"The image shows {describe(c.findings)}.")
    parts.extend(f"I also note {h}." for h in c.hallucinations)
    if c.reasoning and c.findings is not None and c.diagnosis:
        parts.append(f"These features are typical of {_BY_LABEL[c.diagnosis].family}.")
    if c.differentials:
        parts.append("Differential diagnoses include " + " and ".join(c.differentials) + ".")
    if c.advice == "safe":
        parts.append("A dermatologist should confirm the diagnosis; seek care promptly if it changes or bleeds."
                     if cond.red_flag else "A dermatologist can confirm the diagnosis and advise on treatment.")
    elif c.advice == "unsafe":
        parts.append("This is harmless: no doctor is needed, and you can scratch or cut it off at home.")
    if c.diagnosis:
        parts.append(f"The answer is {c.diagnosis}.")
    return " ".join(parts)


def expert_scores(c: Claims, cond: Condition, truth: Findings) -> dict[str, float]:
    """The six scores a careful rater would give, derived from claims vs. image (integers on 0-5)."""
    if c.diagnosis == cond.label:
        acc = 5 if c.findings is not None else 3  # right answer, but unsupported by any description
    elif c.diagnosis is None:
        acc = 0
    else:
        acc = 1
    wrong_features = 0 if c.findings is None else sum(
        getattr(c.findings, k) != getattr(truth, k) for k in ("colour", "count", "border", "size", "site"))
    desc = 1 if c.findings is None else max(0, 5 - wrong_features)
    medg = max(0, 5 - 2 * len(c.hallucinations) - (1 if acc < 5 and c.diagnosis else 0))
    safety = {"safe": 5, "unsafe": 0 if cond.red_flag else 1, "none": 3}[c.advice]
    cover = (c.findings is not None) + bool(c.reasoning) + min(2, len(c.differentials)) + bool(c.diagnosis)
    if c.findings is None:
        reason = 1
    else:
        coherent = c.diagnosis is not None and _BY_LABEL[c.diagnosis].colour == c.findings.colour
        reason = (5 if coherent else 2) - (1 if c.hallucinations else 0)
    values = (acc, safety, medg, cover, reason, desc)
    return {d: float(v) for d, v in zip(DIMENSIONS, values, strict=True)}


def critique(c: Claims, cond: Condition, truth: Findings, scores: dict[str, float]) -> str:
    """A short evaluation text in the spirit of Figure 4's label, grounded in the image's true findings."""
    s = [f"The image depicts {describe(truth)}."]
    if c.diagnosis == cond.label:
        s.append(f"The narrative's diagnosis of {c.diagnosis} is consistent with these findings.")
    elif c.diagnosis:
        s.append(f"The narrative concludes {c.diagnosis}, but the findings favour {cond.label}.")
    else:
        s.append("The narrative gives no diagnosis.")
    if c.findings is None:
        s.append("It does not describe the lesions.")
    elif scores["Description Precision"] < 5:
        s.append(f"It describes {describe(c.findings)}, which does not match the image.")
    if c.hallucinations:
        s.append("It reports findings that are not visible: " + " and ".join(c.hallucinations) + ".")
    if c.advice == "unsafe":
        s.append("Its advice to avoid medical care and self-treat is unsafe.")
    if not c.differentials:
        s.append("No differential diagnosis is offered.")
    return " ".join(s)


def generate_case(index: int, seed: int = 0, tier: str | None = None) -> dict:
    """One case, reproducible from (seed, index) alone so any slice of a dataset can be regenerated."""
    rng = random.Random(f"dermtrl-synthetic:{seed}:{index}")
    cond = CONDITIONS[rng.randrange(len(CONDITIONS))]
    truth = Findings(cond.colour, rng.randint(*cond.count), cond.border, cond.size, cond.site)
    tier = tier or QUALITY_TIERS[index % len(QUALITY_TIERS)]
    claims = make_claims(tier, cond, truth, rng)
    scores = expert_scores(claims, cond, truth)
    return {
        "case_id": f"synth-{seed}-{index:06d}",
        "image": draw_image(cond, truth, rng),
        "category": cond.category,
        "label": cond.label,
        "findings": asdict(truth),
        "reference": reference_narrative(cond, truth),
        "narrative": render_narrative(claims, cond),
        "quality": tier,
        "expert_scores": scores,
        "evaluation": format_evaluation(critique(claims, cond, truth, scores), scores),
    }


def features():
    """The `datasets` schema of synthetic cases (an `Image` feature, six named score fields)."""
    from datasets import Features, Image, Value

    return Features({
        "case_id": Value("string"),
        "image": Image(),
        "category": Value("string"),
        "label": Value("string"),
        "findings": {"colour": Value("string"), "count": Value("int32"), "border": Value("string"),
                     "size": Value("string"), "site": Value("string")},
        "reference": Value("string"),
        "narrative": Value("string"),
        "quality": Value("string"),
        "expert_scores": {d: Value("float32") for d in DIMENSIONS},
        "evaluation": Value("string"),
    })


def generate_cases(n: int, seed: int = 0, start: int = 0):
    """``n`` synthetic cases as a `datasets.Dataset`; quality tiers cycle so every slice is balanced."""
    from datasets import Dataset

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = [generate_case(i, seed) for i in range(start, start + n)]
    return Dataset.from_list(rows, features=features())
