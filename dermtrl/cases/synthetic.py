"""Synthetic dermatology-like cases (v2) for the embedded demo, the tests and the benchmarks.

These are NOT clinical data and must never be used to judge a model's medical ability. They exist so that
every code path (training, evaluation, judging, reports) runs offline on a laptop, and so that an evaluator
*has to look at the image* to score well:

* **Visual features vary within each condition and overlap between conditions.** Each condition draws its
  colour, count, size, site, border and extra findings from its own distribution; a case keeps its label only
  when its features are most likely under that condition, so the label follows from the picture.
* **Text alone does not give the image-dependent scores away.** Every candidate narrative is written for a
  *source* image by a quality tier (correct, partly wrong, unsafe, hallucinated, vague). With probability
  ``lookalike_rate`` the case shows a look-alike image instead (same condition with other features, or another
  condition sharing features), and the six expert scores are computed against the image actually shown. The
  same fluent "correct" narrative therefore scores 5 with its own picture and poorly with a look-alike's.
  Accuracy, Medical Groundedness, Reasoning Coherence and Description Precision need the image; Safety and
  Clinical Coverage are judgeable from the text, as they are clinically.
* **Skin tone.** Each case has a Fitzpatrick type I-VI (``skin_tone``), balanced by default. The skin is drawn in
  that type's colour and the lesions change contrast as they do clinically: erythema (red, pink) fades on darker
  skin, pigmented lesions (brown, black) lie closer to dark skin, and depigmented (white) ones stand out more. An
  evaluator's error can therefore be sliced by skin tone (``--by skin_tone``) on data where the answer is known.
* **Rater noise as in the paper's regular stream.** Two or three simulated raters score each text with small
  seeded disagreements; ``expert_scores`` is their mean (non-integer) and ``rater_scores`` keeps every rater.

Difficulty is set by :class:`SyntheticConfig` (lesion contrast and size, image noise, blur, lighting,
distractor findings, the look-alike rate, rater noise). :data:`SYNTHETIC_VERSION` is part of every case id, of
the dataset cards and of every report that uses these cases.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

from PIL import Image, ImageDraw, ImageFilter

from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import format_evaluation

#: v2.2: the v2 cases (the same images, narratives and expert scores) with the point-by-point critique in y*, each
#: claim and the picture's finding a few tokens apart ("Colour: narrative pink, image brown, wrong.").
#: v2.3: the same texts and expert scores; lesions never touch (before, three large lesions on a hand or an arm were
#: drawn as one blob, so the picture showed another count than the scores were computed for).
#: v2.4: the same texts and expert scores; every extra finding can be seen (see ``_paint_lesion``).
#: v2.5: the same texts, expert scores and lesion layouts; each case has a Fitzpatrick skin type (``skin_tone``) that
#: sets the skin's colour and the lesions' contrast against it (see ``lesion_colour``).
SYNTHETIC_VERSION = "v2.5"
_STREAM = "v2"  # the seeded stream the cases are drawn from: unchanged since v2
IMAGE_SIZE = 96
QUALITY_TIERS: tuple[str, ...] = ("correct", "partly_wrong", "unsafe", "hallucinated", "vague")
SITES: tuple[str, ...] = ("face", "hand", "trunk", "arm")
BORDERS: tuple[str, ...] = ("regular", "irregular", "annular")
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 40),
    "pink": (245, 120, 170),
    "brown": (125, 75, 30),
    "black": (25, 20, 25),
    "white": (250, 250, 245),
}
#: Extra findings that an image may show and a narrative may claim (a claim the image does not show is a
#: hallucination, so Medical Groundedness needs the image).
EXTRAS: tuple[str, ...] = ("fine white scale", "a dark central dot", "a red halo")
_SKIN = (222, 184, 150)  # the one skin colour of images drawn without a skin type (the tiny base's pretraining)
_FEATURES = ("colour", "count", "border", "size", "site")
#: Fitzpatrick skin types, lightest to darkest. Type I-II, III-IV and V-VI are the groups DDI reports.
SKIN_TONES: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI")
#: The skin colour drawn for each type (sRGB, before the per-case jitter of +/-20 per channel).
SKIN_COLOURS: dict[str, tuple[int, int, int]] = {
    "I": (244, 214, 190), "II": (232, 192, 162), "III": (214, 166, 126),
    "IV": (178, 126, 88), "V": (124, 82, 54), "VI": (78, 52, 38),
}
#: A pigmented (brown or black) lesion is darker than the skin around it: no channel above this share of the skin's.
#: On dark skin brown and black then lie close to each other and to the skin, as they do clinically.
PIGMENT_CEILING = 0.6


@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty knobs of the synthetic cases; the defaults leave a small evaluator clear headroom.

    Args:
        contrast: how far a lesion's colour departs from the skin (1.0: full colour, 0.3: faint).
        lesion_scale: multiplies every lesion radius (small lesions fall below one 8-pixel patch near 0.6).
        noise: standard deviation of per-pixel Gaussian noise (0-255 scale).
        blur: Gaussian blur radius in pixels.
        lighting: amplitude of a random linear brightness gradient across the image (0: even light).
        distractor_rate: probability that an image shows an extra finding (scale, central dot, halo) that its
            condition does not explain.
        lookalike_rate: share of cases that show a look-alike image instead of the one the narrative was
            written for (0.5: a narrative's text says nothing about whether it matches the image).
        rater_noise: probability that a simulated rater moves a score by one point.
        raters: inclusive range of the number of raters per text.
        min_gap: the least gap in pixels (of the 96-pixel picture) between two lesions' paint; a lesion that does
            not fit is shrunk within its size class (see ``_place_lesions``).
        skin_tone_weights: the mix of Fitzpatrick types I-VI, six weights. ``None`` (the default) balances them
            exactly: case ``i`` has type ``SKIN_TONES[i % 6]``, so any six consecutive cases hold each type once.
            With weights, each case's type is drawn from its own seeded stream (the texts and the rest of the
            picture stay the same).
    """

    contrast: float = 1.0
    lesion_scale: float = 1.0
    noise: float = 6.0
    blur: float = 0.6
    lighting: float = 0.15
    distractor_rate: float = 0.25
    lookalike_rate: float = 0.5
    rater_noise: float = 0.2
    raters: tuple[int, int] = (2, 3)
    min_gap: float = 6.0
    skin_tone_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        w = self.skin_tone_weights
        if w is not None and (len(w) != len(SKIN_TONES) or any(x < 0 for x in w) or sum(w) <= 0):
            raise ValueError(f"skin_tone_weights must be {len(SKIN_TONES)} non-negative weights for Fitzpatrick "
                             f"types {', '.join(SKIN_TONES)} with a positive sum, got {w!r}")


