"""DermEval as DermBench's second evaluator: Table 2's two halves, Figure 6 and the agreement between them."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dermtrl.bench.config import BenchConfig, ConfigError
from dermtrl.bench.leaderboard import compare_evaluators
from dermtrl.cli import main as dermtrl_main
from dermtrl.dimensions import DIMENSIONS

ROOT = Path(__file__).resolve().parents[1]

# the first test may train the shared demo adapter (1,200 steps; minutes on a busy machine)
pytestmark = pytest.mark.timeout(900)


def _records(model, scores_by_case, status="scored"):
    return [{"model": model, "case_id": str(c), "status": status, "category": None,
             "scores": dict(zip(DIMENSIONS, s, strict=True)) if status == "scored" else None,
             "judge": {"model": "x"}} for c, s in scores_by_case.items()]


def test_figure6_averages_the_two_evaluators_case_by_case():
    bench = _records("A", {0: [4, 4, 4, 4, 4, 4], 1: [2, 2, 2, 2, 2, 2]}) + _records("B", {0: [1] * 6, 1: [1] * 6})
    dermeval = _records("A", {0: [5, 3, 4, 4, 4, 4], 1: [3, 1, 2, 2, 2, 2]}) + _records("B", {0: [2] * 6, 1: [0] * 6})
    cmp = compare_evaluators(bench, dermeval, n_bootstrap=200)
    assert cmp.models == ["A", "B"]
    assert cmp.average["A"]["Accuracy"] == pytest.approx((4 + 5 + 2 + 3) / 4)
    assert cmp.average["A"]["Safety"] == pytest.approx((4 + 3 + 2 + 1) / 4)
    assert cmp.average["B"]["Accuracy"] == pytest.approx(1.0)
    lo, hi = cmp.average_ci["A"]["Accuracy"]
    assert lo <= cmp.average["A"]["Accuracy"] <= hi
    acc = cmp.dimensions[0]
    assert acc.n == 4
    assert acc.mean_difference == pytest.approx((1 + 1 + 1 - 1) / 4)  # DermEval minus DermBench
    assert acc.mean_absolute_difference == pytest.approx(1.0)
    assert acc.pearson == pytest.approx(float(np.corrcoef([4, 2, 1, 1], [5, 3, 2, 0])[0, 1]))
    assert cmp.model_rank_tau == pytest.approx(1.0)
    assert cmp.n_paired == {"A": 2, "B": 2}


def test_failed_records_are_left_out_of_the_pairs():
    bench = _records("A", {0: [4] * 6, 1: [2] * 6})
    dermeval = _records("A", {0: [5] * 6}) + _records("A", {1: None}, status="failed")
    cmp = compare_evaluators(bench, dermeval, n_bootstrap=0)
    assert cmp.n_paired == {"A": 1} and cmp.average["A"]["Accuracy"] == pytest.approx(4.5)
    assert cmp.dermeval.models[0].n_failed == 1


def test_config_evaluators_section_is_checked():
    base = yaml.safe_load((ROOT / "recipes/configs/bench_example.yaml").read_text())
    config = BenchConfig.from_dict(base)
    assert config.evaluators.dermeval.adapter == "outputs/dermeval-tiny-soreb"
    base["evaluators"]["dermeval"] = {"batch_size": 4}
    with pytest.raises(ConfigError, match="evaluators.dermeval: give adapter"):
        BenchConfig.from_dict(base)
    base["evaluators"]["dermeval"] = {"adapter": "x", "batchsize": 4}
    with pytest.raises(ConfigError, match="evaluators.dermeval: unknown field"):
        BenchConfig.from_dict(base)


@pytest.fixture(scope="module")
def adapter(demo_adapter):
    """A short Stage-1 adapter (the demo recipe, 1,200 steps: the Space's demo adapter)."""
    return demo_adapter


def test_example_config_writes_both_halves_and_figure6(make_openai_server, tmp_path, adapter, capsys):
    from tests.test_bench_cli import server_responder

    server = make_openai_server(responder=server_responder)
    config = yaml.safe_load((ROOT / "recipes/configs/bench_example.yaml").read_text())
    config["out"] = str(tmp_path / "run")
    config["dataset"]["n"] = 6
    config["judge"].update(base_url=server.base_url, cache_path=str(tmp_path / "judge.sqlite"))
    config["candidates"][0]["client"].update(base_url=server.base_url, cache_path=str(tmp_path / "cand.sqlite"))
    config["candidates"][1].update(max_new_tokens=8, batch_size=4)
    config["evaluators"]["dermeval"].update(adapter=str(adapter), batch_size=6)
    config["report"]["n_bootstrap"] = 100
    config.pop("probes")
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress"]) == 0
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "dermeval.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 6 and {r["model"] for r in records} == {"qwen2.5-vl-7b", "tiny-local",
                                                                      "dataset-narratives"}
    assert sum(r["status"] == "scored" for r in records) >= 12  # a short adapter: most evaluations parse
    for name in ("comparison.md", "comparison.json", "table2.csv", "figure6.csv", "figure6.png",
                 "evaluator_agreement.csv", "dermeval/report.json", "dermeval/agreement.json"):
        assert (out / "report" / name).is_file(), name
    comparison = json.loads((out / "report" / "comparison.json").read_text())
    assert set(comparison["figure6"]) == {"qwen2.5-vl-7b", "tiny-local", "dataset-narratives"}
    assert [a["dimension"] for a in comparison["agreement"]] == list(DIMENSIONS)
    printed = capsys.readouterr().out
    assert "Table 2: mean score 0-5 under DermBench and DermEval" in printed and "Figure 6" in printed
    # resuming scores nothing again and gives the same report
    assert dermtrl_main(["bench", "run", "--config", str(path), "--no-progress"]) == 0
    assert json.loads((out / "report" / "comparison.json").read_text()) == comparison


