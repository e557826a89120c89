"""Where DermEval's LoRA goes: the language model's linear layers, as in LLaVA-1.5's LoRA recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Attention and MLP projections of the language model only; the CLIP tower stays frozen and un-adapted.
LANGUAGE_MODEL_LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def restrict_to_language_model(peft_config: Any) -> Any:
    """Point a LoRA config with no explicit target modules at the language model's projections."""
    if peft_config is not None and not peft_config.target_modules:
        peft_config.target_modules = LANGUAGE_MODEL_LORA_REGEX
    return peft_config


#: The multimodal projector's module name in transformers' LLaVA models.
PROJECTOR = "multi_modal_projector"


def with_trainable_projector(peft_config: Any) -> Any:
    """Also train the projector in full (``modules_to_save``), as LLaVA-1.5's LoRA recipe does; the paper does not."""
    if peft_config is not None:
        saved = list(peft_config.modules_to_save or [])
        peft_config.modules_to_save = saved if PROJECTOR in saved else [*saved, PROJECTOR]
    return peft_config


def adapter_trains_projector(adapter: str) -> bool:
    """Whether a saved LoRA adapter (folder or Hub id) trains the projector in full."""
    from peft import PeftConfig

    return PROJECTOR in (PeftConfig.from_pretrained(adapter).modules_to_save or [])


def other_base(adapter: str, base: str) -> str | None:
    """The base a saved LoRA adapter (folder or Hub id) was trained on when it is not ``base``, else ``None``.

    Equal Hub ids, or the same folder however it is written, are the same base.
    """
    from peft import PeftConfig

    trained_on = PeftConfig.from_pretrained(adapter).base_model_name_or_path
    if trained_on is None or trained_on == base:
        return None
    a, b = Path(trained_on), Path(base)
    return None if a.exists() and b.exists() and a.resolve() == b.resolve() else trained_on
