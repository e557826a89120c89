"""What both DermEval recipes (recipes/sft.py, recipes/soreb.py) share: script arguments, model and data loading.

Stage 1 and Stage 2 must read the same cases and load the model the same way; keeping it here means the two
recipes cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl import ModelConfig, ScriptArguments

from dermtrl.data.loading import SYNTHETIC, load_cases, validate_cases
from dermtrl.tiny import resolve_model_name


@dataclass
class DermEvalScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub id, local datasets folder or data file, or '{SYNTHETIC}' for generated cases."},
    )
    synthetic_train_cases: int = field(default=800, metadata={"help": f"Cases to generate for '{SYNTHETIC}'."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic cases."})
    lora_language_model_only: bool = field(
        default=True,
        metadata={"help": "Restrict new LoRA layers to the language model's linear layers (LLaVA-1.5's recipe)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "torch.set_num_threads on CPU; tiny models run fastest with 1 on small machines."},
    )


def setup_threads(script_args: DermEvalScriptArguments) -> None:
    if script_args.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(script_args.cpu_threads)


def load_model(model_args: ModelConfig) -> Any:
    """The vision-language model named by ``model_name_or_path`` (a Hub id, a folder, or ``dermtrl:tiny``)."""
    from transformers import AutoModelForImageTextToText

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    return AutoModelForImageTextToText.from_pretrained(
        resolve_model_name(model_args.model_name_or_path), revision=model_args.model_revision, dtype=dtype,
        attn_implementation=model_args.attn_implementation,
    )


def load_training_cases(script_args: DermEvalScriptArguments, *, scores: bool = False) -> Any:
    """The training cases, validated: image, narrative and y* (and the expert scores for Stage 2)."""
    name = script_args.dataset_name
    if not name:
        raise ValueError(f"dataset_name is required (a Hub id, a local path, or '{SYNTHETIC}')")
    n = script_args.synthetic_train_cases if name == SYNTHETIC else None
    cases = load_cases(name, script_args.dataset_train_split, n=n, seed=script_args.synthetic_seed)
    validate_cases(cases, ("image", "narrative", "evaluation"), scores=scores, source=name)
    return cases
