"""An audit of certified references: which ones should not be trusted as a gold standard, and why.

A judge scores a candidate against the reference of the same image; a reference that describes another
disease (the release's reference for ``Acne and Rosacea Photos/07Rhinophyma1.jpg`` concludes hand eczema)
penalises every candidate that is right. :func:`audit_rows` checks each reference for:

* ``mismatch``: the concluded diagnosis does not agree with the label (a rule match on the label's words and
  known synonyms against the concluding sentence; optionally an LLM decides the cases the rules could not
  confirm, :func:`confirm_with_llm`, cached through the usual client);
* ``empty`` / ``short``: no text, or too little to be a narrative;
* ``duplicate``: the same text as another case;
* ``sha_mismatch``: the file is not the one the manifest's ``cot_sha256`` names;
* ``label_artefact``: a label that is a file-name fragment (``diaperDerm``, ``Forest 2``, ``IMG001``), so the
  diagnosis check has weak ground.

Each flag carries the sentence that concludes, so a reader can check it in seconds. :func:`write_audit` writes
the table as CSV and Markdown. Thinking blocks (``<think>``) are notes toward the answer: the conclusion is read
from the text outside them when there is any.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dermtrl.parsing import split_thinking

__all__ = ["REASONS", "AuditFlag", "audit_rows", "concluding_sentence", "confirm_with_llm", "label_terms",
           "write_audit"]

#: Flag reasons, in the order a table lists them.
REASONS: tuple[str, ...] = ("sha_mismatch", "empty", "short", "duplicate", "mismatch", "label_artefact")
#: A reference under this many words (outside and inside thinking) cannot be a diagnostic narrative.
MIN_WORDS = 40

_CUE = re.compile(
    r"\b(?:the\s+answer\s+is|final\s+(?:answer|diagnosis)|conclu(?:sion|de|ded|sions)|diagnosis\s*(?:is|:)"
    r"|most\s+(?:likely|consistent|probable|suggestive)|likely\s+diagnosis|consistent\s+with|suggestive\s+of"
    r"|diagnosed\s+as|points?\s+(?:to|toward)|leading\s+diagnosis|in\s+summary|therefore|thus"
    r"|indicative\s+of|aligns?\s+(?:\w+\s+)?with|suggests?|likely)\b",
    re.IGNORECASE,
)
#: Advice sentences close many references ("I recommend consulting a dermatologist"); they conclude nothing.
_ADVICE = re.compile(r"\b(?:recommend|consult|seek|avoid|see\s+a|follow[- ]up|treatment\s+plan|moisturi[sz]e)\w*",
                     re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
_WORD = re.compile(r"[a-z]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
#: Label words that say where or in whom, not what: they cannot confirm a diagnosis alone.
_GENERIC = frozenset("""
    and of the other with without in on a an type disease diseases lesion lesions skin photos photo pictures
    child children adult adults infant infantile baby face facial hand hands foot feet leg legs arm arms trunk back
    chest scalp lip lips mouth oral eye eyes eyelid ear ears nose neck genital genitals penis vulva vaginal
    groin body palms palm soles sole nail nails finger fingers fingertips toe toes generalized localized
    acute chronic early late severe mild multiple single upper lower dorsum ruptured irritated
    images image img jpg new old area areas plaque plaques