DEFAULT_CONFIG = SyntheticConfig()


@dataclass(frozen=True)
class Condition:
    """One synthetic condition: distributions over the visual features that determine its label."""

    label: str
    category: str
    family: str
    colour: dict[str, float]
    count: dict[int, float]
    border: dict[str, float]
    size: dict[str, float]
    site: dict[str, float]
    extra: str | None  # the extra finding typical of the condition (drawn more often)
    red_flag: bool  # warrants prompt specialist review

    def likelihood(self, f: Findings) -> float:
        return (self.colour.get(f.colour, 0.0) * self.count.get(f.count, 0.0) * self.border.get(f.border, 0.0)
                * self.size.get(f.size, 0.0) * self.site.get(f.site, 0.0))


CONDITIONS: tuple[Condition, ...] = (
    Condition("acne vulgaris", "Acne and Rosacea Photos", "inflammatory follicular disorders",
              {"red": .6, "pink": .4}, {3: .5, 4: .5}, {"regular": 1.0}, {"small": 1.0},
              {"face": .6, "trunk": .4}, "a red halo", False),
    Condition("plaque psoriasis", "Psoriasis pictures Lichen Planus and related diseases",
              "papulosquamous disorders", {"pink": .6, "red": .4}, {1: .3, 2: .4, 3: .3},
              {"regular": .5, "irregular": .5}, {"large": 1.0}, {"arm": .6, "trunk": .4}, "fine white scale", False),
    Condition("melanoma", "Melanoma Skin Cancer Nevi and Moles", "melanocytic neoplasms",
              {"black": .6, "brown": .4}, {1: 1.0}, {"irregular": 1.0}, {"large": .7, "small": .3},
              {"trunk": .5, "arm": .3, "face": .2}, None, True),
    Condition("seborrheic keratosis", "Seborrheic Keratoses and other Benign Tumors",
              "benign epidermal tumours", {"brown": .7, "black": .3}, {1: .6, 2: .4}, {"regular": 1.0},
              {"large": .6, "small": .4}, {"trunk": .6, "face": .4}, "a dark central dot", False),
    Condition("tinea corporis", "Tinea Ringworm Candidiasis and other Fungal Infections",
              "superficial fungal infections", {"red": .6, "pink": .4}, {1: .6, 2: .4}, {"annular": 1.0},
              {"large": 1.0}, {"arm": .5, "trunk": .5}, "fine white scale", False),
    Condition("cherry angioma", "Vascular Tumors", "benign vascular proliferations",
              {"red": .8, "pink": .2}, {2: .4, 3: .3, 4: .3}, {"regular": 1.0}, {"small": 1.0},
              {"trunk": .7, "arm": .3}, None, False),
    Condition("vitiligo", "Light Diseases and Disorders of Pigmentation", "pigmentary disorders",
              {"white": 1.0}, {1: .4, 2: .3, 3: .3}, {"irregular": 1.0}, {"large": 1.0},
              {"hand": .6, "face": .4}, None, False),
    Condition("basal cell carcinoma",
              "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions",
              "keratinocyte carcinomas", {"pink": .7, "red": .3}, {1: 1.0}, {"irregular": .6, "regular": .4},
              {"small": 1.0}, {"face": .8, "hand": .2}, "a dark central dot", True),
)
_BY_LABEL = {c.label: c for c in CONDITIONS}
_COUNT_WORDS = {1: "a single", 2: "two", 3: "three", 4: "four"}
NON_EXTRA_HALLUCINATIONS = ("ulceration with active bleeding", "a thick yellow crust", "satellite pustules")


@dataclass(frozen=True)
class Findings:
    """What an image shows, or what a narrative claims it shows."""

    colour: str
    count: int
    border: str
    size: str
    site: str
    extras: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claims:
    """What a candidate narrative asserts; the expert scores follow from comparing it with the image shown."""

    findings: Findings | None  # None: no description at all
    diagnosis: str | None
    differentials: tuple[str, ...] = ()
    reasoning: bool = True
    advice: str = "safe"  # safe | unsafe | none
    hallucinations: tuple[str, ...] = field(default_factory=tuple)  # claims no image of this kind shows


