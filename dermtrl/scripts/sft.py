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

from accelerate import PartialState
from datasets import Dataset
from datasets import Image as ImageFeature
from transformers import AutoProcessor
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from dermtrl import lengths
from dermtrl.cases.images import read_cell
from dermtrl.console import err_console
from dermtrl.conversation import TrainingCollator, save_prompt_record, use_training_template
from dermtrl.scripts.script_args import (
    DermEvalScriptArguments,
    bar_only,
    epochs_warning,
    load_model,
    load_training_cases,
    lora_config,
    prompt_builder,
    save_stage1_settings,
    setup_threads,
    stage1_settings,
)
from dermtrl.tiny import resolve_model_name


def stage1_cases(script_args: DermEvalScriptArguments) -> Dataset:
    """Stage 1's cases (image, narrative, y*), validated, with their images left undecoded: the collator reads
    each with the project's one reader (EXIF orientation, transparency on white, 16-bit scaled), so training sees
    the pixels inference sees. Image paths in a data file resolve against its folder."""
    train = load_training_cases(script_args)
    if isinstance(train.features.get("image"), ImageFeature):
        train = train.cast_column("image", ImageFeature(decode=False))
    return train


def main(script_args: DermEvalScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    setup_threads(script_args)

    # Dataset first: a missing column or file (or the official prompt's checkout) is refused before the model loads
    train = stage1_cases(script_args)
    prompt_fn = prompt_builder(script_args)  # None: the paper's prompt; else the official release's
    state = PartialState()
    warning = epochs_warning(len(train), training_args, state.num_processes)
    if warning and state.is_main_process:
        err_console.print(f"[yellow]warning:[/yellow] {warning}")

    # Model and processor (a Hub id, a folder, or 'dermtrl:tiny' for the locally built tiny LLaVA)
    processor = AutoProcessor.from_pretrained(resolve_model_name(model_args.model_name_or_path),
                                              revision=model_args.model_revision)
    use_training_template(processor)
    model = load_model(model_args)
    peft_config = lora_config(script_args, model_args)  # LoRA on the language model (+ projector if asked)

    # y* and prompt token lengths, for the record (one image tokenized to count its tokens)
    first_image = read_cell(train[0]["image"], where="case 0").image
    label_lengths = lengths.measure(processor, [first_image], train["narrative"], train["evaluation"])
    training_args.remove_unused_columns = False  # the collator reads image, narrative and evaluation
    # The collator puts labels on y* and its EOS only (eq. 1) whatever `assistant_only_loss` says; TRL's own check
    # of that flag expects a conversational dataset, so it is switched off here.
    training_args.assistant_only_loss = False

    # Training
    trainer = SFTTrainer(
        model=model, args=training_args, train_dataset=train, processing_class=processor, peft_config=peft_config,
        data_collator=TrainingCollator(processor, max_length=training_args.max_length, prompt_fn=prompt_fn),
    )
    bar_only(trainer, script_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # every file first (adapter, processor, generation config, settings), then one push below: save_model would
    # otherwise push an adapter without the rest (_internal_call, as Trainer.push_to_hub saves)
    trainer.save_model(training_args.output_dir, _internal_call=True)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(training_args.output_dir)
        # an adapter trained on the official target format says so, so DermEval prompts it the same way
        save_prompt_record(training_args.output_dir, script_args.target_format, script_args.release)
        # generation_config.json: DermEval's default budget, the longest y* plus a margin
        lengths.save(label_lengths, training_args.output_dir, trainer.model.generation_config)
        # what decided these weights: recipes/soreb.py retrains an output its Stage-1 config would not produce
        save_stage1_settings(stage1_settings(script_args, training_args, model_args), training_args.output_dir)
    label = label_lengths.label
    trainer.accelerator.print(
        f"Saved the DermEval adapter to {training_args.output_dir} (label evaluations: longest {label.max} tokens, "
        f"p95 {label.p95}; max_new_tokens {label_lengths.max_new_tokens})")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser() -> TrlParser:
    """The script's parser (its three argument groups, ``--config`` YAML), as TRL's scripts build theirs."""
    return TrlParser((DermEvalScriptArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config()).end()  # finish trackers, destroy the process group (as TRL's)
