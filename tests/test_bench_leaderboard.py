"""The DermBench leaderboard: Table 2 means and CIs, ranks and their stability, the per-category view, agreement
with experts through the shared metric, and every output format."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest
from rich.console import Console

from dermtrl.bench import build_leaderboard
from dermtrl.bench.render import leaderboard_csv, render_tables, to_markdown, write_report
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import agreement

JUDGE = {"model": "judge", "prompt_version": "v1", "order": "candidate_first"}


def rec(model, i, scores=None, *, category="Eczema Photos", error=None, expert=None, judge=JUDGE):
    values = None if scores is None else dict(zip(DIMENSIONS, scores, strict=True))
    return {"model": model, "case_id": f"c{i:03d}", "category": category, "judge": judge,
            "status": "failed" if error else "scored", "scores": values, "error": error, "expert_scores": expert}


def spread_records():
    """Model 'good' ~4, 'mid' ~3 with two failures, 'close' within noise of 'mid'."""
    rng = random.Random(0)
    out = []
    for i in range(40):
        category = "Eczema Photos" if i < 30 else "Urticaria Hives"
        out.append(rec("good", i, [4, 5, 4, 4, 4, 4], category=category))
        mid = [rng.choice([2, 3, 4]) for _ in DIMENSIONS]
        out.append(rec("mid", i, mid, category=category) if i >= 2 else
                   rec("mid", i, error="judge call failed: HTTP 500" if i == 0 else "unparseable: lacked Safety"))
        close = [min(5, v + rng.choice([0, 0, 1, -1]) * (v > 0)) for v in mid]
        out.append(rec("close", i, close, category=category))
    return out


def test_means_ranks_and_failures():
    board = build_leaderboard(spread_records(), n_bootstrap=300)
    assert board.model_names[0] == "good" and board.models[0].rank == 1
    good = board.models[0]
    assert good.mean == dict(zip(DIMENSIONS, [4.0, 5.0, 4.0, 4.0, 4.0, 4.0], strict=True))
    assert good.overall == pytest.approx(25 / 6) and good.ci["Safety"] == (5.0, 5.0)
    mid = next(m for m in board.models if m.model == "mid")
    assert (mid.n_scored, mid.n_failed) == (38, 2)
    assert mid.failures == {"judge call failed": 1, "unparseable": 1}
    for m in board.models:
        for d in DIMENSIONS:
            lo, hi = m.ci[d]
            assert lo <= m.mean[d] <= hi


def test_ties_share_a_rank_and_nothing_scored_has_none():
    records = [rec("a", i, [3] * 6) for i in range(5)] + [rec("b", i, [3] * 6) for i in range(5)]
    records += [rec("c", i, error="no candidate: image: broken") for i in range(5)]
    board = build_leaderboard(records, n_bootstrap=100)
    assert [(m.model, m.rank) for m in board.models] == [("a", 1), ("b", 1), ("c", None)]
    assert [r.p_same_rank for r in board.rank_stability] == [1.0, 1.0]
    assert board.models[2].overall is None and board.models[2].failures == {"no candidate": 1 * 5}


def test_rank_stability_tells_clear_from_noisy_orderings():
    board = build_leaderboard(spread_records(), n_bootstrap=500)
    stability = {r.model: r for r in board.rank_stability}
    assert stability["good"].p_same_rank == 1.0 and stability["good"].rank_interval == (1, 1)
    assert stability["good"].p_first == 1.0
    assert stability["mid"].p_same_rank < 0.95 and stability["close"].p_same_rank < 0.95
    assert stability["mid"].rank_interval == (2, 3)
    assert 0 < board.mean_kendall_tau < 1


def test_same_records_in_any_order_give_the_same_leaderboard():
    records = spread_records()
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    board = build_leaderboard(records, n_bootstrap=200).to_dict()
    assert board == build_leaderboard(shuffled, n_bootstrap=200).to_dict()
    assert board != build_leaderboard(records, n_bootstrap=200, seed=1).to_dict()


def test_per_category_breakdown_in_figure_5_order():
    board = build_leaderboard(spread_records(), n_bootstrap=100)
    assert board.category_names == ["Eczema Photos", "Urticaria Hives"]  # Figure 5 order, not alphabetical
    eczema = board.category_result("Eczema Photos", "good")
    assert eczema.n == 30 and eczema.overall == pytest.approx(25 / 6)
    assert board.category_result("Urticaria Hives", "mid").n == 10


def test_agreement_with_experts_uses_the_shared_metric():
    expert = dict.fromkeys(DIMENSIONS, 3.0)
    records = [rec("m", i, [3, 4, 3, 2, 3, 3], expert=expert) for i in range(10)]
    records.append(rec("m", 10, error="unparseable: lacked Safety", expert=expert))
    records += [rec("no-experts", i, [2] * 6) for i in range(10)]
    board = build_leaderboard(records, n_bootstrap=100)
    assert list(board.agreement) == ["m"]
    direct = agreement([r["scores"] for r in records[:10]], [expert] * 10, skipped=1, n_bootstrap=100,
                       label="DermBench judge on m")
    assert board.agreement["m"].to_dict() == direct.to_dict()
    assert board.agreement["m"].skipped == 1


def test_bad_records_are_refused_by_name():
    good = rec("m", 0, [3] * 6)
    with pytest.raises(ValueError, match="model 'm', case 'c000' twice"):
        build_leaderboard([good, good])
    with pytest.raises(ValueError, match="'Safety' is 7"):
        build_leaderboard([rec("m", 0, [3, 7, 3, 3, 3, 3])])
    with pytest.raises(ValueError, match="different judge settings"):
        build_leaderboard([good, rec("n", 0, [3] * 6, judge={**JUDGE, "model": "other"})])
    with pytest.raises(ValueError, match="no 'status'"):
        build_leaderboard([{"model": "m", "case_id": "1"}])


def test_every_output_format(tmp_path):
    expert = dict.fromkeys(DIMENSIONS, 4.0)
    records = spread_records() + [rec("experts", i, [4] * 6, expert=expert) for i in range(6)]
    board = build_leaderboard(records, n_bootstrap=100)
    paths = write_report(board, tmp_path / "report")
    assert {p.name for p in paths.values()} == {
        "report.md", "report.json", "leaderboard.csv", "categories.csv", "leaderboard.png",
        "agreement.md", "agreement.csv", "agreement.json"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text()) == board.to_dict()
    rows = list(csv.DictReader(io.StringIO(leaderboard_csv(board))))
    assert [r["model"] for r in rows] == board.model_names
    assert float(rows[0]["Accuracy"]) == 4.0 and rows[0]["rank"] == "1"
    markdown = to_markdown(board)
    for heading in ("DermBench leaderboard", "Figure 5 category", "Rank stability", "Failed cases",
                    "expert scores"):
        assert heading in markdown
    assert "| 1 | good | 4.000 [4.00, 4.00] |" in markdown
    console = Console(file=io.StringIO(), width=200)
    for table in render_tables(board):
        console.print(table)
    text = console.file.getvalue()
    assert "judge call failed" in text and "Urticaria Hives" in text and "Kendall" in text


def test_skin_tone_slices_each_model_and_any_column_on_request(tmp_path):
    """Records that carry a skin tone are sliced per model (mean score per group with a CI, few-case groups shown
    and marked, the largest gap); ``by`` slices by any other field; records without one give no slice."""
    records = []
    for i in range(24):
        tone = ("I", "II", "V", "VI")[i % 4]
        low = tone in ("V", "VI")
        for model, scores in (("steady", [4] * 6), ("worse-on-dark", [2 if low else 4] * 6)):
            r = rec(model, i, scores, category="Eczema Photos" if i < 12 else "Urticaria Hives")
            r["skin_tone"] = tone
            records.append(r)
    board = build_leaderboard(records, n_bootstrap=200)
    assert [s.label for s in board.slices] == ["steady", "worse-on-dark"]
    worse = board.slices[1]
    assert [g.value for g in worse.groups] == ["I", "II", "V", "VI"] and all(g.few for g in worse.groups)
    assert {g.value: g.macro.value for g in worse.groups} == {"I": 4.0, "II": 4.0, "V": 2.0, "VI": 2.0}
    assert abs(worse.gap.value) == 2.0
    paths = write_report(board, tmp_path / "report")
    assert (tmp_path / "report" / "slices_skin_tone.png").is_file() and "slices_json" in paths
    assert "mean score by skin_tone" in to_markdown(board)
    by_category = build_leaderboard(records, n_bootstrap=50, by="category")
    assert {g.value for g in by_category.slices[0].groups} == {"Eczema Photos", "Urticaria Hives"}
    assert build_leaderboard(spread_records(), n_bootstrap=50).slices == []
    with pytest.raises(ValueError, match="no such column"):
        build_leaderboard(records, n_bootstrap=50, by="fitzpatrick")
