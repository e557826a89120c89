"""The memory plan's machinery (dermtrl.trainer.memory, benchmarks/memory_plan.py) on a small LLaVA configuration."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from dermtrl.trainer.memory import (
    Fit,
    PeakMemory,
    Shape,
    checkpoint_bytes,
    fits,
    image_tokens,
    measure,
    parameter_counts,
    predicted_peak,
)

LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none"}


def small(layers: int) -> LlavaConfig:
    """LLaVA-1.5's layout (CLIP tower, projector, Llama) at a few thousandths of its width; 16 image tokens."""
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       max_position_embeddings=512)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=500, vision_feature_layer=-2,
                       image_seq_length=16)


def test_peak_memory_counts_live_storages_once_and_forgets_freed_ones() -> None:
    with PeakMemory() as meter:
        a = torch.ones(1000, dtype=torch.float32)  # 4000 bytes
        view = a[:10]  # same storage: not counted again
        b = a * 2  # 4000 more
        assert meter.current == 8000 and meter.peak == 8000
        del b
        assert meter.current == 4000
        meter.reset_peak()
        c = torch.zeros(10, dtype=torch.bfloat16)
        assert meter.peak == 4020
    del a, view, c
    assert meter.current == 0


def test_fit_is_exact_through_two_depths_by_two_token_counts() -> None:
    def truth(d: int, t: int) -> float:
        return 100 + 30 * d + (5 + 2 * d) * t

    fit = Fit.of([(d, t, truth(d, t)) for d in (1, 2) for t in (10, 50)])
    assert fit(32, 700) == pytest.approx(truth(32, 700))
    with pytest.raises(ValueError, match="two depths x two token counts"):
        Fit.of([(1, 10, 1.0), (2, 10, 2.0)])


def test_one_and_two_layer_probes_bound_a_deeper_model_with_images() -> None:
    torch.manual_seed(0)
    probes = (Shape(1, 12, 8, 4), Shape(1, 28, 24, 12))
    measured, vision = [], 0
    for layers in (1, 2):  # short, text-only probes, as the CPU plan runs them
        out, vision = measure(small(layers), {"sft": probes, "soreb": probes}, lora=LORA, image=False)
        measured += out
    fit = fits(measured)
    assert vision > 0 and set(fit) == {("sft", "train"), ("soreb", "generate"), ("soreb", "train")}
    # a 4-layer model, batch 3, with images and 4x longer text: measured for real and predicted from the probes
    shape = Shape(3, 1 + image_tokens(small(4)) + 60, 50, 30)
    direct, _ = measure(small(4), {"sft": [shape], "soreb": [shape]}, lora=LORA, image=True)
    for m in direct:
        real = max(m.peak.values())
        predicted = predicted_peak(fit, m.mode, 4, shape, vision, checkpoint_bytes(small(4)))
        assert real <= predicted <= 1.15 * real, (m.mode, real, predicted)
    counts = parameter_counts(small(4), LORA)
    assert counts["LoRA"] == 4 * 8 * (4 * (64 + 64) + 2 * (64 + 128) + (128 + 64))  # r x (in + out), 7 projections
