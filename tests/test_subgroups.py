"""Agreement sliced by a column (skin tone by default): per-group n, MAE with CI, the largest gap, and the outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dermtrl.agreement.subgroups import FEW_CASES, default_column, slice_agreement, slice_table, write_slices
from dermtrl.dimensions import DIMENSIONS


def _scores(v: float) -> dict[str, float]:
    return {d: v for d in DIMENSIONS}


def _cases():
    """Type I: 12 cases off by 0 on every dimension; V-VI: 12 cases off by 2; II: 3 cases off by 1; 2 unknown."""
    tones = ["I"] * 12 + ["V-VI"] * 12 + ["II"] * 3 + [None, ""]
    experts = [_scores(3.0)] * len(tones)
    errors = [0] * 12 + [2] * 12 + [1] * 3 + [1, 1]
    preds = [_scores(3.0 + e) for e in errors]
    return preds, experts, tones


def test_groups_n_mae_few_cases_and_order():
    preds, experts, tones = _cases()
    s = slice_agreement(preds, experts, tones, n_bootstrap=200, label="DermEval")
    assert [g.value for g in s.groups] == ["I", "II", "V-VI", "unknown"]  # Fitzpatrick order, unknown last
    by = {g.value: g for g in s.groups}
    assert [by[k].n for k in ("I", "II", "V-VI", "unknown")] == [12, 3, 12, 2]
    assert by["I"].macro.value == 0 and by["V-VI"].macro.value == pytest.approx(2.0)
    assert by["II"].few and by["unknown"].few and not by["I"].few  # shown and marked, never hidden
    assert by["V-VI"].per_dimension["Safety"] == pytest.approx(2.0)
    # the gap is chosen among the groups with enough cases, unpaired; here every resample gives 2 exactly
    assert s.gap_groups == ("V-VI", "I") and s.gap_among == 2
    assert s.gap.value == pytest.approx(2.0) and s.gap.ci == pytest.approx((2.0, 2.0))
    assert any("few cases" in line for line in s.lines())


def test_gap_ci_covers_zero_when_groups_do_not_differ():
    rng = np.random.default_rng(0)
    errors = rng.choice([0.0, 1.0, 2.0], size=(200, len(DIMENSIONS)))
    s = slice_table(errors, ["III"] * 100 + ["IV"] * 100, n_bootstrap=500)
    assert s.gap.ci[0] < 0 < s.gap.ci[1]  # the resamples of the two groups are drawn independently
    assert s.gap.ci[0] <= s.gap.value <= s.gap.ci[1]
    assert s.groups[0].macro.ci[0] < s.groups[0].macro.value < s.groups[0].macro.ci[1]


def test_equal_groups_give_a_pair_of_two_groups():
    s = slice_table(np.ones((30, len(DIMENSIONS))), ["I"] * 15 + ["VI"] * 15, n_bootstrap=0)
    assert s.gap_groups is not None and s.gap_groups[0] != s.gap_groups[1] and s.gap.value == 0


def test_any_column_and_mean_scores():
    scores = np.array([[4.0] * 6, [2.0] * 6, [3.0] * 6])
    s = slice_table(scores, ["clinic A", "clinic B", "clinic A"], column="site", statistic="mean score",
                    n_bootstrap=0, min_cases=1)
    assert [(g.value, g.n, g.macro.value) for g in s.groups] == [("clinic A", 2, 3.5), ("clinic B", 1, 2.0)]
    assert s.gap.value == pytest.approx(1.5) and s.gap.ci is None


def test_missing_scores_and_bad_input():
    experts = [_scores(2.0)] * 3
    s = slice_agreement([_scores(3.0), None, {"Safety": 2.0}], experts, ["I", "I", "I"], n_bootstrap=50)
    assert s.groups[0].per_dimension["Accuracy"] == pytest.approx(1.0)  # one scored case
    assert s.groups[0].per_dimension["Safety"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="column 'skin_tone': 2 values for 3 cases"):
        slice_agreement([_scores(3.0)] * 3, experts, ["I", "II"])
    with pytest.raises(ValueError, match=r"--by 'tone': no such column \(columns: image, skin_tone\)"):
        default_column(["skin_tone", "image"], "tone")
    assert default_column(["skin_tone", "image"]) == "skin_tone" and default_column(["image"]) is None


def test_written_outputs(tmp_path):
    preds, experts, tones = _cases()
    sliced = [slice_agreement(preds, experts, tones, n_bootstrap=100, label=label) for label in ("A", "B")]
    paths = write_slices(sliced, tmp_path)
    assert sorted(p.name for p in paths.values()) == [f"slices_skin_tone.{e}" for e in ("csv", "json", "md", "png")]
    md = paths["md"].read_text()
    assert "### A: MAE by skin_tone" in md and "### B: MAE by skin_tone" in md
    assert "| II | 3 |" in md and FEW_CASES in md and "Largest difference, V-VI minus I: +2.000" in md
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 2 * (4 + 1)  # four groups and the gap, per slicing
    assert {r["group"] for r in rows} >= {"I", "V-VI - I", "unknown"}
    data = json.loads(paths["json"].read_text())
    assert data[0]["largest_difference"]["groups"] == ["V-VI", "I"] and data[0]["groups"][1]["few_cases"] is True
    with Image.open(paths["png"]) as img:
        assert img.size[0] > 300 and img.size[1] > 200


def test_table1_with_raters_and_skin_tone(tmp_path):
    from dermtrl.bench.table1 import table1_from_records, write_table1

    preds, experts, tones = _cases()
    ids = [f"c{i}" for i in range(len(tones))]

    def records(offset: float) -> list[dict]:
        return [{"case_id": c, "status": "scored", "scores": {d: min(5.0, v + offset) for d, v in p.items()},
                 "expert_scores": e} for c, p, e in zip(ids, preds, experts, strict=True)]

    raters = {c: [_scores(3.0), _scores(2.0), _scores(4.0)] for c in ids}
    table = table1_from_records(records(0.0), records(0.4), n_bootstrap=100, raters=raters,
                                groups=dict(zip(ids, tones, strict=True)))
    assert [s.label for s in table.slices] == ["DermBench", "DermEval"]
    assert table.dermeval.ceiling is not None and table.dermeval.ceiling.n_cases["Safety"] == len(ids)
    paths = write_table1(table, tmp_path)
    md = paths["md"].read_text()
    assert "MAE by skin_tone" in md and "Expert ceiling: DermEval" in md and "#### Agreement statistics" in md
    assert paths["slices_png"].is_file() and json.loads(paths["json"].read_text())["slices"][1]["label"] == "DermEval"


def test_slice_records_leaves_out_errors_and_unrated():
    from dermtrl.agreement.subgroups import slice_records

    records = [{"case_id": "a", "scores": _scores(3.0), "expert_scores": _scores(2.0), "skin_tone": "VI"},
               {"case_id": "b", "error": "image: broken", "expert_scores": _scores(2.0), "skin_tone": "I"},
               {"case_id": "c", "scores": _scores(3.0), "expert_scores": None, "skin_tone": "I"}]
    s = slice_records(records, "skin_tone", label="DermEval", n_bootstrap=10)
    assert [(g.value, g.n, g.macro.value) for g in s.groups] == [("VI", 1, 1.0)]
    with pytest.raises(ValueError, match="slicing by 'skin_tone': no record carries expert scores"):
        slice_records(records[1:], "skin_tone")


def test_table1_reads_raters_and_the_slice_column_from_the_dataset():
    from datasets import Dataset

    from dermtrl.bench.table1 import case_columns

    rows = {"case_id": ["a", "b"], "narrative": ["x", "y"], "skin_tone": ["I", None], "site": ["arm", "leg"],
            "rater_scores": [[_scores(1.0), _scores(2.0)], [_scores(3.0), _scores(4.0)]]}
    column, raters, groups = case_columns(Dataset.from_dict(rows))
    assert column == "skin_tone" and groups == {"a": "I", "b": None} and raters["b"][1]["Safety"] == 4.0
    column, _, groups = case_columns(Dataset.from_dict(rows), by="site")
    assert column == "site" and groups == {"a": "arm", "b": "leg"}
    plain = [{"case_id": "a", "narrative": "x"}]
    assert case_columns(plain) == (None, None, None)
    with pytest.raises(ValueError, match="--by 'tone': no such column"):
        case_columns(plain, by="tone")


def test_bench_table1_command_slices_by_skin_tone_and_reads_the_ceiling(make_openai_server, demo_adapter, tmp_path):
    """`dermtrl bench table1` on rated narratives that carry every rater and a skin tone: both rows are sliced and
    read against the expert ceiling, with no flag."""
    from dermtrl.cases.synthetic import generate_cases
    from dermtrl.cli import main as dermtrl_main
    from tests.test_bench_cli import server_responder

    server = make_openai_server(responder=server_responder)
    ds = generate_cases(6, start=600_000).select_columns(["case_id", "image", "narrative", "reference",
                                                          "expert_scores", "rater_scores"])
    ds = ds.add_column("skin_tone", ["I", "II", "V", "VI", None, "V"])
    ds.save_to_disk(str(tmp_path / "rated"))
    out = tmp_path / "table1"
    assert dermtrl_main(["bench", "table1", "--dataset", str(tmp_path / "rated"), "--split", "train", "--base-url",
                         server.base_url, "--model", "judge", "--dermeval", str(demo_adapter), "--out", str(out),
                         "--n-bootstrap", "50", "--no-progress"]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert table["dermeval"]["ceiling"]["n_cases"]["Safety"] == 6
    assert [s["label"] for s in table["slices"]] == ["DermBench", "DermEval"]
    assert [g["value"] for g in table["slices"][1]["groups"]] == ["I", "II", "V", "VI", "unknown"]
    assert all(g["few_cases"] for g in table["slices"][1]["groups"])
    md = (out / "table1.md").read_text()
    assert "Expert ceiling: DermEval" in md and "MAE by skin_tone" in md
    assert (out / "table1_slices_skin_tone.png").is_file()
    # --by slices by any column; the rerun reuses the judgments and DermEval's records
    ds.add_column("site", ["arm", "arm", "leg", "leg", "leg", "face"]).save_to_disk(str(tmp_path / "rated-site"))
    assert dermtrl_main(["bench", "table1", "--dataset", str(tmp_path / "rated-site"), "--split", "train",
                         "--base-url", server.base_url, "--model", "judge", "--dermeval", str(demo_adapter),
                         "--out", str(out), "--n-bootstrap", "50", "--no-progress", "--by", "site"]) == 0
    table = json.loads((out / "table1.json").read_text())
    assert [g["value"] for g in table["slices"][1]["groups"]] == ["arm", "face", "leg"]
