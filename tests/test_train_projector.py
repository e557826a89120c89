"""The projector option: LoRA only by default (the paper), the projector trained in full on request (LLaVA-1.5)."""

import pytest
from peft import get_peft_model
from transformers import AutoModelForImageTextToText
from trl import ModelConfig

from dermtrl.script_args import DermEvalScriptArguments, check_continued_adapter, lora_config
from dermtrl.tiny import tiny_llava_path


def _trainable(train_projector: bool):
    script_args = DermEvalScriptArguments(dataset_name="dermtrl:synthetic", train_projector=train_projector)
    model_args = ModelConfig(model_name_or_path="dermtrl:tiny", use_peft=True, lora_r=64, lora_alpha=16,
                             lora_dropout=0.05)
    config = lora_config(script_args, model_args)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_llava_path()), config)
    return model, [n for n, p in model.named_parameters() if p.requires_grad]


def test_default_is_lora_only_on_the_language_model():
    _, trainable = _trainable(False)
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)


def test_train_projector_trains_it_in_full(tmp_path):
    model, trainable = _trainable(True)
    projector = [n for n in trainable if "multi_modal_projector" in n]
    assert projector and all("modules_to_save" in n for n in projector)
    assert not [n for n in trainable if "vision_tower" in n]  # the CLIP tower stays frozen
    assert all("lora_" in n for n in trainable if n not in projector)
    model.save_pretrained(tmp_path / "with")
    check_continued_adapter(DermEvalScriptArguments(train_projector=True), str(tmp_path / "with"))


def test_stage2_refuses_a_projector_choice_its_adapter_does_not_match(tmp_path):
    model, _ = _trainable(False)
    model.save_pretrained(tmp_path / "lora-only")
    with pytest.raises(ValueError, match="does not train the projector"):
        check_continued_adapter(DermEvalScriptArguments(train_projector=True), str(tmp_path / "lora-only"))
    check_continued_adapter(DermEvalScriptArguments(train_projector=False), str(tmp_path / "lora-only"))


def test_train_projector_needs_lora():
    with pytest.raises(ValueError, match="use_peft"):
        lora_config(DermEvalScriptArguments(train_projector=True), ModelConfig(model_name_or_path="x"))
