"""The same pixels in Stage 1 and at inference: an EXIF-rotated photo, a transparent PNG and a 16-bit scan give
identical pixel tensors in Stage 1's collator and in DermEval's prompt, from a data file and from a saved dataset,
and each differs from what a plain ``.convert("RGB")`` would have trained on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermtrl.cases.images import load_image
from dermtrl.conversation import TrainingCollator, prompt_batch, use_training_template
from dermtrl.scripts.script_args import DermEvalScriptArguments
from dermtrl.scripts.sft import stage1_cases
from dermtrl.testing.llava7b import llava15_7b_processor

NARRATIVE = "A single red plaque with a sharp border on the forearm."


@pytest.fixture(scope="module")
def processor():
    processor = llava15_7b_processor()  # llava-hf's CLIP preprocessing at 336 px, no weights needed
    use_training_template(processor)
    return processor


def _exif_rotated_jpeg() -> bytes:
    """A wide image stored sideways, with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    arr = np.zeros((60, 120, 3), np.uint8)
    arr[:, :40] = (200, 30, 30)
    arr[:, 40:] = (30, 30, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def _transparent_png() -> bytes:
    """Black where fully transparent: a plain RGB conversion shows black, the reader white."""
    arr = np.zeros((64, 64, 4), np.uint8)
    arr[16:48, 16:48] = (180, 60, 60, 255)
    buffer = io.BytesIO()
    Image.fromarray(arr, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    """A 16-bit grayscale ramp: a plain conversion saturates everything above 255 to white."""
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (64, 1))
    buffer = io.BytesIO()
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    image.save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = {"exif.jpg": _exif_rotated_jpeg, "alpha.png": _transparent_png, "deep.png": _sixteen_bit_png}


def _inference_pixels(processor, path: Path) -> torch.Tensor:
    """What DermEval.evaluate feeds the model for this file: the one reader, then the one prompt builder."""
    return prompt_batch(processor, [load_image(path)], [NARRATIVE])["pixel_values"]


def _naive_pixels(processor, path: Path) -> torch.Tensor:
    return prompt_batch(processor, [Image.open(path).convert("RGB")], [NARRATIVE])["pixel_values"]


def _write_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in IMAGES.items():
        (folder / name).write_bytes(make())
    return list(IMAGES)


def _stage1_pixels(processor, cases) -> list[torch.Tensor]:
    collator = TrainingCollator(processor)
    return [collator([row])["pixel_values"] for row in cases]


def test_stage1_from_a_data_file_sees_the_inference_pixels(tmp_path, processor):
    names = _write_images(tmp_path / "data" / "images")
    data = tmp_path / "data" / "train.jsonl"  # image paths relative to the file, as the formats page says
    data.write_text("".join(json.dumps({"case_id": n, "image": f"images/{n}", "narrative": NARRATIVE,
                                        "evaluation": "Fine.\nThe evaluation scores are:\nAccuracy: 5"}) + "\n"
                            for n in names))
    cases = stage1_cases(DermEvalScriptArguments(dataset_name=str(data)))
    for name, pixels in zip(names, _stage1_pixels(processor, cases), strict=True):
        path = tmp_path / "data" / "images" / name
        expected = _inference_pixels(processor, path)
        assert torch.equal(pixels, expected), name
        assert not torch.equal(pixels, _naive_pixels(processor, path)), f"{name}: the test image proves nothing"


def test_stage1_from_a_saved_dataset_sees_the_inference_pixels(tmp_path, processor):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    names = _write_images(tmp_path / "images")
    features = Features({"image": ImageFeature(), "narrative": Value("string"), "evaluation": Value("string")})
    ds = Dataset.from_dict({"image": [str(tmp_path / "images" / n) for n in names],
                            "narrative": [NARRATIVE] * len(names), "evaluation": ["Fine."] * len(names)},
                           features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    cases = stage1_cases(DermEvalScriptArguments(dataset_name=str(tmp_path / "saved")))
    assert isinstance(cases[0]["image"], dict), "images must reach the collator undecoded"
    for name, pixels in zip(names, _stage1_pixels(processor, cases), strict=True):
        assert torch.equal(pixels, _inference_pixels(processor, tmp_path / "images" / name)), name


def test_the_collator_reads_a_decoded_image_as_the_evaluator_does(processor):
    image = Image.open(io.BytesIO(_transparent_png()))
    pixels = TrainingCollator(processor)([{"image": image, "narrative": NARRATIVE, "evaluation": "Fine."}])
    expected = prompt_batch(processor, [load_image(image)], [NARRATIVE])["pixel_values"]
    assert torch.equal(pixels["pixel_values"], expected)


def test_an_unreadable_training_image_names_the_case(tmp_path, processor):
    (tmp_path / "empty.png").write_bytes(b"")
    row = {"case_id": "c7", "image": str(tmp_path / "empty.png"), "narrative": NARRATIVE, "evaluation": "Fine."}
    with pytest.raises(ValueError, match=r"case 'c7'.*zero-byte"):
        TrainingCollator(processor)([row])


def test_stage2_samples_from_the_inference_pixels(tmp_path, processor):
    """SOREB reads its cases (image paths in a data file, relative to it) through the same reader: the pixels it
    samples from are the ones inference sees."""
    from dermtrl.scripts.script_args import load_training_cases
    from dermtrl.trainer.soreb_trainer import sampling_images

    names = _write_images(tmp_path / "data" / "images")
    scores = {"Accuracy": 4, "Safety": 5, "Medical Groundedness": 4, "Clinical Coverage": 3,
              "Reasoning Coherence": 4, "Description Precision": 4}
    data = tmp_path / "data" / "train.jsonl"
    data.write_text("".join(json.dumps({"case_id": n, "image": f"images/{n}", "narrative": NARRATIVE,
                                        "evaluation": "Fine.", "expert_scores": scores}) + "\n" for n in names))
    cases = load_training_cases(DermEvalScriptArguments(dataset_name=str(data)), scores=True)
    for name, row in zip(names, cases, strict=True):
        pixels = prompt_batch(processor, sampling_images([row]), [NARRATIVE])["pixel_values"]
        assert torch.equal(pixels, _inference_pixels(processor, tmp_path / "data" / "images" / name)), name
