"""A bad image value is never replaced by another file: empty bytes are an error naming the case, relative paths
resolve against the dataset's folder (never the working directory), and error texts carry no object reprs."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dermtrl.bench.cases import image_source, load_case_image
from dermtrl.bench.generate import OpenAIGenerator, generate_candidates
from dermtrl.cases.images import ImageError, read_cell, read_image
from dermtrl.cases.loading import load_cases
from dermtrl.data.inputs import read_source
from dermtrl.dermeval.eval_job import _decode
from dermtrl.llm.client import ClientConfig, image_to_data_url

OBJECT_REPR = re.compile(r"object at 0x|<_io\.|<PIL\.")


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def decoy(tmp_path, monkeypatch) -> Path:
    """A readable image in the working directory under the name a broken cell claims."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "lesion.png").write_bytes(_png((0, 255, 0)))
    monkeypatch.chdir(cwd)
    return cwd / "lesion.png"


def test_empty_bytes_are_an_error_naming_the_case_never_the_file_of_that_name(decoy, make_openai_server, tmp_path):
    cell = {"bytes": b"", "path": "lesion.png"}
    for read in (lambda: read_cell(cell, where="case 'c1'"), lambda: _decode(cell, "c1"),
                 lambda: load_case_image(cell, "case 'c1'"), lambda: image_source(cell, "case 'c1'")):
        with pytest.raises(ImageError, match="case 'c1': empty image bytes") as info:
            read()
        assert "no such image file" not in str(info.value)
    server = make_openai_server(responder=lambda body: "The answer is psoriasis")
    rows = Dataset.from_list([{"case_id": "c0", "image": {"bytes": _png((255, 0, 0)), "path": "a.png"}},
                              {"case_id": "c1", "image": cell}]).cast_column("image", ImageFeature())
    generator = OpenAIGenerator(ClientConfig(base_url=server.base_url, model="vlm"))
    records = {r["case_id"]: r for r in generate_candidates(rows, generator, tmp_path / "c.jsonl", progress=False)}
    assert "case 'c1': empty image bytes" in records["c1"]["error"] and records["c1"]["text"] is None
    assert server.calls == 1  # the decoy in the working directory was never sent


def test_relative_paths_resolve_against_the_dataset_folder_never_the_working_directory(decoy, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "lesion.png").write_bytes(_png((255, 0, 0)))  # the dataset's own image: red; the decoy is green
    (data / "cases.jsonl").write_text(json.dumps({"case_id": "c0", "image": "lesion.png", "narrative": "n"}) + "\n")
    ds = load_cases(str(data / "cases.jsonl"))
    assert Path(ds[0]["image"]) == (data / "lesion.png").resolve()
    assert read_cell(ds[0]["image"]).image.getpixel((0, 0)) == (255, 0, 0)
    # a parquet file whose Image cells hold a relative path and no bytes (save_to_disk would embed the bytes)
    features = Features({"case_id": Value("string"), "image": ImageFeature()})
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"case_id": ["c0"], "image": pa.array([{"bytes": None, "path": "lesion.png"}], type=struct)})
    other = tmp_path / "parquet"
    other.mkdir()
    (other / "lesion.png").write_bytes(_png((0, 0, 255)))
    pq.write_table(table.replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}), other / "cases.parquet")
    saved = load_cases(str(other / "cases.parquet"))
    cell = saved.cast_column("image", ImageFeature(decode=False))[0]["image"]
    assert cell["bytes"] is None and read_cell(cell).image.getpixel((0, 0)) == (0, 0, 255)
    assert load_case_image(cell).getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(ImageError, match="relative image path 'lesion.png' and no dataset folder"):
        read_cell("lesion.png", where="case 'c0'")  # in memory: no folder is known, and the cwd is never used


def test_empty_bytes_in_an_ingested_dataset_are_named_by_row(decoy, tmp_path):
    ds = Dataset.from_list([{"image": {"bytes": b"", "path": "lesion.png"}, "label": "melanoma"}])
    ds.cast_column("image", ImageFeature()).save_to_disk(str(tmp_path / "in"))
    (item,) = read_source(str(tmp_path / "in"))
    with pytest.raises(ImageError, match=r"in\[0\]: empty image bytes"):
        item.load()


@given(st.binary(max_size=64) | st.sampled_from([b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00"])
       .flatmap(lambda head: st.binary(max_size=48).map(lambda tail: head + tail)))
@settings(max_examples=150, deadline=None)
def test_error_texts_carry_no_object_reprs(data):
    for read in (lambda: read_image(data, "upload.png"), lambda: read_cell({"bytes": data, "path": "u.png"}),
                 lambda: image_to_data_url(data)):
        try:
            read()
        except ImageError as exc:
            assert not OBJECT_REPR.search(str(exc)), str(exc)
