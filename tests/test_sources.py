"""Named public datasets, each read from a stand-in written in its exact layout (the same file names, column
headers and quirks: PAD-UFES-20's ``fitspatrick``, SCIN's ``NONE_IDENTIFIED``, Fitzpatrick17k's ``-1``) with
generated images; no real row of any dataset is used. Ingest -> the construction steps -> build, then the built
dataset's columns, skin tone, licence and card are checked."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dermtrl.data.sources.labels import label_map, vocabulary_for
from dermtrl.data.sources.registry import SOURCES
from dermtrl.data.sources.skin_tone import median_type, normalise_monk, normalise_skin_tone
from dermtrl.data.synthetic_pipeline import synthetic_cases
from tests.test_data_cli import run_cli

UNMAPPED = "made-up dermatosis"


def _save(case: dict[str, Any], path: Path) -> None:
    """Write the case's image in the file's format; the case keeps the pixels a reader decodes (JPEG is lossy),
    because the synthetic oracle knows images by their decoded pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    case["image"].convert("RGB").save(path, quality=92) if path.suffix == ".jpg" else case["image"].save(path)
    with Image.open(path) as img:
        case["image"] = img.convert("RGB")


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, delimiter=delimiter, extrasaction="raise")
        writer.writeheader()
        writer.writerows([{k: row.get(k, "") for k in header} for row in rows])


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - a stand-in file name, as the dataset names files


# --- stand-ins: (folder, cases, expected skin tone per ingested label) -------------------------------------------

F17K_HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
               "three_partition_label", "qc", "url", "url_alphanum"]


