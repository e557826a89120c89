"""Will it fit? Peak memory of DermEval's training steps, measured on shallow copies of the model and extrapolated.

``benchmarks/memory_plan.py`` is the command; this module is its machinery (and what the tests run on a small
configuration). The method:

1. Build the model from its config with random weights (nothing downloaded) at 1 and 2 decoder layers, the
   vision tower whole, in bf16 with the paper's LoRA (r=64, alpha 16, dropout 0.05, language-model projections
   only, adapters in fp32 as PEFT keeps them), gradient checkpointing and AdamW over the LoRA parameters only
   (its state allocated first, as it is from the second step on). Every weight is in memory, so the fixed part
   (embeddings, lm_head, CLIP ViT-L/14-336 and the projector, LoRA and AdamW state) is measured, not computed.
2. Run real steps and record the peak of live tensor bytes per phase with :class:`PeakMemory` (every tensor an
   operator returns, counted once per storage until it is freed: on CPU what ``torch.cuda.max_memory_allocated``
   reports on a GPU). An SFT step is one teacher-forced pass over prompt + y* with the loss, backward and the
   optimizer step. A SOREB step has two phases: ``generate`` (sampling the completion under ``no_grad`` with the
   KV cache) and ``train`` (the teacher-forced pass over prompt + completion for L_RL, eq. 4, and the one over
   prompt + y* for L_TEXT, both graphs alive until one backward, then the optimizer step). As the trainer runs
   them, both passes keep logits only where they count (the completion, the label) and use no KV cache;
   ``fused=False`` measures full-length logits instead, for comparison.
3. A 4096-wide layer in bf16 is slow on a CPU, so the probes are short (batch 1, tens of tokens) and text only;
   the image enters twice: its 576 tokens are language-model positions like any other (counted in the tokens
   below), and the vision tower's own transient memory (one image through CLIP and the projector, measured once)
   is added per image in the batch (an upper bound: the tower runs before each pass's activations peak).
4. Each phase's peak is fitted as bilinear in depth and tokens, ``f0 + f1 * layers + (a0 + a1 * layers) * tokens``,
   where tokens is the number of positions the phase holds (SFT: B * (prompt + label); generate:
   B * (prompt + completion); train: B * (2 * prompt + completion + label)). Two depths at two token counts fit
   the four coefficients exactly; 32 layers and the recorded lengths at batch 1-4 are then read off the fit.
   Depth enters linearly because every per-layer cost is (frozen weights, LoRA and its optimizer state, one
   checkpointed hidden state per layer, one layer's KV cache) while gradient checkpointing recomputes one layer
   at a time. Tokens enter linearly because attention runs through SDPA's fused kernels, which never hold the
   L x L score matrix on a GPU (eager attention would add B * heads * L^2 per layer). The fixed part
   ``f0 + a0 * tokens`` holds the embeddings, lm_head and its logits, the CLIP tower and projector, and the loss.
   One correction for the phases with a backward pass: the probes peak while recomputing a layer, and which layer
   peaks can change with depth (at 32 layers the top one, recomputed first, holds every layer's checkpoint), so
   the per-token part is taken as the larger measured slope plus 32 checkpointed hidden states (hidden x 2 bytes
   per token each): an upper bound, over by at most the one or two checkpoints the slopes already hold.

On a GPU (``device="cuda"``) the command runs the full-depth model at every setting instead, and the numbers are
``torch.cuda.max_memory_allocated`` and wall time, no extrapolation.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 1024**3
#: LoRA as the paper's Section 3.4 states it
LORA = {"r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "bias": "none"}
PHASES = {"sft": ("train",), "soreb": ("generate", "train")}


class PeakMemory(TorchDispatchMode):
    """Live and peak bytes of every tensor storage the operators return while the mode is on (any device).

    Storages are counted once however many views share them and leave the count when freed (a weak reference
    fires). :meth:`track` adds tensors made before the mode was entered (the model's parameters). Scratch space an
    operator allocates and frees inside itself is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[weakref.ref, int]] = {}

    def track(self, tensors: Iterable[torch.Tensor]) -> PeakMemory:
        for t in tensors:
            self._add(t)
        return self

    def reset_peak(self) -> None:
        self.peak = self.current

    def _add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key, size = id(storage), storage.nbytes()
        known = self._live.get(key)
        if known is not None and known[0]() is storage:  # seen before: only a resize changes it
            self.current += size - known[1]
            self._live[key] = (known[0], size)
        else:
            self._live[key] = (weakref.ref(storage, partial(self._free, key)), size)
            self.current += size
        self.peak = max(self.peak, self.current)

    def _free(self, key: int, ref: weakref.ref) -> None:
        known = self._live.get(key)
        if known is not None and known[0] is ref:
            del self._live[key]
            self.current -= known[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._add(t)
        return out


@dataclass(frozen=True)
class Shape:
    """One training step's size: batch and per-sample token counts (prompt = BOS + image tokens + text)."""

    batch: int
    prompt: int
    label: int
    completion: int = 0

    def tokens(self, mode: str, phase: str) -> int:
        """Positions the phase holds (see the module docstring)."""
        if mode == "sft":
            return self.batch * (self.prompt + self.label)
        if phase == "generate":
            return self.batch * (self.prompt + self.completion)
        return self.batch * (2 * self.prompt + self.completion + self.label)


@dataclass
class Measurement:
    """One measured step: peak bytes and seconds per phase."""

    mode: str
    layers: int
    shape: Shape
    peak: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def build(config: Any, device: str = "cpu", lora: dict | None = None, gradient_checkpointing: bool = True
          ) -> tuple[Any, torch.optim.Optimizer]:
    """A LLaVA model from ``config`` with random bf16 weights, the LoRA adapter and AdamW (state allocated)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX

    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(target_modules=LANGUAGE_MODEL_LORA_REGEX, **(lora or LORA)))
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-5)
    for p in params:  # allocate AdamW's two moments now: from the second step on they are always there
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def image_tokens(config: Any) -> int:
    """Language-model positions one image takes (the CLS token dropped, as llava-hf's ``default`` strategy does)."""
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def _inputs(config: Any, shape: Shape, device: str, generator: torch.Generator, image: bool = True
            ) -> dict[str, torch.Tensor | None]:
    """A batch as the collators build it: BOS, the image tokens, random text tokens; y* labelled after it.

    ``image=False``: every prompt position is a text token and there are no pixels (the short CPU probes)."""
    vision = config.vision_config
    n_image = image_tokens(config) if image else 0
    text = shape.prompt - 1 - n_image
    if text < 1:
        raise ValueError(f"prompt of {shape.prompt} tokens is shorter than BOS + {n_image} image tokens + 1")
    high = min(config.text_config.vocab_size, config.image_token_id)
    random_ids = partial(torch.randint, 3, high, generator=generator)
    bos = torch.full((shape.batch, 1), config.text_config.bos_token_id or 1)
    placeholders = torch.full((shape.batch, n_image), config.image_token_id)
    prompt = torch.cat([bos, placeholders, random_ids((shape.batch, text))], dim=1)
    label = random_ids((shape.batch, shape.label))
    ids = torch.cat([prompt, label], dim=1)
    pixels = torch.randn(shape.batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    return {"prompt": prompt.to(device), "input_ids": ids.to(device), "labels": torch.cat(
        [torch.full_like(prompt, -100), label], dim=1).to(device),
        "pixel_values": pixels.to(device, torch.bfloat16) if image else None}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _teacher_forced(model: Any, ids: torch.Tensor, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=labels)


def _generate(model: Any, config: Any, batch: dict[str, torch.Tensor], completion: int) -> torch.Tensor:
    """SOREB's sampling: the model as it trains, no gradients, KV cache, exactly ``completion`` new tokens."""
    with torch.no_grad():
        pixels = {} if batch["pixel_values"] is None else {"pixel_values": batch["pixel_values"]}
        return model.generate(input_ids=batch["prompt"], attention_mask=torch.ones_like(batch["prompt"]),
                              **pixels, max_new_tokens=completion,
                              min_new_tokens=completion, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              suppress_tokens=[config.image_token_id], pad_token_id=config.text_config.pad_token_id)


def step(model: Any, optimizer: torch.optim.Optimizer, config: Any, mode: str, shape: Shape, device: str,
         meter: PeakMemory | None, image: bool = True, fused: bool = True) -> Measurement:
    """One SFT or SOREB step at ``shape``; peak bytes from ``meter`` (CPU) or the CUDA allocator.

    ``fused`` (SOREB only) runs the trainer's passes: logits kept for the completion and the label only, log-probs
    by ``selective_log_softmax``, no KV cache. ``fused=False`` is the earlier form, full B x L x V logits in both
    passes, kept for comparison (``benchmarks/memory_plan.py --passes full``).
    """
    from dermtrl.trainer.soreb_trainer import (
        completion_logps,
        label_loss,
        policy_gradient_from_logps,
        policy_gradient_loss,
    )

    generator = torch.Generator().manual_seed(shape.batch * 7919 + shape.prompt)
    batch = _inputs(config, shape, device, generator, image)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    result = Measurement(mode=mode, layers=config.text_config.num_hidden_layers, shape=shape)

    def begin() -> float:
        gc.collect()  # tensors freed with a reference cycle would otherwise count until the collector runs
        _sync(device)
        if meter is not None:
            meter.reset_peak()
        elif device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    def end(phase: str, start: float) -> None:
        _sync(device)
        result.seconds[phase] = time.perf_counter() - start
        result.peak[phase] = meter.peak if meter is not None else torch.cuda.max_memory_allocated()

    with meter if meter is not None else nullcontext():
        if mode == "soreb":
            start = begin()
            with autocast:
                sequences = _generate(model, config, batch, shape.completion)
            end("generate", start)
        start = begin()
        with autocast:
            if mode == "sft":
                loss = _teacher_forced(model, batch["input_ids"], batch["pixel_values"], batch["labels"]).loss
            else:
                advantages = torch.ones(shape.batch, device=device)
                if fused:
                    keep = sequences.shape[1] - batch["prompt"].shape[1]
                    rl_batch = {"input_ids": sequences, "attention_mask": torch.ones_like(sequences),
                                "pixel_values": batch["pixel_values"]}
                    logits = completion_logps(model, rl_batch, keep)
                    rl_loss = policy_gradient_from_logps(logits, torch.ones_like(logits), advantages)
                    text_loss = label_loss(model, {"input_ids": batch["input_ids"], "labels": batch["labels"],
                                                   "attention_mask": torch.ones_like(batch["input_ids"]),
                                                   "pixel_values": batch["pixel_values"]})
                else:
                    generated = torch.zeros_like(sequences)
                    generated[:, batch["prompt"].shape[1]:] = 1
                    logits = _teacher_forced(model, sequences, batch["pixel_values"]).logits
                    rl_loss = policy_gradient_loss(logits, sequences, generated, advantages)
                    text_loss = _teacher_forced(model, batch["input_ids"], batch["pixel_values"],
                                                batch["labels"]).loss
                loss = 0.5 * rl_loss + 1.0 * text_loss  # the paper's weights; both graphs alive until backward
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
        if mode == "soreb":
            del logits, rl_loss, text_loss
        end("train", start)
    return result


def vision_transient(model: Any, config: Any, meter: PeakMemory) -> int:
    """Peak bytes one image adds while the vision tower and projector encode it (as in training: grad mode on)."""
    vision = config.vision_config
    pixels = torch.randn(1, vision.num_channels, vision.image_size, vision.image_size, dtype=torch.bfloat16)
    with meter, torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        gc.collect()
        meter.reset_peak()
        base = meter.current
        features = model.get_image_features(pixel_values=pixels)
        del features
        return meter.peak - base


def _meter(model: Any, optimizer: torch.optim.Optimizer) -> PeakMemory:
    """A meter that already counts the model's weights and AdamW's state (made before it existed)."""
    meter = PeakMemory().track(t for t in [*model.parameters(), *model.buffers()])
    return meter.track(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))


def measure(config: Any, shapes: dict[str, Sequence[Shape]], device: str = "cpu", lora: dict | None = None,
            image: bool = True, fused: bool = True) -> tuple[list[Measurement], int | None]:
    """Build the model of ``config``, run every ``mode -> shapes`` step on it, and (on CPU) measure one image's
    pass through the vision tower; returns the measurements and that transient (``None`` on a GPU)."""
    model, optimizer = build(config, device, lora)
    meter = _meter(model, optimizer) if device == "cpu" else None
    out = [step(model, optimizer, config, mode, shape, device, meter, image, fused) for mode, group in shapes.items()
           for shape in group]
    vision = vision_transient(model, config, meter) if meter is not None else None
    del model, optimizer
    return out, vision


@dataclass
class Fit:
    """``f0 + f1 * layers + (a0 + a1 * layers) * tokens`` for one (mode, phase), from four measurements."""

    f0: float
    f1: float
    a0: float
    a1: float

    @classmethod
    def of(cls, points: Sequence[tuple[int, int, float]]) -> Fit:
        """Exact fit through (layers, tokens, value) at two depths x two token counts."""
        depths = sorted({d for d, _, _ in points})
        counts = sorted({t for _, t, _ in points})
        if len(depths) != 2 or len(counts) != 2 or len(points) != 4:
            raise ValueError(f"a fit needs two depths x two token counts, got {[(d, t) for d, t, _ in points]}")
        value = {(d, t): v for d, t, v in points}
        (d1, d2), (t1, t2) = depths, counts
        slope = {d: (value[d, t2] - value[d, t1]) / (t2 - t1) for d in depths}  # per token, at each depth
        fixed = {d: value[d, t1] - slope[d] * t1 for d in depths}
        a1 = (slope[d2] - slope[d1]) / (d2 - d1)
        f1 = (fixed[d2] - fixed[d1]) / (d2 - d1)
        return cls(f0=fixed[d1] - f1 * d1, f1=f1, a0=slope[d1] - a1 * d1, a1=a1)

    def __call__(self, layers: int, tokens: int, checkpoint: float | None = None) -> float:
        """The fitted peak; with ``checkpoint`` (bytes per token and layer held from the forward pass to that
        layer's backward) the per-token part is instead the larger of the two measured slopes plus ``layers``
        checkpoints: the backward pass peaks while recomputing some layer, and at 32 layers the one recomputed
        first (the top, with every layer's checkpoint still alive) can peak where 1 or 2 layers did not, which
        a straight line through 1 and 2 layers cannot see. This over-counts by at most the one or two
        checkpoints the measured slopes already hold."""
        if checkpoint is None:
            return self.f0 + self.f1 * layers + (self.a0 + self.a1 * layers) * tokens
        slope = max(self.a0 + self.a1, self.a0 + 2 * self.a1)
        return self.f0 + self.f1 * layers + (slope + checkpoint * layers) * tokens


def fits(measurements: Sequence[Measurement], what: str = "peak") -> dict[tuple[str, str], Fit]:
    """One :class:`Fit` per (mode, phase) from :func:`measure`'s output at two depths."""
    out = {}
    for mode, phases in PHASES.items():
        for phase in phases:
            points = [(m.layers, m.shape.tokens(mode, phase), float(getattr(m, what)[phase]))
                      for m in measurements if m.mode == mode]
            if points:
                out[mode, phase] = Fit.of(points)
    return out


def checkpoint_bytes(config: Any) -> int:
    """Bytes per token a checkpointed decoder layer keeps until its backward: its bf16 input hidden state."""
    return config.text_config.hidden_size * 2


def predicted_peak(fit: dict[tuple[str, str], Fit], mode: str, layers: int, shape: Shape, vision: float = 0.0,
                   checkpoint: float | None = None) -> float:
    """A step's peak: the largest of its phases' fitted peaks, plus ``vision`` bytes per image in the batch.

    ``checkpoint`` (:func:`checkpoint_bytes`) applies to the phases with a backward pass (see :meth:`Fit.__call__`);
    generation has none, and its per-layer cost (the KV cache) is linear in depth as fitted."""
    return max(fit[mode, phase](layers, shape.tokens(mode, phase), checkpoint if phase == "train" else None)
               for phase in PHASES[mode]) + vision * shape.batch


def parameter_counts(config: Any, lora: dict | None = None) -> dict[str, int]:
    """Exact parameter counts of ``config``'s model (built on the meta device: no memory), LoRA included."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX

    with torch.device("meta"):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        model = get_peft_model(model, LoraConfig(target_modules=LANGUAGE_MODEL_LORA_REGEX, **(lora or LORA)))
    counts = {"vision tower + projector": 0, "embeddings + lm_head": 0, "decoder layers": 0, "LoRA": 0}
    for name, p in model.named_parameters():
        if "lora_" in name:
            counts["LoRA"] += p.numel()
        elif "vision_tower" in name or "multi_modal_projector" in name:
            counts["vision tower + projector"] += p.numel()
        elif ".layers." in name:
            counts["decoder layers"] += p.numel()
        else:
            counts["embeddings + lm_head"] += p.numel()
    return counts


def smoke(config: Any, shape: Shape, steps: int, device: str = "cpu", image: bool = True,
          lora: dict | None = None) -> dict[str, dict[str, float]]:
    """``steps`` SFT steps, SOREB steps as the trainer runs them and SOREB steps with full-length logits, on one
    model; per kind its peak bytes, seconds per step (the first step untimed when there are several) and samples
    per second. The first real-GPU check of the training path (``benchmarks/gpu_smoke.sh``)."""
    model, optimizer = build(config, device, lora)
    meter = _meter(model, optimizer) if device == "cpu" else None
    out: dict[str, dict[str, float]] = {}
    for kind, mode, fused in (("SFT", "sft", True), ("SOREB", "soreb", True), ("SOREB, full logits", "soreb", False)):
        runs = [step(model, optimizer, config, mode, shape, device, meter, image, fused) for _ in range(steps)]
        timed = runs[1:] or runs
        seconds = sum(sum(m.seconds.values()) for m in timed) / len(timed)
        out[kind] = {"peak": float(max(max(m.peak.values()) for m in runs)), "step_s": seconds,
                     "samples_per_s": shape.batch / seconds,
                     "generate_s": sum(m.seconds.get("generate", 0.0) for m in timed) / len(timed)}
    del model, optimizer
    return out


def smoke_main(argv: Sequence[str] | None = None) -> None:
    """Command line of :func:`smoke` (``benchmarks/gpu_smoke.sh`` calls it): measured peaks beside the plan's
    prediction (CPU probes at 1 and 2 decoder layers of the same configuration, extrapolated as the plan does)."""
    import argparse

    from dermtrl.testing.llava7b import llava15_7b_config, small_llava_config

    parser = argparse.ArgumentParser(description=smoke_main.__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="LLaVA-1.5's layout at a tiny width (CPU dry run)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=640, help="tokens: BOS + the image's tokens + text")
    parser.add_argument("--label", type=int, default=448, help="tokens of y*")
    parser.add_argument("--completion", type=int, default=512, help="SOREB's sampled tokens")
    parser.add_argument("--predict", action="store_true", help="print the plan's prediction beside each peak")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (--device cpu --small for the dry run)")

    def config_of(layers: int) -> Any:
        return small_llava_config(layers) if args.small else llava15_7b_config(num_hidden_layers=layers)

    config = config_of(args.layers)
    shape = Shape(args.batch, args.prompt, args.label, args.completion)
    print(f"{'small LLaVA-1.5 layout' if args.small else 'LLaVA-1.5-7B'}, {args.layers} decoder layers, random "
          f"bf16 weights, LoRA r={LORA['r']}, activation checkpointing, batch {shape.batch}, prompt {shape.prompt} "
          f"(image included), y* {shape.label}, completion {shape.completion}, {args.steps} steps each, "
          f"{args.device}")
    predicted: dict[str, float] = {}
    if args.predict:
        probes = (Shape(1, 32, 16, 8), Shape(1, 96, 48, 24))
        measured: list[Measurement] = []
        vision = 0
        for layers in (1, 2):
            found, vision = measure(config_of(layers), {"sft": probes, "soreb": probes}, image=False)
            measured += found
        fit = fits(measured)
        for kind, mode in (("SFT", "sft"), ("SOREB", "soreb")):
            predicted[kind] = predicted_peak(fit, mode, args.layers, shape, vision, checkpoint_bytes(config))
    results = smoke(config, shape, args.steps, args.device)
    unit, size = ("GiB", GIB) if args.layers > 2 or not args.small else ("MiB", 1024**2)
    print(f"{'step':<20} {'peak ' + unit:>9} {'plan ' + unit:>9} {'s/step':>8} {'generate s':>11} {'samples/s':>10}")
    for kind, r in results.items():
        plan = f"{predicted[kind] / size:.2f}" if kind in predicted else "-"
        print(f"{kind:<20} {r['peak'] / size:>9.2f} {plan:>9} {r['step_s']:>8.2f} {r['generate_s']:>11.2f} "
              f"{r['samples_per_s']:>10.3f}")
    fused, full = results["SOREB"], results["SOREB, full logits"]
    print(f"kept-logit passes: peak {(full['peak'] - fused['peak']) / size:+.2f} {unit} saved, SOREB samples/s "
          f"{fused['samples_per_s']:.3f} vs {full['samples_per_s']:.3f} with full logits")
    ratio = fused["step_s"] / (results["SFT"]["step_s"] + fused["generate_s"])
    print(f"SOREB step / (generation + SFT step): {ratio:.2f}x (goal <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}")
