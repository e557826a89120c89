"""Candidate generation: an OpenAI-compatible VLM over loopback HTTP and the tiny local model, batched; one JSONL
per model, resumable, with the prompt version and generation settings; an unreadable image costs one case."""

from __future__ import annotations

import io
import json

import pytest
from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

from dermtrl.bench import DermBench, OpenAIGenerator, TransformersGenerator, read_candidates
from dermtrl.bench.generate import candidates_from_dataset, generate_candidates
from dermtrl.cases.synthetic import generate_cases
from dermtrl.dimensions import DIMENSIONS
from dermtrl.llm.client import ClientConfig
from dermtrl.prompts import CANDIDATE_INSTRUCTION, PROMPT_VERSION

pytestmark = pytest.mark.timeout(120)


def png_bytes(colour=(200, 40, 45)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def cases_with_bad_image(n: int = 4, bad: int = 1) -> Dataset:
    rows = [{"case_id": f"c{i}", "image": {"bytes": png_bytes((40 * i, 90, 90)), "path": f"ok{i}.png"},
             "reference": "ref"} for i in range(n)]
    rows[bad]["image"] = {"bytes": b"this is not an image", "path": "broken.png"}
    return Dataset.from_list(rows).cast_column("image", ImageFeature())


def describe(body: dict) -> str:
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    return "The answer is " + str(len(parts[0]["image_url"]["url"]))


def test_api_generation_writes_one_record_per_case_with_prompt_version_and_settings(make_openai_server, tmp_path):
    server = make_openai_server(responder=describe)
    out = tmp_path / "cands" / "vlm.jsonl"
    config = ClientConfig(base_url=server.base_url, model="vlm-7b", max_concurrency=4, temperature=0.0)
    with DermBench(ClientConfig(base_url=server.base_url, model="judge"), progress=False) as bench:
        records = bench.generate(cases_with_bad_image(), config, out, name="my-vlm")
    assert [r["case_id"] for r in sorted(records, key=lambda r: r["case_id"])] == ["c0", "c1", "c2", "c3"]
    by_id = {r["case_id"]: r for r in records}
    assert by_id["c1"]["text"] is None and "broken.png" in by_id["c1"]["error"]
    assert all(by_id[c]["text"].startswith("The answer is") for c in ("c0", "c2", "c3"))
    assert server.calls == 3  # the unreadable image was never sent
    sent = server.chat_requests[0]["body"]["messages"][-1]["content"][-1]
    assert sent == {"type": "text", "text": CANDIDATE_INSTRUCTION}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all(r["model"] == "my-vlm" for r in lines)
    generation = lines[0]["generation"]
    assert generation["prompt_version"] == PROMPT_VERSION and generation["instruction"] == "CANDIDATE_INSTRUCTION"
    assert generation["backend"] == "openai" and generation["model"] == "vlm-7b"
    assert generation["temperature"] == 0.0 and generation["max_tokens"] == 1024
    name, read = read_candidates(out)
    assert name == "my-vlm" and len(read) == 4


def test_generation_resumes_without_calls_and_refuses_other_settings(make_openai_server, tmp_path):
    server = make_openai_server(responder=describe)
    out = tmp_path / "vlm.jsonl"
    ds = cases_with_bad_image(6)
    generator = OpenAIGenerator(ClientConfig(base_url=server.base_url, model="vlm", temperature=0.7))
    partial = generate_candidates(ds.select(range(3)), generator, out, progress=False)
    assert len(partial) == 3 and server.calls == 2
    records = generate_candidates(ds, generator, out, progress=False)  # sampling is not cached: the file resumes
    assert len(records) == 6 and server.calls == 5
    assert len(out.read_text().splitlines()) == 6
    colder = OpenAIGenerator(ClientConfig(base_url=server.base_url, model="vlm", temperature=0.2))
    with pytest.raises(ValueError, match="temperature: file has 0.7, this run 0.2"):
        generate_candidates(ds, colder, out, progress=False)
    assert len(generate_candidates(ds, colder, out, overwrite=True, progress=False)) == 6


def test_local_transformers_generation_is_batched_and_isolates_a_bad_image(tmp_path):
    ds = cases_with_bad_image(5, bad=2)
    generator = TransformersGenerator("dermtrl:tiny", batch_size=2, max_new_tokens=6)
    calls = []
    original = generator.generate_batch
    generator.generate_batch = lambda images: calls.append(len(images)) or original(images)
    records = generate_candidates(ds, generator, tmp_path / "tiny.jsonl", progress=False)
    assert calls == [2, 1, 1]  # batches of two; the unreadable image dropped from its batch only
    by_id = {r["case_id"]: r for r in records}
    assert "broken.png" in by_id["c2"]["error"] and by_id["c2"]["text"] is None
    assert all(isinstance(by_id[c]["text"], str) and by_id[c]["error"] is None for c in ("c0", "c1", "c3", "c4"))
    settings = json.loads((tmp_path / "tiny.jsonl").read_text().splitlines()[0])["generation"]
    assert settings["backend"] == "transformers" and settings["model"] == "dermtrl:tiny"
    assert settings["max_new_tokens"] == 6 and len(settings["fingerprint"]) == 16
    # Batching does not change what greedy decoding produces for a case.
    single = TransformersGenerator("dermtrl:tiny", batch_size=1, max_new_tokens=6)
    again = generate_candidates(ds.select([0, 1]), single, tmp_path / "single.jsonl", progress=False)
    assert {r["case_id"]: r["text"] for r in again} == {c: by_id[c]["text"] for c in ("c0", "c1")}


def test_candidates_from_dataset_and_bad_candidate_files(tmp_path):
    ds = generate_cases(3)
    records = candidates_from_dataset(ds, expert_scores="expert_scores")
    assert [r["text"] for r in records] == ds["narrative"]
    assert records[0]["expert_scores"] == ds[0]["expert_scores"]
    with pytest.raises(ValueError, match="'nope'"):
        candidates_from_dataset(ds, "nope")
    with pytest.raises(ValueError, match="no such candidates file"):
        read_candidates(tmp_path / "missing.jsonl")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"model": "a", "case_id": "1", "text": "x"}\n{"model": "b", "case_id": "2", "text": "y"}\n')
    with pytest.raises(ValueError, match="several models"):
        read_candidates(mixed)
    textless = tmp_path / "textless.jsonl"
    textless.write_text('{"case_id": "1"}\n')
    with pytest.raises(ValueError, match="record 1 .*neither text nor error"):
        read_candidates(textless)