def write_fitzpatrick17k(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    plan = [("psoriasis", "3", "3", "III"), ("melanoma", "-1", "5", "V"), ("acne vulgaris", "6", "-1", "VI"),
            ("lichen planus", "-1", "-1", "unknown"), (UNMAPPED, "2", "2", "")]
    rows = []
    for i, ((label, scale, centaur, _), case) in enumerate(zip(plan, cases, strict=False)):
        md5 = _md5(f"f17k-standin-{i}")
        alphanum = f"httpsexampleorg{md5}jpg.jpg"
        _save(case, root / "images" / (alphanum if i == 2 else f"{md5}.jpg"))  # saved under either name
        rows.append({"md5hash": md5, "fitzpatrick_scale": scale, "fitzpatrick_centaur": centaur, "label": label,
                     "nine_partition_label": "inflammatory", "three_partition_label": "non-neoplastic",
                     "url": f"https://example.org/{md5}.jpg", "url_alphanum": alphanum})
    rows.append({"md5hash": _md5("f17k-no-image"), "fitzpatrick_scale": "4", "fitzpatrick_centaur": "4",
                 "label": "psoriasis", "url": "https://example.org/missing.jpg"})
    _write_csv(root / "fitzpatrick17k.csv", F17K_HEADER, rows)
    return {label: tone for label, _, _, tone in plan[:4]}


def write_ddi(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    plan = [("melanocytic-nevi", "12", "False", "I-II"), ("basal-cell-carcinoma", "56", "True", "V-VI"),
            ("verruca-vulgaris", "34", "False", "III-IV"), ("seborrheic-keratosis", "", "False", "unknown"),
            ("made-up-lesion", "34", "False", "")]
    rows = []
    for i, ((disease, tone, malignant, _), case) in enumerate(zip(plan, cases, strict=False), start=1):
        _save(case, root / "images" / f"{i:06d}.png")
        rows.append({"DDI_ID": i, "DDI_file": f"{i:06d}.png", "skin_tone": tone, "malignant": malignant,
                     "disease": disease})
    rows.append({"DDI_ID": 99, "DDI_file": "000099.png", "skin_tone": "12", "malignant": "False",
                 "disease": "melanocytic-nevi"})
    _write_csv(root / "ddi_metadata.csv", ["DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"], rows)
    return {label: tone for label, _, _, tone in plan[:4]}


SCIN_CASES_HEADER = [
    "case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
    *[f"race_ethnicity_{r}" for r in ("american_indian_or_alaska_native", "asian", "black_or_african_american",
                                      "hispanic_latino_or_spanish_origin", "middle_eastern_or_north_african",
                                      "native_hawaiian_or_pacific_islander", "white", "other_race",
                                      "prefer_not_to_answer")],
    *[f"textures_{t}" for t in ("raised_or_bumpy", "flat", "rough_or_flaky", "fluid_filled")],
    *[f"body_parts_{b}" for b in ("head_or_neck", "arm", "palm", "back_of_hand", "torso_front", "torso_back",
                                  "genitalia_or_groin", "buttocks", "leg", "foot_top_or_side", "foot_sole", "other")],
    *[f"condition_symptoms_{c}" for c in ("bothersome_appearance", "bleeding", "increasing_size", "darkening",
                                          "itching", "burning", "pain", "no_relevant_experience")],
    *[f"other_symptoms_{o}" for o in ("fever", "chills", "fatigue", "joint_pain", "mouth_sores",
                                      "shortness_of_breath", "no_relevant_symptoms")],
    "related_category", "condition_duration", "image_1_path", "image_2_path", "image_3_path", "image_1_shot_type",
    "image_2_shot_type", "image_3_shot_type", "combined_race", "race_ethnicity_two_or_more_after_mitigation",
]
SCIN_LABELS_HEADER = [
    "case_id", "dermatologist_gradable_for_skin_condition_1", "dermatologist_gradable_for_skin_condition_2",
    "dermatologist_gradable_for_skin_condition_3", "dermatologist_skin_condition_on_label_name",
    "dermatologist_skin_condition_confidence", "weighted_skin_condition_label",
    "dermatologist_gradable_for_fitzpatrick_skin_type_1", "dermatologist_gradable_for_fitzpatrick_skin_type_2",
    "dermatologist_gradable_for_fitzpatrick_skin_type_3", "dermatologist_fitzpatrick_skin_type_label_1",
    "dermatologist_fitzpatrick_skin_type_label_2", "dermatologist_fitzpatrick_skin_type_label_3",
    "gradable_for_monk_skin_tone_india", "gradable_for_monk_skin_tone_us", "monk_skin_tone_label_india",
    "monk_skin_tone_label_us",
]


def write_scin(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    """Cases with 2, 1 and 1 images (the last with a mapped label); self-reported FST5 overridden by the
    dermatologists' FST2/FST4 (median II); NONE_IDENTIFIED and no estimate -> unknown; FST6 self-reported only."""
    data = root / "dataset"
    plan = [  # case id, self-reported, dermatologists, weighted label, monk us, images
        ("-101", "FST5", ("FST2", "FST4", ""), "{'Psoriasis': 0.67, 'Eczema': 0.33}", "4.0", 2),
        ("-102", "NONE_IDENTIFIED", ("", "", ""), "{'Eczema': 1.0}", "", 1),
        ("-103", "FST6", ("", "", ""), "{'Urticaria': 0.6, 'Insect Bite': 0.4}", "9.0", 1),
        ("-104", "FST3", ("FST3", "", ""), "{'Made-up rash': 1.0}", "", 1),
    ]
    case_rows, label_rows, k = [], [], 0
    for case_id, self_fst, derm, weighted, monk, n_images in plan:
        row: dict[str, Any] = {"case_id": case_id, "source": "SCIN", "release": "1.0.0", "year": "2023",
                               "age_group": "AGE_UNKNOWN", "sex_at_birth": "OTHER_OR_UNSPECIFIED",
                               "fitzpatrick_skin_type": self_fst}
        for n in range(1, n_images + 1):
            rel = f"dataset/images/{_md5(f'scin-{case_id}-{n}')[:16]}.png"
            _save(cases[k], root / rel)
            k += 1
            row[f"image_{n}_path"], row[f"image_{n}_shot_type"] = rel, "CLOSE_UP"
        case_rows.append(row)
        label_rows.append({"case_id": case_id, "weighted_skin_condition_label": weighted,
                           **{f"dermatologist_fitzpatrick_skin_type_label_{i}": v for i, v in enumerate(derm, 1)},
                           "monk_skin_tone_label_us": monk, "monk_skin_tone_label_india": monk})
    case_rows.append({"case_id": "-105", "fitzpatrick_skin_type": "FST1", "image_1_path": "dataset/images/gone.png"})
    _write_csv(data / "scin_cases.csv", SCIN_CASES_HEADER, case_rows)
    _write_csv(data / "scin_labels.csv", SCIN_LABELS_HEADER, label_rows)
    return {"Psoriasis": "II", "Eczema": "unknown", "Urticaria": "VI"}


PAD_HEADER = ["patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age",
              "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
              "has_sewage_system", "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew",
              "hurt", "changed", "bleed", "elevation", "img_id", "biopsed"]


def write_pad_ufes_20(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    plan = [("BCC", "3.0", "III"), ("MEL", "", "unknown"), ("NEV", "6.0", "VI"), ("SEK", "1.0", "I"),
            ("XYZ", "2.0", "")]
    rows = []
    for i, ((dx, fitz, _), case) in enumerate(zip(plan, cases, strict=False), start=1):
        name = f"PAT_{i}_{i * 10}_{i * 100}.png"
        _save(case, root / "images" / name)
        rows.append({"patient_id": f"PAT_{i}", "lesion_id": i * 10, "age": 50 + i, "gender": "FEMALE",
                     "fitspatrick": fitz, "region": "ARM", "diagnostic": dx, "img_id": name, "biopsed": "True"})
    rows.append({"patient_id": "PAT_9", "lesion_id": 90, "fitspatrick": "2.0", "diagnostic": "BCC",
                 "img_id": "PAT_9_90_900.png"})
    _write_csv(root / "metadata.csv", PAD_HEADER, rows)
    return {dx: tone for dx, _, tone in plan[:4]}


HAM_HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def write_ham10000(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    plan = ["mel", "nv", "bkl", "vasc", "zzz"]
    rows = []
    for i, (dx, case) in enumerate(zip(plan, cases, strict=False)):
        image_id = f"ISIC_{9_000_000 + i:07d}"
        _save(case, root / f"HAM10000_images_part_{1 + i % 2}" / f"{image_id}.jpg")
        rows.append({"lesion_id": f"HAM_{9_000_000 + i:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                     "age": "55.0", "sex": "female", "localization": "back"})
    rows.append({"lesion_id": "HAM_9999999", "image_id": "ISIC_9999999", "dx": "mel", "dx_type": "histo"})
    _write_csv(root / "HAM10000_metadata.csv", HAM_HEADER, rows)
    return dict.fromkeys(plan[:4], "unknown")


SKINCAP_HEADER = ["id", "skincap_file_path", "ori_file_path", "source", "disease", "caption_zh", "caption_zh_polish",
                  "caption_zh_polish_en", "remark", "Do not consider this image", "skin_tone", "malignant",
                  "fitzpatrick_scale", "fitzpatrick_centaur", "nine_partition_label", "three_partition_label",
                  "Papule", "Plaque", "Erythema"]


def write_skincap(root: Path, cases: list[dict[str, Any]]) -> dict[str, str]:
    plan = [  # disease, source, DDI group, fitzpatrick_scale, do-not-consider, expected tone
        ("psoriasis", "fitzpatrick17k", "", "2", "", "II"),
        ("melanocytic-nevi", "ddi", "56", "", "", "V-VI"),
        ("lupus erythematosus", "fitzpatrick17k", "", "-1", "", "unknown"),
        ("scabies", "fitzpatrick17k", "", "5", "", "V"),
        ("eczema", "fitzpatrick17k", "", "4", "1", ""),
        (UNMAPPED, "fitzpatrick17k", "", "3", "", ""),
    ]
    rows = []
    for i, ((disease, source, group, scale, skip, _), case) in enumerate(zip(plan, cases, strict=False), start=1):
        _save(case, root / "skincap" / f"{i}.png")
        rows.append({"id": i, "skincap_file_path": f"{i}.png", "ori_file_path": f"{source}/{i}.png",
                     "source": source, "disease": disease, "caption_zh": "stand-in caption (zh)",
                     "caption_zh_polish_en": f"A stand-in English caption of image {i}.",
                     "Do not consider this image": skip, "skin_tone": group, "fitzpatrick_scale": scale,
                     "Papule": 0, "Plaque": 1, "Erythema": 1})
    rows.append({"id": 99, "skincap_file_path": "99.png", "source": "ddi", "disease": "psoriasis",
                 "caption_zh_polish_en": "No such image.", "skin_tone": "12"})
    _write_csv(root / "skincap_v240623.csv", SKINCAP_HEADER, rows)
    return {p[0]: p[5] for p in plan[:4]}


WRITERS = {"fitzpatrick17k": write_fitzpatrick17k, "ddi": write_ddi, "scin": write_scin,
           "pad-ufes-20": write_pad_ufes_20, "ham10000": write_ham10000, "skincap": write_skincap}
#: (table file, a required column) per source, for the missing-column errors
REQUIRED = {"fitzpatrick17k": ("fitzpatrick17k.csv", "fitzpatrick_scale"), "ddi": ("ddi_metadata.csv", "skin_tone"),
            "scin": ("dataset/scin_labels.csv", "weighted_skin_condition_label"),
            "pad-ufes-20": ("metadata.csv", "fitspatrick"), "ham10000": ("HAM10000_metadata.csv", "dx"),
            "skincap": ("skincap_v240623.csv", "caption_zh_polish_en")}


def standin(name: str, root: Path, seed: int = 3) -> tuple[Path, list[dict[str, Any]], dict[str, str]]:
    cases = synthetic_cases(6, seed=seed)
    expected = WRITERS[name](root, cases)
    return root, cases, expected


# --- the pipeline on the ingested items, answered by the synthetic oracle ------------------------------------------


def finish_pipeline(run: Path, cases: list[dict[str, Any]]) -> Any:
    """Caption, both reasoning streams, the reviewer sheet out and back, rationales and build (the CLI's steps)."""
    from dermtrl.data.build import build_datasets
    from dermtrl.data.captioning import caption_items
    from dermtrl.data.rationale import rationale_items
    from dermtrl.data.reasoning import reason_items
    from dermtrl.data.reviews import export_for_review, import_reviews
    from dermtrl.data.run import RunDir
    from dermtrl.data.synthetic_pipeline import SyntheticOracle, fill_review_sheet
    from dermtrl.llm.client import ClientConfig, LLMClient
    from dermtrl.llm.server import FakeOpenAIServer

    rundir = RunDir(run)
    oracle = SyntheticOracle(cases)
    with FakeOpenAIServer(oracle, model="oracle") as server:
        client = LLMClient(ClientConfig(base_url=server.base_url, model="oracle", max_concurrency=2, max_retries=2,
                                        timeout=30.0))
        try:
            caption_items(rundir, client, progress=False)
            for stream in ("certified", "regular"):
                reason_items(rundir, client, stream, progress=False)
            export_for_review(rundir, run / "sheet.csv")
            import_reviews(rundir, [fill_review_sheet(run / "sheet.csv", run / "filled.csv", rundir, oracle)])
            rationale_items(rundir, client, progress=False)
        finally:
            client.close()
    return build_datasets(rundir, test_fraction=0.0, allow_eval_images_in_train=True, progress=False)


def check_built(result: Any, name: str, expected: dict[str, str]) -> None:
    from datasets import Image as ImageFeature

    spec = SOURCES[name]
    bench = result.dermbench["test"]
    assert len(bench) > 0, result.summary.to_dict()
    assert isinstance(bench.features["image"], ImageFeature)
    assert {"image", "label", "category", "source", "metadata", "skin_tone", "licence"} <= set(bench.column_names)
    vocab = vocabulary_for(spec.label_datasets)
    for row in bench:
        meta = json.loads(row["metadata"])
        assert meta["dataset"] == name and meta["licence"] == spec.licence
        assert row["category"] == vocab.category(row["label"])
        assert meta["skin_tone"] == expected[row["label"]] == row["skin_tone"], (row["label"], meta)
        assert row["licence"] == spec.licence
        assert meta["skin_tone_source"] == "none" or meta["skin_tone"] != "unknown"
        assert row["image"].mode == "RGB"
    card = (result.paths["dermbench"] / "README.md").read_text()
    assert "### Source datasets" in card and spec.licence in card and spec.terms in card
    known = sum(json.loads(m)["skin_tone"] != "unknown" for m in bench["metadata"])
    if known:
        assert f"Recorded for {known} of {len(bench)} rows" in card
    else:
        assert "Not recorded in the source metadata" in card


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1", "I"), ("6.0", "VI"), (3, "III"), ("-1", "unknown"), (-1, "unknown"), ("", "unknown"), (None, "unknown"),
    ("FST4", "IV"), ("NONE_IDENTIFIED", "unknown"), ("NONE_SELECTED", "unknown"), ("12", "I-II"), ("34", "III-IV"),
    ("56", "V-VI"), ("iv", "IV"), ("V - dark brown", "V"), ("I-II", "I-II"), ("7", "unknown"), ("II-V", "unknown"),
    ("nan", "unknown"), ("brown", "unknown"),
])
def test_skin_tone_is_normalised_to_fitzpatrick_types(value: Any, expected: str) -> None:
    assert normalise_skin_tone(value) == expected


def test_several_raters_give_the_lower_median_and_monk_stays_apart() -> None:
    assert median_type(["FST2", "FST4", ""]) == "II" and median_type(["FST3", "FST5", "FST6"]) == "V"
    assert median_type(["", None, "NONE_IDENTIFIED"]) == "unknown"
    assert normalise_monk("4.0") == "4" and normalise_monk("11") == "unknown" and normalise_monk("") == "unknown"


def test_the_shipped_label_map_covers_each_dataset_in_figure_5_categories() -> None:
    table = label_map()
    assert len(table["fitzpatrick17k"]) == 114  # every label of fitzpatrick17k.csv
    assert set(table["ham10000"]) >= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert set(table["pad-ufes-20"]) == {"ACK", "BCC", "MEL", "NEV", "SCC", "SEK"}
    for spec in SOURCES.values():  # merging datasets (SkinCAP uses F17k's and DDI's) never contradicts
        vocab = vocabulary_for(spec.label_datasets)
        assert vocab.category("melanoma") == "Melanoma Skin Cancer Nevi and Moles" or spec.name in {
            "pad-ufes-20", "scin"}
    assert vocabulary_for(("skincap", "fitzpatrick17k", "ddi")).category("melanocytic-nevi") == \
        "Melanoma Skin Cancer Nevi and Moles"


def test_a_bad_label_map_row_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "map.csv"
    bad.write_text("dataset,label,category\nddi,foo,Not A Category\n")
    with pytest.raises(ValueError, match=r"line 2: 'Not A Category' is not one of Figure 5"):
        label_map(bad)


@pytest.mark.parametrize("name", ["fitzpatrick17k", "ddi", "scin", "pad-ufes-20", "ham10000", "skincap"])
def test_a_named_source_round_trips_its_stand_in(name: str, tmp_path: Path) -> None:
    root, cases, expected = standin(name, tmp_path / "download")
    run = tmp_path / "run"
    code, output = run_cli(["data", "ingest", "--source", name, str(root), "--run", str(run)])
    assert code == 0, output
    spec = SOURCES[name]
    flat = " ".join(output.split())
    assert f"licence {spec.licence}" in flat and " ".join(spec.terms.split()) in flat  # terms printed at ingest
    # the unmapped label is listed, its item skipped by name, never mapped silently; a row without image is named
    unmapped = {"fitzpatrick17k": UNMAPPED, "ddi": "made-up-lesion", "scin": "Made-up rash", "pad-ufes-20": "XYZ",
                "ham10000": "zzz", "skincap": UNMAPPED}[name]
    assert f"Labels not in the mapping table ({unmapped} (1))" in flat
    records = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines()]
    errors = {r["reason"] for r in records if r.get("error")}
    assert "label-not-in-vocabulary" in errors and "bad-row" in errors, records
    ok = [r for r in records if not r.get("error")]
    assert {r["label"] for r in ok} == set(expected)
    for r in ok:
        assert r["metadata"]["skin_tone"] == expected[r["label"]] and r["metadata"]["dataset"] == name
    if name == "scin":  # both estimates kept, with the one used and Monk tone
        psoriasis = next(r for r in ok if r["label"] == "Psoriasis")["metadata"]
        assert psoriasis["skin_tone_source"] == "dermatologist" and psoriasis["skin_tone_self_reported"] == "V"
        assert psoriasis["skin_tone_dermatologist"] == "II" and psoriasis["monk_skin_tone_us"] == "4"
        urticaria = next(r for r in ok if r["label"] == "Urticaria")["metadata"]
        assert urticaria["skin_tone_source"] == "self-reported"
        assert sum(r["label"] == "Psoriasis" for r in ok) == 2  # one item per image of the case
    if name == "skincap":
        assert all(r["metadata"]["source_caption"].startswith("A stand-in English caption") for r in ok)
        assert any("Do not consider this image" in r["error"] for r in records if r.get("error"))
    result = finish_pipeline(run, cases)
    assert len(result.dermbench["test"]) == len(ok)  # every ingested item has its certified reference
    check_built(result, name, expected)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_missing_column_names_the_dataset_the_file_and_the_column(name: str, tmp_path: Path) -> None:
    root, _, _ = standin(name, tmp_path / "download")
    table, column = REQUIRED[name]
    path = root / table
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    header = [c for c in rows[0] if c != column]
    _write_csv(path, header, [{k: r[k] for k in header} for r in rows])
    code, output = run_cli(["data", "ingest", "--source", name, str(root), "--run", str(tmp_path / "run")])
    assert code == 2, output
    assert f"error: {name}: {Path(table).name} has no column {column!r}" in " ".join(output.split())


def test_unknown_source_names_and_missing_folders_say_how_to_get_the_data(tmp_path: Path) -> None:
    code, output = run_cli(["data", "ingest", "--source", "midas", str(tmp_path), "--run", str(tmp_path / "r")])
    assert code == 2 and "not a named dataset" in output and "fitzpatrick17k" in output and "MIDAS" in output
    code, output = run_cli(["data", "ingest", "--source", "ddi", str(tmp_path / "nope"), "--run", str(tmp_path / "r")])
    flat = " ".join(output.split())
    assert code == 2 and "no such folder or file" in flat and "stanfordaimi" in flat
    (tmp_path / "empty").mkdir()
    code, output = run_cli(["data", "ingest", "--source", "pad-ufes-20", str(tmp_path / "empty"), "--run",
                            str(tmp_path / "r")])
    assert code == 2 and "no metadata.csv under" in output
    code, output = run_cli(["data", "sources"])
    assert code == 0 and all(f"--source {name}" in output for name in SOURCES)


def test_an_uncached_hub_id_offline_is_an_error_that_says_how_to_get_it(tmp_path: Path) -> None:
    # the test session runs with HF_HUB_OFFLINE=1: nothing is downloaded, the message says what to do
    code, output = run_cli(["data", "ingest", "--source", "skincap", "dermtrl-test/not-cached-skincap", "--run",
                            str(tmp_path / "r")])
    flat = " ".join(output.split())
    assert code == 2 and "not in the local Hub cache" in flat and "huggingface-cli download" in flat
    assert "accept the agreement" in flat
    code, output = run_cli(["data", "ingest", "--source", "scin", "someone/scin-mirror", "--run", str(tmp_path / "r")])
    assert code == 2 and "gsutil" in " ".join(output.split())


def test_ingest_without_source_is_unchanged(tmp_path: Path) -> None:
    # a generic table with a fitzpatrick column: the default vocabulary, metadata kept as given, no dataset tags
    from dermtrl.data.inputs import ingest

    cases = synthetic_cases(2, seed=5)
    rows = []
    for i, case in enumerate(cases):
        case["image"].save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": case["label"], "fitzpatrick": "IV"})
    _write_csv(tmp_path / "cases.csv", ["path", "label", "fitzpatrick"], rows)
    summary = ingest(str(tmp_path / "cases.csv"), tmp_path / "run", progress=False)
    assert summary.done == 2 and "unmapped labels" not in summary.extra
    records = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    assert all(r["metadata"] == {"fitzpatrick": "IV"} for r in records)


def test_renamed_and_tab_separated_tables_are_read(tmp_path: Path) -> None:
    from dermtrl.data.inputs import read_source

    # a PAD-UFES-20 copy whose skin-tone column was renamed to the usual spelling
    root, _, expected = standin("pad-ufes-20", tmp_path / "pad")
    text = (root / "metadata.csv").read_text().replace("fitspatrick", "fitzpatrick")
    (root / "metadata.csv").write_text(text)
    tones = {i.label: i.metadata["skin_tone"] for i in read_source(str(root), dataset="pad-ufes-20") if not i.problem}
    assert all(tones[label] == tone for label, tone in expected.items())
    # HAM10000's metadata as Dataverse serves it: tab-separated, no .csv extension
    root, _, _ = standin("ham10000", tmp_path / "ham")
    table = root / "HAM10000_metadata.csv"
    (root / "HAM10000_metadata").write_text(table.read_text().replace(",", "\t"))
    table.unlink()
    items = list(read_source(str(root), dataset="ham10000"))
    assert [i.label for i in items if not i.problem] == ["mel", "nv", "bkl", "vasc", "zzz"]
    assert {i.metadata["skin_tone"] for i in items} == {"unknown"}


def test_skin_tone_and_licence_of_a_built_row_come_from_its_metadata() -> None:
    from dermtrl.data.schema import subgroup_columns

    assert subgroup_columns({"skin_tone": "V-VI", "licence": "CC BY 4.0"}) == {"skin_tone": "V-VI",
                                                                                "licence": "CC BY 4.0"}
    assert subgroup_columns({"fitzpatrick": "3.0"}) == {"skin_tone": "III", "licence": ""}  # a generic table
    assert subgroup_columns({"skin_tone": "unknown", "fitzpatrick": "II"})["skin_tone"] == "II"
    assert subgroup_columns(None) == {"skin_tone": "unknown", "licence": ""}


def test_a_copy_of_the_label_map_with_more_rows_maps_the_listed_labels(tmp_path: Path) -> None:
    from dermtrl.data.sources.labels import LABEL_MAP_PATH

    root, _, expected = standin("pad-ufes-20", tmp_path / "pad")
    mine = tmp_path / "my_label_map.csv"
    mine.write_text(LABEL_MAP_PATH.read_text() + "pad-ufes-20,XYZ,Eczema Photos\n")
    code, output = run_cli(["data", "ingest", "--source", "pad-ufes-20", str(root), "--run", str(tmp_path / "run"),
                            "--vocabulary", str(mine)])
    assert code == 0 and "Labels not in the mapping table" not in output and "instead of the shipped" in output
    records = [json.loads(line) for line in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    xyz = next(r for r in records if r.get("label") == "XYZ")
    assert xyz["category"] == "Eczema Photos" and xyz["metadata"]["skin_tone"] == "II"
    assert {r["label"] for r in records if not r.get("error")} == {*expected, "XYZ"}
    # a plain label,category vocabulary replaces the table entirely: labels outside it are listed
    plain = tmp_path / "plain.csv"
    plain.write_text("label,category\nBCC,Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions\n")
    code, output = run_cli(["data", "ingest", "--source", "pad-ufes-20", str(root), "--run", str(tmp_path / "run2"),
                            "--vocabulary", str(plain)])
    flat = " ".join(output.split())
    assert code == 0 and "Labels not in the mapping table (MEL (1); NEV (1); SEK (1); XYZ (1))" in flat
