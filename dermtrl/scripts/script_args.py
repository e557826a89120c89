"""What both DermEval recipes (recipes/sft.py, recipes/soreb.py) share: script arguments, model and data loading.

Stage 1 and Stage 2 must read the same cases and load the model the same way; keeping it here means the two
recipes cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import ModelConfig, ScriptArguments

from dermtrl.cases.loading import FORMATS_PAGE, SYNTHETIC, load_cases, validate_cases
from dermtrl.cases.synthetic import SYNTHETIC_VERSION
from dermtrl.errors import DataError
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
    train_projector: bool = field(
        default=False,
        metadata={"help": "Also train the multimodal projector in full, as LLaVA-1.5's LoRA recipe does (the paper: "
                  "LoRA only). Stage 2 continues a Stage-1 adapter and inherits its choice."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "torch.set_num_threads on CPU; tiny models run fastest with 1 on small machines."},
    )
    print_logs: bool = field(
        default=True,
        metadata={"help": "Print each logging step's metrics beside the progress bar, as Trainer does. With false "
                  "only the bar shows (the demo); the metrics still reach report_to and trainer_state.json."},
    )
    target_format: str = field(
        default="paper",
        metadata={"help": "The y* format and prompt: 'paper' (Figure 4's label text, the paper's prompt) or "
                  "'official' (the official DermBench release's '<Dimension>: <score> - ...' lines, as `dermtrl data "
                  "import-records` writes them, and the release's DermEval prompt, read from `release`)."},
    )
    release: str | None = field(
        default=None,
        metadata={"help": "A checkout of the official DermBench release (yuhos16/DermBench): target_format "
                  "'official' reads its DermEval prompt from it (dermtrl ships none of the release's text)."},
    )


def prompt_builder(script_args: Any) -> Any | None:
    """The DermEval prompt of ``target_format``: ``None`` for the paper's, the release's builder for 'official'.

    Checked before any model loads: a wrong format or a missing checkout is one clear error.
    """
    from dermtrl.errors import DermtrlError

    fmt = getattr(script_args, "target_format", "paper")
    if fmt == "paper":
        return None
    if fmt != "official":
        raise DermtrlError(f"target_format {fmt!r}: choose 'paper' or 'official'")
    if not getattr(script_args, "release", None):
        raise DermtrlError("target_format 'official' needs release: a checkout of the official DermBench release "
                           "(git clone https://github.com/yuhos16/DermBench), whose DermEval prompt it trains with")
    from dermtrl.bench.release import load_release

    return load_release(script_args.release).dermeval_prompt_builder()


def bar_only(trainer: Any, script_args: Any) -> Any:
    """With ``print_logs: false``, keep Trainer's progress bar but not the metrics dict it prints at every logging
    step (the numbers still go to ``report_to`` and ``trainer_state.json``)."""
    if getattr(script_args, "print_logs", True) or trainer.args.disable_tqdm:
        return trainer
    from transformers.trainer_callback import ProgressCallback

    class BarOnlyProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            return None

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarOnlyProgress)
    return trainer


def setup_threads(script_args: DermEvalScriptArguments) -> None:
    if script_args.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(script_args.cpu_threads)


def lora_config(script_args: DermEvalScriptArguments, model_args: ModelConfig) -> Any:
    """The LoRA config of a new adapter: TRL's from ``model_args``, on the language model, optionally the projector."""
    from trl import get_peft_config

    from dermtrl.scripts.lora import restrict_to_language_model, with_trainable_projector

    peft_config = get_peft_config(model_args)
    if script_args.lora_language_model_only:
        restrict_to_language_model(peft_config)
    if script_args.train_projector:
        if peft_config is None:
            raise ValueError("train_projector needs use_peft: true (without LoRA every parameter trains already)")
        with_trainable_projector(peft_config)
    return peft_config


def check_continued_adapter(script_args: DermEvalScriptArguments, adapter: str, base: str) -> None:
    """Stage 2 continues the Stage-1 adapter: refuse one trained on another base (its weights would be applied to
    a model they were not trained for, and it would score nonsense) or a ``train_projector`` it does not match."""
    from dermtrl.scripts.lora import adapter_trains_projector, other_base

    trained_on = other_base(adapter, base)
    if trained_on is not None:
        raise ValueError(
            f"sft_adapter {adapter} was trained on {trained_on}, but model_name_or_path is {base}: train Stage 1 on "
            "this base, or set model_name_or_path to the adapter's base"
        )
    if script_args.train_projector and not adapter_trains_projector(adapter):
        raise ValueError(
            f"train_projector is true but the Stage-1 adapter {adapter} does not train the projector: Stage 2 "
            "inherits Stage 1's choice; train Stage 1 with train_projector: true"
        )


