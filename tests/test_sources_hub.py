"""Named datasets that live on the Hub, read through the local Hub stand-in: SkinCAP's repository of files (its
CSV joined to its images by file name) and a HAM10000 mirror stored as a ``datasets`` dataset, each then taken
through the construction steps to a built dataset."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_sources import check_built, finish_pipeline, standin


def test_skincap_from_a_hub_repository_of_files(run_against_hub, tmp_path: Path) -> None:
    root, cases, expected = standin("skincap", tmp_path / "skincap-repo")
    proc = run_against_hub("""
        import json, sys
        from huggingface_hub import HfApi
        from dermtrl.data.inputs import ingest

        api = HfApi()
        api.create_repo("dermtrl-test/SkinCAP", repo_type="dataset")
        api.upload_folder(folder_path=sys.argv[1], repo_id="dermtrl-test/SkinCAP", repo_type="dataset")
        summary = ingest("dermtrl-test/SkinCAP", sys.argv[2], dataset="skincap", progress=False)
        print(json.dumps({"done": summary.done, "skipped": sorted(s.reason for s in summary.skipped),
                          "unmapped": summary.extra.get("unmapped labels")}))
    """, str(root), str(tmp_path / "run"))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["done"] == len(expected) and report["unmapped"] == "made-up dermatosis (1)"
    assert report["skipped"] == ["bad-row", "bad-row", "label-not-in-vocabulary"]  # no image; "do not consider"
    result = finish_pipeline(tmp_path / "run", cases)
    check_built(result, "skincap", expected)
    captions = {json.loads(m)["source_caption"] for m in result.dermbench["test"]["metadata"]}
    assert all(c.startswith("A stand-in English caption of image") for c in captions)


def test_ham10000_from_a_hub_dataset(run_against_hub, tmp_path: Path) -> None:
    root, cases, expected = standin("ham10000", tmp_path / "ham")
    proc = run_against_hub("""
        import csv, json, sys
        from pathlib import Path
        from datasets import Dataset, Features, Image, Value
        from dermtrl.data.inputs import ingest

        root = Path(sys.argv[1])
        rows = list(csv.DictReader((root / "HAM10000_metadata.csv").open()))
        found = {p.stem: str(p) for p in root.rglob("*.jpg")}
        rows = [r for r in rows if r["image_id"] in found]
        features = Features({"image": Image(), "image_id": Value("string"), "lesion_id": Value("string"),
                             "dx": Value("string"), "dx_type": Value("string"), "age": Value("float64"),
                             "sex": Value("string"), "localization": Value("string")})
        ds = Dataset.from_dict({"image": [found[r["image_id"]] for r in rows],
                                **{k: [r[k] for r in rows] for k in ("image_id", "lesion_id", "dx",
                                                                                 "dx_type", "sex", "localization")},
                                "age": [float(r["age"]) for r in rows]}, features=features)
        ds.push_to_hub("dermtrl-test/skin_cancer", split="train")
        summary = ingest("dermtrl-test/skin_cancer", sys.argv[2], dataset="ham10000", split="train", progress=False)
        print(json.dumps({"done": summary.done, "unmapped": summary.extra.get("unmapped labels")}))
        ds.save_to_disk(sys.argv[2] + "-saved")  # a save_to_disk copy of the mirror reads the same
        again = ingest(sys.argv[2] + "-saved", sys.argv[2] + "-again", dataset="ham10000", progress=False)
        print(json.dumps({"done": again.done, "unmapped": again.extra.get("unmapped labels")}))
        try:
            ingest("dermtrl-test/skin_cancer", sys.argv[2] + "-v", dataset="ham10000", split="validation",
                   progress=False)
        except ValueError as exc:
            print(json.dumps({"split_error": str(exc)}))
    """, str(root), str(tmp_path / "run"))
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    assert lines[0] == lines[1] == {"done": 4, "unmapped": "zzz (1)"}
    assert "validation" in lines[2]["split_error"] and "ham10000" in lines[2]["split_error"]
    check_built(finish_pipeline(tmp_path / "run", cases), "ham10000", expected)
