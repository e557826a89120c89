"""Agreement metrics (Table 1) against hand-computed values, and the report renderers."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from dermtrl.dimensions import DIMENSIONS, Scores
from dermtrl.metrics import AgreementReport, agreement, round_half_up
from dermtrl.report import render_table, to_csv, to_json, to_markdown, write_report

ACC, SAFE, MEDG, COVER, REASON, DESC = DIMENSIONS

# A fixed 5-case table. Columns are dimensions; row i of PRED is judged against row i of EXPERT.
# MEDG of case 1 is missing from the prediction.
PRED_COLS = {
    ACC: [2.5, 3.49, 4.5, 0.4, 1.0],  # rounds (half up) to 3, 3, 5, 0, 1
    SAFE: [1, 2, 3, 4, 5],
    MEDG: [3, None, 2, 2, 5],
    COVER: [0, 0, 0, 0, 0],  # constant
    REASON: [5, 5, 5, 5, 5],  # constant, and equal to the experts
    DESC: [1.5, 2.49, 3.5, 4.51, 0.5],  # rounds to 2, 2, 4, 5, 1
}
EXPERT_COLS = {
    ACC: [3, 3, 4, 0, 2],
    SAFE: [2, 1, 4, 3, 5],
    MEDG: [3, 4, 2, 1, 5],
    COVER: [0, 1, 2, 3, 4],
    REASON: [5, 5, 5, 5, 5],
    DESC: [2, 2, 4, 5, 1],
}


def _rows(cols: dict[str, list]) -> list[dict[str, float]]:
    n = len(next(iter(cols.values())))
    return [{d: cols[d][i] for d in DIMENSIONS if cols[d][i] is not None} for i in range(n)]


PRED = _rows(PRED_COLS)
EXPERT = _rows(EXPERT_COLS)


@pytest.fixture(scope="module")
def rounded() -> AgreementReport:
    return agreement(PRED, EXPERT, label="Fixture", n_bootstrap=200, seed=1)


@pytest.fixture(scope="module")
def raw() -> AgreementReport:
    return agreement(PRED, EXPERT, round_predictions=False, n_bootstrap=200, seed=1)


def test_round_half_up_not_bankers():
    values = [2.5, 3.49, 4.5, 0.5, 1.5, 0.49, 5.0]
    assert round_half_up(values).tolist() == [3, 3, 5, 1, 2, 0, 5]
    assert np.round(values).tolist() == [2, 3, 4, 0, 2, 0, 5]  # what we deliberately do not do


def test_mae_per_dimension_rounded(rounded: AgreementReport):
    expected = {
        ACC: 0.4,  # rounded 3,3,5,0,1 vs 3,3,4,0,2 -> |0|+|0|+|1|+|0|+|1| = 2 / 5
        SAFE: 0.8,  # 1,2,3,4,5 vs 2,1,4,3,5 -> 1+1+1+1+0 = 4 / 5
        MEDG: 0.25,  # case 1 missing: 3,2,2,5 vs 3,2,1,5 -> 0+0+1+0 = 1 / 4 (not / 5, not scored as 0)
        COVER: 2.0,  # 0 vs 0,1,2,3,4 -> 10 / 5
        REASON: 0.0,  # 5 vs 5 everywhere
        DESC: 0.0,  # rounded 2,2,4,5,1 == experts
    }
    for dim, mae in expected.items():
        assert rounded.per_dimension[dim].mae == pytest.approx(mae), dim
    # macro = (0.4 + 0.8 + 0.25 + 2.0 + 0 + 0) / 6 = 3.45 / 6
    assert rounded.macro_mae == pytest.approx(0.575)
    assert rounded.rounded is True
    assert list(rounded.per_dimension) == list(DIMENSIONS)


def test_mae_per_dimension_raw(raw: AgreementReport):
    expected = {
        ACC: 0.578,  # .5 + .49 + .5 + .4 + 1.0 = 2.89 / 5
        SAFE: 0.8,
        MEDG: 0.25,
        COVER: 2.0,
        REASON: 0.0,
        DESC: 0.496,  # .5 + .49 + .5 + .49 + .5 = 2.48 / 5
    }
    for dim, mae in expected.items():
        assert raw.per_dimension[dim].mae == pytest.approx(mae), dim
    # (0.578 + 0.8 + 0.25 + 2.0 + 0 + 0.496) / 6 = 4.124 / 6
    assert raw.macro_mae == pytest.approx(4.124 / 6)
    assert raw.rounded is False


def test_spearman_kendall_by_hand(rounded: AgreementReport):
    safe = rounded.per_dimension[SAFE]
    # x = 1,2,3,4,5; y = 2,1,4,3,5 (no ties). d = -1,1,-1,1,0, sum d^2 = 4:
    # rho = 1 - 6 * 4 / (5 * (25 - 1)) = 1 - 24/120 = 0.8
    assert safe.spearman == pytest.approx(0.8)
    # 10 pairs; discordant: (1,2) and (3,4) -> C = 8, D = 2; tau = (8 - 2) / 10 = 0.6
    assert safe.kendall == pytest.approx(0.6)


def test_qwk_by_hand(rounded: AgreementReport):
    # SAFE: expert 2,1,4,3,5 vs pred 1,2,3,4,5; w_ij = (i - j)^2.
    # sum w*O = 1 + 1 + 1 + 1 + 0 = 4. Both marginals put 1 on each of 1..5, so E_ij = 1*1/5 = 0.2 and
    # sum w*E = 0.2 * sum_{i,j in 1..5} (i-j)^2 = 0.2 * (2*5*55 - 2*15^2) = 0.2 * 100 = 20.
    # kappa = 1 - 4/20 = 0.8
    assert rounded.per_dimension[SAFE].qwk == pytest.approx(0.8)


def test_qwk_tiny_unequal_marginals():
    # expert 0,0,5 vs pred 0,1,5 (labels 0..5; N = 3). sum w*O = 0 + 1 + 0 = 1.
    # Expert marginal r: {0: 2, 5: 1}; pred marginal c: {0: 1, 1: 1, 5: 1}; E_ij = r_i c_j / 3.
    # sum w*E = (2*(0 + 1 + 25) + 1*(25 + 16 + 0)) / 3 = (52 + 41) / 3 = 31.
    # kappa = 1 - 1/31 = 30/31
    expert = [dict.fromkeys(DIMENSIONS, v) for v in (0, 0, 5)]
    pred = [dict.fromkeys(DIMENSIONS, v) for v in (0, 1, 5)]
    report = agreement(pred, expert, n_bootstrap=0)
    assert report.per_dimension[ACC].qwk == pytest.approx(30 / 31)
    # QWK always uses integer-rounded predictions: 0.6 rounds to 1, so raw scoring gives the same kappa.
    pred_raw = [dict.fromkeys(DIMENSIONS, v) for v in (0, 0.6, 5)]
    report_raw = agreement(pred_raw, expert, round_predictions=False, n_bootstrap=0)
    assert report_raw.per_dimension[ACC].qwk == pytest.approx(30 / 31)
    assert report_raw.per_dimension[ACC].mae == pytest.approx(0.2)  # 0.6 / 3


def test_constant_inputs_give_none_not_crash(rounded: AgreementReport):
    cover = rounded.per_dimension[COVER]
    assert cover.spearman is None and cover.kendall is None
    reason = rounded.per_dimension[REASON]  # both sides constant 5: every correlation and kappa undefined
    assert reason.spearman is None and reason.kendall is None and reason.qwk is None
    assert reason.mae == 0.0 and reason.mae_ci == (0.0, 0.0)


def test_missing_dimension_counted_not_scored(rounded: AgreementReport):
    medg = rounded.per_dimension[MEDG]
    assert (medg.n, medg.n_missing) == (4, 1)
    for dim in set(DIMENSIONS) - {MEDG}:
        assert (rounded.per_dimension[dim].n, rounded.per_dimension[dim].n_missing) == (5, 0)
    assert rounded.n_cases == 5


def test_none_prediction_is_missing_on_all_dimensions():
    pred = [dict(p) for p in PRED]
    pred[0] = None
    report = agreement(pred, EXPERT, n_bootstrap=0)
    for dim in DIMENSIONS:
        a = report.per_dimension[dim]
        assert a.n_missing == (2 if dim == MEDG else 1)
        assert a.n == 5 - a.n_missing
    # ACC on cases 1-4 only: rounded 3,5,0,1 vs 3,4,0,2 -> 0+1+0+1 = 2 / 4
    assert report.per_dimension[ACC].mae == pytest.approx(0.5)


def test_none_and_nan_values_and_scores_objects_and_aliases():
    expert = [dict.fromkeys(DIMENSIONS, 3.0) for _ in range(3)]
    pred = [
        Scores({"Acc": 4, "Safe": 3}),  # Scores with four dimensions missing
        {ACC: None, SAFE: float("nan"), "MedG": 3},  # None and NaN both mean missing
        {"accuracy": 2.5},  # alias key; rounds up to 3
    ]
    report = agreement(pred, expert, n_bootstrap=0)
    assert (report.per_dimension[ACC].n, report.per_dimension[ACC].n_missing) == (2, 1)
    assert report.per_dimension[ACC].mae == pytest.approx(0.5)  # |4-3| + |3-3| = 1 / 2
    assert (report.per_dimension[SAFE].n, report.per_dimension[MEDG].n) == (1, 1)
    assert report.per_dimension[DESC].n == 0 and report.per_dimension[DESC].mae is None
    assert report.per_dimension[DESC].mae_ci is None
    assert report.macro_mae is None  # undefined while a dimension has no scored pair


def test_skipped_is_recorded():
    report = agreement(PRED, EXPERT, skipped=3, n_bootstrap=0)
    assert report.skipped == 3 and report.n_cases == 5
    assert report.to_dict()["skipped"] == 3
    assert "skipped: 3" in to_markdown([report])


def _synthetic(n: int, seed: int = 7) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    exp = rng.integers(0, 6, size=(n, 6)).astype(float)
    pred = np.clip(exp + rng.normal(0, 0.7, size=(n, 6)), 0, 5)
    preds: list[dict | None] = [dict(zip(DIMENSIONS, row.tolist(), strict=True)) for row in pred]
    preds[0] = None
    del preds[1][SAFE]
    return preds, [dict(zip(DIMENSIONS, row.tolist(), strict=True)) for row in exp]


def test_bootstrap_ci_deterministic_and_contains_estimate():
    pred, exp = _synthetic(200)
    a = agreement(pred, exp, seed=3, n_bootstrap=500)
    b = agreement(pred, exp, seed=3, n_bootstrap=500)
    c = agreement(pred, exp, seed=4, n_bootstrap=500)
    assert a == b
    assert a.macro_mae_ci != c.macro_mae_ci
    for dim in DIMENSIONS:
        lo, hi = a.per_dimension[dim].mae_ci
        assert lo <= a.per_dimension[dim].mae <= hi
    lo, hi = a.macro_mae_ci
    assert lo <= a.macro_mae <= hi
    narrow = agreement(pred, exp, seed=3, n_bootstrap=500, ci=0.5)
    assert narrow.macro_mae_ci[0] >= lo and narrow.macro_mae_ci[1] <= hi


def test_bootstrap_matches_naive_case_resampling():
    """The vectorised bootstrap equals a plain loop over the same seeded case resamples."""
    pred, exp = _synthetic(40)
    n_boot, seed = 50, 11
    report = agreement(pred, exp, seed=seed, n_bootstrap=n_boot)
    idx = np.random.default_rng(seed).integers(0, 40, size=(n_boot, 40))
    per_dim: dict[str, list[float]] = {d: [] for d in DIMENSIONS}
    macro: list[float] = []
    for rows in idx:
        maes = []
        for d in DIMENSIONS:
            errs = [
                abs(math.floor(pred[i][d] + 0.5) - exp[i][d])
                for i in rows
                if pred[i] is not None and d in pred[i]
            ]
            maes.append(sum(errs) / len(errs))
            per_dim[d].append(maes[-1])
        macro.append(sum(maes) / 6)
    for d in DIMENSIONS:
        assert report.per_dimension[d].mae_ci == pytest.approx(tuple(np.percentile(per_dim[d], [2.5, 97.5])))
    assert report.macro_mae_ci == pytest.approx(tuple(np.percentile(macro, [2.5, 97.5])))


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"3 predictions and 2 expert"):
        agreement(PRED[:3], EXPERT[:2])


@pytest.mark.parametrize(
    ("pred_value", "expert_value", "pattern"),
    [
        (3, None, r"expert row 1, dimension 'Safety'.*missing"),
        (3, 6, r"expert row 1, dimension 'Safety'"),
        (3, -0.5, r"expert row 1, dimension 'Safety'"),
        (5.5, 3, r"prediction row 1, dimension 'Safety'"),
        (-1, 3, r"prediction row 1, dimension 'Safety'"),
        ("4", 3, r"prediction row 1, dimension 'Safety'"),
    ],
)
def test_validation_names_row_and_dimension(pred_value, expert_value, pattern):
    pred = [dict.fromkeys(DIMENSIONS, 3) for _ in range(3)]
    exp = [dict.fromkeys(DIMENSIONS, 3) for _ in range(3)]
    pred[1][SAFE] = pred_value
    if expert_value is None:
        del exp[1][SAFE]
    else:
        exp[1][SAFE] = expert_value
    with pytest.raises(ValueError, match=pattern):
        agreement(pred, exp, n_bootstrap=0)


def test_unknown_dimension_key_rejected():
    pred = [{**dict.fromkeys(DIMENSIONS, 3), "Overall": 3}]
    with pytest.raises(ValueError, match=r"prediction row 0: unknown dimension 'Overall'"):
        agreement(pred, [dict.fromkeys(DIMENSIONS, 3)])


def test_to_dict_is_json_safe_and_round_trips(rounded: AgreementReport):
    data = rounded.to_dict()
    text = json.dumps(data, allow_nan=False)  # None, never NaN
    assert json.loads(text)["per_dimension"][COVER]["spearman"] is None
    assert AgreementReport.from_dict(json.loads(text)) == rounded


# ------------------------------------------------------------------------------------------------- report

HEADER = "| Evaluator | Acc | Safe | MedG | Cover | Reason | Desc | Macro |"


@pytest.fixture(scope="module")
def two(rounded: AgreementReport, raw: AgreementReport) -> list[AgreementReport]:
    return [rounded, raw]


def test_markdown_table1_layout(two: list[AgreementReport]):
    md = to_markdown(two)
    assert HEADER in md
    lines = md.splitlines()
    row = lines[lines.index(HEADER) + 2]
    a = two[0].per_dimension[ACC]
    assert row.startswith(f"| Fixture | {a.mae:.3f} [{a.mae_ci[0]:.2f}, {a.mae_ci[1]:.2f}] |")
    assert "Evaluator 2" in md  # unlabelled report gets a placeholder label
    assert "rounded half-up" in md and "raw (unrounded)" in md
    assert "missing: MedG 1" in md and "n = 5 cases" in md


def test_csv_rows(two: list[AgreementReport]):
    rows = list(csv.DictReader(io.StringIO(to_csv(two))))
    # each report and its (different: rounded vs raw) constant baseline, six dimensions and the macro row each
    assert len(rows) == 7 * 2 * len(two)
    assert list(rows[0])[:6] == ["section", "label", "dimension", "mae", "mae_lo", "mae_hi"]
    assert {"spearman_lo", "qwk_hi", "icc21", "icc31_lo", "alpha_hi", "kendall", "n", "n_missing"} <= set(rows[0])
    assert {r["section"] for r in rows} == {"agreement", "baseline"}
    by_key = {(r["label"], r["dimension"]): r for r in rows}
    medg = by_key[("Fixture", MEDG)]
    assert float(medg["mae"]) == pytest.approx(0.25) and medg["n"] == "4" and medg["n_missing"] == "1"
    assert by_key[("Fixture", COVER)]["spearman"] == ""  # undefined -> empty cell
    assert float(by_key[("Fixture", SAFE)]["kendall"]) == pytest.approx(0.6)


def test_json_round_trip(two: list[AgreementReport]):
    data = json.loads(to_json(two))
    assert data == [r.to_dict() for r in two]
    assert [AgreementReport.from_dict(d) for d in data] == two


def test_write_report(tmp_path, two: list[AgreementReport]):
    paths = write_report(two, tmp_path / "out", stem="table1")
    assert sorted(paths) == ["csv", "json", "md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table1.csv", "table1.json", "table1.md"]
    assert paths["md"].read_text(encoding="utf-8") == to_markdown(two)
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == json.loads(to_json(two))


def test_rich_table_renders(two: list[AgreementReport]):
    table = render_table(two)
    assert [c.header for c in table.columns] == ["Evaluator", "Acc", "Safe", "MedG", "Cover", "Reason",
                                                 "Desc", "Macro"]
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "Agreement with expert scores" in text
    assert "Fixture" in text and f"{two[0].macro_mae:.3f}" in text
    assert "skipped: 0" in text and "missing: MedG 1" in text


def test_case_errors_and_paired_bootstrap():
    from dermtrl.metrics import case_errors, macro_mae, paired_bootstrap

    experts = [dict.fromkeys(DIMENSIONS, 3.0), dict.fromkeys(DIMENSIONS, 4.5)]
    preds = [dict.fromkeys(DIMENSIONS, 3.4), {**dict.fromkeys(DIMENSIONS, 5.0), "Safety": None}]
    err = case_errors(preds, experts)
    assert err[0].tolist() == [0.0] * 6  # 3.4 rounds to 3
    assert err[1, 0] == 0.5 and np.isnan(err[1, 1])  # a missing score is missing, never an error of 0
    assert macro_mae(err) == pytest.approx((0.25 * 5 + 0.0) / 6)
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2, size=(200, 6))
    same = paired_bootstrap(lambda x, y: macro_mae(x) - macro_mae(y), [a, a.copy()])
    assert same == (0.0, 0.0, 0.0)
    shifted = paired_bootstrap(lambda x, y: macro_mae(x) - macro_mae(y), [a + 0.5, a])
    assert shifted[0] == pytest.approx(0.5) and shifted[1] == pytest.approx(0.5) and shifted[2] == pytest.approx(0.5)
    noisy = paired_bootstrap(lambda x, y: macro_mae(x) - macro_mae(y), [a + rng.normal(0.1, 0.5, a.shape), a])
    assert noisy[1] < noisy[0] < noisy[2] and noisy[1] > 0  # a real improvement of 0.1 on 200 cases is resolved
    seeds = np.stack([a, a + 0.2, a + 0.4])  # (seeds, cases, 6): resampled jointly
    value, lo, hi = paired_bootstrap(lambda x: macro_mae(x), [seeds])
    assert value == pytest.approx(macro_mae(a) + 0.2) and lo < value < hi