def load_model(model_args: ModelConfig) -> Any:
    """The vision-language model named by ``model_name_or_path`` (a Hub id, a folder, or ``dermtrl:tiny``).

    On GPUs under DDP or ZeRO-1/2 each process loads straight onto its own device (``device_map={"": device}``, the
    local process index, as TRL's scripts do): without it every process first materialises the whole checkpoint in
    host RAM (about 13.5 GB each for LLaVA-1.5-7B, eight times over on one machine). ZeRO-3 and FSDP place the
    weights themselves, and CPU runs keep the default.
    """
    import os

    from accelerate import PartialState
    from accelerate.utils import str_to_bool
    from transformers import AutoModelForImageTextToText
    from transformers.integrations import is_deepspeed_zero3_enabled

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    state = PartialState()
    sharded = is_deepspeed_zero3_enabled() or bool(str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")))
    device_map = None if state.device.type == "cpu" or sharded else {"": state.device}  # cuda:<local index>
    return AutoModelForImageTextToText.from_pretrained(
        resolve_model_name(model_args.model_name_or_path), revision=model_args.model_revision, dtype=dtype,
        attn_implementation=model_args.attn_implementation, device_map=device_map,
    )


def load_training_cases(script_args: DermEvalScriptArguments, *, scores: bool = False) -> Any:
    """The training cases, validated: image, narrative and y* (and the expert scores for Stage 2).

    Called before the model is loaded, so a missing column is refused in seconds with a :class:`DataError`
    naming it and the page of formats. Image paths in a data file resolve against the file's folder.
    """
    name = script_args.dataset_name
    if not name:
        raise DataError(f"dataset_name is required (a Hub id, a local path, or '{SYNTHETIC}'); see {FORMATS_PAGE}")
    n = script_args.synthetic_train_cases if name == SYNTHETIC else None
    cases = load_cases(name, script_args.dataset_train_split, n=n, seed=script_args.synthetic_seed)
    validate_cases(cases, ("image", "narrative", "evaluation"), scores=scores, source=name)
    return cases


#: Written beside a Stage-1 adapter: the settings that decide its weights (see :func:`stage1_settings`).
STAGE1_SETTINGS_FILE = "stage1_settings.json"
_WEIGHT_SETTINGS = {
    "script": ("dataset_name", "dataset_config", "dataset_train_split", "synthetic_train_cases", "synthetic_seed",
               "lora_language_model_only", "train_projector"),
    "model": ("model_name_or_path", "model_revision", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
              "lora_target_modules", "lora_modules_to_save"),
    "training": ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "seed",
                 "max_length"),
}


def stage1_settings(script_args: Any, training_args: Any, model_args: Any) -> dict[str, dict[str, Any]]:
    """The Stage-1 settings that decide the adapter's weights (not where it is written, logged or how fast).

    Recorded beside the adapter, so a recipe that would run Stage 1 can tell a finished run of its own config from
    an output an edited config (another learning rate, more epochs) would not have produced.
    """
    groups = {"script": script_args, "model": model_args, "training": training_args}
    settings = {group: {name: getattr(groups[group], name, None) for name in names}
                for group, names in _WEIGHT_SETTINGS.items()}
    if str(settings["script"].get("dataset_name") or "").startswith("dermtrl:synthetic"):
        # new synthetic pictures (another version) are other training data, though no setting changed
        settings["script"]["synthetic_version"] = SYNTHETIC_VERSION
    return json.loads(json.dumps(settings, default=str))  # what the JSON file will read back as


def recorded_stage1_settings(adapter: str) -> dict[str, Any] | None:
    """The settings recorded beside a Stage-1 adapter folder, or ``None`` (none recorded, or not a folder)."""
    try:
        return json.loads((Path(adapter) / STAGE1_SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None


#: More passes than this over the training cases draw a warning: the adapter learns the cases by heart.
MAX_QUIET_EPOCHS = 20


def epochs_warning(n_cases: int, training_args: Any, world_size: int = 1) -> str | None:
    """A warning when training would pass over its ``n_cases`` more than :data:`MAX_QUIET_EPOCHS` times, else
    ``None``. ``max_steps`` (when set) decides the passes, counted as the Trainer counts them (an epoch is
    ``ceil(cases / (batch x processes)) // gradient_accumulation_steps`` optimizer steps)."""
    if n_cases < 1:
        return None
    per_device = training_args.per_device_train_batch_size * max(1, world_size)
    steps_per_epoch = max(1, math.ceil(n_cases / per_device) // training_args.gradient_accumulation_steps)
    steps = training_args.max_steps if training_args.max_steps and training_args.max_steps > 0 else None
    epochs = steps / steps_per_epoch if steps is not None else float(training_args.num_train_epochs)
    if epochs <= MAX_QUIET_EPOCHS:
        return None
    how = f"{steps} steps ({steps_per_epoch} per epoch)" if steps is not None else f"num_train_epochs {epochs:g}"
    return (f"{how} pass over the {n_cases} training cases {epochs:.0f} times (more than {MAX_QUIET_EPOCHS}): "
            "the adapter will learn these cases by heart rather than how to evaluate; use fewer steps or epochs, "
            "or more cases, and compare with the constant baseline in the eval report")


def save_stage1_settings(settings: dict[str, Any], adapter: str) -> None:
    (Path(adapter) / STAGE1_SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
