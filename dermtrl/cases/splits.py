"""The train / validation / test index ranges of the synthetic cases, defined once.

Synthetic case ``i`` is a pure function of ``(i, seed)``, so a split is a range of indices. Training draws from
:data:`TRAIN`, settings are chosen on :data:`VALIDATION`, and every reported number and every command's default
reads :data:`TEST`: a default that pointed at training cases would score a model on what it memorised.

Within validation, the SOREB ablation chooses its settings from 50,000 and the Stage-1 variants from
:data:`STAGE1_VALIDATION_START` (100,000), so the two choices never share cases.
"""

from __future__ import annotations

__all__ = ["SPLITS", "STAGE1_VALIDATION_START", "TEST", "TEST_START", "TRAIN", "VALIDATION", "VALIDATION_START",
           "split_of", "split_range", "synthetic_indices"]

#: Indices training draws from (the demo trains on 0..2,399).
TRAIN = range(0, 50_000)
#: Indices settings are chosen on; never trained on, never reported as a result.
VALIDATION = range(50_000, 200_000)
#: Indices results are reported on, and every command's default: everything from 200,000.
TEST = range(200_000, 1_000_000_000)

SPLITS: dict[str, range] = {"train": TRAIN, "validation": VALIDATION, "test": TEST}

VALIDATION_START = VALIDATION.start
TEST_START = TEST.start
#: Where the Stage-1 variants are compared (inside validation, apart from the SOREB ablation's cases).
STAGE1_VALIDATION_START = 100_000


def split_range(split: str) -> range:
    """The index range of a split name; ``ValueError`` naming the choices for any other name."""
    try:
        return SPLITS[split]
    except KeyError:
        raise ValueError(f"synthetic cases have no split {split!r}; choose one of {', '.join(SPLITS)}") from None


def split_of(index: int) -> str:
    """The split a synthetic case index belongs to."""
    for name, indices in SPLITS.items():
        if index in indices:
            return name
    raise ValueError(f"synthetic case index {index} is outside every split ({_describe()})")


def synthetic_indices(n: int, *, split: str | None = None, start: int | None = None) -> range:
    """The ``n`` indices a synthetic slice covers, checked to stay inside one split.

    ``split`` alone starts at the split's first index; ``start`` alone may begin anywhere, as long as the slice does
    not run into the next split; both must agree. With neither, the slice is training cases from 0.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split is not None:
        split_range(split)  # an unknown name is refused before anything else
    if start is None:
        start = split_range(split or "train").start
    indices = range(start, start + n)
    if not n:
        return indices
    first, last = split_of(indices[0]), split_of(indices[-1])
    if split is not None and first != split:
        raise ValueError(f"synthetic cases from {start:,} are {first} cases, not {split} ({_describe()})")
    if first != last:
        raise ValueError(f"synthetic cases {indices[0]:,}..{indices[-1]:,} run from the {first} into the {last} split; "
                         f"ask for fewer cases or another start ({_describe()})")
    return indices


def _describe() -> str:
    return "; ".join(f"{name} {r.start:,}..{r.stop - 1:,}" if r is not TEST else f"{name} from {r.start:,}"
                     for name, r in SPLITS.items())
