"""Stage 1 on official DermEval records (`target_format: official`): trained with the release's DermEval prompt,
read from the user's checkout, and an adapter that says so, so DermEval prompts it the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermtrl.data.records import import_records
from tests.test_records import make_images, records, write_jsonl
from tests.test_release_standin import make_release, write_dermeval_prompt_module

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo_sft.yaml"


@pytest.fixture
def checkout(tmp_path):
    """A stand-in release checkout with its DermEval prompt module (written for these tests)."""
    return write_dermeval_prompt_module(make_release(tmp_path / "DermBench", 2))


def test_the_collator_uses_the_releases_prompt(checkout, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from dermtrl.bench.release import load_release
    from dermtrl.conversation import TrainingCollator, use_training_template
    from dermtrl.tiny import tiny_llava_path

    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    use_training_template(processor)
    row = {"image": Image.new("RGB", (32, 32), (180, 60, 60)), "narrative": "Red plaques.",
           "evaluation": "Accuracy: 4.0 - right"}
    official = TrainingCollator(processor, prompt_fn=load_release(checkout).dermeval_prompt_builder())([row])
    paper = TrainingCollator(processor)([row])
    text = processor.tokenizer.decode(official["input_ids"][0], skip_special_tokens=True)
    assert "Stand-in DermEval prompt over Accuracy, Safety:" in text and "Red plaques." in text
    assert "Stand-in DermEval prompt" not in processor.tokenizer.decode(paper["input_ids"][0])
    # the label is y* either way
    labelled = official["input_ids"][0][official["labels"][0] != -100]
    assert processor.tokenizer.decode(labelled, skip_special_tokens=True).strip() == "Accuracy: 4.0 - right"


def test_stage1_trains_one_step_on_official_records_and_dermeval_prompts_the_same_way(checkout, tmp_path):
    from dermtrl import DermEval
    from dermtrl.cli import main

    src = write_jsonl(tmp_path / "official.jsonl", records())
    images = make_images(tmp_path / "images")
    import_records(src, tmp_path / "data" / "train.jsonl", image_root=str(images))
    out = tmp_path / "adapter"
    args = ["sft", "--config", str(CONFIG), "--dataset_name", str(tmp_path / "data" / "train.jsonl"),
            "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--logging_steps", "1", "--disable_tqdm", "true", "--target_format", "official"]
    assert main(args) == 2  # no checkout given: refused before any model loads
    assert main([*args, "--release", str(checkout)]) == 0
    assert json.loads((out / "dermeval_prompt.json").read_text())["target_format"] == "official"
    evaluator = DermEval.from_pretrained(adapter=str(out), max_new_tokens=4)
    assert evaluator.prompt_fn("A papule.").startswith("Stand-in DermEval prompt over Accuracy, Safety:")
    assert evaluator.evaluate(images / "derm" / "a.png", "A papule.").text is not None
    moved = tmp_path / "moved"
    checkout.rename(moved)
    with pytest.raises(Exception, match="release=PATH"):
        DermEval.from_pretrained(adapter=str(out))
    assert DermEval.from_pretrained(adapter=str(out), release=str(moved)).prompt_fn is not None


def test_soreb_continues_an_official_stage1_adapter_with_the_same_prompt(checkout, tmp_path, monkeypatch):
    """Stage 2 on official records, continuing the Stage-1 adapter above: it samples and computes its text loss
    with the release's prompt (read from the Stage-1 adapter's record), and its own adapter records it too."""
    from dermtrl.cli import main
    from dermtrl.trainer import soreb_trainer

    src = write_jsonl(tmp_path / "official.jsonl", records())
    images = make_images(tmp_path / "images")
    data = tmp_path / "data" / "train.jsonl"
    import_records(src, data, image_root=str(images))
    stage1 = tmp_path / "stage1"
    assert main(["sft", "--config", str(CONFIG), "--dataset_name", str(data), "--output_dir", str(stage1),
                 "--max_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
                 "--target_format", "official", "--release", str(checkout)]) == 0
    seen = []
    original = soreb_trainer.prompt_batch

    def spy(processor, images, narratives, prompt_fn=None):
        seen.append(prompt_fn(narratives[0]) if prompt_fn else None)
        return original(processor, images, narratives, prompt_fn)

    monkeypatch.setattr(soreb_trainer, "prompt_batch", spy)
    out = tmp_path / "stage2"
    assert main(["soreb", "--model_name_or_path", "dermtrl:tiny", "--dataset_name", str(data),
                 "--sft_adapter", str(stage1), "--output_dir", str(out), "--max_steps", "1",
                 "--per_device_train_batch_size", "2", "--max_completion_length", "8", "--use_cpu", "true",
                 "--bf16", "false", "--report_to", "none", "--save_strategy", "no", "--log_completions", "false",
                 "--disable_tqdm", "true"]) == 0
    assert seen and all(s and s.startswith("Stand-in DermEval prompt") for s in seen)
    assert json.loads((out / "dermeval_prompt.json").read_text())["release"] == str(checkout.resolve())
