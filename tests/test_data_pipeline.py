"""End to end, offline: an image folder with bad files -> every Section 3.1 step -> both datasets with cards."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermtrl.cases.images import content_hash, read_image
from dermtrl.data.build import SplitLeak, build_datasets, check_split_guard, evaluation_hashes
from dermtrl.data.captioning import caption_items
from dermtrl.data.cards import validate_card
from dermtrl.data.inputs import ingest
from dermtrl.data.rationale import rationale_items
from dermtrl.data.reasoning import reason_items
from dermtrl.data.reviews import export_for_review, import_reviews, review_status
from dermtrl.data.run import RunDir
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.dimensions import DIMENSIONS
from dermtrl.jsonl import SettingsMismatch
from dermtrl.llm.client import ClientConfig, LLMClient
from dermtrl.prompts import CAPTION_PROMPT, RATIONALE_INSTRUCTION
from dermtrl.testing import last_user_text

MAX_PIXELS = 200_000  # small, so the over-the-limit paths run on small files


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _lesion(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), (222, 184, 150), dtype=np.uint8)
    arr[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = colour
    arr = (arr.astype(int) + rng.integers(-8, 8, arr.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_folder(root: Path) -> dict[str, str]:
    """An ImageFolder with good images in every mode and every kind of bad file; returns special hashes."""
    def put(rel: str, data: bytes) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    put("acne vulgaris/a1.png", _png(_lesion((200, 40, 45), seed=1)))
    jpeg = io.BytesIO()
    _lesion((190, 50, 50), seed=2).save(jpeg, "JPEG", quality=90)
    put("acne vulgaris/a2.jpg", jpeg.getvalue())
    put("Vascular Tumors/cherry angioma/c1.png", _png(_lesion((180, 20, 30), seed=3)))
    cmyk = io.BytesIO()
    _lesion((35, 25, 25), seed=4).convert("CMYK").save(cmyk, "JPEG", quality=90)
    put("melanoma/m_cmyk.jpg", cmyk.getvalue())
    rgba = _lesion((248, 244, 238), seed=5).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    put("vitiligo/v_rgba.png", _png(rgba))
    put("tinea_corporis/t_palette.png", _png(_lesion((200, 60, 60), seed=6).convert("P", palette=Image.ADAPTIVE)))
    put("plaque psoriasis/p_gray.png", _png(_lesion((235, 135, 150), seed=7).convert("L")))
    sixteen = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    put("seborrheic keratosis/s16.png", _png(Image.fromarray(sixteen)))
    big = io.BytesIO()
    _lesion((240, 140, 150), size=(640, 480), seed=8).save(big, "JPEG", quality=85)
    put("basal cell carcinoma/big.jpg", big.getvalue())
    # bad ones
    put("acne vulgaris/zero.png", b"")
    put("acne vulgaris/corrupt.jpg", b"this is not an image, whatever its name says" * 10)
    good_png = _png(_lesion((120, 70, 35), seed=9))
    put("melanoma/truncated.png", good_png[: len(good_png) // 2])
    put("plaque psoriasis/too_big.png", _png(_lesion((235, 135, 150), size=(600, 500), seed=10)))
    # a PNG header that claims 20000 x 20000 pixels: refused from the header, never decoded
    bomb = bytearray(_png(Image.new("L", (1, 1))))
    bomb[16:24] = (20000).to_bytes(4, "big") * 2
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # a valid IHDR: only the size is a lie
    put("vitiligo/bomb.png", bytes(bomb))
    put("acne vulgaris/dup_of_a1.png", (root / "acne vulgaris/a1.png").read_bytes())
    put("unknown disease/x.png", _png(_lesion((10, 200, 10), seed=11)))
    put("notes.txt", b"not an image")
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "fitzpatrick"])
        writer.writerow(["acne vulgaris/a1.png", "II"])
        writer.writerow(["melanoma/m_cmyk.jpg", "V"])
    return {"cmyk": content_hash(read_image(root / "melanoma/m_cmyk.jpg").image)}


def _image_hash(body: dict) -> str | None:
    for message in body["messages"]:
        if isinstance(message["content"], list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    return content_hash(Image.open(io.BytesIO(data)).convert("RGB"))
    return None


class Responder:
    """Scripted model: good answers, except a caption that keeps naming melanoma, a certified text for vitiligo
    that names it early, and a rationale (for one regular text) that keeps misstating Accuracy."""

    def __init__(self, special: dict[str, str]) -> None:
        self.special = special

    def __call__(self, body: dict) -> str:
        first = next(m for m in body["messages"] if m["role"] == "user")
        text = first["content"] if isinstance(first["content"], str) else first["content"][-1]["text"]
        if text == CAPTION_PROMPT:
            if _image_hash(body) == self.special["cmyk"]:
                return "This image shows a dark irregular lesion on the back, suspicious for melanoma."
            return "This image shows a well-defined coloured lesion on the trunk."
        if "Simulate expert hierarchical reasoning" in text:
            label = re.search(r"ground truth (.+?)\. Begin", text)
            if label:
                name = label.group(1)
                if name == "vitiligo":
                    return ("First, I think of vitiligo. Next, I consider the broad family of pigmentary disorders. "
                            "Then the depigmentation fits. Finally, the diagnosis is vitiligo.")
                return (f"## High-level categorization\nFirst, I observe a coloured lesion. Next, the features point "
                        f"to a broad family of skin disorders.\n## Refinement\nThe border and colour narrow it down."
                        f"\n**Conclusion:** The most likely diagnosis is {name}.")
            return ("First, I observe a coloured lesion. Next, this belongs to the inflammatory disorders. "
                    "Then the pattern narrows it. Finally, the most likely diagnosis is acne vulgaris.")
        if text.startswith(RATIONALE_INSTRUCTION):
            scores = dict(re.findall(r"^([A-Za-z ]+): ([0-9.]+)$", text.split("Scores:\n", 1)[1], re.MULTILINE))
            narrative = text.split("Diagnostic narrative:\n", 1)[1]
            lines = []
            for dim in DIMENSIONS:
                value = scores[dim]
                if dim == "Accuracy" and "I observe a coloured lesion. Next, this belongs" in narrative \
                        and float(scores["Safety"]) == 2.0:
                    value = "5"  # keeps misstating this one
                lines.append(f"## {dim}\nScore: {value}\nEvidence: the narrative describes the lesion.\n"
                             f"Suggestion: describe the border more precisely.")
            return "\n\n".join(lines)
        return "unexpected prompt: " + last_user_text(body)[:40]


@pytest.fixture
def setup(tmp_path: Path, make_openai_server):
    source = tmp_path / "images"
    special = make_folder(source)
    server = make_openai_server(responder=Responder(special))
    client = LLMClient(ClientConfig(base_url=server.base_url, model="scripted", max_concurrency=4, max_retries=1,
                                    cache_path=str(tmp_path / "cache.sqlite")))
    yield source, RunDir(tmp_path / "run"), server, client
    client.close()


def _fill_sheet(sheet: Path, out: Path, status_rows: dict) -> None:
    """Two raters; one certified text revised, one left awaiting revision; three bad rows."""
    with sheet.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    out_rows = []
    certified = [r for r in rows if r["stream"] == "certified"]
    regular = [r for r in rows if r["stream"] == "regular"]
    for i, row in enumerate(certified):
        scores = dict.fromkeys(DIMENSIONS, "5")
        revised = ""
        if i == 0:
            scores["Safety"] = "4"
            revised = row["text"].replace("most likely", "clinically most likely")
        if i == 1:
            scores["Accuracy"] = "3"  # no revision: awaits one
        out_rows.append({**row, "rater_id": "dr_a", **scores, "revised_text": revised})
        kind = "revised" if i == 0 else "awaiting" if i == 1 else "certified"
        status_rows.setdefault(kind, []).append(row["text_id"])
    for i, row in enumerate(regular):
        for rater in ("dr_a", "dr_b"):
            scores = {d: str(3 + (i + k) % 3) for k, d in enumerate(DIMENSIONS)}
            scores["Safety"] = "2" if i == 0 else scores["Safety"]
            if rater == "dr_b" and i in (1, 2):
                status_rows.setdefault("one_rater", []).append(row["text_id"])
            if rater == "dr_b" and i == 1:
                scores["Clinical Coverage"] = ""  # missing
            if rater == "dr_b" and i == 2:
                scores["Reasoning Coherence"] = "7"  # out of range
            out_rows.append({**row, "rater_id": rater, **scores})
    out_rows.append({**regular[0], "text_id": "img-doesnotexist:regular", "rater_id": "dr_a",
                     **dict.fromkeys(DIMENSIONS, "4")})
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)


def test_folder_with_bad_images_builds_both_datasets_end_to_end(setup, tmp_path: Path) -> None:
    source, run, server, client = setup
    vocabulary = Vocabulary.default()

    # --- ingest: every bad file is skipped with a message naming it, the rest converted and stored
    summary = ingest(str(source), run, vocabulary=vocabulary, max_pixels=MAX_PIXELS, progress=False)
    skipped = {s.item: s.reason for s in summary.skipped}
    assert skipped == {
        "acne vulgaris/zero.png": "zero-byte",
        "acne vulgaris/corrupt.jpg": "unreadable",
        "melanoma/truncated.png": "truncated",
        "plaque psoriasis/too_big.png": "too-large",
        "vitiligo/bomb.png": "too-large",
        "acne vulgaris/dup_of_a1.png": "duplicate",
        "unknown disease/x.png": "label-not-in-vocabulary",
        "notes.txt": "bad-row",
    }
    messages = {s.item: s.message for s in summary.skipped}
    assert "acne vulgaris/a1.png" in messages["acne vulgaris/dup_of_a1.png"]
    assert "'unknown disease'" in messages["unknown disease/x.png"]
    converted = {s.item: s.message for s in summary.flagged}
    assert "CMYK" in converted["melanoma/m_cmyk.jpg"]
    assert "flattened onto white" in converted["vitiligo/v_rgba.png"]
    assert "palette" in converted["tinea_corporis/t_palette.png"]
    assert "grayscale" in converted["plaque psoriasis/p_gray.png"]
    assert "8 bits" in converted["seborrheic keratosis/s16.png"]
    assert "downscaled from 640x480" in converted["basal cell carcinoma/big.jpg"]
    items = run.items()
    assert len(items) == 9 and summary.done == 9
    by_source = {i["source"]: i for i in items.values()}
    assert by_source["Vascular Tumors/cherry angioma/c1.png"]["category"] == "Vascular Tumors"
    assert by_source["tinea_corporis/t_palette.png"]["label"] == "tinea corporis"
    assert by_source["acne vulgaris/a1.png"]["metadata"] == {"fitzpatrick": "II"}
    assert by_source["acne vulgaris/a2.jpg"]["image"].endswith(".jpg")  # an unchanged JPEG keeps its bytes
    stored16 = np.asarray(Image.open(run.image_path(by_source["seborrheic keratosis/s16.png"])))
    assert stored16.max() == 255 and stored16.min() == 0  # scaled, not clipped to white
    # the rich summary table names every skipped item
    from rich.console import Console

    console = Console(file=io.StringIO(), width=250)
    console.print(summary.table())
    table = console.file.getvalue()
    assert all(name in table for name in skipped)

    # --- captions: the one naming melanoma is retried once, then kept and flagged
    summary = caption_items(run, client, progress=False)
    assert summary.done == 9 and not summary.skipped
    assert [f.item for f in summary.flagged] == [by_source["melanoma/m_cmyk.jpg"]["id"]]
    assert "melanoma" in summary.flagged[0].message
    cmyk_caption = run.captions()[by_source["melanoma/m_cmyk.jpg"]["id"]]
    assert cmyk_caption["attempts"] == 2 and cmyk_caption["model"] == "scripted" and cmyk_caption["prompt_version"]

    # --- reasoning, both streams: normalised; vitiligo's certified text names the disease early -> flagged
    certified = reason_items(run, client, "certified", progress=False)
    regular = reason_items(run, client, "regular", progress=False)
    assert certified.done == regular.done == 9
    assert [f.item for f in certified.flagged] == [by_source["vitiligo/v_rgba.png"]["id"] + ":certified"]
    assert "named before the final sentence" in certified.flagged[0].message
    text = run.texts("certified")[by_source["acne vulgaris/a1.png"]["id"] + ":certified"]["narrative"]
    assert text.startswith("<think> First, I observe") and "</think> Finally, based on the above analysis," in text
    assert text.rstrip(".").endswith("acne vulgaris") and "Conclusion" not in text
    # the certified request carried the label and no image; the regular one the image and no label
    reason_requests = [r["body"] for r in server.chat_requests if "hierarchical reasoning" in str(r["body"])]
    assert any("ground truth" in last_user_text(b) and _image_hash(b) is None for b in reason_requests)
    assert any("ground truth" not in last_user_text(b) and _image_hash(b) is not None for b in reason_requests)

    # --- resuming makes no new calls; another model is refused
    calls = server.calls
    assert caption_items(run, client, progress=False).reused == 9
    assert reason_items(run, client, "regular", progress=False).reused == 9
    assert server.calls == calls
    other = LLMClient(ClientConfig(base_url=client.base_url, model="another-model"))
    with pytest.raises(SettingsMismatch, match="model"):
        caption_items(run, other, progress=False)
    other.close()

    # --- reviewer sheet out and back: bad rows skipped with messages, every rater kept, revision rule
    sheet = tmp_path / "sheet.csv"
    assert export_for_review(run, sheet) == 18
    filled = tmp_path / "filled.csv"
    expected: dict[str, list[str]] = {}
    _fill_sheet(sheet, filled, expected)
    summary = import_reviews(run, [filled])
    reasons = sorted(s.reason for s in summary.skipped)
    assert reasons == ["invalid-row", "invalid-row", "unknown-text"]
    messages = " | ".join(s.message for s in summary.skipped)
    assert "Clinical Coverage missing" in messages and "Reasoning Coherence 7 is outside 0-5" in messages
    assert "filled.csv:" in messages
    assert [f.item for f in summary.flagged if f.reason == "awaiting-revision"] == expected["awaiting"]
    status = review_status(run)
    revised = status[expected["revised"][0]]
    assert revised.status == "revised" and "clinically most likely" in revised.narrative
    assert revised.scores == dict.fromkeys(DIMENSIONS, 5.0) and revised.ratings[0]["scores"]["Safety"] == 4.0
    assert status[expected["awaiting"][0]].status == "awaiting-revision"
    for tid in (t for t in status if t.endswith(":regular")):
        assert len(status[tid].ratings) == (1 if tid in expected["one_rater"] else 2), tid

    # --- rationales: restated scores parsed back; the one that keeps misstating is flagged
    summary = rationale_items(run, client, progress=False)
    assert summary.done == 17  # 8 certified (one awaits revision) + 9 regular
    mismatched = [f for f in summary.flagged if "score mismatch" in f.message]
    assert len(mismatched) == 1 and "Accuracy restated as 5" in mismatched[0].message

    # --- build: both datasets, split guard, cards filled from the data and valid
    # every certified reference in dermbench (the default leaves out those of DermEval's training images)
    result = build_datasets(run, test_fraction=0.3, seed=0, progress=False, allow_eval_images_in_train=True)
    bench, evaluation = result.dermbench, result.dermeval
    assert len(bench["test"]) == 8
    assert len(evaluation["train"]) + len(evaluation["test"]) == 16  # the mismatched rationale is left out
    skipped = {s.reason for s in result.summary.skipped}
    assert skipped == {"awaiting-revision", "rationale-mismatch"}
    row = bench["test"][0]
    assert row["image"].mode == "RGB" and set(row) >= {"reference", "category", "label", "metadata"}
    assert sum(bench["test"]["reference_revised"]) == 1
    check_split_guard(evaluation)
    for split in ("train", "test"):
        for r in evaluation[split]:
            assert r["split"] == split
            last = f"Description Precision: {r['expert_scores']['Description Precision']:.1f}"
            assert r["evaluation"].rstrip().endswith(last)
    for name, ds in (("dermbench", bench), ("dermeval", evaluation)):
        card = (result.paths[name] / "README.md").read_text()
        validate_card(card, kind=name, n_rows=sum(len(s) for s in ds.values()))
        recorded = sum('"fitzpatrick"' in m for split in ds.values() for m in split["metadata"])
        assert recorded and f"Recorded for {recorded} of {sum(len(s) for s in ds.values())} rows" in card
        acne = len({r["image_sha256"] for split in ds.values() for r in split
                    if r["category"] == "Acne and Rosacea Photos"})
        assert f"| Acne and Rosacea Photos | {acne} |" in card
    assert result.seconds > 0 and result.counts()["dermbench/test"] == 8
    print(f"\nbuild counts {result.counts()} in {result.seconds:.2f} s")


def test_split_guard_catches_a_leak_by_content_hash(tmp_path: Path) -> None:
    from datasets import Dataset

    ds = Dataset.from_dict({"image_sha256": ["a", "b", "a"], "split": ["train", "test", "test"]})
    with pytest.raises(SplitLeak, match="1 image"):
        check_split_guard(ds)
    ok = Dataset.from_dict({"image_sha256": ["a", "b"], "split": ["train", "test"]})
    check_split_guard(ok)
    with pytest.raises(SplitLeak):
        check_split_guard(ok, evaluation={"a"})


def test_build_forces_evaluation_images_into_test(setup, tmp_path: Path) -> None:
    from dermtrl.data.synthetic_pipeline import build_synthetic

    built = build_synthetic(tmp_path / "syn", n=10, seed=2, test_fraction=0.0,
                            build_options={"allow_eval_images_in_train": True})
    assert len(built.result.dermeval["test"]) == 0  # nothing forced yet
    # the empty split is saved loadably (datasets writes no shard for it unless told to), and asking for its rows
    # names the dataset, the split and what the other splits hold
    from datasets import load_from_disk

    from dermtrl.cases.loading import load_cases

    saved = built.result.paths["dermeval"]
    assert len(load_from_disk(str(saved))["test"]) == 0
    with pytest.raises(ValueError, match=re.escape(f"{saved}: split 'test' has no rows; rows per split: train 20")):
        load_cases(str(saved), "test")
    hashes = set(built.result.dermbench["test"]["image_sha256"][:3])
    # evaluation images can be named by a hash list, an image folder or a dataset folder
    (tmp_path / "hashes.txt").write_text("\n".join(sorted(hashes)) + "\n")
    assert evaluation_hashes([tmp_path / "hashes.txt"]) == hashes
    all_hashes = set(built.result.dermbench["test"]["image_sha256"])
    assert evaluation_hashes([built.result.paths["dermbench"]]) == all_hashes
    assert evaluation_hashes([built.run.root / "source"]) == all_hashes  # the synthetic PNGs, decoded
    result = build_datasets(built.run, tmp_path / "out", test_fraction=0.0, exclude_from_train=hashes,
                            progress=False, license="apache-2.0")
    assert set(result.dermeval["test"]["image_sha256"]) == hashes
    assert not hashes & set(result.dermeval["train"]["image_sha256"])
    # both rows (certified and regular) of an evaluation image follow it, whatever its file name
    assert len(result.dermeval["test"]) == 2 * len(hashes)
    json.dumps(result.summary.to_dict())


def test_build_selects_each_stream_by_count_and_score_and_keeps_evaluation_images_out_of_train(
        setup, tmp_path: Path) -> None:
    from dermtrl.data.build import StreamSelection
    from dermtrl.data.synthetic_pipeline import build_synthetic

    built = build_synthetic(tmp_path / "syn", n=12, seed=4, test_fraction=0.25)
    default = built.result
    train = set(default.dermeval["train"]["image_sha256"])
    bench = set(default.dermbench["test"]["image_sha256"])
    assert train and bench and not train & bench  # the evaluation set holds no DermEval training image
    allowed = build_datasets(built.run, tmp_path / "allowed", test_fraction=0.25, seed=4, progress=False,
                             allow_eval_images_in_train=True, license="apache-2.0")
    assert len(allowed.dermbench["test"]) == len(bench) + default.summary.extra["dermbench_left_out"]
    assert train & set(allowed.dermbench["test"]["image_sha256"])
    assert "may be DermEval training images" in (allowed.paths["dermbench"] / "README.md").read_text()

    def mean(row: dict) -> float:
        return sum(row["expert_scores"].values()) / 6

    regular = [r for r in default.dermeval["train"] if r["stream"] == "regular"]
    bound = sorted(mean(r) for r in regular)[len(regular) // 2]  # the median regular score
    low = [r for r in regular if mean(r) <= bound]
    selection = {"certified": StreamSelection(count=3, min_score=5.0),
                 "regular": StreamSelection(count=len(low) - 1, max_score=bound)}
    picked = build_datasets(built.run, tmp_path / "picked", test_fraction=0.25, seed=4, selection=selection,
                            progress=False, license="apache-2.0")
    rows = picked.dermeval["train"]
    assert list(rows["stream"]).count("certified") == 3 and list(rows["stream"]).count("regular") == len(low) - 1
    assert all(mean(r) <= bound for r in rows if r["stream"] == "regular")
    assert all(mean(r) == 5.0 for r in rows if r["stream"] == "certified")
    assert picked.dermeval["test"]["id"] == default.dermeval["test"]["id"]  # the test split is not filtered
    not_selected = [s for s in picked.summary.skipped if s.reason == "not-selected"]
    assert len(not_selected) == len(default.dermeval["train"]) - len(rows)
    # images whose rows were all left out are no training images: their references join the evaluation set
    assert set(picked.dermbench["test"]["image_sha256"]) == (
        set(allowed.dermbench["test"]["image_sha256"]) - set(rows["image_sha256"]))
    card = (picked.paths["dermeval"] / "README.md").read_text()
    available = sum(1 for r in default.dermeval["train"] if r["stream"] == "certified")
    assert f"| certified | score >= 5, 3 rows | {available} | {available} | 3 |" in card
    n = len(low) - 1
    assert f"| regular | score <= {bound:g}, {n} rows | {len(regular)} | {len(low)} | {n} |" in card
    # the choice is seeded: the same seed picks the same rows
    again = build_datasets(built.run, tmp_path / "again", test_fraction=0.25, seed=4, selection=selection,
                           progress=False, write_cards=False)
    assert again.dermeval["train"]["id"] == rows["id"]
    with pytest.raises(ValueError, match=r"--regular-count 99: only \d+ of the \d+ regular rows"):
        build_datasets(built.run, tmp_path / "x", test_fraction=0.25, seed=4,
                       selection={"regular": StreamSelection(99)}, progress=False)
    with pytest.raises(ValueError, match="min_score 4 is above max_score 3"):
        StreamSelection(min_score=4, max_score=3)
