"""Image controls: the same cases shown with another case's picture, or with a blank one.

A multimodal evaluator earns the name only if it does worse when the picture no longer belongs to the narrative.
These controls keep every narrative and expert score and change only the image, so the difference in agreement
measures how much the evaluator relies on what it sees.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from datasets import Dataset
from PIL import Image


def blank_image(size: tuple[int, int] = (96, 96)) -> Image.Image:
    """The text-only control's picture: the same grey square for every case."""
    return Image.new("RGB", size, (128, 128, 128))


def derangement(n: int, seed: int = 0) -> list[int]:
    """A seeded permutation without fixed points: case i is shown case ``perm[i]``'s picture."""
    if n < 2:
        raise ValueError(f"mismatched images need at least two cases, got {n}")
    rng = random.Random(seed)
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != j for i, j in enumerate(perm)):
            return perm


def with_images(cases: Dataset, images: Sequence[Image.Image]) -> Dataset:
    """The same cases (narratives, expert scores, ids) shown with other pictures."""
    if len(images) != len(cases):
        raise ValueError(f"{len(images)} images for {len(cases)} cases")
    rows = [dict(row, image=img) for row, img in zip(cases, images, strict=True)]
    return Dataset.from_list(rows, features=cases.features)


def mismatched(cases: Dataset, seed: int = 0) -> Dataset:
    """Every case shown another case's picture (a seeded derangement)."""
    images = list(cases["image"])
    return with_images(cases, [images[j] for j in derangement(len(images), seed)])


def blanked(cases: Dataset) -> Dataset:
    """Every case shown the same blank picture (the text-only control)."""
    return with_images(cases, [blank_image()] * len(cases))
