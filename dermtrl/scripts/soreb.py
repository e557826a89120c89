"""DermEval Stage 2: SOREB (Score-Oriented REINFORCE with EMA Baseline, paper Section 3.3, eqs. 2-5).

Continues the Stage-1 LoRA adapter: one sampled evaluation per example, reward = negative MSE between its parsed
scores and the expert scores, an EMA baseline, a policy gradient on the generated tokens only, plus the text loss.

Usage:

```bash
# the paper's settings (GPU): llava-1.5-7b + the Stage-1 adapter, LoRA r=64 / alpha=16, lr 2e-5 cosine, 5 epochs
accelerate launch recipes/soreb.py --config recipes/configs/dermeval_soreb.yaml

# the embedded default (`make demo`): tiny local model, synthetic cases, CPU; runs Stage 1 first when its output is
# absent and prints the Table-1 report on held-out cases before and after Stage 2 (dermtrl.scripts.demo)
accelerate launch recipes/soreb.py --config recipes/configs/demo_soreb.yaml

# data parallel on CPU (both processes end with the same baseline and weights)
accelerate launch --cpu --num_processes 2 recipes/soreb.py --config recipes/configs/demo_soreb.yaml
```
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from transformers import AutoProcessor
from trl import ModelConfig, TrlParser

from dermtrl import lengths
from dermtrl.conversation import PROMPT_RECORD, save_prompt_record
from dermtrl.dermeval.evaluator import adapter_prompt
from dermtrl.scripts import demo
from dermtrl.scripts.script_args import (
    DermEvalScriptArguments,
    bar_only,
    check_continued_adapter,
    load_model,
    load_training_cases,
    lora_config,
    prompt_builder,
    setup_threads,
)
from dermtrl.tiny import resolve_model_name
from dermtrl.trainer.soreb_config import SOREBConfig
from dermtrl.trainer.soreb_trainer import SOREBTrainer


@dataclass
class SOREBScriptArguments(DermEvalScriptArguments):
    sft_adapter: str | None = field(
        default=None, metadata={"help": "The Stage-1 adapter (Hub id or folder) that Stage 2 continues."}
    )
    sft_config: str | None = field(
        default=None, metadata={"help": "A recipes/sft.py config: run Stage 1 first when sft_adapter is absent."}
    )
    report_cases: int = field(
        default=0, metadata={"help": "Held-out synthetic cases for a Table-1 report before and after (0: none)."}
    )


def _recorded_release(adapter: str | None) -> str | None:
    """The release checkout a Stage-1 adapter's prompt record names."""
    try:
        return json.loads((Path(adapter) / PROMPT_RECORD).read_text()).get("release") if adapter else None
    except (OSError, ValueError):
        return None


def main(script_args: SOREBScriptArguments, training_args: SOREBConfig, model_args: ModelConfig) -> SOREBTrainer:
    setup_threads(script_args)
    demo.check_report(script_args.report_cases, training_args)
    zero3 = training_args.deepspeed_plugin is not None and training_args.deepspeed_plugin.zero_stage == 3
    adapter = script_args.sft_adapter
    base = resolve_model_name(model_args.model_name_or_path)
    if adapter and script_args.sft_config:  # the demo: Stage 1 first when its output is absent or stale
        demo.prepare_stage1(adapter, base, script_args.sft_config, training_args)

    # Model: the base plus the Stage-1 adapter (trainable), or the base with a new LoRA
    if adapter:
        check_continued_adapter(script_args, adapter, base)
    model = load_model(model_args)
    peft_config = None
    if adapter:
        # under ZeRO-3 the adapter keeps the base's dtype (fp32 LoRA beside bf16 weights fails to gather)
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True, autocast_adapter_dtype=not zero3)
    else:
        peft_config = lora_config(script_args, model_args)
    processor_source = adapter if adapter and (Path(adapter) / "processor_config.json").exists() else base
    processor = AutoProcessor.from_pretrained(processor_source)

    # The prompt: the paper's, or the official release's (target_format: official, or a Stage-1 adapter trained so)
    prompt_fn = prompt_builder(script_args) or adapter_prompt(adapter, script_args.release)

    # Dataset: cases with image, narrative, y* and expert scores
    train = load_training_cases(script_args, scores=True)
    label_lengths = lengths.measure_cases(processor, train)
    if label_lengths.label.max > training_args.max_completion_length:
        warnings.warn(f"max_completion_length {training_args.max_completion_length} is below the longest label "
                      f"evaluation ({label_lengths.label.max} tokens, p95 {label_lengths.label.p95}): samples that "
                      f"need more are cut before their scores; {label_lengths.max_new_tokens} covers them",
                      stacklevel=1)

    # Training
    trainer = SOREBTrainer(model=model, args=training_args, train_dataset=train, processing_class=processor,
                           peft_config=peft_config, prompt_fn=prompt_fn)
    bar_only(trainer, script_args)
    if script_args.report_cases:  # the demo: Table 1 before and after on held-out synthetic cases
        demo.add_held_out_report(trainer, script_args.report_cases, processor, training_args.output_dir)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # every file first (the adapter, processor, generation config, label lengths, card), then one push: save_model
    # would otherwise push an adapter without the rest (_internal_call, as Trainer.push_to_hub saves)
    trainer.save_model(training_args.output_dir, _internal_call=True)
    synthetic = script_args.dataset_name.startswith("dermtrl:")
    card = {"model_name": Path(training_args.output_dir).name,
            "dataset_name": None if synthetic else script_args.dataset_name}
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        lengths.save(label_lengths, training_args.output_dir, trainer.model.generation_config)
        if prompt_fn is not None:  # DermEval prompts this adapter as it was trained
            save_prompt_record(training_args.output_dir, "official", script_args.release or _recorded_release(adapter))
        trainer.create_model_card(**card)
    trainer.accelerator.print(f"Saved the DermEval Stage-2 adapter to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)  # one commit with every file (it re-saves the adapter and the same card)
    return trainer


def make_parser() -> TrlParser:
    """The script's parser (its three argument groups, ``--config`` YAML), as TRL's scripts build theirs."""
    return TrlParser((SOREBScriptArguments, SOREBConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)