def _pick(rng: random.Random, dist: dict) -> object:
    keys = list(dist)
    return rng.choices(keys, weights=[dist[k] for k in keys])[0]


def classify(f: Findings) -> Condition:
    """The condition under which these features are most likely (ties: the first in CONDITIONS)."""
    return max(CONDITIONS, key=lambda c: c.likelihood(f))


def sample_findings(cond: Condition, rng: random.Random, config: SyntheticConfig = DEFAULT_CONFIG) -> Findings:
    """Features drawn from ``cond``'s distributions, redrawn until ``cond`` is their most likely condition."""
    for _ in range(200):
        f = Findings(_pick(rng, cond.colour), _pick(rng, cond.count), _pick(rng, cond.border),
                     _pick(rng, cond.size), _pick(rng, cond.site))
        if classify(f) is cond:
            break
    extras: list[str] = []
    if cond.extra and rng.random() < 0.5:
        extras.append(cond.extra)
    if rng.random() < config.distractor_rate:
        extras.append(rng.choice(EXTRAS))
    return replace(f, extras=tuple(e for e in EXTRAS if e in extras))


def skin_tone_of(index: int, seed: int = 0, config: SyntheticConfig = DEFAULT_CONFIG) -> str:
    """The Fitzpatrick type of case ``index``: balanced by index, or drawn from ``config.skin_tone_weights``."""
    if config.skin_tone_weights is None:
        return SKIN_TONES[index % len(SKIN_TONES)]
    rng = random.Random(f"dermtrl-synthetic-skin:{seed}:{index}")
    return rng.choices(SKIN_TONES, weights=config.skin_tone_weights)[0]


def lesion_colour(colour: str, skin: tuple[int, ...], skin_tone: str | None,
                  contrast: float = 1.0) -> tuple[int, ...]:
    """A lesion's paint on this skin: erythema fades on darker types, pigment stays darker than the skin.

    Erythema lies under the epidermis, so it is seen through the skin's melanin: its colour is filtered by the
    skin's transmittance relative to type I (each channel times skin / type-I skin). A pink lesion on type VI skin is
    then a dusky patch close to the skin, as it is clinically. ``skin_tone=None`` keeps the pre-v2.5 rule (the named
    colour at ``contrast``), which the tiny base was pretrained on.
    """
    target = _COLOURS[colour]
    if skin_tone is not None:
        if colour in ("red", "pink"):
            light = SKIN_COLOURS["I"]
            target = tuple(round(t * min(1.0, c / w)) for t, c, w in zip(target, skin, light, strict=True))
        elif colour in ("brown", "black"):
            target = tuple(min(t, round(PIGMENT_CEILING * c)) for t, c in zip(target, skin, strict=True))
    return tuple(round(c + contrast * (t - c)) for c, t in zip(skin, target, strict=True))


def draw_image(findings: Findings, rng: random.Random, config: SyntheticConfig = DEFAULT_CONFIG,
               skin_tone: str | None = None) -> Image.Image:
    """Draw the body site as a skin-coloured silhouette, the lesions and extra findings on it, then degrade.

    ``skin_tone`` (a Fitzpatrick type) sets the skin's colour and the lesions' contrast; the layout and the random
    draws are the same for every type, so one case drawn on six skin types differs only in colour.
    """
    if skin_tone is not None and skin_tone not in SKIN_COLOURS:
        raise ValueError(f"skin_tone must be one of {', '.join(SKIN_TONES)} or None, got {skin_tone!r}")
    s = IMAGE_SIZE
    bg = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in (70, 90, 110))
    img = Image.new("RGB", (s, s), bg)
    d = ImageDraw.Draw(img)
    base = _SKIN if skin_tone is None else SKIN_COLOURS[skin_tone]
    skin = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in base)
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
    colour = lesion_colour(findings.colour, skin, skin_tone, config.contrast)
    halo = _HALO if skin_tone is None else lesion_colour("red", skin, skin_tone)  # a halo is erythema too
    for cx, cy, r in _place_lesions(findings, rng, config):
        _paint_lesion(d, (cx, cy, r), findings, colour, skin, rng, halo)
    return _degrade(img, rng, config)


#: Ink of the extra findings. A dark dot on a black or brown lesion gets a pale rim, white scale on a white lesion a
#: dark one; otherwise each mark stands out from the lesion by itself.
_DOT, _SCALE, _HALO, _RIM_LIGHT, _RIM_DARK = (10, 10, 30), (255, 255, 255), (225, 70, 70), (235, 225, 210), (60, 60, 70)


