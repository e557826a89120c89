"""The synthetic splits, defined once: train, validation and test never overlap, every reader honours them, and
every default points at test cases (never at the cases the demo adapter was trained on)."""

from __future__ import annotations

import pytest

from dermtrl.cases.loading import SYNTHETIC, load_cases
from dermtrl.cases.splits import (
    SPLITS,
    STAGE1_VALIDATION_START,
    TEST,
    TEST_START,
    TRAIN,
    VALIDATION,
    split_of,
    synthetic_indices,
)
from dermtrl.errors import DataError


def test_the_splits_are_disjoint_adjacent_and_keep_the_measured_numbers():
    assert (TRAIN.start, VALIDATION.start, TEST.start) == (0, 50_000, 200_000)
    assert TRAIN.stop == VALIDATION.start and VALIDATION.stop == TEST.start
    assert STAGE1_VALIDATION_START in VALIDATION
    assert [split_of(i) for i in (0, 49_999, 50_000, 199_999, 200_000)] == [
        "train", "train", "validation", "validation", "test"]
    with pytest.raises(ValueError, match="outside every split"):
        split_of(-1)


@pytest.mark.parametrize("split", list(SPLITS))
def test_load_cases_honours_a_split(split):
    cases = load_cases(SYNTHETIC, split, n=3)
    start = SPLITS[split].start
    assert [c.rsplit("-", 1)[1] for c in cases["case_id"]] == [f"{i:06d}" for i in range(start, start + 3)]


def test_a_slice_that_leaves_its_split_is_refused_naming_both():
    with pytest.raises(DataError, match=r"49,999\.\.50,000 run from the train into the validation"):
        load_cases(SYNTHETIC, n=2, start=49_999)
    with pytest.raises(DataError, match="from 0 are train cases, not test"):
        load_cases(SYNTHETIC, "test", n=2, start=0)
    with pytest.raises(DataError, match="no split 'holdout'; choose one of train, validation, test"):
        load_cases(SYNTHETIC, "holdout", n=2)
    assert synthetic_indices(2, split="validation", start=STAGE1_VALIDATION_START) == range(100_000, 100_002)


def test_without_split_or_start_synthetic_cases_are_the_training_cases():
    """What training reads (dataset_train_split 'train', or nothing): the cases the demo adapter learnt."""
    assert load_cases(SYNTHETIC, n=1)["case_id"] == load_cases(SYNTHETIC, "train", n=1)["case_id"]


def test_every_default_reads_test_cases():
    from dermtrl.bench.config import DatasetSpec
    from dermtrl.cli import build_parser
    from dermtrl.cli.dispatch import _eval_split
    from dermtrl.scripts.demo import HELD_OUT_START

    parser = build_parser()
    synth = parser.parse_args(["synth", "--out", "x"])
    bench = parser.parse_args(["bench", "judge", "--dataset", SYNTHETIC, "--candidates", "c.jsonl",
                               "--model", "m", "--out", "o"])
    assert synth.start == TEST_START and bench.start == TEST_START
    assert DatasetSpec(source=SYNTHETIC).start == TEST_START and HELD_OUT_START == TEST_START
    evaluate = parser.parse_args(["eval", "--dataset", SYNTHETIC, "--model", "m", "--out", "o"])
    first = load_cases(SYNTHETIC, _eval_split(evaluate), n=1, start=evaluate.start)["case_id"][0]
    assert first.endswith(f"-{TEST_START:06d}")
