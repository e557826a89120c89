"""Will it fit? Peak memory of a DermEval SFT step and a SOREB step on LLaVA-1.5-7B, per batch size, vs 24 and 80 GB.

Builds llava-1.5-7b-hf's exact architecture (``dermtrl.testing.llava7b``: CLIP ViT-L/14-336 with 576 image tokens,
the projector, Llama-2-7B) with random weights, nothing downloaded, in bf16 with the paper's LoRA (r=64, alpha 16,
dropout 0.05), gradient checkpointing and AdamW over the LoRA parameters only.

On CPU (the default) it runs real steps of the model at 1 and 2 decoder layers (every weight in memory, the vision
tower whole) at batch 1 and two short text-only lengths, records each phase's peak of live tensor bytes, and
extrapolates linearly in depth (the per-layer increment from the 1- vs 2-layer difference, plus the fixed part:
embeddings, lm_head, CLIP, LoRA and its AdamW state) and in tokens (the per-token increment from the two lengths;
the 576 image tokens count as positions like any other) to 32 layers, batch 1-4 and the recorded lengths, and adds
one image's measured pass through the vision tower per image in the batch. Activations are thus scaled from short
sequences, not measured at full length. ``dermtrl.trainer.memory`` states the method and its assumptions. About 2-3
minutes on 2 idle cores. With ``--device cuda`` it builds the full 32-layer model on the GPU
and measures every setting for real (``torch.cuda.max_memory_allocated``, wall time).

``--write-docs`` writes the plan into the ``memory_plan`` section of docs/source/benchmarks.md, and a CUDA run into
its own ``memory_plan_cuda`` section, so the measurement stands beside the plan instead of replacing it.

The lengths: ``--lengths`` reads a recipe's ``label_lengths.json`` (prompt and y* token counts of the training
set); without it they are measured on 500 synthetic cases with the 7B-shaped tokenizer, as the recipes measure
them. The longest prompt and the longest y* are used (the longest batch sets the peak); the SOREB completion is
``--max-completion-length`` (``recipes/configs/dermeval_soreb.yaml``: 512).

    python benchmarks/memory_plan.py [--lengths outputs/dermeval-7b-sft] [--max-completion-length 512]
    python benchmarks/memory_plan.py --device cuda
    python benchmarks/memory_plan.py --passes full   # SOREB with full-length logits, to see what keeping saves
    python benchmarks/memory_plan.py --write-docs    # and write the result into docs/source/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from dermtrl.testing.llava7b import IMAGE_SEQ_LENGTH, llava15_7b_config
from dermtrl.trainer.memory import GIB, LORA, Shape, checkpoint_bytes, fits, measure, parameter_counts, predicted_peak

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, write_console_docs  # noqa: E402

GPUS = {"24 GB (RTX 4090)": 24, "80 GB (A100/H100)": 80}
#: the CPU probes (prompt, y*, completion tokens; batch 1, text only): short, since a 4096-wide layer is slow here
PROBES = (Shape(1, 32, 16, 8), Shape(1, 96, 48, 24))


def recorded_lengths(source: str | None) -> tuple[int, int, str]:
    """(longest prompt, longest y*) in tokens, and where they come from."""
    from dermtrl import lengths

    if source:
        path = Path(source)
        data = lengths.read(path) if path.is_dir() else None
        if data is None and path.is_file():
            import json

            data = json.loads(path.read_text(encoding="utf-8"))
        if data is None:
            raise SystemExit(f"--lengths {source}: no {lengths.LENGTHS_FILE} there (the recipes write it beside "
                             "the adapter)")
        try:
            return int(data["prompt_tokens"]["max"]), int(data["label_tokens"]["max"]), str(source)
        except (KeyError, TypeError) as err:
            raise SystemExit(f"--lengths {source}: no prompt_tokens.max / label_tokens.max ({err})") from None
    from dermtrl.cases.synthetic import generate_cases
    from dermtrl.testing.llava7b import llava15_7b_processor

    measured = lengths.measure_cases(llava15_7b_processor(), generate_cases(500))
    return measured.prompt.max, measured.label.max, "500 synthetic cases, 7B-shaped tokenizer"


def plan_cpu(settings: list[Shape], console: Console, fused: bool = True) -> tuple[dict, list, dict, int]:
    probes, vision = [], 0
    for layers in (1, 2):
        start = time.perf_counter()
        measured, vision = measure(llava15_7b_config(num_hidden_layers=layers), {"sft": PROBES, "soreb": PROBES},
                                   image=False, fused=fused)
        probes += measured
        console.print(f"measured {layers} decoder layer(s) in {time.perf_counter() - start:.0f} s")
    fit = fits(probes)
    checkpoint = checkpoint_bytes(llava15_7b_config())
    peaks = {(mode, s.batch): predicted_peak(fit, mode, 32, s, vision, checkpoint) for mode in ("sft", "soreb")
             for s in settings}
    return peaks, probes, fit, vision


def plan_cuda(settings: list[Shape], fused: bool = True) -> tuple[dict, dict]:
    from dermtrl.trainer.memory import build, step

    config = llava15_7b_config()
    model, optimizer = build(config, "cuda")
    peaks, seconds = {}, {}
    for mode in ("sft", "soreb"):
        for shape in settings:
            try:
                step(model, optimizer, config, mode, shape, "cuda", None, fused=fused)  # warm-up
                m = step(model, optimizer, config, mode, shape, "cuda", None, fused=fused)
                peaks[mode, shape.batch] = max(m.peak.values())
                seconds[mode, shape.batch] = sum(m.seconds.values())
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                peaks[mode, shape.batch] = float("inf")
    return peaks, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=None, help="a recipe output folder or its label_lengths.json")
    parser.add_argument("--max-completion-length", type=int, default=512, help="SOREB's sampled tokens")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--reserve-gib", type=float, default=2.0,
                        help="kept free for the CUDA context and allocator fragmentation when judging a fit")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", choices=["fused", "full"], default="fused",
                        help="SOREB's teacher-forced passes as the trainer runs them (logits kept for the completion "
                        "and the label only) or with full-length logits (the earlier form), to see the saving")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    fused = args.passes == "fused"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (run without it to extrapolate on CPU)")
    torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)
    prompt, label, source = recorded_lengths(args.lengths)
    settings = [Shape(b, prompt, label, args.max_completion_length) for b in args.batch_sizes]
    counts = parameter_counts(llava15_7b_config())
    console.print(f"LLaVA-1.5-7B, random bf16 weights; LoRA r={LORA['r']} alpha={LORA['lora_alpha']} on the "
                  f"language model ({counts['LoRA'] / 1e6:.1f} M fp32 parameters: weights, gradients and AdamW's "
                  f"two moments = {counts['LoRA'] * 16 / GIB:.2f} GiB); gradient checkpointing")
    console.print("frozen bf16 weights: " + ", ".join(f"{k} {v * 2 / GIB:.2f} GiB" for k, v in counts.items()
                                                      if k != "LoRA"))
    console.print(f"lengths ({source}): prompt {prompt} tokens (BOS + {IMAGE_SEQ_LENGTH} image tokens + text), "
                  f"y* {label}, SOREB completion {args.max_completion_length}")
    seconds: dict = {}
    if args.device == "cpu":
        peaks, probes, fit, vision = plan_cpu(settings, console, fused)
        probe_table = Table(title="CPU probes (batch 1, text only; every weight in memory, vision tower included)")
        for col in ("step", "layers", "prompt", "y*", "completion", "phase", "peak (GiB)", "CPU s"):
            probe_table.add_column(col, justify="right")
        for m in probes:
            for phase in m.peak:
                probe_table.add_row(m.mode, str(m.layers), str(m.shape.prompt), str(m.shape.label),
                                    str(m.shape.completion if m.mode == "soreb" else "-"), phase,
                                    f"{m.peak[phase] / GIB:.2f}", f"{m.seconds[phase]:.1f}")
        console.print(probe_table)
        console.print("fit per phase, peak = f0 + f1*layers + (a0 + a1*layers)*tokens (f in GiB, a in KiB/token):")
        for (mode, phase), f in fit.items():
            console.print(f"  {mode}/{phase}: f0 {f.f0 / GIB:.2f}, f1 {f.f1 / GIB:.3f}, a0 {f.a0 / 1024:.0f}, "
                          f"a1 {f.a1 / 1024:.1f}")
        console.print(f"one image through CLIP ViT-L/14-336 + projector adds {vision / GIB:.3f} GiB at its peak "
                      "(added per image in the batch); steps with a backward pass: the larger measured slope plus "
                      f"32 checkpointed hidden states ({checkpoint_bytes(llava15_7b_config()) / 1024:.0f} KiB per "
                      "token each), an upper bound")
        how = "extrapolated to 32 layers from 1 and 2 (CPU)"
    else:
        peaks, seconds = plan_cuda(settings, fused)
        how = "measured on the full 32-layer model (CUDA)"
    how += f", SOREB passes {args.passes}"
    table = Table(title=f"Will it fit? Peak memory per GPU, {how}; a fit keeps {args.reserve_gib:g} GiB free")
    for col in ("step", "batch", "peak (GiB)", *(["s / step"] if seconds else []), *GPUS):
        table.add_column(col, justify="right")
    for mode in ("sft", "soreb"):
        for shape in settings:
            peak = peaks[mode, shape.batch] / GIB
            verdicts = ["fits" if peak + args.reserve_gib <= size else "does not fit" for size in GPUS.values()]
            timing = [f"{seconds[mode, shape.batch]:.2f}"] if seconds and (mode, shape.batch) in seconds else (
                ["OOM"] if seconds else [])
            table.add_row("SFT" if mode == "sft" else "SOREB", str(shape.batch),
                          "OOM" if peak == float("inf") else f"{peak:.1f}", *timing, *verdicts)
    console.print(table)
    if args.write_docs:
        if args.device == "cpu":
            write_console_docs("memory_plan", "Will it fit? The memory plan of LLaVA-1.5-7B steps (CPU)", console)
        else:
            write_console_docs("memory_plan_cuda", "Will it fit? LLaVA-1.5-7B steps measured on a GPU", console)


if __name__ == "__main__":
    main()