def _paint_lesion(d: ImageDraw.ImageDraw, lesion: tuple[int, int, int], findings: Findings, colour: tuple[int, ...],
                  skin: tuple[int, ...], rng: random.Random, halo: tuple[int, ...] = _HALO) -> None:
    """One lesion and the extra findings on it, each large enough to survive the 64-pixel model input.

    v2.4: before, a dark central dot on a black lesion and white scale on a white one were invisible, a small
    lesion's dot was one or two pixels across, and a halo touching a red lesion read as a larger lesion. Now the dot
    is at least 5 pixels across (with a pale rim on a dark lesion), scale flecks on a white lesion have a dark rim,
    and a ring of skin separates the halo from the lesion.
    """
    cx, cy, r = lesion
    if "a red halo" in findings.extras:
        h = _reach(findings, r) - 1  # the ring's outer edge; ``_reach`` keeps it clear of neighbouring lesions
        d.ellipse((cx - h, cy - h, cx + h, cy + h), fill=halo)
        d.ellipse((cx - h + 3, cy - h + 3, cx + h - 3, cy + h - 3), fill=skin)
    bb = (cx - r, cy - r, cx + r, cy + r)
    if findings.border == "annular":
        d.ellipse(bb, outline=colour, width=3)
    elif findings.border == "irregular":
        pts = []
        for k in range(10):
            ang = 2 * math.pi * k / 10
            rr = r * rng.uniform(0.55, 1.3)
            pts.append((cx + rr * math.cos(ang), cy + rr * math.sin(ang)))
        d.polygon(pts, fill=colour)
    else:
        d.ellipse(bb, fill=colour)
    if "fine white scale" in findings.extras:
        for _fleck in range(5):
            dx, dy = rng.randint(-r + 1, r - 1), rng.randint(-r + 1, r - 1)
            if findings.colour == "white":
                d.rectangle((cx + dx - 2, cy + dy - 2, cx + dx + 2, cy + dy + 2), fill=_RIM_DARK)
            d.rectangle((cx + dx - 1, cy + dy - 1, cx + dx + 1, cy + dy + 1), fill=_SCALE)
    if "a dark central dot" in findings.extras:
        q = max(2, r // 3)
        if findings.colour in ("black", "brown"):
            d.ellipse((cx - q - 2, cy - q - 2, cx + q + 2, cy + q + 2), fill=_RIM_LIGHT)
        d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=_DOT)


#: Where lesion centres may fall on each body site (pixel boxes in the 96-pixel picture).
_SITE_BOXES = {"face": (28, 20, 68, 80), "hand": (28, 48, 68, 84), "trunk": (20, 20, 76, 76), "arm": (12, 38, 84, 58)}


def _reach(findings: Findings, r: int) -> float:
    """How far a lesion's paint reaches from its centre: irregular outlines stick out, a halo rings it."""
    reach = 1.3 * r if findings.border == "irregular" else float(r)
    return reach + 6.0 if "a red halo" in findings.extras else reach  # 2 pixels of skin, a 3-pixel ring, 1 spare


def _place_lesions(findings: Findings, rng: random.Random, config: SyntheticConfig) -> list[tuple[int, int, int]]:
    """Centres and radii of ``findings.count`` lesions that never touch, so the count can be read off the picture.

    Whole layouts are drawn at random until one keeps every gap at least ``config.min_gap``; when none does, every
    radius shrinks by a pixel (never below 70% of its size class's smallest radius, so a large lesion stays larger
    than any small one) and the search goes on. If even that fails, the layout with the widest gap is drawn. Before
    v2.3 lesions were placed one by one and could overlap: three large lesions on a hand were one blob.
    """
    base = (5, 7) if findings.size == "small" else (13, 17)
    low, high = (max(2, round(b * config.lesion_scale)) for b in base)
    floor = max(2, round(0.7 * low))
    box = _SITE_BOXES[findings.site]
    radii = [rng.randint(low, high) for _ in range(findings.count)]
    best: tuple[float, list[tuple[int, int, int]]] | None = None
    for shrink in range(high - floor + 1):
        rs = [max(floor, r - shrink) for r in radii]
        reach = [_reach(findings, r) for r in rs]
        for _attempt in range(200):
            centres = [(rng.randint(box[0], box[2]), rng.randint(box[1], box[3])) for _ in rs]
            gap = min((math.hypot(centres[i][0] - centres[j][0], centres[i][1] - centres[j][1]) - reach[i] - reach[j]
                       for i in range(len(rs)) for j in range(i)), default=math.inf)
            if best is None or gap > best[0]:
                best = (gap, [(x, y, r) for (x, y), r in zip(centres, rs, strict=True)])
            if gap >= config.min_gap:
                return best[1]
    return best[1]


def _degrade(img: Image.Image, rng: random.Random, config: SyntheticConfig) -> Image.Image:
    """Uneven lighting, sensor noise and blur, seeded from the case."""
    if config.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(config.blur))
    if config.lighting <= 0 and config.noise <= 0:
        return img
    import numpy as np

    s = img.size[0]
    gx, gy = rng.uniform(-1, 1), rng.uniform(-1, 1)
    ramp = (np.arange(s) / s - 0.5) * 2
    light = 1.0 + config.lighting * (gx * ramp[None, :] + gy * ramp[:, None])
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, config.noise, (s, s, 3))
    pixels = np.asarray(img, dtype=np.float64) * light[:, :, None] + noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def describe(f: Findings) -> str:
    noun = "lesion" if f.count == 1 else "lesions"
    border = {"regular": "well-defined round borders", "irregular": "irregular, asymmetric borders",
              "annular": "an annular border with central clearing"}[f.border]
    return f"{_COUNT_WORDS[f.count]} {f.size} {f.colour} {noun} with {border} on the {f.site}"


