"""The benchmarks resume after an interrupt: a finished run with the same settings is reused, anything else reruns."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ablation(load_benchmark):
    return load_benchmark("soreb_ablation")


def test_a_finished_run_is_reused_and_a_changed_one_reruns(ablation, tmp_path, monkeypatch):
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "adapter_model.safetensors").write_bytes(b"weights one")
    calls = []

    def worker(spec, log):
        calls.append(spec["out"])
        Path(spec["out"]).mkdir(parents=True, exist_ok=True)
        return {"wall_seconds": 12.5, "reward": -2.0 * len(calls)}

    monkeypatch.setattr(ablation, "run_worker", worker)
    spec = {"adapter": str(stage1), "arm": "b", "out": str(tmp_path / "arm-b-seed0"), "seed": 0, "lr": 4e-4,
            "steps": 40, "train_cases": 800, "temperature": 1.0, "max_new_tokens": 176}
    log = tmp_path / "arm.log"

    def digest():  # what main() passes: the Stage-1 adapter's weights digest
        return ablation.file_digest(stage1 / "adapter_model.safetensors")

    first, fresh = ablation.trained(spec, log, digest(), overwrite=False)
    assert fresh and len(calls) == 1
    again, fresh = ablation.trained(spec, log, digest(), overwrite=False)
    assert not fresh and again == first and len(calls) == 1  # reused, with what the run reported

    assert ablation.trained({**spec, "lr": 1e-4}, log, digest(), overwrite=False)[1]  # another setting: trained again
    assert ablation.trained(spec, log, digest(), overwrite=True)[1]  # --overwrite
    (stage1 / "adapter_model.safetensors").write_bytes(b"weights two")  # another Stage-1 adapter
    assert ablation.trained(spec, log, digest(), overwrite=False)[1]
    assert len(calls) == 4


def test_an_interrupted_or_damaged_run_is_trained_again(ablation, tmp_path):
    settings = ablation.run_settings(arm="sft", seed=42)
    run = tmp_path / "sft"
    run.mkdir()
    assert ablation.finished(run, settings) is None  # stopped before its stamp
    (run / "benchmark_run.json").write_text("{not json")
    assert ablation.finished(run, settings) is None
    ablation.mark_finished(run, settings, {"ok": 1})
    assert ablation.finished(run, settings)["result"] == {"ok": 1}
    assert ablation.finished(run, {**settings, "seed": 43}) is None
    # the case and base versions are part of every run's settings
    assert {"synthetic_version", "tiny_base"} <= set(settings)


def test_stage1_validation_variants_are_parsed_and_a_bad_one_names_itself(load_benchmark):
    import argparse

    validation = load_benchmark("stage1_validation")
    assert validation.parse_variant("rank 64=") == ("rank 64", [])
    assert validation.parse_variant("rank 16=--lora_r 16 --lora_alpha 32") == ("rank 16",
                                                                              ["--lora_r", "16", "--lora_alpha", "32"])
    with pytest.raises(argparse.ArgumentTypeError, match="'--lora_r 16'"):
        validation.parse_variant("--lora_r 16")
