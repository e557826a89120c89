"""The local Hub server against the real huggingface_hub client: model and dataset repos, LFS, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.hub_fixtures import HUB_TOKEN
from tests.hub_server import LocalHubServer

CLIENT_SCRIPT = r'''
import hashlib, json, os, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download, DatasetCard, ModelCard
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

api = HfApi()
out = {}
# model repo: create, 409 on a second create (exist_ok=False), reuse with exist_ok=True
url = api.create_repo("me/adapter", repo_type="model")
out["url"] = str(url)
try:
    api.create_repo("me/adapter", repo_type="model")
    out["second_create"] = "no error"
except HfHubHTTPError as err:
    out["second_create"] = err.response.status_code
    out["second_create_url"] = err.response.json().get("url")
api.create_repo("me/adapter", repo_type="model", exist_ok=True)
weights = os.urandom(300_000)  # LFS by suffix; large enough for multipart when asked
api.upload_file(path_or_fileobj=weights, path_in_repo="adapter_model.safetensors", repo_id="me/adapter")
api.upload_file(path_or_fileobj=b'{"r": 64}', path_in_repo="adapter_config.json", repo_id="me/adapter")
card = ModelCard("---\nlicense: apache-2.0\nlibrary_name: peft\n---\n# Adapter\n")
card.push_to_hub("me/adapter")
files = sorted(api.list_repo_files("me/adapter"))
out["model_files"] = files
path = hf_hub_download("me/adapter", "adapter_model.safetensors")
out["weights_roundtrip"] = open(path, "rb").read() == weights
snap = snapshot_download("me/adapter")
out["snapshot"] = sorted(os.listdir(snap))
info = api.model_info("me/adapter", files_metadata=True)
out["lfs_sibling"] = [s.rfilename for s in info.siblings if s.lfs is not None]
try:
    hf_hub_download("me/adapter", "missing.bin")
except EntryNotFoundError:
    out["missing"] = "EntryNotFound"
try:
    api.model_info("me/nothing")
except RepositoryNotFoundError:
    out["no_repo"] = "RepoNotFound"
# stale parent commit -> 412
first = api.list_repo_commits("me/adapter")[-1].commit_id
try:
    api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="me/adapter", parent_commit=first)
except HfHubHTTPError as err:
    out["stale_parent"] = err.response.status_code
# invalid card YAML is refused by validate-yaml
try:
    DatasetCard("---\nlicense:\n  name: 1\n---\n# x\n").validate(repo_type="dataset")
    out["bad_yaml"] = "accepted"
except Exception as err:
    out["bad_yaml"] = type(err).__name__
# dataset repo with a folder, tree listing and delete
api.create_repo("me/data", repo_type="dataset")
api.upload_file(path_or_fileobj=b"a,b\n1,2\n", path_in_repo="data/train.csv", repo_id="me/data", repo_type="dataset")
api.upload_file(path_or_fileobj=b"a,b\n3,4\n", path_in_repo="data/test.csv", repo_id="me/data", repo_type="dataset")
out["tree"] = sorted(e.path for e in api.list_repo_tree("me/data", repo_type="dataset", recursive=True))
api.delete_file("data/test.csv", repo_id="me/data", repo_type="dataset")
out["after_delete"] = sorted(api.list_repo_files("me/data", repo_type="dataset"))
from datasets import load_dataset
ds = load_dataset("me/data", split="train")
out["csv_rows"] = ds.to_list()
print(json.dumps(out))
'''


def test_huggingface_hub_client_round_trip(local_hub: LocalHubServer, run_against_hub) -> None:
    local_hub.multipart_chunk_size = 100_000  # the 300 kB weights go up in 3 parts
    proc = run_against_hub(CLIENT_SCRIPT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["url"] == f"{local_hub.endpoint}/me/adapter"
    assert out["second_create"] == 409 and out["second_create_url"] == out["url"]
    assert out["model_files"] == [".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert out["weights_roundtrip"] is True
    assert "adapter_model.safetensors" in out["snapshot"]
    assert out["lfs_sibling"] == ["adapter_model.safetensors"]
    assert out["missing"] == "EntryNotFound" and out["no_repo"] == "RepoNotFound"
    assert out["stale_parent"] == 412
    assert out["bad_yaml"] == "ValueError"
    assert out["tree"] == [".gitattributes", "data", "data/test.csv", "data/train.csv"]
    assert out["after_delete"] == [".gitattributes", "data/train.csv"]
    assert out["csv_rows"] == [{"a": 1, "b": 2}]
    # the weights really went through the LFS upload URLs (multipart), the config as a regular file
    assert local_hub.files("me/adapter")["adapter_model.safetensors"]["lfs"] is True
    assert local_hub.files("me/adapter")["adapter_config.json"]["lfs"] is False
    assert any(r["method"] == "PUT" and "/part/" in r["path"] for r in local_hub.requests)
    assert any(r["path"] == "/api/validate-yaml" for r in local_hub.requests)
    # the client sent the token it was given, in the Authorization header
    assert any(r["headers"].get("authorization") == f"Bearer {HUB_TOKEN}" for r in local_hub.requests)
    assert local_hub.unhandled == []


def _post(url: str, payload: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_lfs_upload_is_checked_and_commit_needs_the_object(local_hub: LocalHubServer) -> None:
    status, _ = _post(f"{local_hub.endpoint}/api/repos/create", {"name": "x", "organization": "me", "type": "model"})
    assert status == 200
    data = b"weights" * 10
    import hashlib

    oid = hashlib.sha256(data).hexdigest()
    status, batch = _post(f"{local_hub.endpoint}/me/x.git/info/lfs/objects/batch",
                          {"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]})
    href = batch["objects"][0]["actions"]["upload"]["href"]
    # committing an LFS pointer whose object never arrived is refused
    line = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}
    body = json.dumps({"key": "header", "value": {"summary": "s"}}) + "\n" + json.dumps(line) + "\n"
    request = urllib.request.Request(f"{local_hub.endpoint}/api/models/me/x/commit/main", data=body.encode(),
                                     method="POST", headers={"Content-Type": "application/x-ndjson"})
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("commit of a missing LFS object was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 422
    # corrupt content is refused by its sha256
    put = urllib.request.Request(href, data=b"x" * len(data), method="PUT")
    try:
        urllib.request.urlopen(put, timeout=10)
        raise AssertionError("corrupt LFS content was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 400
    with urllib.request.urlopen(urllib.request.Request(href, data=data, method="PUT"), timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert local_hub.read("me/x", "w.bin") == data
    # a second create answers 409 with the repo url
    status, payload = _post(f"{local_hub.endpoint}/api/repos/create", {"name": "x", "organization": "me"})
    assert status == 409 and payload["url"] == f"{local_hub.endpoint}/me/x"
