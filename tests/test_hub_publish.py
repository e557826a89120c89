"""`dermtrl publish dataset`: a real push to the local Hub; load_dataset(repo_id) gives the same rows and images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermtrl.data.synthetic_pipeline import build_synthetic
from dermtrl.hub.dataset import PublishError, publish_dataset
from tests.hub_server import LocalHubServer


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("publish-run")
    build_synthetic(run, n=12, seed=3, test_fraction=0.3)
    return run / "datasets"


ROUND_TRIP = r'''
import json, sys
from datasets import load_dataset, load_from_disk
from huggingface_hub import DatasetCard, HfApi
from dermtrl.hub.dataset import publish_dataset

root = sys.argv[1]
report = {}

def same(local, remote):
    """Every row equal: images by size, mode and pixels; everything else by value."""
    assert set(remote) == {k for k in local if len(local[k])}, (list(remote), list(local))
    for split in remote:
        assert len(remote[split]) == len(local[split]), split
        assert remote[split].features == local[split].features, split
        for a, b in zip(local[split], remote[split]):
            ia, ib = a.pop("image"), b.pop("image")
            assert (ia.size, ia.mode, ia.tobytes()) == (ib.size, ib.mode, ib.tobytes()), a["id"]
            assert a == b, (a, b)
    return {k: len(v) for k, v in remote.items()}

for name in ("dermbench", "dermeval"):
    result = publish_dataset(f"{root}/{name}", f"dermtrl-test/{name}")
    report[name] = {"files": result.files, "target": result.target,
                    "rows": same(load_from_disk(f"{root}/{name}"), load_dataset(f"dermtrl-test/{name}"))}
    card = DatasetCard.load(f"dermtrl-test/{name}", repo_type="dataset")
    report[name]["license"] = card.data.license
    report[name]["has_info"] = bool(card.data.to_dict().get("dataset_info"))
    report[name]["not_a_device"] = "## Not a medical device" in card.text
# publishing again into the existing repo replaces the shards and keeps loading the same rows
publish_dataset(f"{root}/dermeval", "dermtrl-test/dermeval")
report["again"] = same(load_from_disk(f"{root}/dermeval"), load_dataset("dermtrl-test/dermeval",
                                                                      download_mode="force_redownload"))
report["commits"] = len(HfApi().list_repo_commits("dermtrl-test/dermeval", repo_type="dataset"))
# a Hub dataset id is an input source too: the published benchmark ingests back, image for image
from dermtrl.data.inputs import ingest
summary = ingest("dermtrl-test/dermbench", "hub-run", split="test", progress=False)
report["hub_ingest"] = [summary.done, len(summary.skipped)]
print(json.dumps(report))
'''


def test_publish_then_load_dataset_returns_the_same_rows_and_images(built: Path, local_hub: LocalHubServer,
                                                                     run_against_hub) -> None:
    proc = run_against_hub(ROUND_TRIP, str(built))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    from datasets import load_from_disk

    bench_rows = len(load_from_disk(str(built / "dermbench"))["test"])  # the images DermEval does not train on
    assert 0 < bench_rows < 12 and report["dermbench"]["rows"] == {"test": bench_rows}
    assert sum(report["dermeval"]["rows"].values()) == 24 and set(report["dermeval"]["rows"]) == {"train", "test"}
    for name in ("dermbench", "dermeval"):
        assert report[name]["target"] == f"{local_hub.endpoint}/datasets/dermtrl-test/{name}"
        assert report[name]["license"] == "apache-2.0" and report[name]["has_info"] and report[name]["not_a_device"]
        assert "README.md" in report[name]["files"]
        assert any(f.startswith("data/") and f.endswith(".parquet") for f in report[name]["files"])
        # the shards went through the LFS upload path and are stored as LFS objects
        files = local_hub.files(f"dermtrl-test/{name}", repo_type="dataset")
        assert all(meta["lfs"] for path, meta in files.items() if path.endswith(".parquet"))
    assert report["again"] == report["dermeval"]["rows"]
    assert report["hub_ingest"] == [bench_rows, 0]
    assert report["commits"] >= 4  # initial, data, card, then the data again (an unchanged card is no commit)
    assert local_hub.lfs_uploads >= 3
    assert any(r["path"] == "/api/validate-yaml" for r in local_hub.requests)
    assert local_hub.unhandled == []


def test_publish_dry_run_writes_a_loadable_folder(built: Path, tmp_path: Path) -> None:
    from datasets import load_dataset, load_from_disk

    from tests.test_data_cli import run_cli

    target = tmp_path / "dry"
    code, output = run_cli(["publish", "dataset", str(built / "dermeval"), "--dry-run", str(target)])
    assert code == 0, output
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    local = load_from_disk(str(built / "dermeval"))
    loaded = load_dataset(str(target), cache_dir=str(tmp_path / "hf-cache"))  # never a cached earlier build
    assert {k: len(v) for k, v in loaded.items()} == {k: len(v) for k, v in local.items()}
    a, b = local["train"][0], loaded["train"][0]
    assert a.pop("image").tobytes() == b.pop("image").tobytes() and a == b


def test_publish_refuses_a_folder_without_card(built: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "dermbench"
    shutil.copytree(built / "dermbench", copy)
    (copy / "README.md").unlink()
    with pytest.raises(PublishError, match="no README.md"):
        publish_dataset(copy, "me/x", dry_run=tmp_path / "out")
    (copy / "README.md").write_text("---\nlicense: apache-2.0\n---\n# {placeholder}\n", encoding="utf-8")
    with pytest.raises(PublishError, match="invalid dataset card"):
        publish_dataset(copy, "me/x", dry_run=tmp_path / "out")