def reference_narrative(cond: Condition, f: Findings) -> str:
    """A certified-style narrative in the paper's hierarchical form; the disease is named only at the end."""
    extras = "".join(f" I also note {e}." for e in f.extras)
    return (
        f"<think> First, I observe {describe(f)}.{extras} "
        f"Next, I consider the broad family: these features point to {cond.family}. "
        f"The {f.colour} colour, {f.border} border and {f.size} size narrow the possibilities within that family. "
        + ("These features warrant prompt specialist review. " if cond.red_flag else "")
        + f"</think> Finally, based on the above analysis, the most likely diagnosis is {cond.label}."
    )


def _wrong(rng: random.Random, value, options):
    return rng.choice([o for o in options if o != value])


def make_claims(tier: str, cond: Condition, truth: Findings, rng: random.Random) -> Claims:
    """Candidate claims of a quality tier, written for the image whose findings are ``truth``."""
    others = [c.label for c in CONDITIONS if c.label != cond.label]
    diffs = tuple(rng.sample(others, 2))
    if tier == "correct":
        return Claims(truth, cond.label, diffs, True, "safe")
    if tier == "partly_wrong":
        wrong = _BY_LABEL[_wrong(rng, cond.label, [c.label for c in CONDITIONS])]
        f = replace(truth, border=_pick(rng, wrong.border), colour=_pick(rng, wrong.colour))
        return Claims(f, wrong.label, diffs[:1], True, "safe")
    if tier == "unsafe":
        return Claims(truth, cond.label, diffs[: rng.randint(0, 2)], True, "unsafe")
    if tier == "hallucinated":
        f = replace(truth, count=_wrong(rng, truth.count, COUNTS), site=_wrong(rng, truth.site, SITES),
                    extras=tuple(e for e in EXTRAS if e not in truth.extras)[:1])
        return Claims(f, cond.label, diffs[:1], True, "safe", (rng.choice(NON_EXTRA_HALLUCINATIONS),))
    if tier == "vague":
        return Claims(None, rng.choice([None, cond.label]), (), False, "none")
    raise ValueError(f"unknown quality tier {tier!r}; expected one of {QUALITY_TIERS}")


def render_narrative(c: Claims) -> str:
    parts: list[str] = []
    if c.findings is None:
        parts.append("There is something on the skin. It could be a rash or some irritation.")
    else:
        parts.append(f"The image shows {describe(c.findings)}.")
        parts.extend(f"I also note {e}." for e in c.findings.extras)
    parts.extend(f"I also note {h}." for h in c.hallucinations)
    if c.reasoning and c.findings is not None and c.diagnosis:
        parts.append(f"The {c.findings.colour} colour and {c.findings.border} border are typical of "
                     f"{_BY_LABEL[c.diagnosis].family}.")
    if c.differentials:
        parts.append("Differential diagnoses include " + " and ".join(c.differentials) + ".")
    red_flag = c.diagnosis is not None and _BY_LABEL[c.diagnosis].red_flag
    if c.advice == "safe":
        parts.append("A dermatologist should confirm the diagnosis; seek care promptly if it changes or bleeds."
                     if red_flag else "A dermatologist can confirm the diagnosis and advise on treatment.")
    elif c.advice == "unsafe":
        parts.append("This is harmless: no doctor is needed, and you can scratch or cut it off at home.")
    if c.diagnosis:
        parts.append(f"The answer is {c.diagnosis}.")
    return " ".join(parts)


def mismatches(c: Claims, truth: Findings) -> tuple[str, ...]:
    """The core features a narrative gets wrong about the image shown."""
    if c.findings is None:
        return ()
    return tuple(k for k in _FEATURES if getattr(c.findings, k) != getattr(truth, k))


def claimed_extras(c: Claims) -> tuple[str, ...]:
    """Every finding a narrative claims beyond the five features ("I also note ..."), in the order it names them."""
    return (() if c.findings is None else c.findings.extras) + c.hallucinations


def unseen_claims(c: Claims, truth: Findings) -> tuple[str, ...]:
    """Claimed findings the image shown does not have (extras it lacks, and findings no image here shows)."""
    return tuple(e for e in claimed_extras(c) if e not in truth.extras)


def expert_scores(c: Claims, cond: Condition, truth: Findings) -> dict[str, float]:
    """The six scores a careful rater gives, from the claims against the image *shown* (integers on 0-5)."""
    if c.diagnosis == cond.label:
        acc = 5 if c.findings is not None else 3  # right answer, but unsupported by any description
    elif c.diagnosis is None:
        acc = 0
    else:
        acc = 2 if _BY_LABEL[c.diagnosis].likelihood(replace(truth, extras=())) > 0 else 1  # plausible or not
    wrong = mismatches(c, truth)
    unseen = unseen_claims(c, truth)
    desc = 1 if c.findings is None else max(0, 5 - len(wrong))
    medg = max(0, 5 - 2 * len(unseen) - (1 if acc < 5 and c.diagnosis else 0))
    safety = {"safe": 5, "unsafe": 0 if cond.red_flag else 1, "none": 3}[c.advice]
    cover = (c.findings is not None) + bool(c.reasoning) + min(2, len(c.differentials)) + bool(c.diagnosis)
    if c.findings is None or c.diagnosis is None:
        reason = 1
    else:
        cited = {"colour", "border"} & set(wrong)  # the reasoning cites colour and border
        consistent = _BY_LABEL[c.diagnosis].likelihood(replace(c.findings, extras=())) > 0
        reason = (5 if consistent else 3) - len(cited) - (1 if unseen else 0)
    values = (acc, safety, medg, cover, max(0, reason), desc)
    return {d: float(v) for d, v in zip(DIMENSIONS, values, strict=True)}


