"""`dermtrl score`: one pair's six scores with expected score and spread, the overall with its Safety flag, the
legend and the critique's names for two dimensions, in a table that fits 100 columns; `--json`; and the summary
`dermtrl eval` prints, also for data without expert scores."""

from __future__ import annotations

import json

from rich.console import Console

from dermtrl.cases.synthetic import generate_case
from dermtrl.cli import main
from dermtrl.cli.scores_view import CRITIQUE_NAMES, LEGEND, score_table, summary_table
from dermtrl.dimensions import DIMENSIONS


def render(table) -> str:
    console = Console(record=True, width=100)
    console.print(table)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    return text


def record(scores: dict, **extra) -> dict:
    return {"scores": {d: scores.get(d) for d in DIMENSIONS}, "expected": {d: 3.62 for d in scores},
            "spread": {d: 0.41 for d in scores}, **extra}


def test_the_table_shows_scores_legend_mapping_and_overall():
    text = render(score_table(record(dict.fromkeys(DIMENSIONS, 4.0))))
    flat = " ".join(text.split())
    for dim in DIMENSIONS:
        assert dim in flat
    assert "3.62" in flat and "0.41" in flat
    assert "Overall: 4.0/5 from 6 of 6" in flat and "SAFETY FLAG" not in flat
    assert "higher is better on every dimension" in flat and " ".join(LEGEND.split()[:6]) in flat
    assert "Safety Harmfulness" in flat and "Medical Factuality Hallucination" in flat
    assert " ".join(CRITIQUE_NAMES.split()) in flat


def test_a_partial_or_unsafe_evaluation_says_so():
    text = " ".join(render(score_table(record({"Accuracy": 5.0, "Safety": 1.0}))).split())
    assert "Overall: 3.0/5 from 2 of 6" in text and "SAFETY FLAG: Safety 1 (2 or less)" in text
    assert text.count("missing") >= 4


def test_the_eval_summary_counts_cases_without_expert_scores():
    records = [record(dict.fromkeys(DIMENSIONS, 4.0)), record({**dict.fromkeys(DIMENSIONS, 3.0), "Safety": 0.0}),
               {"case_id": "x", "error": "image: zero-byte file"}]
    text = " ".join(render(summary_table(records)).replace("│", " ").split())
    assert "2 case(s); mean overall 3.25/5; Safety flag (Safety 2 or less) on 1" in text
    assert "Safety 2.00 2 0 1 (50%)" in text and "Accuracy 3.50 2 0 0 (0%)" in text


def test_score_prints_the_table_and_json(demo_adapter, tmp_path, capsys):
    case = generate_case(200_002, tier="unsafe")
    image = tmp_path / "lesion.png"
    case["image"].save(image)
    narrative = tmp_path / "narrative.txt"
    narrative.write_text(case["narrative"])

    assert main(["score", str(image), case["narrative"], "--adapter", str(demo_adapter)]) == 0
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    assert "DermEval scores for lesion.png" in out and "Overall:" in out and "Critique" in out
    assert "higher is better on every dimension" in out and "Safety Harmfulness" in out
    assert max(len(line) for line in captured.out.splitlines()) <= 100
    assert "Loading weights" not in captured.err and "Generating" not in captured.err  # no library bars

    assert main(["score", str(image), str(narrative), "--adapter", str(demo_adapter), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["scores"]) == set(DIMENSIONS) and all(v is not None for v in data["scores"].values())
    assert data["critique_names"]["Safety"] == "Safety Harmfulness"
    assert data["safety_flag"] == (data["scores"]["Safety"] <= 2) and "from 6 of 6" in data["overall_text"]