""".split())
#: Known synonyms and spellings: a label word -> words that confirm it in a conclusion.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "derm": ("dermatitis", "eczema", "dermatos"),
    "dermatitis": ("eczema", "dermatitis"),
    "eczema": ("dermatitis", "eczematous"),
    "atopic": ("eczema", "dermatitis"),
    "ctcl": ("lymphoma", "mycosis fungoides", "t-cell"),
    "bcc": ("basal cell",),
    "scc": ("squamous cell",),
    "tinea": ("fungal", "ringworm", "dermatophyt", "onychomycosis", "candid", "yeast"),
    "onychomycosis": ("fungal", "tinea", "dermatophyt"),
    "candidiasis": ("candida", "yeast", "fungal", "thrush"),
    "wart": ("verruca", "hpv", "papilloma", "condyloma"),
    "warts": ("verruca", "hpv", "papilloma", "condyloma"),
    "herpes": ("hsv", "herpetic", "zoster", "shingles", "simplex"),
    "zoster": ("shingles", "herpes"),
    "varicella": ("chickenpox", "chicken pox"),
    "nevi": ("nevus", "naevus", "naevi", "mole"),
    "nevus": ("nevi", "naevus", "naevi", "mole"),
    "moles": ("nevus", "nevi", "naevus"),
    "acne": ("comedo", "comedones", "pimple", "acneiform"),
    "comedo": ("comedones", "acne", "blackhead", "whitehead"),
    "rhinophyma": ("rosacea", "phymatous"),
    "rosacea": ("rhinophyma",),
    "psoriasis": ("psoriatic",),
    "lupus": ("sle", "discoid", "lupus"),
    "urticaria": ("hives", "wheal", "urticarial"),
    "hives": ("urticaria",),
    "vasculitis": ("purpura", "vasculitic"),
    "scabies": ("mite", "scabetic", "infestation"),
    "pemphigoid": ("bullous", "blister"),
    "bullous": ("pemphigoid", "blister", "pemphigus"),
    "alopecia": ("hair loss", "baldness"),
    "actinic": ("solar", "sun damage", "photodamage"),
    "sun": ("actinic", "solar", "photo"),
    "seborrheic": ("seborrhoeic", "seborrheic"),
    "keratoses": ("keratosis",),
    "keratosis": ("keratoses",),
    "melanoma": ("melanoma", "malignant"),
    "drug": ("drug", "medication", "eruption"),
    "hemangioma": ("haemangioma", "vascular"),
    "angioma": ("vascular", "angioma", "hemangioma"),
    "impetigo": ("impetig",),
    "cellulitis": ("cellulitis", "erysipelas"),
    "furuncles": ("furuncle", "boil", "abscess", "carbuncle"),
    "syphilis": ("syphilitic", "treponem"),
    "molluscum": ("molluscum",),
}


@dataclass(frozen=True)
class AuditFlag:
    """One flagged reference: why (``reasons``, from :data:`REASONS`), the sentence that concludes, and details."""

    case_id: str
    image: str | None
    category: str | None
    label: str | None
    reasons: list[str]
    conclusion: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "image": self.image, "category": self.category, "label": self.label,
                "reasons": list(self.reasons), "conclusion": self.conclusion, "detail": self.detail}


@dataclass
class _Check:
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


_ABBREVIATION = re.compile(r"\b(e\.g|i\.e|vs|etc|approx|cf|dr)\.", re.IGNORECASE)


def _sentences(text: str) -> list[str]:
    text = _ABBREVIATION.sub(lambda m: m.group(1).replace(".", "\u2024") + "\u2024", text)  # no sentence end
    return [s.strip(" \t*#>-_").replace("\u2024", ".") for s in _SENTENCE.findall(text) if re.search(r"[A-Za-z]", s)]


def concluding_sentence(reference: str) -> str:
    """The sentence that states the reference's conclusion: the last one with a concluding cue ("The answer is",
    "Conclusion", "most likely", ...) outside thinking blocks, else the last sentence (of the thinking, when the
    text is all thinking)."""
    answer, thinking = split_thinking(reference or "")
    for text in (answer, thinking):
        sentences = _sentences(text)
        if not sentences:
            continue
        for i in range(len(sentences) - 1, -1, -1):
            if _CUE.search(sentences[i]) and not _ADVICE.search(sentences[i]):
                s = sentences[i]
                if len(s) < 40 and i + 1 < len(sentences):  # "**Conclusion**:" alone: the next sentence says it
                    s = f"{s} {sentences[i + 1]}"
                return " ".join(s.split())
        plain = [x for x in sentences if not _ADVICE.search(x)] or sentences
        return " ".join(plain[-1].split())
    return ""


def label_terms(label: str) -> list[str]:
    """The words of a label that can confirm a diagnosis (camelCase split, lower case, generic words dropped)."""
    words = _WORD.findall(_CAMEL.sub(" ", label or "").lower())
    return [w for w in words if w not in _GENERIC and len(w) > 2]


def _stem(word: str) -> str:
    return word if len(word) <= 5 else word[: max(5, len(word) - 3)]


def _near(term: str, word: str) -> bool:
    """A misspelt label ("Ichthosis") still matches its disease ("ichthyosis"): long words one edit apart."""
    if len(term) < 7 or abs(len(term) - len(word)) > 1:
        return False
    from difflib import SequenceMatcher

    return SequenceMatcher(None, term, word).ratio() >= 0.9


def _agrees(terms: Sequence[str], text: str) -> bool:
    lowered = " " + " ".join(_WORD.findall(text.lower())) + " "
    words = lowered.split()
    for term in terms:
        stem = _stem(term)
        if any(w.startswith(stem) or _near(term, w) for w in words):
            return True
        for syn in _SYNONYMS.get(term, ()):
            if " " in syn or "-" in syn:
                if " " + " ".join(_WORD.findall(syn)) in lowered:
                    return True
            elif any(w.startswith(_stem(syn)) for w in words):
                return True
    return False


def _is_artefact(label: str, image: str | None) -> str | None:
    if not label or not label.strip():
        return "the label is empty"
    if re.search(r"\d", label):
        return "the label holds digits (a file-name counter)"
    if re.search(r"\bimg\b|\.jpe?g\b|\.png\b", label, re.IGNORECASE):
        return "the label is an image file name"
    if re.search(r"[a-z][A-Z]", label):
        return "the label is run-together camelCase (a file-name fragment)"
    if not label_terms(label):
        return "the label names no condition (only generic words)"
    return None


def audit_rows(rows: Iterable[Mapping[str, Any]], *, label_column: str = "diagnosis",
               sha_mismatch: Iterable[str] = ()) -> list[AuditFlag]:
    """The rule pass over reference rows (``case_id``, ``reference``, the label in ``label_column``, optionally
    ``dermnet_image_path``/``image`` and ``category``); ``sha_mismatch``: case ids whose file failed its sha256.
    Returns the flagged rows only, in input order."""
    rows = list(rows)
    bad_sha = set(sha_mismatch)
    by_text: dict[str, list[str]] = {}
    for r in rows:
        text = r.get("reference")
        if isinstance(text, str) and text.strip():
            key = hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()
            by_text.setdefault(key, []).append(str(r["case_id"]))
    dup_of = {cid: [o for o in ids if o != cid] for ids in by_text.values() if len(ids) > 1 for cid in ids}
    flags: list[AuditFlag] = []
    for r in rows:
        case_id = str(r["case_id"])
        text = r.get("reference") if isinstance(r.get("reference"), str) else ""
        label = r.get(label_column)
        label = label if isinstance(label, str) else None
        image = r.get("dermnet_image_path") or (r.get("image") if isinstance(r.get("image"), str) else None)
        check = _Check()
        if case_id in bad_sha:
            check.reasons.append("sha_mismatch")
            check.details.append("the file does not match the manifest's cot_sha256")
        words = len(text.split())
        if not text.strip():
            check.reasons.append("empty")
            check.details.append("no reference text" if r.get("reference") is None else "the text is empty")
        elif words < MIN_WORDS:
            check.reasons.append("short")
            check.details.append(f"{words} words")
        if case_id in dup_of:
            check.reasons.append("duplicate")
            check.details.append("same text as " + ", ".join(dup_of[case_id][:3]))
        conclusion = concluding_sentence(text) if text.strip() else ""
        if label is not None:
            artefact = _is_artefact(label, image)
            terms = label_terms(label)
            if text.strip() and terms:
                answer, _ = split_thinking(text)
                window = _conclusion_window(answer or text, conclusion)
                if not _agrees(terms, window) and not _agrees(terms, _closing(answer or text)):
                    check.reasons.append("mismatch")
                    check.details.append(f"the conclusion does not name {label!r} or a known synonym")
            if artefact:
                check.reasons.append("label_artefact")
                check.details.append(artefact)
        if check.reasons:
            flags.append(AuditFlag(case_id=case_id, image=image, category=r.get("category"), label=label,
                                   reasons=sorted(check.reasons, key=REASONS.index), conclusion=conclusion,
                                   detail="; ".join(check.details)))
    return flags


def _closing(text: str) -> str:
    """The closing part of a text (its last paragraph, at least its last 600 characters): where a conclusion
    that names its disease one sentence away from the concluding cue still does so."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    last = paragraphs[-1] if paragraphs else ""
    return last if len(last) >= 600 else text[-600:]


def _conclusion_window(text: str, conclusion: str) -> str:
    """The concluding sentence with its neighbours (a conclusion often names the disease one sentence on)."""
    sentences = [" ".join(s.split()) for s in _sentences(text)]
    if not sentences:
        return conclusion
    hit = max((i for i, s in enumerate(sentences) if s and s in conclusion), default=len(sentences) - 1)
    return " ".join([conclusion, *sentences[max(0, hit - 1): hit + 2]])


#: The question for the optional LLM pass (dermtrl's own words).
LLM_QUESTION = (
    "A dermatology reference text about one skin image ends with this conclusion:\n\n{conclusion}\n\n"
    "The image's label is: {label}\n\nDoes the conclusion name the same condition as the label (the same disease, "
    "a synonym, or the label as a subtype of it)? Answer with one word: yes or no."
)


def confirm_with_llm(flags: Sequence[AuditFlag], client: Any) -> tuple[list[AuditFlag], int, int]:
    """Ask an LLM about every ``mismatch`` the rules raised; a "yes" clears that reason (and the flag, if it was
    the only one). Returns (flags still standing, mismatches cleared, calls that failed). ``client`` is an
    :class:`~dermtrl.llm.client.LLMClient` (its cache makes a rerun free)."""
    asked = [f for f in flags if "mismatch" in f.reasons]
    batch = [[{"role": "user", "content": LLM_QUESTION.format(conclusion=f.conclusion, label=f.label)}]
             for f in asked]
    answers = client.complete_many(batch) if batch else []
    verdict: dict[str, bool] = {}
    failed = 0
    for f, a in zip(asked, answers, strict=True):
        text = getattr(a, "text", None)
        if text is None:
            failed += 1
            continue
        answer = split_thinking(text)[0].strip().lower()
        verdict[f.case_id] = answer.startswith("yes")
    out: list[AuditFlag] = []
    cleared = 0
    for f in flags:
        if verdict.get(f.case_id):
            cleared += 1
            reasons = [r for r in f.reasons if r != "mismatch"]
            if not reasons:
                continue
            f = replace(f, reasons=reasons, detail=f.detail + "; the LLM confirmed the conclusion names the label")
        elif f.case_id in verdict:
            f = replace(f, detail=f.detail + "; the LLM agrees it does not")
        out.append(f)
    return out, cleared, failed


def summary_line(n: int, flags: Sequence[AuditFlag]) -> str:
    """``audited N references: K flagged (mismatch a, short b, ...)``."""
    counts = {r: sum(1 for f in flags if r in f.reasons) for r in REASONS}
    parts = ", ".join(f"{r} {c}" for r, c in counts.items() if c)
    return f"audited {n} references: {len(flags)} flagged" + (f" ({parts})" if parts else "")


def audit_csv(flags: Sequence[AuditFlag]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "image", "category", "label", "reasons", "conclusion", "detail"])
    for f in flags:
        w.writerow([f.case_id, f.image or "", f.category or "", f.label or "", ";".join(f.reasons), f.conclusion,
                    f.detail])
    return buf.getvalue()


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def audit_markdown(n: int, flags: Sequence[AuditFlag]) -> str:
    lines = ["# Reference audit", "", summary_line(n, flags) + ".", "",
             "| case | image | label | reasons | concluding sentence |", "|---|---|---|---|---|"]
    lines += [f"| {_md(f.case_id)} | {_md(f.image)} | {_md(f.label)} | {', '.join(f.reasons)} | "
              f"{_md(f.conclusion)[:300]} |" for f in flags]
    return "\n".join(lines) + "\n"


def write_audit(n: int, flags: Sequence[AuditFlag], out_dir: str | Path) -> dict[str, Path]:
    """``audit.csv`` and ``audit.md`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "audit.csv", "md": out / "audit.md"}
    paths["csv"].write_text(audit_csv(flags), encoding="utf-8", newline="")
    paths["md"].write_text(audit_markdown(n, flags), encoding="utf-8")
    return paths
