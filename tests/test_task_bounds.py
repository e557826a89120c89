"""benchmarks/task_bounds.py: the reading-limited bound samples exactly the reading it measured."""

from __future__ import annotations

import json
import re

import pytest

from dermtrl.cases.synthetic import draw_case, expert_scores, generate_case

START = 200_000


@pytest.fixture(scope="module")
def bounds(load_benchmark):
    return load_benchmark("task_bounds")


def _write_records(path, n: int, edit=lambda text: text) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(START, START + n):
            case = generate_case(i, render_image=False)
            fh.write(json.dumps({"case_id": case["case_id"], "critique": edit(case["evaluation"].split("\n\n")[0])}))
            fh.write("\n")
    return str(path)


def test_a_reader_measured_on_perfect_critiques_scores_as_the_generator(bounds, tmp_path):
    reader = bounds.Reader([_write_records(tmp_path / "r.jsonl", 80)])
    assert reader.n_records == 80 and "count 100%" in reader.rates()
    for i in range(START, START + 30):
        d = draw_case(i)
        assert reader.read(d.truth) == d.truth
        assert reader.scores(d.claims, d.truth, 2) == [expert_scores(d.claims, d.cond, d.truth)] * 2


def test_a_reader_that_writes_a_single_for_every_count_reads_every_picture_so(bounds, tmp_path):
    def one(text: str) -> str:
        return re.sub(r"(Count: narrative .+?), image .+?, (right|wrong)\.", r"\1, image a single, \2.", text)

    reader = bounds.Reader([_write_records(tmp_path / "r.jsonl", 80, one)])
    truths = [draw_case(i).truth for i in range(START, START + 40)]
    assert any(t.count > 1 for t in truths)
    assert all(reader.read(t).count == 1 for t in truths)
    assert all(reader.read(t).colour == t.colour for t in truths)  # the other features as measured: exact


def test_unreadable_records_name_the_file(bounds, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(SystemExit, match="bad.jsonl: cannot read DermEval records"):
        bounds.Reader([str(bad)])
