"""benchmarks/vision_reliance.py's report: per-dimension means, targets and verdicts, with one seed and with several."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dermtrl.cases.synthetic import IMAGE_DEPENDENT
from dermtrl.dimensions import DIMENSIONS


@pytest.fixture(scope="module")
def vision_reliance(load_benchmark):
    return load_benchmark("vision_reliance")


def _arms(shape: tuple[int, ...], ratio: float) -> dict[str, np.ndarray]:
    """Error arrays whose image-dependent mismatched / true ratio is ``ratio`` (up to sampling noise)."""
    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 0.8, shape)
    image = [DIMENSIONS.index(d) for d in IMAGE_DEPENDENT]
    mismatched = true.copy()
    mismatched[..., image] *= ratio
    return {
        "DermEval, true images": true,
        "DermEval, mismatched images": mismatched,
        "Text-only control (blank images)": true + 0.5,
        "Constant train-mean baseline": true + 1.0,
    }


def _targets(out: Path) -> dict[str, tuple[str, str]]:
    with (out / "vision_reliance.csv").open() as fh:
        rows = list(csv.reader(fh))
    return {r[1]: (r[2], r[3]) for r in rows if r[0] == "target"}


def _arm_rows(out: Path) -> dict[str, list[str]]:
    with (out / "vision_reliance.csv").open() as fh:
        return {r[0]: r[1:] for r in list(csv.reader(fh))[1:] if r[0] != "target"}


@pytest.mark.parametrize("shape", [(120, 6), (3, 120, 6)], ids=["one seed", "three seeds"])
@pytest.mark.parametrize("ratio,verdict", [(4.0, "met"), (2.0, "NOT met")])
def test_report_pools_seeds_and_cases_and_judges_the_ratio(vision_reliance, tmp_path, shape, ratio, verdict):
    arms = _arms(shape, ratio)
    seeds = [42 + k for k in range(shape[0])] if len(shape) == 3 else [42]
    with (tmp_path / "log.txt").open("w") as log:
        vision_reliance.report(Console(file=log), arms, tmp_path, shape[-2], 1.0,
                               demo_budget=True, epochs=4, seeds=seeds)
    targets = _targets(tmp_path)
    ratio_line = next(k for k in targets if k.startswith("mismatched / true"))
    assert targets[ratio_line][1] == verdict
    assert targets[ratio_line][0].startswith(f"{ratio:.2f}")
    assert all(verdict_ == "met" for name, (_, verdict_) in targets.items() if name != ratio_line)
    # per-dimension values are the pooled means over every seed and case, in DIMENSIONS order
    row = _arm_rows(tmp_path)["DermEval, true images"]
    expected = [np.mean(arms["DermEval, true images"][..., j]) for j in range(len(DIMENSIONS))]
    np.testing.assert_allclose([float(v) for v in row[:6]], expected, atol=1e-4)
