"""The construction steps one by one: vocabulary, inputs, record files, normalisation, retries, reviews."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from dermtrl.data.captioning import caption_items, caption_problems
from dermtrl.data.inputs import ingest, read_source
from dermtrl.data.rationale import rationale_items, score_mismatches
from dermtrl.data.reasoning import normalize_reasoning, split_sentences
from dermtrl.data.reviews import SHEET_COLUMNS, export_for_review, import_reviews, review_status
from dermtrl.data.run import RunDir
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.dimensions import DIMENSIONS
from dermtrl.jsonl import RecordLog, SettingsMismatch, read_records
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.prompts import CAPTION_PROMPT, RATIONALE_INSTRUCTION

VOCAB = Vocabulary.default()


# --- vocabulary -------------------------------------------------------------------------------------------


def test_vocabulary_files_and_mentions(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_text("label,category\nAcne vulgaris,Acne and Rosacea Photos\nhives,\n")
    vocab = Vocabulary.from_file(tmp_path / "v.csv")
    assert vocab.canonical("acne_vulgaris ") == "Acne vulgaris" and vocab.category("ACNE-VULGARIS") == \
        "Acne and Rosacea Photos"
    assert vocab.canonical("rosacea") is None and vocab.category("hives") is None
    (tmp_path / "v.json").write_text(json.dumps({"melanoma": "melanoma skin cancer nevi and moles"}))
    assert Vocabulary.from_file(tmp_path / "v.json").category("melanoma") == "Melanoma Skin Cancer Nevi and Moles"
    (tmp_path / "bad.json").write_text(json.dumps({"x": "Not A Category"}))
    with pytest.raises(ValueError, match="not one of Figure 5"):
        Vocabulary.from_file(tmp_path / "bad.json")
    # a caption may describe plaques and cherry-red papules; it may not say psoriasis or melanomas
    assert VOCAB.named_in("This image shows cherry-red papules and plaques.", key_terms=True) == []
    assert VOCAB.named_in("This image shows psoriasis-like plaques.", key_terms=True) == ["plaque psoriasis"]
    assert VOCAB.named_in("multiple melanomas", key_terms=False) == ["melanoma"]
    assert VOCAB.named_in("the answer is basal cell carcinoma") == ["basal cell carcinoma"]


# --- record files -----------------------------------------------------------------------------------------


def test_record_log_resumes_skips_torn_lines_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with RecordLog(path, {"model": "m1"}) as log:
        log.write({"id": "a", "x": 1})
        log.write({"id": "b", "error": "boom"})
        log.write({"id": "a", "x": 2})
    with path.open("a") as fh:
        fh.write('{"id": "c", "x": ')  # killed mid-write
    assert [r["id"] for r in read_records(path)] == ["a", "b", "a"]
    log = RecordLog(path, {"model": "m1"})
    assert log.done() == {"a"} and log.get("a")["x"] == 2 and "b" in log  # errors are retried, last wins
    with pytest.raises(SettingsMismatch, match=r"record id='a' was made with other settings \(model: file has 'm1', "
                                               r"this run 'm2'\)"):
        RecordLog(path, {"model": "m2"})
    assert len(RecordLog(path, {"model": "m2"}, overwrite=True)) == 0


# --- inputs -----------------------------------------------------------------------------------------------


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_tables_and_dataset_folders_with_metadata_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for i in range(4):
        (tmp_path / "img" / f"{i}.png").write_bytes(_png((i * 40, 10, 10)))
    with (tmp_path / "cases.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "category", "fitzpatrick"])
        writer.writerow(["img/0.png", "melanoma", "", "IV"])
        writer.writerow(["img/1.png", "melanoma", "Vascular Tumors", "II"])  # contradicts the vocabulary
        writer.writerow(["", "melanoma", "", "I"])
        writer.writerow(["img/2.png", "vitiligo", "Not a category", ""])
        writer.writerow(["img/missing.png", "vitiligo", "", ""])
    run = RunDir(tmp_path / "run")
    summary = ingest(str(tmp_path / "cases.csv"), run, progress=False)
    assert summary.done == 1
    reasons = {s.item.split(" ")[0]: s.reason for s in summary.skipped}
    assert reasons == {"cases.csv:3": "category-mismatch", "cases.csv:4": "bad-row",
                       "cases.csv:5": "unknown-category", "cases.csv:6": "missing"}
    item = next(iter(run.items().values()))
    assert item["metadata"] == {"fitzpatrick": "IV"} and item["category"] == "Melanoma Skin Cancer Nevi and Moles"

    lines = [json.dumps({"file_name": "img/3.png", "dx": "Vitiligo", "skin_type": "VI"}), "{not json", "[1, 2]"]
    (tmp_path / "cases.jsonl").write_text("\n".join(lines) + "\n")
    raw = list(read_source(str(tmp_path / "cases.jsonl")))
    assert raw[0].label == "Vitiligo" and raw[0].metadata == {"skin_type": "VI"}
    assert "not valid JSON" in raw[1].problem and "not a JSON object" in raw[2].problem

    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    ds = Dataset.from_dict(
        {"image": [{"bytes": _png((1, 2, 3)), "path": None}], "label": [1], "age": [40]},
        features=Features({"image": ImageFeature(), "label": ClassLabel(names=["melanoma", "vitiligo"]),
                           "age": Value("int32")}),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    summary = ingest(str(tmp_path / "saved"), RunDir(tmp_path / "run2"), progress=False)
    item = next(iter(RunDir(tmp_path / "run2").items().values()))
    assert summary.done == 1 and item["label"] == "vitiligo" and item["metadata"] == {"age": 40}


# --- captions and retries -----------------------------------------------------------------------------------


def _run_with_items(tmp_path: Path, n: int = 3) -> RunDir:
    root = tmp_path / "src" / "melanoma"
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"{i}.png").write_bytes(_png((30 + i, 20, 20)))
    run = RunDir(tmp_path / "run")
    ingest(str(tmp_path / "src"), run, progress=False)
    return run


def test_caption_check_retry_and_llm_failure_resume(tmp_path: Path, make_openai_server) -> None:
    assert caption_problems("This image shows a dark macule.", VOCAB) == []
    assert caption_problems("This image shows melanoma.", VOCAB) == ["names a diagnosis: melanoma"]
    run = _run_with_items(tmp_path)
    answers = iter(["This image shows a melanoma.", "This image shows a dark macule on the back."])

    def responder(body: dict) -> str:
        if any(m["role"] == "assistant" for m in body["messages"]):
            assert "names or suggests a diagnosis (melanoma)" in body["messages"][-1]["content"]
            return next(answers)
        return next(answers) if body["messages"][0]["content"][-1]["text"] == CAPTION_PROMPT else "?"

    server = make_openai_server(responder=responder, faults=["500", "500"])
    client = LLMClient(ClientConfig(base_url=server.base_url, model="m", max_retries=0, max_concurrency=1))
    summary = caption_items(run, client, progress=False)
    # two items failed (HTTP 500, no retries left): skipped with the error, the third retried and fixed
    assert summary.done == 1 and len(summary.skipped) == 2 and summary.skipped[0].reason == "llm-error"
    record = next(iter(run.captions().values()))
    assert record["caption"] == "This image shows a dark macule on the back." and record["attempts"] == 2
    assert record["first_caption"] == "This image shows a melanoma." and record["flags"] == []
    answers = iter(["This image shows a dark macule."] * 2)
    summary = caption_items(run, client, progress=False)
    assert summary.reused == 1 and summary.done == 2 and not summary.skipped  # only the failed ones re-ran
    client.close()


# --- reasoning normal form ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "label", "violations"),
    [
        ("I observe red papules on the cheeks. These point to inflammatory follicular disorders. Comedones "
         "narrow it. The diagnosis is acne vulgaris.", "acne vulgaris", []),
        ("I observe red papules. This is acne vulgaris, an inflammatory disorder. Comedones narrow it. "
         "The diagnosis is acne vulgaris.", "acne vulgaris", ["named before the final sentence"]),
        ("I observe red papules. These point to inflammatory disorders. Comedones narrow it. "
         "The diagnosis is rosacea.", "acne vulgaris", ["does not name the ground truth"]),
        ("I observe red papules. The diagnosis is acne vulgaris.", "acne vulgaris", ["too little reasoning"]),
        ("I observe red papules. Comedones are present. The diagnosis is acne vulgaris.", "acne vulgaris",
         ["no coarse disease-family step"]),
        ("", "acne vulgaris", ["empty text"]),
    ],
)
def test_normalize_reasoning_violations(raw: str, label: str, violations: list[str]) -> None:
    norm = normalize_reasoning(raw, VOCAB, label=label)
    assert len(norm.violations) == len(violations), norm.violations
    for expected, got in zip(violations, norm.violations, strict=True):
        assert expected in got
    if not violations:
        assert norm.text == ("<think> First, I observe red papules on the cheeks. Next, these point to inflammatory "
                             "follicular disorders. Then, comedones narrow it. </think> Finally, based on the above "
                             "analysis, the diagnosis is acne vulgaris.")


def test_regular_stream_concludes_any_diagnosis_and_sentences_split_safely() -> None:
    norm = normalize_reasoning("<think>1. I see a ring, e.g. an annular plaque.\n2. Fungal infections fit.\n3. Scale "
                               "at the edge.</think>\nFinal answer: tinea corporis.", VOCAB)
    assert norm.violations == [] and norm.diagnosis == ["tinea corporis"]
    assert split_sentences("Size 2.5 cm, i.e. small. Next one.") == ["Size 2.5 cm, i.e. small.", "Next one."]


# --- reviews ----------------------------------------------------------------------------------------------


def _texts_run(tmp_path: Path) -> RunDir:
    run = _run_with_items(tmp_path, n=2)
    for stream in ("certified", "regular"):
        with RecordLog(run.reasoning_path(stream), {"step": "reason", "stream": stream}) as log:
            for item_id in run.items():
                log.write({"id": f"{item_id}:{stream}", "item_id": item_id, "narrative": f"text {stream}",
                           "caption": "c"})
    return run


def _sheet(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SHEET_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def test_certified_rule_every_rater_kept_and_bad_sheets(tmp_path: Path) -> None:
    run = _texts_run(tmp_path)
    a, b = list(run.items())
    five = dict.fromkeys(DIMENSIONS, "5")
    rows = [
        {"text_id": f"{a}:certified", "rater_id": "r1", **five},
        {"text_id": f"{a}:certified", "rater_id": "r2", **five},
        {"text_id": f"{b}:certified", "rater_id": "r1", **five, "Safety": "4.5"},
        {"text_id": f"{a}:regular", "rater_id": "r1", **{d: "3" for d in DIMENSIONS}},
        {"text_id": f"{a}:regular", "rater_id": "r2", **{d: "4" for d in DIMENSIONS}, "revised_text": "nope"},
        {"text_id": f"{b}:regular", "rater_id": "r1", **{d: "2" for d in DIMENSIONS}, "Accuracy": "x"},
        {"text_id": "", "rater_id": ""},  # an untouched row
    ]
    summary = import_reviews(run, [_sheet(tmp_path / "s.csv", rows)])
    assert summary.done == 5 and {s.reason for s in summary.skipped} == {"invalid-row", "not-reviewed"}
    assert any("'x' is not a number" in s.message for s in summary.skipped)
    assert [f.reason for f in summary.flagged] == ["revision-ignored", "awaiting-revision"]
    status = review_status(run)
    assert status[f"{a}:certified"].status == "certified" and len(status[f"{a}:certified"].ratings) == 2
    assert status[f"{b}:certified"].status == "awaiting-revision" and "Safety 4.5 (r1)" in status[f"{b}:certified"].note
    assert status[f"{a}:regular"].scores == dict.fromkeys(DIMENSIONS, 3.5)
    assert status[f"{b}:regular"].status == "unreviewed"
    # the revision arrives in a second sheet: certified with it, scores fixed at 5, the rater's 4.5 kept
    fix = [{"text_id": f"{b}:certified", "rater_id": "r1", **five, "Safety": "4.5", "revised_text": "better"}]
    import_reviews(run, [_sheet(tmp_path / "s2.csv", fix)])
    st = review_status(run)[f"{b}:certified"]
    assert (st.status, st.narrative, st.scores["Safety"], st.ratings[0]["scores"]["Safety"]) == \
        ("revised", "better", 5.0, 4.5)
    # pending-only export lists what still needs a review
    assert export_for_review(run, tmp_path / "pending.csv", pending_only=True) == 1
    (tmp_path / "wrong.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        import_reviews(run, [tmp_path / "wrong.csv"])


# --- rationale ---------------------------------------------------------------------------------------------


def test_rationale_mismatch_is_retried_then_flagged(tmp_path: Path, make_openai_server) -> None:
    good = "\n".join(f"## {d}\nScore: 5\nEvidence: fine.\nSuggestion: none." for d in DIMENSIONS)
    assert score_mismatches(good, dict.fromkeys(DIMENSIONS, 5.0)) == []
    assert score_mismatches(good.replace("Score: 5", "Score: 4", 1), dict.fromkeys(DIMENSIONS, 5.0)) == [
        "Accuracy restated as 4, given 5"]
    run = _texts_run(tmp_path)
    a, b = list(run.items())
    five = dict.fromkeys(DIMENSIONS, "5")
    import_reviews(run, [_sheet(tmp_path / "s.csv", [{"text_id": f"{a}:certified", "rater_id": "r", **five},
                                                     {"text_id": f"{b}:certified", "rater_id": "r", **five}])])
    bad = good.replace("Score: 5", "Score: 4", 1)
    retries: list[bool] = []

    def responder(body: dict) -> str:
        assert body["messages"][0]["content"][-1]["text"].startswith(RATIONALE_INSTRUCTION)
        if len(body["messages"]) == 1:
            return bad  # every first answer misstates Accuracy
        assert "restating exactly these scores" in body["messages"][-1]["content"]
        retries.append(True)
        return good if len(retries) == 1 else bad  # the first retry fixes it, the second does not

    server = make_openai_server(responder=responder)
    client = LLMClient(ClientConfig(base_url=server.base_url, model="m", max_concurrency=1))
    summary = rationale_items(run, client, progress=False)
    client.close()
    assert summary.done == 2 and server.calls == 4
    records = run.rationales()
    flagged = [r for r in records.values() if r["score_mismatch"]]
    assert len(flagged) == 1 and "Accuracy restated as 4" in flagged[0]["flags"][0]
    ok = next(r for r in records.values() if not r["score_mismatch"])
    assert ok["evaluation"].endswith("Description Precision: 5.0") and ok["attempts"] == 2
