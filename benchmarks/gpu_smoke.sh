#!/usr/bin/env bash
# The first check of DermEval's training path on a GPU: one 80 GB GPU, under 10 minutes, nothing downloaded.
#
#   bash benchmarks/gpu_smoke.sh               # on the GPU machine, from the repository root or anywhere
#   bash benchmarks/gpu_smoke.sh --write-docs  # the same, and step 1 writes its table into the memory_plan_cuda
#                                              # section of docs/source/benchmarks.md (step 2 is printed only)
#   bash benchmarks/gpu_smoke.sh --dry-run     # CPU only: LLaVA-1.5's layout at a tiny width, 2 layers, 2 steps
#
# 1. benchmarks/memory_plan.py --device cuda: LLaVA-1.5-7B at full depth (random bf16 weights, LoRA r=64,
#    activation checkpointing), SFT and SOREB steps at batch 1, 2 and 4, peak memory and seconds per step.
# 2. 5 SFT steps, 5 SOREB steps as the trainer runs them (logits kept for the completion and the label only) and
#    5 SOREB steps with full-length logits, batch 4, on the 7B-shaped model: each one's peak beside the plan's
#    CPU prediction (probes at 1 and 2 layers, extrapolated), samples per second with and without the kept-logit
#    passes, and the SOREB step's cost against one generation plus one SFT step (goal: at most 1.3x).
# The dry run (what CI runs) skips step 1 and runs step 2 on CPU with short batches.
# PYTHON picks the interpreter (default: the repository's .venv when there is one, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

smoke() { "$PYTHON" -c 'import sys; from dermtrl.trainer.memory import smoke_main; smoke_main(sys.argv[1:])' "$@"; }

usage="usage: bash benchmarks/gpu_smoke.sh [--dry-run | --write-docs]"
case "${1:-}" in
  -h|--help)
    echo "$usage"
    echo "  --dry-run     CPU only: the smoke steps on a tiny-width LLaVA-1.5 layout; measures nothing to publish"
    echo "  --write-docs  step 1 (memory_plan.py --device cuda) replaces the memory_plan_cuda section of"
    echo "                docs/source/benchmarks.md with its table; step 2 (the smoke steps) is printed only"
    ;;
  --dry-run)
    [[ $# -eq 1 ]] || { echo "$usage (--dry-run measures nothing to publish: no --write-docs with it)" >&2; exit 2; }
    echo "== dry run (CPU): the smoke steps on a tiny-width LLaVA-1.5 layout, 2 decoder layers"
    smoke --device cpu --small --layers 2 --steps 2 --batch 1 --prompt 40 --label 12 --completion 4 --predict
    ;;
  ""|--write-docs)
    [[ $# -le 1 ]] || { echo "$usage" >&2; exit 2; }
    docs=()
    [[ "${1:-}" == --write-docs ]] && docs=(--write-docs)
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --dry-run")'
    "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"== {p.name}, {p.total_memory / 2**30:.0f} GiB")'
    echo "== 1/2 memory plan, measured at full depth"
    "$PYTHON" benchmarks/memory_plan.py --device cuda --batch-sizes 1 2 4 "${docs[@]}"
    echo "== 2/2 smoke steps: 5 SFT, 5 SOREB, 5 SOREB with full logits, batch 4, beside the plan's prediction"
    smoke --device cuda --layers 32 --steps 5 --batch 4 --predict
    ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac
