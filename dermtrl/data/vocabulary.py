"""The label vocabulary: which diagnoses a dataset may carry, their Figure 5 category, and finding them in text.

One object answers the three questions the construction pipeline asks about diagnoses: is this label allowed
(labels outside the vocabulary are skipped with a message), which Figure 5 category does it belong to, and does
a text name a diagnosis (a caption must not; a reasoning text may only in its final sentence).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dermtrl.categories import CATEGORIES

__all__ = ["Vocabulary", "canonical_category", "normalize_label"]

#: Words that describe what is seen (morphology, colour, site, qualifiers) rather than name a disease: a
#: caption may use them even when they are part of a label ("plaque psoriasis", "cherry angioma").
OBSERVATIONAL_WORDS: frozenset[str] = frozenset("""
    plaque plaques papule papules papular macule macules macular nodule nodules nodular patch patches vesicle
    vesicles vesicular pustule pustules pustular bulla bullae bullous scale scales scaly scaling crust crusts
    crusted ulcer ulcers ulcerated erosion erosions erythema erythematous lesion lesions wheal wheals annular
    linear diffuse localized localised generalized generalised chronic acute simple common contact multiple
    single small large giant benign cell cells basal superficial deep cherry black brown white pink red yellow
    purple blue violaceous skin hair nail nails scalp face facial hands trunk chest arm arms legs foot feet
    corporis capitis pedis cruris faciei manuum unguium vulgaris rosea
    changes damaged edema oedema fixed induced solid spots spreading stain stains pigmented inflammatory vascular
    cystic mucous acquired congenital juvenile
""".split())
_CATEGORY_KEYS = {re.sub(r"[^a-z0-9]+", " ", c.lower()).strip(): c for c in CATEGORIES}


def normalize_label(label: str) -> str:
    """Case-, separator- and space-insensitive key: 'Acne_Vulgaris ' -> 'acne vulgaris'."""
    return " ".join(re.sub(r"[_\-/]+", " ", str(label)).lower().split())


def canonical_category(category: str) -> str | None:
    """The Figure 5 category spelled as in :data:`dermtrl.categories.CATEGORIES`, or ``None`` if it is not one."""
    return _CATEGORY_KEYS.get(re.sub(r"[^a-z0-9]+", " ", str(category).lower()).strip())


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in phrase.split()]
    body = r"[\s\-_]+".join(words)
    return re.compile(rf"(?<![a-z0-9]){body}(?:e?s)?(?![a-z0-9])", re.IGNORECASE)


@dataclass(frozen=True)
class Vocabulary:
    """Allowed labels (canonical spelling) mapped to their Figure 5 category (``None`` when not given)."""

    labels: Mapping[str, str | None]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("the label vocabulary is empty")
        for label, category in self.labels.items():
            if not normalize_label(label):
                raise ValueError("the label vocabulary holds an empty label")
            if category is not None and canonical_category(category) is None:
                raise ValueError(
                    f"vocabulary label {label!r}: category {category!r} is not one of Figure 5's {len(CATEGORIES)} "
                    "categories (dermtrl.categories.CATEGORIES)"
                )
        keys = {normalize_label(k): k for k in self.labels}
        object.__setattr__(self, "_keys", keys)
        patterns = {label: _phrase_pattern(normalize_label(label)) for label in self.labels}
        object.__setattr__(self, "_patterns", patterns)
        terms: dict[str, set[str]] = {}
        for label in self.labels:
            for word in normalize_label(label).split():
                if len(word) >= 5 and word not in OBSERVATIONAL_WORDS:
                    terms.setdefault(word, set()).add(label)
        object.__setattr__(self, "_terms", {w: (_phrase_pattern(w), sorted(ls)) for w, ls in terms.items()})

    # --- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str | None] | Iterable[str]) -> Vocabulary:
        if isinstance(mapping, Mapping):
            items = {str(k).strip(): (canonical_category(v) or v) if v else None for k, v in mapping.items()}
        else:
            items = {str(k).strip(): None for k in mapping}
        return cls(items)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """A vocabulary file: CSV with ``label`` (and optional ``category``) columns, JSON (a list of labels or a
        label -> category object), or plain text with one label a line."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such vocabulary file")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from None
            if not isinstance(data, (list, dict)):
                raise ValueError(f"{path}: expected a list of labels or a label -> category object")
            return cls.from_mapping(data)
        if path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if not rows or "label" not in rows[0]:
                raise ValueError(f"{path}: a vocabulary CSV needs a 'label' column (and optionally 'category')")
            mapping: dict[str, str | None] = {}
            for i, row in enumerate(rows, start=2):
                label = (row.get("label") or "").strip()
                if not label:
                    raise ValueError(f"{path}: line {i}: empty label")
                mapping[label] = (row.get("category") or "").strip() or None
            return cls.from_mapping(mapping)
        return cls.from_mapping([line.strip() for line in text.splitlines() if line.strip()
                                 and not line.startswith("#")])

    @classmethod
    def default(cls) -> Vocabulary:
        """The synthetic conditions' labels (the embedded default); pass your own for real data."""
        from dermtrl.cases.synthetic import CONDITIONS

        return cls({c.label: c.category for c in CONDITIONS})

    # --- queries --------------------------------------------------------------------------------------
    def canonical(self, label: str) -> str | None:
        """The vocabulary's spelling of ``label``, or ``None`` when it is outside the vocabulary."""
        return self._keys.get(normalize_label(label))  # type: ignore[attr-defined]

    def category(self, label: str) -> str | None:
        canonical = self.canonical(label)
        return self.labels.get(canonical) if canonical else None

    def named_in(self, text: str, *, key_terms: bool = False) -> list[str]:
        """Labels a text names, by full name; with ``key_terms`` also by a distinctive word of the name
        ('psoriasis' for 'plaque psoriasis'), which is what a caption must avoid."""
        found = [label for label, pattern in self._patterns.items() if pattern.search(text)]  # type: ignore
        if key_terms:
            for pattern, labels in self._terms.values():  # type: ignore[attr-defined]
                if pattern.search(text):
                    found.extend(label for label in labels if label not in found)
        return found

    def fingerprint(self) -> str:
        """A short hash of the vocabulary, stored with ingested items so runs with another one are not mixed."""
        canon = json.dumps(sorted((normalize_label(k), v) for k, v in self.labels.items()), ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.labels)