def test_a_bad_row_costs_one_case_through_the_whole_pipeline(make_openai_server, tmp_path):
    def responder(body: dict) -> str:
        if isinstance(body["messages"][-1]["content"], list):  # a VLM request (image + instruction)
            return "Erythematous plaques. The answer is psoriasis."
        return "\n".join(f"{d}: 3" for d in DIMENSIONS)

    server = make_openai_server(responder=responder)
    rows = [{"image": {"bytes": png_bytes(), "path": f"ok{i}.png"}, "reference": f"reference {i}",
             "category": "Eczema Photos"} for i in range(5)]  # no case_id column: rows are keyed by index
    rows[1]["image"] = {"bytes": b"\x89PNG broken", "path": "broken.png"}
    rows[3]["reference"] = ""
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature())
    with DermBench(ClientConfig(base_url=server.base_url, model="judge"), progress=False) as bench:
        cands = bench.generate(ds, ClientConfig(base_url=server.base_url, model="vlm"), tmp_path / "c.jsonl")
        records = bench.judge(ds, {"vlm": cands}, tmp_path / "j.jsonl")
        board = bench.report(records)
    by_id = {r["case_id"]: r for r in records}
    assert sorted(by_id) == ["0", "1", "2", "3", "4"]
    assert "broken.png" in by_id["1"]["error"] and by_id["3"]["error"].startswith("missing reference")
    (model,) = board.models
    assert (model.n_scored, model.n_failed) == (3, 2)
    assert model.failures == {"missing reference": 1, "no candidate": 1}


def test_a_failed_vlm_call_is_recorded_per_case(make_openai_server, tmp_path):
    from dermtrl.llm.client import image_to_data_url
    from dermtrl.testing import Fault

    refused = image_to_data_url(png_bytes((40 * 3, 90, 90)))  # the image of case c3

    def responder(body: dict) -> str:
        if body["messages"][-1]["content"][0]["image_url"]["url"] == refused:
            raise Fault("500")
        return "The answer is eczema."

    server = make_openai_server(responder=responder)
    generator = OpenAIGenerator(ClientConfig(base_url=server.base_url, model="vlm", max_retries=0))
    records = generate_candidates(cases_with_bad_image(6, bad=0), generator, tmp_path / "c.jsonl", progress=False)
    by_id = {r["case_id"]: r for r in records}
    assert len(records) == 6 and "broken.png" in by_id["c0"]["error"]
    assert by_id["c3"]["error"].startswith("LLMError") and "HTTP 500" in by_id["c3"]["error"]
    assert all(by_id[c]["text"] == "The answer is eczema." for c in ("c1", "c2", "c4", "c5"))