def test_judge_step_takes_dermeval_and_report_compares(make_openai_server, tmp_path, adapter, capsys):
    from tests.test_bench_cli import server_responder

    server = make_openai_server(responder=server_responder)
    judged = tmp_path / "judgments.jsonl"
    assert dermtrl_main(["bench", "judge", "--dataset", "dermtrl:synthetic", "--n", "4", "--dataset-narratives",
                         "experts", "--base-url", server.base_url, "--model", "judge", "--out", str(judged),
                         "--dermeval", str(adapter), "--no-progress"]) == 0
    dermeval = tmp_path / "judgments.dermeval.jsonl"
    assert len(dermeval.read_text().splitlines()) == 4
    assert "Table 2" in capsys.readouterr().out
    assert dermtrl_main(["bench", "report", str(judged), "--dermeval", str(dermeval), "--out",
                         str(tmp_path / "report"), "--n-bootstrap", "50"]) == 0
    assert (tmp_path / "report" / "figure6.png").is_file() and (tmp_path / "report" / "table2.csv").is_file()


def test_table1_rows_and_paired_difference_by_hand():
    from dermtrl.bench.table1 import table1_from_records

    experts = [{d: 4 for d in DIMENSIONS}, {d: 2 for d in DIMENSIONS}, {d: 5 for d in DIMENSIONS}]
    judged = [dict(r, expert_scores=e) for r, e in zip(
        _records("m", {0: [3.4] * 6, 1: [2.6] * 6, 2: [4.6] * 6}), experts, strict=True)]  # rounded: 3, 3, 5
    dermeval = [dict(r, expert_scores=e) for r, e in zip(
        _records("m", {0: [4] * 6, 1: [2] * 6, 2: [4] * 6}), experts, strict=True)]
    table = table1_from_records(judged, dermeval, n_bootstrap=200)
    assert table.dermbench.per_dimension["Accuracy"].mae == pytest.approx(2 / 3)  # |3-4|, |3-2|, |5-5|
    assert table.dermeval.per_dimension["Accuracy"].mae == pytest.approx(1 / 3)
    value, lo, hi = table.difference["Macro"]
    assert value == pytest.approx(1 / 3 - 2 / 3) and lo <= value <= hi
    assert table.n_paired == 3
    with pytest.raises(ValueError, match="lack case"):
        table1_from_records(judged, dermeval[:2])


def test_table1_in_one_command_on_a_users_dataset(make_openai_server, tmp_path, adapter):
    from dermtrl.cases.synthetic import generate_cases
    from tests.test_bench_cli import server_responder

    server = make_openai_server(responder=server_responder)
    ds = generate_cases(5, start=600_000).select_columns(["case_id", "image", "narrative", "reference",
                                                          "expert_scores"])
    ds.save_to_disk(str(tmp_path / "rated"))
    out = tmp_path / "table1"
    argv = ["bench", "table1", "--dataset", str(tmp_path / "rated"), "--split", "train", "--base-url",
            server.base_url, "--model", "judge", "--dermeval", str(adapter), "--out", str(out), "--n-bootstrap",
            "100", "--no-progress"]
    assert dermtrl_main(argv) == 0
    table = json.loads((out / "table1.json").read_text())
    assert table["dermbench"]["label"] == "DermBench" and table["dermeval"]["label"] == "DermEval"
    assert table["dermbench"]["n_cases"] == table["dermeval"]["n_cases"] == 5
    assert table["dermbench"]["per_dimension"]["Accuracy"]["mae"] is not None
    md = (out / "table1.md").read_text()
    assert "| DermBench |" in md and "| DermEval |" in md and "DermEval - DermBench" in md
    (tmp_path / "bad").mkdir()
    ds.remove_columns(["reference"]).save_to_disk(str(tmp_path / "bad" / "rated"))
    argv[3] = str(tmp_path / "bad" / "rated")
    assert dermtrl_main(argv[:-3] + ["--out", str(tmp_path / "bad-out"), "--no-progress"]) == 2
