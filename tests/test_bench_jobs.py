"""The resumable JSONL behind generation and judging: flushed per record, torn tails repaired, each key once,
other settings refused, redo without duplicates."""

from __future__ import annotations

import json

import pytest

from dermtrl.bench.jobs import JobProgress, results_file, run_concurrently
from dermtrl.jsonl import RecordLog

SETTINGS = {"model": "judge", "temperature": 0.0}


def open_file(path, settings=SETTINGS, **kw) -> RecordLog:
    return results_file(path, "judge", settings, **kw)


def test_each_record_is_on_disk_as_soon_as_it_is_written(tmp_path):
    path = tmp_path / "sub" / "j.jsonl"
    with open_file(path) as results:
        results.write({"model": "m", "case_id": "1", "status": "scored"})
        on_disk = [json.loads(line) for line in path.read_text().splitlines()]  # before close
        assert on_disk == [{"model": "m", "case_id": "1", "status": "scored", "judge": SETTINGS}]
        with pytest.raises(ValueError, match="model='m', case_id='1' was already written"):
            results.write({"model": "m", "case_id": "1", "status": "failed"})


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    path = tmp_path / "j.jsonl"
    good = json.dumps({"model": "m", "case_id": "1", "judge": SETTINGS})
    path.write_text(good + "\n" + '{"model": "m", "case_id": "2", "ju')  # killed mid-write
    with open_file(path) as results:
        assert len(results) == 1 and ("m", "2") not in results
        results.write({"model": "m", "case_id": "2"})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in lines] == ["1", "2"]


def test_other_settings_are_refused_and_overwrite_starts_afresh(tmp_path):
    path = tmp_path / "j.jsonl"
    with open_file(path) as results:
        results.write({"model": "m", "case_id": "1"})
    with pytest.raises(ValueError, match=r"temperature: file has 0.0, this run 0.5.*overwrite"):
        open_file(path, settings={**SETTINGS, "temperature": 0.5})
    with open_file(path, settings={**SETTINGS, "temperature": 0.5}, overwrite=True) as results:
        assert len(results) == 0


def test_redo_removes_records_atomically_and_a_repeated_key_in_a_file_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    with open_file(path) as results:
        for i, error in enumerate([None, "judge call failed: 500", None]):
            results.write({"model": "m", "case_id": str(i), "error": error})
    with open_file(path, redo=lambda r: r["error"] is not None) as results:
        assert sorted(k[1] for k in results.records) == ["0", "2"]
    assert len(path.read_text().splitlines()) == 2
    path.write_text(path.read_text() * 2)
    with pytest.raises(ValueError, match="line 3 repeats the record for model='m', case_id='0'"):
        open_file(path)


def test_run_concurrently_records_every_item_even_when_work_raises(tmp_path):
    def work(i: int) -> dict:
        if i % 3 == 0:
            raise RuntimeError(f"boom {i}")
        return {"model": "m", "case_id": str(i), "error": None}

    def on_error(i: int, exc: BaseException) -> dict:
        return {"model": "m", "case_id": str(i), "error": str(exc)}

    with open_file(tmp_path / "j.jsonl") as results:
        bar = JobProgress("test", 10, enabled=False)
        run_concurrently(list(range(10)), work, results, bar, workers=4, on_error=on_error)
        assert len(results) == 10 and bar.failed == 4
        assert {r["case_id"]: r["error"] for r in results.records.values()}["3"] == "boom 3"


def test_progress_shows_calls_cache_hits_failures_and_eta(capsys):
    from dermtrl.llm.client import Usage

    usage = Usage()
    with JobProgress("judge", 4, 1, usage=usage) as bar:
        usage.add(calls=2, cache_hits=1)
        bar.advance_records([{"error": None}, {"error": "judge call failed: HTTP 500"}, {"error": None}])
    shown = " ".join(capsys.readouterr().err.split())
    assert "judge" in shown and "4/4" in shown
    assert "calls 2 · cached 1 · failed 1" in shown and "ETA" in shown


def test_job_bar_says_what_a_rerun_resumes_and_shows_its_counters(capsys):
    from dermtrl.progress import JobBar

    with JobBar("caption", 5, done=2, counters={"failed": 0}) as bar:
        bar.advance(3, failed=1)
    shown = " ".join(capsys.readouterr().err.split())
    assert "caption: resumed: 2 of 5 already done" in shown and "5/5" in shown and "failed 1" in shown
    with JobBar("off", 3, enabled=False) as bar:
        bar.advance(3, failed=2)  # counted even when nothing is shown
    assert bar.counters == {"failed": 2} and capsys.readouterr().err == ""