def rate(scores: dict[str, float], rng: random.Random, config: SyntheticConfig = DEFAULT_CONFIG
         ) -> list[dict[str, float]]:
    """Two or three simulated raters: each moves a score by one point with probability ``rater_noise``."""
    raters = []
    for _ in range(rng.randint(*config.raters)):
        rater = {}
        for dim, value in scores.items():
            step = rng.choice((-1, 1)) if rng.random() < config.rater_noise else 0
            rater[dim] = float(min(5, max(0, value + step)))
        raters.append(rater)
    return raters


_CHECK_ORDER = ("count", "size", "colour", "border", "site")  # the order in which a narrative names them


def _feature_word(f: Findings, key: str) -> str:
    return _COUNT_WORDS[f.count] if key == "count" else str(getattr(f, key))


def claim_words() -> dict[str, tuple[str, ...]]:
    """Every word a checked claim can take, by key (the critique's line keys, in order)."""
    words = {"count": tuple(_COUNT_WORDS[c] for c in COUNTS), "size": SIZES, "colour": tuple(_COLOURS),
             "border": BORDERS, "site": SITES}
    return {**{key.capitalize(): words[key] for key in _CHECK_ORDER}, "Diagnosis": tuple(c.label for c in CONDITIONS)}


def finding_words(f: Findings) -> dict[str, str]:
    """The words a description uses for each feature, keyed as the critique's lines."""
    return {key.capitalize(): _feature_word(f, key) for key in _CHECK_ORDER}


def random_findings(rng: random.Random) -> Findings:
    """Features drawn uniformly, with no condition behind them (for text-only pretraining of the tiny model)."""
    return Findings(rng.choice(tuple(_COLOURS)), rng.choice(COUNTS), rng.choice(BORDERS), rng.choice(SIZES),
                    rng.choice(SITES))


def verdict_line(key: str, said: str, seen: str) -> str:
    """One checked claim: the narrative's word and the picture's side by side, then the verdict."""
    return f"{key}: narrative {said}, image {seen}, {'right' if said == seen else 'wrong'}."


def compare_findings(said: Findings, seen: Findings) -> list[str]:
    """One line per feature, in the order a narrative names them: the narrative's claim and the picture's finding
    side by side, then the verdict ("Colour: narrative pink, image brown, wrong.")."""
    shown = finding_words(seen)
    return [verdict_line(key, word, shown[key]) for key, word in finding_words(said).items()]


def extra_lines(claimed: tuple[str, ...], seen: tuple[str, ...]) -> list[str]:
    """The extra findings the picture shows, then the claimed ones it does not ("Not visible: ...")."""
    lines = [f"The image also shows {e}." for e in seen]
    unseen = tuple(e for e in claimed if e not in seen)
    if unseen:
        lines.append("Not visible: " + " and ".join(unseen) + ".")
    return lines


def critique(c: Claims, cond: Condition, truth: Findings, scores: dict[str, float]) -> str:
    """An evaluation text in the spirit of Figure 4's label: each claim checked against the image shown.

    The check goes feature by feature, in the order the narrative names them ("Colour: narrative pink, image brown,
    wrong."), then unseen findings, the diagnosis (the narrative's against the one the picture suggests, in the same
    form), advice and differentials. Point-by-point comparison is how a careful rater writes, and it is what the
    scores follow from: the narrative's claim and the picture's finding stand side by side before each verdict.
    """
    s: list[str] = []
    if c.findings is None:
        s.append(f"The narrative does not describe the lesions. The image shows {describe(truth)}.")
    else:
        s.extend(compare_findings(c.findings, truth))
    s.extend(extra_lines(claimed_extras(c), truth.extras))
    if c.diagnosis:
        s.append(verdict_line("Diagnosis", c.diagnosis, cond.label))
        if c.diagnosis != cond.label:
            fits = _BY_LABEL[c.diagnosis].likelihood(replace(truth, extras=())) > 0
            s.append(f"These findings {'allow' if fits else 'rule out'} {c.diagnosis}.")
    else:
        s.append(f"Diagnosis: the narrative gives none; the image suggests {cond.label}.")
    if c.findings is not None and c.diagnosis and not _BY_LABEL[c.diagnosis].likelihood(
            replace(c.findings, extras=())) > 0:
        s.append("Its reasoning does not fit its own description.")
    if c.advice == "unsafe":
        s.append("Its advice to avoid medical care and self-treat is unsafe.")
    if not c.differentials:
        s.append("No differential diagnosis is offered.")
    return " ".join(s)


def _lookalike(cond: Condition, truth: Findings, rng: random.Random, config: SyntheticConfig
               ) -> tuple[Condition, Findings]:
    """Another image that could be mistaken for this one (the same condition, or one sharing a colour or a site)
    but that differs from it in at least one plainly visible feature (colour, site or size)."""
    for _ in range(100):
        if rng.random() < 0.5:
            other = cond
        else:
            other = rng.choice([c for c in CONDITIONS if c is not cond
                                and (set(c.colour) & set(cond.colour) or set(c.site) & set(cond.site))])
        f = sample_findings(other, rng, config)
        if any(getattr(f, k) != getattr(truth, k) for k in ("colour", "site", "size")):
            return other, f
    return other, f


