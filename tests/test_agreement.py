"""ICC, Krippendorff's alpha, the constant baseline and the expert ceiling: published and hand-computed values."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from dermtrl.agreement.ceiling import rater_matrix
from dermtrl.agreement.reliability import (
    STATISTICS,
    agreement_statistics,
    bootstrap_counts,
    icc,
    krippendorff_alpha,
    round_half_up,
)
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import IN_SAMPLE_LABEL, TRAIN_MEAN_LABEL, AgreementReport, agreement
from dermtrl.report import to_csv, to_json, to_markdown

# Shrout & Fleiss (1979), Table 2: six targets rated by four judges. Published: ICC(2,1) = .29, ICC(3,1) = .71.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units example with missing
# values. Published: nominal .743, ordinal .815, interval .849.
N = None
KRIPPENDORFF = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def test_icc_matches_shrout_and_fleiss():
    values = icc(SHROUT_FLEISS)
    assert values["ICC(2,1)"] == pytest.approx(0.2898, abs=5e-4)  # .29 in the paper
    assert values["ICC(3,1)"] == pytest.approx(0.7148, abs=5e-4)  # .71 in the paper
    with pytest.raises(ValueError, match="2 cases x 2 raters"):
        icc([[1, 2]])


@pytest.mark.parametrize("level,expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_example(level, expected):
    assert krippendorff_alpha(KRIPPENDORFF, level) == pytest.approx(expected, abs=5e-4)


def test_alpha_domain_and_level_errors():
    # an unobserved value inside the domain changes nothing for ordinal data (its frequency is 0)
    assert krippendorff_alpha(KRIPPENDORFF, "ordinal", domain=[0, 1, 2, 3, 4, 5]) == pytest.approx(0.815, abs=5e-4)
    with pytest.raises(ValueError, match=r"values \[5.0\] are not in the domain"):
        krippendorff_alpha(KRIPPENDORFF, "ordinal", domain=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="level must be"):
        krippendorff_alpha(KRIPPENDORFF, "ratio")  # type: ignore[arg-type]


def _reference_statistics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Each statistic on an explicit (resampled) data set, with scipy / sklearn / the one-data-set functions."""
    a, b = round_half_up(x).astype(int), round_half_up(y).astype(int)
    both = icc(np.column_stack([x, y]))
    return {"mae": float(np.mean(np.abs(x - y))), "spearman": spearmanr(x, y).statistic,
            "qwk": cohen_kappa_score(b, a, labels=list(range(6)), weights="quadratic"),
            "icc21": both["ICC(2,1)"], "icc31": both["ICC(3,1)"],
            "alpha": krippendorff_alpha([a, b], "ordinal", domain=range(6))}


@pytest.mark.parametrize("cells", [4096, 0], ids=["counted cells", "every case ranked"])
def test_weighted_statistics_equal_explicit_resamples(monkeypatch, cells):
    """A bootstrap row of case counts gives exactly the statistic of the resampled data set."""
    monkeypatch.setattr("dermtrl.agreement.reliability.JOINT_CELLS", cells)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 40) + rng.choice([0, 0.5, 1 / 3], 40)
    y = np.clip(y, 0, 5)
    x = np.clip(round_half_up(y + rng.normal(0, 1, 40)), 0, 5)
    counts = bootstrap_counts(40, 5, seed=11)
    got = agreement_statistics(x, y, np.vstack([np.ones((1, 40)), counts]), 6)
    rows = [np.arange(40)] + [np.repeat(np.arange(40), c.astype(int)) for c in counts]
    for b, idx in enumerate(rows):
        want = _reference_statistics(x[idx], y[idx])
        for s in STATISTICS:
            assert got[s][b] == pytest.approx(want[s], abs=1e-9), (s, b)


# ----------------------------------------------------------------------------------------------- reports

