"""The fixed features of the two datasets ``dermtrl data build`` writes (Section 3.1): DermBench and DermEval.

Their own module so that the builder (:mod:`dermtrl.data.build`) and the dataset cards
(:mod:`dermtrl.data.cards`, which validate a card against them) both import it, and neither imports the other
for it.
"""

from __future__ import annotations

from typing import Any

from dermtrl.dimensions import DIMENSIONS

__all__ = ["DERMBENCH_FEATURES", "DERMEVAL_FEATURES"]


def _features() -> tuple[Any, Any]:
    from datasets import Features, Image, List, Value

    scores = {d: Value("float32") for d in DIMENSIONS}
    ratings = List({"rater_id": Value("string"), "scores": scores})
    bench = Features({
        "id": Value("string"), "image": Image(), "image_sha256": Value("string"), "category": Value("string"),
        "label": Value("string"), "reference": Value("string"), "reference_revised": Value("bool"),
        "caption": Value("string"), "ratings": ratings, "metadata": Value("string"), "source": Value("string"),
    })
    evaluation = Features({
        "id": Value("string"), "item_id": Value("string"), "image": Image(), "image_sha256": Value("string"),
        "category": Value("string"), "label": Value("string"), "narrative": Value("string"),
        "stream": Value("string"), "expert_scores": scores, "ratings": ratings, "evaluation": Value("string"),
        "rationale": Value("string"), "split": Value("string"), "metadata": Value("string"),
        "prompt_version": Value("string"),
    })
    return bench, evaluation


DERMBENCH_FEATURES, DERMEVAL_FEATURES = _features()
