"""Where DermEval's LoRA goes: the language model's linear layers, as in LLaVA-1.5's LoRA recipe."""

from __future__ import annotations

from typing import Any

#: Attention and MLP projections of the language model only; the CLIP tower stays frozen and un-adapted.
LANGUAGE_MODEL_LORA_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def restrict_to_language_model(peft_config: Any) -> Any:
    """Point a LoRA config with no explicit target modules at the language model's projections."""
    if peft_config is not None and not peft_config.target_modules:
        peft_config.target_modules = LANGUAGE_MODEL_LORA_REGEX
    return peft_config
