"""The fixed features of the two datasets ``dermtrl data build`` writes (Section 3.1): DermBench and DermEval,
and how a row's skin tone and licence are read from its metadata (:func:`subgroup_columns`).

Their own module so that the builder (:mod:`dermtrl.data.build`) and the dataset cards
(:mod:`dermtrl.data.cards`, which validate a card against them) both import it, and neither imports the other
for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dermtrl.data.sources.skin_tone import normalise_skin_tone
from dermtrl.dimensions import DIMENSIONS

__all__ = ["DERMBENCH_FEATURES", "DERMEVAL_FEATURES", "SKIN_TONE_KEYS", "subgroup_columns"]

#: Where an ingested item's metadata records skin tone: a named dataset's normalised ``skin_tone`` first, then the
#: raw field names a generic table may use.
SKIN_TONE_KEYS: tuple[str, ...] = ("skin_tone", "fitzpatrick", "fitzpatrick_skin_type", "fitzpatrick_type",
                                   "skin_type")


def subgroup_columns(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The skin tone (Fitzpatrick I-VI, a DDI group, or ``unknown``) and licence of one built row, from its item's
    ingest metadata: one definition for the cards and for anything that slices built data by skin tone."""
    meta = metadata or {}
    raw = next((meta[k] for k in SKIN_TONE_KEYS if meta.get(k) not in (None, "", "unknown")), None)
    return {"skin_tone": normalise_skin_tone(raw), "licence": str(meta.get("licence") or "")}


def _features() -> tuple[Any, Any]:
    from datasets import Features, Image, List, Value

    scores = {d: Value("float32") for d in DIMENSIONS}
    ratings = List({"rater_id": Value("string"), "scores": scores})
    bench = Features({
        "id": Value("string"), "image": Image(), "image_sha256": Value("string"), "category": Value("string"),
        "label": Value("string"), "reference": Value("string"), "reference_revised": Value("bool"),
        "caption": Value("string"), "ratings": ratings, "metadata": Value("string"), "source": Value("string"),
        "skin_tone": Value("string"), "licence": Value("string"),
    })
    evaluation = Features({
        "id": Value("string"), "item_id": Value("string"), "image": Image(), "image_sha256": Value("string"),
        "category": Value("string"), "label": Value("string"), "narrative": Value("string"),
        "stream": Value("string"), "expert_scores": scores, "ratings": ratings, "evaluation": Value("string"),
        "rationale": Value("string"), "split": Value("string"), "metadata": Value("string"),
        "prompt_version": Value("string"), "skin_tone": Value("string"), "licence": Value("string"),
    })
    return bench, evaluation


DERMBENCH_FEATURES, DERMEVAL_FEATURES = _features()
