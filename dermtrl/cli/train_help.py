"""``dermtrl sft --help`` and ``dermtrl soreb --help`` written for users: dermtrl's own options first, then the
TRL options people set most, then a pointer to ``--help-all`` for the hundreds of others.

The training scripts keep TRL's parser (``TrlParser`` over the script's dataclasses, ``--config`` YAML), as
``trl sft`` does; only its help text is reorganised here.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from typing import Any

__all__ = ["COMMON_TRL_OPTIONS", "own_fields", "train_help"]

#: TRL / Transformers options most runs set, in the order they are listed.
COMMON_TRL_OPTIONS: tuple[str, ...] = (
    "model_name_or_path", "dataset_train_split", "output_dir", "num_train_epochs", "max_steps", "learning_rate",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "use_peft", "lora_r", "lora_alpha",
    "lora_dropout", "seed", "logging_steps", "save_strategy", "report_to", "use_cpu", "bf16", "push_to_hub",
    "hub_model_id", "resume_from_checkpoint",
)

_ABOUT = {
    "sft": ("Train DermEval Stage 1 (supervised fine-tuning of LLaVA-1.5 + LoRA on image, narrative and y*, the "
            "evaluation text to learn).", "image, narrative, evaluation"),
    "soreb": ("Train DermEval Stage 2 (SOREB: sampled evaluations rewarded by their score error, on top of a "
              "Stage-1 adapter).", "image, narrative, evaluation, expert_scores"),
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """100 columns; each option under its first spelling only (TRL also accepts the dashed one)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100, max_help_position=36)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return action.option_strings[0]
        return f"{action.option_strings[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


def own_fields(dataclass_type: type) -> list[str]:
    """The fields a dataclass of the ``dermtrl`` package declares itself (not the ones TRL's base class has)."""
    names: list[str] = []
    for cls in dataclass_type.__mro__:
        if cls.__module__.startswith("dermtrl") and dataclasses.is_dataclass(cls):
            names += [n for n in cls.__dict__.get("__annotations__", {}) if n not in names]
    declared = {f.name for f in dataclasses.fields(dataclass_type)}
    return [n for n in names if n in declared]


def train_help(parser: Any, script: str) -> str:
    """The user-facing help of a training script's ``TrlParser`` (its actions regrouped, nothing re-declared)."""
    about, columns = _ABOUT.get(script, (f"Train with dermtrl's {script} script.", "see the formats page"))
    by_dest: dict[str, list[Any]] = {}
    for action in parser._actions:  # a boolean field has two flags (--x and --no_x) on one dest
        by_dest.setdefault(action.dest, []).append(action)
    own = [name for dtype in parser.dataclass_types for name in own_fields(dtype)]
    common = [name for name in COMMON_TRL_OPTIONS if name in by_dest and name not in own]
    listed = {*own, *common, "help", "config"}
    rest = sum(1 for a in parser._actions if a.dest not in listed and a.option_strings and a.help != argparse.SUPPRESS)
    config_names = ", ".join(t.__name__ for t in parser.dataclass_types[1:])
    shown = argparse.ArgumentParser(
        prog=f"dermtrl {script}", add_help=False, formatter_class=_Formatter,
        usage=f"dermtrl {script} [--config YAML] [--OPTION VALUE ...]",
        description=f"{textwrap.fill(about, 100)}\n"
                    f"The training data needs the columns {columns}\n(docs/source/data_formats.md).\n"
                    f"Any option can be set in the --config YAML file or on the command line (which wins).",
        epilog=f"{rest} more options of TRL's {config_names}: dermtrl {script} --help-all\n"
               f"Several processes or GPUs: accelerate launch recipes/{script}.py --config YAML",
    )
    first = shown.add_argument_group("dermtrl options")
    for name in ("config", *own):
        for action in by_dest.get(name, ()):
            first._add_action(action)
    group = shown.add_argument_group("common TRL options")
    for name in common:
        for action in by_dest[name]:
            group._add_action(action)
    return shown.format_help()