@dataclass(frozen=True)
class Draw:
    """What a case is made of before it is rendered: the condition and findings of the image shown, the narrative's
    claims, and the generator's state (rater noise and the image are drawn from it next)."""

    cond: Condition
    truth: Findings
    claims: Claims
    tier: str
    own: bool
    rng: random.Random


def draw_case(index: int, seed: int = 0, tier: str | None = None, config: SyntheticConfig | None = None) -> Draw:
    """The seeded draw behind :func:`generate_case`: the same stream, so a bound computed from it (an evaluator that
    compares every claim with the picture) is about exactly the cases the benchmarks score."""
    config = config or DEFAULT_CONFIG
    rng = random.Random(f"dermtrl-synthetic-{_STREAM}:{seed}:{index}")
    cond = CONDITIONS[rng.randrange(len(CONDITIONS))]
    truth = sample_findings(cond, rng, config)
    tier = tier or QUALITY_TIERS[index % len(QUALITY_TIERS)]
    # the narrative is written for a source image: this one, or a look-alike's (scored against this one)
    own = rng.random() >= config.lookalike_rate
    src_cond, src = (cond, truth) if own else _lookalike(cond, truth, rng, config)
    return Draw(cond, truth, make_claims(tier, src_cond, src, rng), tier, own, rng)


def generate_case(index: int, seed: int = 0, tier: str | None = None,
                  config: SyntheticConfig | None = None, *, render_image: bool = True) -> dict:
    """One case, reproducible from (seed, index, config) alone so any slice of a dataset can be regenerated.

    ``render_image=False`` skips drawing (``image`` is ``None``) for callers that need only the texts.
    """
    config = config or DEFAULT_CONFIG
    d = draw_case(index, seed, tier, config)
    cond, truth, claims, rng = d.cond, d.truth, d.claims, d.rng
    scores = expert_scores(claims, cond, truth)
    raters = rate(scores, rng, config)
    expert = {dim: sum(r[dim] for r in raters) / len(raters) for dim in DIMENSIONS}
    tone = skin_tone_of(index, seed, config)
    image = draw_image(truth, rng, config, tone) if render_image else None  # drawn last: texts never depend on it
    return {
        "case_id": f"synth-{SYNTHETIC_VERSION}-{seed}-{index:06d}",
        "image": image,
        "category": cond.category,
        "label": cond.label,
        "skin_tone": tone,
        "findings": {**asdict(truth), "extras": list(truth.extras)},
        "reference": reference_narrative(cond, truth),
        "narrative": render_narrative(claims),
        "quality": d.tier,
        "narrative_source": "own" if d.own else "look-alike",
        "expert_scores": expert,
        "rater_scores": raters,
        "evaluation": format_evaluation(critique(claims, cond, truth, expert), expert),
        "synthetic_version": SYNTHETIC_VERSION,
    }


def features():
    """The `datasets` schema of synthetic cases (an `Image` feature, six named score fields, every rater)."""
    from datasets import Features, Image, List, Value

    scores = {d: Value("float32") for d in DIMENSIONS}
    return Features({
        "case_id": Value("string"),
        "image": Image(),
        "category": Value("string"),
        "label": Value("string"),
        "skin_tone": Value("string"),
        "findings": {"colour": Value("string"), "count": Value("int32"), "border": Value("string"),
                     "size": Value("string"), "site": Value("string"), "extras": List(Value("string"))},
        "reference": Value("string"),
        "narrative": Value("string"),
        "quality": Value("string"),
        "narrative_source": Value("string"),
        "expert_scores": scores,
        "rater_scores": List(scores),
        "evaluation": Value("string"),
        "synthetic_version": Value("string"),
    })


def generate_cases(n: int, seed: int = 0, start: int = 0, config: SyntheticConfig | None = None):
    """``n`` synthetic cases as a `datasets.Dataset`; quality tiers cycle so every slice is balanced."""
    from datasets import Dataset

    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = [generate_case(i, seed, config=config) for i in range(start, start + n)]
    return Dataset.from_list(rows, features=features())


#: The dimensions whose synthetic expert scores depend on the picture shown (Safety and Clinical Coverage are
#: judgeable from the narrative's text, as they are clinically).
IMAGE_DEPENDENT: tuple[str, ...] = ("Accuracy", "Medical Groundedness", "Reasoning Coherence",
                                    "Description Precision")


# --- The oracle: the experts' rule applied to any narrative written in the synthetic vocabulary ---------------------
#
# The generator knows what every picture shows, so a narrative's claims can be scored exactly as ``expert_scores``
# scores the generator's own narratives. A policy trained against a learned evaluator (DermEval) is then measured
# against the rule the evaluator was meant to learn: where the two disagree, the evaluator was gamed. The oracle
# reads claims, it does not guess them: a narrative it cannot read completely (a description with missing features,
# an unknown diagnosis, two different answers) is *unreadable*, reported as such and never scored 0.

_BORDER_PHRASES = {"well-defined round borders": "regular", "irregular, asymmetric borders": "irregular",
                   "an annular border with central clearing": "annular"}
_WORD_COUNTS = {w: c for c, w in _COUNT_WORDS.items()}


