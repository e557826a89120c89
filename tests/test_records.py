"""Official DermEval records <-> dermtrl's ``dermeval`` dataset: round trips, score-key mapping, the built
target, and errors that name the line and the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dermtrl.data.records import RecordError, export_records, import_records, official_target
from dermtrl.dimensions import DIMENSIONS
from dermtrl.parsing import parse_scores

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
DERMTRL = [sys.executable, "-c", "import sys; from dermtrl.cli import main; sys.exit(main())"]
KEYS = ["accuracy", "safety", "medical_groundedness", "clinical_coverage", "reasoning_coherence",
        "description_precision"]


def records() -> list[dict]:
    """Stand-in records in the official schema (written for these tests), in its three shapes."""
    given = {"id": "case_001", "image": "derm/a.png", "diagnostic_text": "Red scaly plaques; the answer is psoriasis.",
             "evaluation_text": "Accuracy: 4.0 - right\nSafety: 5.0 - safe\nMedical Groundedness: 8/10 - ok\n"
                                "Clinical Coverage: 3.5 - partial\nReasoning Coherence: 4 - logical\n"
                                "Description Precision: 4.5 - specific",
             "scores": dict(zip(KEYS, [4, 5, 4, 3.5, 4, 4.5], strict=True))}
    built = {"id": "case_002", "image": "derm/b.png", "diagnostic_text": "A brown papule; seborrheic keratosis.",
             "scores": dict(zip(KEYS, [3, 4, 3, 2, 3, 3], strict=True)),
             "rationales": {"accuracy": "close", "safety": "fine"}, "source": "stand-in"}
    top = {"image": "derm/c.png", "candidate_text": "Urticarial wheals.", "evaluation_text": "Accuracy: 2 - weak",
           **dict(zip(KEYS, [2, 3, 1, 1, 2, 2], strict=True))}
    return [given, built, top]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_images(root: Path) -> Path:
    from PIL import Image

    for name in ("a", "b", "c"):
        (root / "derm").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (200, 40, 40)).save(root / "derm" / f"{name}.png")
    return root


@pytest.mark.parametrize("dest", ["dermeval.jsonl", "dermeval_ds"])
def test_import_then_export_gives_the_same_records(tmp_path, dest):
    src = write_jsonl(tmp_path / "official.jsonl", records())
    root = make_images(tmp_path / "images")
    assert import_records(src, tmp_path / dest, image_root=str(root)) == 3
    assert export_records(tmp_path / dest, tmp_path / "back.jsonl") == 3
    back = [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()]
    assert back == records()


def test_imported_rows_carry_the_six_names_and_a_parsable_target(tmp_path):
    src = write_jsonl(tmp_path / "official.jsonl", records())
    import_records(src, tmp_path / "d.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert rows[0]["expert_scores"] == dict(zip(DIMENSIONS, [4.0, 5.0, 4.0, 3.5, 4.0, 4.5], strict=True))
    assert rows[0]["narrative"].endswith("psoriasis.") and rows[0]["image"] == "derm/a.png"
    assert rows[2]["id"] == "line-3"  # no id in the record: named by its line, and left out again on export
    # the official target built from scores and rationales, read back by dermtrl's parser
    target = rows[1]["evaluation"]
    assert target.startswith("Accuracy: 3.0 - close\nSafety: 4.0 - fine\nMedical Groundedness: 3.0 - ")
    assert target.endswith("Overall Score: 3.0")
    assert parse_scores(target).scores == rows[1]["expert_scores"]
    # the parser reads the official conventions: 8/10 is 4 on 0-5
    assert parse_scores(rows[0]["evaluation"]).scores["Medical Groundedness"] == 4.0


def test_official_target_roundtrips_through_the_parser():
    scores = dict(zip(DIMENSIONS, [0.0, 1.5, 2.0, 3.0, 4.5, 5.0], strict=True))
    assert parse_scores(official_target(scores)).scores == scores


@pytest.mark.parametrize(("bad", "message"), [
    ({"image": "x.png", "scores": dict.fromkeys(KEYS, 3)}, r"line 2, field 'diagnostic_text': missing"),
    ({"diagnostic_text": "t", "scores": dict.fromkeys(KEYS, 3)}, r"line 2, field 'image'"),
    ({"image": "x.png", "diagnostic_text": "t"}, r"line 2, field 'evaluation_text': missing, and no 'scores'"),
    ({"image": "x.png", "diagnostic_text": "t", "scores": {**dict.fromkeys(KEYS, 3), "safety": 7}},
     r"line 2, field 'scores.safety': must be a number from 0 to 5, got 7"),
    ({"image": "x.png", "diagnostic_text": "t", "scores": {k: 3 for k in KEYS[:5]}},
     r"line 2, field 'scores.description_precision': missing"),
    ({"image": "x.png", "diagnostic_text": "t", "scores": {**dict.fromkeys(KEYS, 3), "overall": 3}},
     r"line 2, field 'scores.overall': not one of the six keys"),
])
def test_a_bad_record_names_its_line_and_field(tmp_path, bad, message):
    src = write_jsonl(tmp_path / "official.jsonl", [records()[0], bad])
    with pytest.raises(RecordError, match=message):
        import_records(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_json_list_names_the_item_and_a_missing_image_names_the_file(tmp_path):
    src = tmp_path / "official.json"
    src.write_text(json.dumps({"data": records()}), encoding="utf-8")
    with pytest.raises(RecordError, match=r"official.json, item 0, field 'image': no such file"):
        import_records(src, tmp_path / "out", image_root=str(tmp_path))


def test_cli_import_and_export_records(tmp_path):
    src = write_jsonl(tmp_path / "official.jsonl", records())
    done = subprocess.run([*DERMTRL, "data", "import-records", str(src), "--out", str(tmp_path / "d.jsonl")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([*DERMTRL, "data", "export-records", str(tmp_path / "d.jsonl"), "--out",
                           str(tmp_path / "back.jsonl")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [json.loads(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()] == records()
    write_jsonl(src, [{"image": "x.png"}])
    done = subprocess.run([*DERMTRL, "data", "import-records", str(src), "--out", str(tmp_path / "e.jsonl")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "line 1, field 'diagnostic_text'" in errors[0]
