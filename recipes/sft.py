"""DermEval Stage 1: supervised fine-tuning of LLaVA-1.5 + LoRA with TRL's SFTTrainer (paper Section 3.3, eq. 1).

The model reads (image, diagnostic narrative) and learns to write the evaluation text y*: a critique followed
by six explicit score fields in Figure 4's label format. Only the assistant turn carries labels.

Usage:

```bash
# the paper's settings (GPU): llava-1.5-7b, LoRA r=64 / alpha=16 / dropout 0.05, lr 2e-5 cosine, 5 epochs
accelerate launch recipes/sft.py --config recipes/configs/dermeval_sft.yaml

# the embedded default: tiny local model, synthetic cases, CPU, a couple of minutes
accelerate launch recipes/sft.py --config recipes/configs/demo_sft.yaml

# any field can be overridden on the command line
accelerate launch recipes/sft.py --config recipes/configs/demo_sft.yaml --num_train_epochs 1
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from dermtrl.conversation import sft_example, use_training_template
from dermtrl.data.loading import load_cases, validate_cases
from dermtrl.lora import restrict_to_language_model
from dermtrl.tiny import resolve_model_name


@dataclass
class DermEvalScriptArguments(ScriptArguments):
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, local datasets folder or data file, or 'dermtrl:synthetic' for generated cases."},
    )
    synthetic_train_cases: int = field(default=400, metadata={"help": "Cases to generate for 'dermtrl:synthetic'."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic cases."})
    lora_language_model_only: bool = field(
        default=True,
        metadata={"help": "Restrict LoRA to the language model's linear layers (LLaVA-1.5's LoRA recipe)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "torch.set_num_threads on CPU; tiny models run fastest with 1 on small machines."},
    )


def main(script_args: DermEvalScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    if script_args.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(script_args.cpu_threads)

    # Model and processor (a Hub id, a folder, or 'dermtrl:tiny' for the locally built tiny LLaVA)
    model_path = resolve_model_name(model_args.model_name_or_path)
    processor = AutoProcessor.from_pretrained(model_path, revision=model_args.model_revision)
    use_training_template(processor)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        model_path, revision=model_args.model_revision, dtype=dtype,
        attn_implementation=model_args.attn_implementation,
    )
    peft_config = get_peft_config(model_args)
    if script_args.lora_language_model_only:
        restrict_to_language_model(peft_config)

    # Dataset: (image, narrative, y*) -> conversational messages + images
    if not script_args.dataset_name:
        raise ValueError("dataset_name is required (a Hub id, a local path, or 'dermtrl:synthetic')")
    train = load_cases(script_args.dataset_name, script_args.dataset_train_split,
                       n=script_args.synthetic_train_cases if script_args.dataset_name.startswith("dermtrl:")
                       else None, seed=script_args.synthetic_seed)
    validate_cases(train, ("image", "narrative", "evaluation"), source=script_args.dataset_name)
    train = train.map(sft_example, remove_columns=train.column_names)

    # Training
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train, processing_class=processor, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(f"Saved the DermEval adapter to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


if __name__ == "__main__":
    parser = TrlParser((DermEvalScriptArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