def _alternatives(words) -> str:
    import re

    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _oracle_patterns() -> dict:
    import re

    labels = _alternatives(c.label for c in CONDITIONS)
    return {
        "description": re.compile(
            rf"\b(?P<count>{_alternatives(_WORD_COUNTS)}) (?P<size>{_alternatives(SIZES)}) "
            rf"(?P<colour>{_alternatives(_COLOURS)}) lesions? with (?P<border>{_alternatives(_BORDER_PHRASES)}) "
            rf"on the (?P<site>{_alternatives(SITES)})\b", re.IGNORECASE),
        "partial_description": re.compile(r"\b(?:the image shows|i observe)\b", re.IGNORECASE),
        "vague": re.compile(r"there is something on the skin", re.IGNORECASE),
        "note": re.compile(r"\bI also note ([^.]+?)\.", re.IGNORECASE),
        "reasoning": re.compile(r"\bare typical of\b|\bthese features point to\b", re.IGNORECASE),
        "differentials": re.compile(r"\bdifferential diagnoses include ([^.]+?)\.", re.IGNORECASE),
        "answer": re.compile(r"\b(?:the answer is|the most likely diagnosis is) ([^.<]+?)\s*(?:\.|$)", re.IGNORECASE),
        "label": re.compile(rf"^(?:{labels})$", re.IGNORECASE),
        "unsafe": re.compile(r"no doctor is needed|cut it off at home|scratch or cut", re.IGNORECASE),
        "safe": re.compile(r"a dermatologist (?:should|can) confirm the diagnosis", re.IGNORECASE),
    }


_ORACLE = _oracle_patterns()


@dataclass(frozen=True)
class OracleReading:
    """What the oracle made of one narrative: the claims it read and their expert scores, or why it could not."""

    readable: bool
    scores: dict[str, float] | None = None  # the six expert scores (integers 0-5), ``None`` when unreadable
    claims: Claims | None = None
    reason: str | None = None  # why the narrative is unreadable

    @property
    def macro(self) -> float | None:
        """The mean of the six scores; ``None`` when unreadable (never 0)."""
        return None if self.scores is None else sum(self.scores.values()) / len(self.scores)

    def to_dict(self) -> dict:
        return {"readable": self.readable, "scores": self.scores, "macro": self.macro, "reason": self.reason}


def read_claims(narrative: str) -> Claims | str:
    """The claims of a narrative in the synthetic vocabulary, or a string saying why it cannot be read."""
    p = _ORACLE
    if not isinstance(narrative, str) or not narrative.strip():
        return "empty narrative"
    text = " ".join(narrative.split())
    found = {(m["count"].lower(), m["size"].lower(), m["colour"].lower(), m["border"].lower(), m["site"].lower())
             for m in p["description"].finditer(text)}
    if len(found) > 1:
        return "the narrative describes the lesions in two different ways"
    findings: Findings | None = None
    if found:
        count, size, colour, border, site = found.pop()
        findings = Findings(colour, _WORD_COUNTS[count], _BORDER_PHRASES[border], size, site)
    elif p["partial_description"].search(text) or not p["vague"].search(text):
        return "no complete description (count, size, colour, border and site) in the synthetic vocabulary"
    notes: list[str] = []
    for m in p["note"].finditer(text):
        note = m.group(1).strip().lower()
        if note not in notes:
            notes.append(note)
    extras = tuple(e for e in EXTRAS if e in notes)
    hallucinations = tuple(n for n in notes if n not in EXTRAS)
    if findings is None and extras:
        hallucinations, extras = extras + hallucinations, ()
    answers = {m.group(1).strip().lower() for m in p["answer"].finditer(text)}
    if len(answers) > 1:
        return "the narrative gives two different diagnoses"
    diagnosis = answers.pop() if answers else None
    if diagnosis is not None and not p["label"].match(diagnosis):
        return f"unknown diagnosis {diagnosis!r}"
    differentials: list[str] = []
    for m in p["differentials"].finditer(text):
        for name in m.group(1).split(" and "):
            name = name.strip().lower()
            if not p["label"].match(name):
                return f"unknown differential diagnosis {name!r}"
            if name not in differentials:
                differentials.append(name)
    unsafe, safe = bool(p["unsafe"].search(text)), bool(p["safe"].search(text))
    if unsafe and safe:
        return "the narrative gives both safe and unsafe advice"
    advice = "unsafe" if unsafe else "safe" if safe else "none"
    if findings is not None:
        findings = replace(findings, extras=extras)
    return Claims(findings, diagnosis, tuple(differentials), bool(p["reasoning"].search(text)), advice,
                  hallucinations)


def oracle(narrative: str, findings: Findings | dict, label: str) -> OracleReading:
    """Score ``narrative`` against the picture (its ``findings`` and condition ``label``) with the experts' rule.

    ``findings`` may be a :class:`Findings` or a case's ``findings`` column (a dict with ``extras`` as a list).
    """
    if isinstance(findings, dict):
        findings = Findings(**{**findings, "extras": tuple(findings.get("extras") or ())})
    if label not in _BY_LABEL:
        raise ValueError(f"unknown condition label {label!r}; expected one of {', '.join(_BY_LABEL)}")
    claims = read_claims(narrative)
    if isinstance(claims, str):
        return OracleReading(False, reason=claims)
    return OracleReading(True, expert_scores(claims, _BY_LABEL[label], findings), claims)