def _cases(n: int, seed: int = 0) -> tuple[list[dict], list[dict], list[list[dict]]]:
    """``n`` cases with three integer raters each, experts = their mean, and a noisy model."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 5, (n, 6))
    raters = np.clip(np.rint(truth[:, None, :] + rng.normal(0, 0.6, (n, 3, 6))), 0, 5)
    experts = raters.mean(axis=1)
    model = np.clip(truth + rng.normal(0, 1.0, (n, 6)), 0, 5)
    as_rows = [[dict(zip(DIMENSIONS, map(float, r), strict=True)) for r in case] for case in raters]
    return ([dict(zip(DIMENSIONS, map(float, m), strict=True)) for m in model],
            [dict(zip(DIMENSIONS, map(float, e), strict=True)) for e in experts], as_rows)


@pytest.fixture(scope="module")
def report() -> AgreementReport:
    pred, experts, raters = _cases(60)
    return agreement(pred, experts, raters=raters, label="Model", n_bootstrap=300, seed=2)


def test_every_statistic_per_dimension_and_macro_with_ci(report):
    for dim in DIMENSIONS:
        a = report.per_dimension[dim]
        for s in STATISTICS:
            e = a.stat(s)
            assert e.value is not None and e.ci is not None and e.ci[0] <= e.value <= e.ci[1], (dim, s)
    for s in STATISTICS:
        mean = np.mean([report.per_dimension[d].stat(s).value for d in DIMENSIONS])
        assert report.macro[s].value == pytest.approx(mean)
    assert report.macro["mae"].value == pytest.approx(report.macro_mae)


def test_missing_scores_take_no_part_in_the_coefficients():
    pred, experts, _ = _cases(30, seed=5)
    holed = [dict(p) for p in pred]
    for p in holed[:10]:
        del p["Safety"]
    with_holes = agreement(holed, experts, n_bootstrap=0).per_dimension["Safety"]
    subset = agreement(pred[10:], experts[10:], n_bootstrap=0).per_dimension["Safety"]
    for s in STATISTICS:
        assert with_holes.stat(s).value == pytest.approx(subset.stat(s).value)
    assert with_holes.n_missing == 10


def test_constant_baselines_train_mean_and_in_sample_mean():
    experts = [{d: float(v) for d in DIMENSIONS} for v in (1, 2, 4, 5)]
    model = [{d: v for d in DIMENSIONS} for v in (1, 2, 3, 3)]
    report = agreement(model, experts, n_bootstrap=0,
                       train_experts=[{d: 2.6 for d in DIMENSIONS}, {d: 2.2 for d in DIMENSIONS}])
    assert report.baseline.label == TRAIN_MEAN_LABEL  # predicts 2.4 -> rounds to 2 for every case
    assert report.baseline.macro_mae == pytest.approx((1 + 0 + 2 + 3) / 4)
    assert report.baseline.constant and not report.constant
    own = agreement(model, experts, n_bootstrap=0).baseline
    assert own.label == IN_SAMPLE_LABEL and own.constant  # every case gets mean(1, 2, 4, 5) = 3
    assert own.macro_mae == pytest.approx((2 + 1 + 1 + 2) / 4)
    empty = agreement([], [], n_bootstrap=10)
    assert own.baseline is None and empty.baseline is None and empty.macro["icc21"].value is None
    # a constant predictor is a baseline itself: no nested one
    constant = agreement([{d: 3 for d in DIMENSIONS}] * 4, experts, n_bootstrap=0)
    assert constant.constant and constant.baseline is None


def test_ceiling_by_hand():
    """Two cases: raters (1, 3) and (2, 2, 5) on every dimension; the model says 2 and 3."""
    raters = [[{d: 1 for d in DIMENSIONS}, {d: 3 for d in DIMENSIONS}],
              [{"rater_id": r, "scores": {d: v for d in DIMENSIONS}} for r, v in (("a", 2), ("b", 2), ("c", 5))]]
    experts = [{d: 2.0 for d in DIMENSIONS}, {d: 3.0 for d in DIMENSIONS}]
    pred = [{d: 2 for d in DIMENSIONS}, {d: 3 for d in DIMENSIONS}]
    c = agreement(pred, experts, raters=raters, n_bootstrap=0, baseline=False).ceiling
    # leave one out: |1-3|, |3-1|, |2-3.5|, |2-3.5|, |5-2| -> (2 + 2 + 1.5 + 1.5 + 3) / 5 = 2.0
    assert c.raters["Accuracy"]["mae"].value == pytest.approx(2.0)
    assert c.model["Accuracy"]["mae"].value == pytest.approx(0.0)  # 2 vs mean(1, 3), 3 vs mean(2, 2, 5)
    assert c.ratio["Macro"]["mae"].value == pytest.approx(0.0)
    assert c.n_cases["Safety"] == 2 and c.n_ratings["Safety"] == 5 and c.raters_per_case == (2, 3)
    assert c.raters["Accuracy"]["mae"].ci is None  # no bootstrap asked


def test_ceiling_ratio_is_paired_and_reads_well(report):
    c = report.ceiling
    for key in (*DIMENSIONS, "Macro"):
        for s in STATISTICS:
            model, raters, ratio = c.model[key][s], c.raters[key][s], c.ratio[key][s]
            assert ratio.value == pytest.approx(model.value / raters.value)
            assert ratio.ci[0] <= ratio.value <= ratio.ci[1]
    # the model vs the mean of all raters is the main report when the experts are that mean
    assert c.model["Safety"]["mae"].value == pytest.approx(report.per_dimension["Safety"].mae)
    assert c.model["Macro"]["icc21"].ci == report.macro["icc21"].ci  # same resamples
    # a model noisier than the raters (sd 1.0 vs 0.6) is further from them than they are from each other
    assert c.ratio["Macro"]["mae"].ci[0] > 1 and c.ratio["Macro"]["icc21"].ci[1] < 1


def test_rater_errors_name_row_rater_and_dimension():
    with pytest.raises(ValueError, match=r"raters row 1, rater 0, dimension 'Safety': score 7"):
        rater_matrix([[{"Safety": 1}], [{"Safety": 7}]])
    with pytest.raises(ValueError, match=r"raters row 0, rater 1: unknown dimension 'Tone'"):
        rater_matrix([[{"Safety": 1}, {"Tone": 2}]])
    with pytest.raises(ValueError, match="raters and experts must have the same length"):
        agreement([{}], [{d: 1 for d in DIMENSIONS}], raters=[])


def test_one_rater_per_case_has_no_ceiling():
    pred, experts, raters = _cases(5)
    assert agreement(pred, experts, raters=[r[:1] for r in raters], n_bootstrap=0).ceiling is None


def test_report_shows_statistics_baseline_and_ceiling(report):
    md = to_markdown(report)
    assert "#### Agreement statistics [CI]" in md and "| Model | ICC(2,1) |" in md
    assert f"| {IN_SAMPLE_LABEL} |" in md and "Krippendorff alpha (ordinal)" in md
    assert "#### Expert ceiling: Model beside rater-to-rater agreement" in md
    assert "| Ratio Model / raters | MAE |" in md and "further from the experts than they are from each other" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    sections = {r["section"] for r in rows}
    assert sections == {"agreement", "baseline", "ceiling: raters", "ceiling: model", "ceiling: ratio model/raters"}
    ratio = next(r for r in rows if r["section"].endswith("ratio model/raters") and r["dimension"] == "Macro")
    assert float(ratio["mae"]) == pytest.approx(report.ceiling.ratio["Macro"]["mae"].value)
    data = json.loads(to_json(report))[0]
    assert data["ceiling"]["ratio_model_over_raters"]["Macro"]["mae"]["ci"] is not None
    assert AgreementReport.from_dict(data) == report


def test_old_report_json_still_loads(report):
    old = report.to_dict()
    for key in ("macro", "baseline", "ceiling"):
        del old[key]
    for a in old["per_dimension"].values():
        for key in ("icc21", "icc21_ci", "icc31", "icc31_ci", "alpha", "alpha_ci", "spearman_ci", "qwk_ci"):
            del a[key]
    loaded = AgreementReport.from_dict(old)
    assert loaded.ceiling is None and loaded.per_dimension["Safety"].icc21 is None
    assert "n/a" in to_markdown(loaded)


def test_record_raters_reads_either_column():
    from dermtrl.agreement.ceiling import record_raters

    scores = {d: 1.0 for d in DIMENSIONS}
    synthetic = {"rater_scores": [scores, scores]}
    pipeline = {"ratings": [{"rater_id": "a", "scores": scores}, {"rater_id": "b", "scores": scores}]}
    assert record_raters([synthetic, pipeline, {}]) == [synthetic["rater_scores"], pipeline["ratings"], None]
    assert record_raters([{}, {"rater_scores": []}]) is None


def test_a_constant_baseline_passed_as_its_own_report_replaces_the_nested_ones():
    pred, experts, _ = _cases(20)
    train = experts[:10]
    model = agreement(pred, experts, train_experts=train, label="Model", n_bootstrap=0)
    means = {d: float(np.mean([e[d] for e in train])) for d in DIMENSIONS}
    own = agreement([means] * len(experts), experts, label=TRAIN_MEAN_LABEL, n_bootstrap=0)
    md = to_markdown([model, own])
    table = md.split("\n\n")[1]  # the Table 1 rows
    assert table.count(f"| {TRAIN_MEAN_LABEL} |") == 1 and IN_SAMPLE_LABEL not in table
    rows = list(csv.DictReader(io.StringIO(to_csv([model, own]))))
    assert {r["label"] for r in rows if r["section"] == "baseline"} == {TRAIN_MEAN_LABEL}
    # without one of its own, each model's nested baseline is shown, once when they are the same
    two = to_markdown([model, agreement(pred, experts, train_experts=train, label="Again",
                                        n_bootstrap=0)]).split("\n\n")[1]
    assert two.count(f"| {TRAIN_MEAN_LABEL} |") == 1
