"""DermEval Stage 2: SOREB (Score-Oriented REINFORCE with EMA Baseline, paper Section 3.3, eqs. 2-5).

Continues the Stage-1 LoRA adapter: one sampled evaluation per example, reward = negative MSE between its parsed
scores and the expert scores, an EMA baseline, a policy gradient on the generated tokens only, plus the text loss.

Usage:

```bash
# the paper's settings (GPU): llava-1.5-7b + the Stage-1 adapter, LoRA r=64 / alpha=16, lr 2e-5 cosine, 5 epochs
accelerate launch recipes/soreb.py --config recipes/configs/dermeval_soreb.yaml

# the embedded default: tiny local model, synthetic cases, CPU; runs Stage 1 first when its output is absent and
# prints the Table-1 report on held-out cases before and after Stage 2
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
from dermtrl.cases.loading import load_cases
from dermtrl.cases.splits import TEST_START
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, SYNTHETIC_VERSION
from dermtrl.conversation import PROMPT_RECORD, save_prompt_record
from dermtrl.dermeval.evaluator import adapter_prompt
from dermtrl.scripts import sft
from dermtrl.scripts.lora import other_base
from dermtrl.scripts.script_args import (
    STAGE1_SETTINGS_FILE,
    DermEvalScriptArguments,
    bar_only,
    check_continued_adapter,
    load_model,
    load_training_cases,
    lora_config,
    prompt_builder,
    recorded_stage1_settings,
    setup_threads,
    stage1_settings,
)
from dermtrl.tiny import resolve_model_name
from dermtrl.trainer.callbacks import HeldOutReportCallback, report_backend_problem
from dermtrl.trainer.soreb_config import SOREBConfig
from dermtrl.trainer.soreb_trainer import SOREBTrainer

#: The held-out report reads the synthetic test cases (dermtrl.cases.splits)
HELD_OUT_START = TEST_START


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


def run_stage1(config: str, output_dir: str) -> None:
    """Stage 1 with its own recipe and config, so Stage 2 can start from a fresh machine."""
    sft.main(*sft.make_parser().parse_args_and_config(args=["--config", config, "--output_dir", output_dir]))


def _set_aside(adapter: str, suffix: str, why: str) -> None:
    """Rename ``adapter`` to ``adapter.suffix`` (numbered when taken): kept, never deleted or reused."""
    aside = Path(f"{adapter.rstrip('/')}.{suffix}")
    for n in range(2, 100):
        if not aside.exists():
            break
        aside = Path(f"{adapter.rstrip('/')}.{suffix}-{n}")
    Path(adapter).rename(aside)
    print(f"Stage 1 output {adapter} {why}: moved it to {aside}")


def set_aside_if_trained_on_another_base(adapter: str, base: str) -> bool:
    """A Stage-1 output this recipe trained on another base (an older tiny model, another checkpoint) is renamed,
    not reused or deleted, so Stage 1 runs again on the current base and the old adapter is kept."""
    trained_on = other_base(adapter, base)
    if trained_on is None:
        return False
    _set_aside(adapter, Path(trained_on).name, f"was trained on {trained_on}, not on {base}")
    return True


def set_aside_if_trained_otherwise(adapter: str, sft_config: str) -> bool:
    """A Stage-1 output that ``sft_config`` would not produce (the config was edited since: another learning rate,
    more epochs, other cases), or that records no settings (an earlier dermtrl), is renamed like one of another
    base, so `make demo` after an edit of the Stage-1 config trains Stage 1 again instead of continuing stale weights.
    """
    args = sft.make_parser().parse_args_and_config(args=["--config", sft_config, "--output_dir", adapter])
    wanted = stage1_settings(*args)
    recorded = recorded_stage1_settings(adapter)
    if recorded == wanted:
        return False
    if recorded is None:
        why = f"records no Stage-1 settings ({STAGE1_SETTINGS_FILE}; an earlier dermtrl wrote it)"
    else:
        changed = [f"{name} {recorded.get(group, {}).get(name)!r} -> {value!r}"
                   for group, values in wanted.items() for name, value in values.items()
                   if recorded.get(group, {}).get(name) != value]
        why = f"was trained with other settings than {sft_config} gives ({'; '.join(changed)})"
    _set_aside(adapter, "previous", why)
    return True


def set_aside_stale_stage1(adapter: str, base: str, sft_config: str, training_args: SOREBConfig) -> bool:
    """Both checks above, the main process first while the others wait (TrainingArguments.main_process_first): in a
    launch of several processes they would otherwise rename the same folder at once, or find it half-moved. The
    others then check after it and find the output moved or current. Returns whether this process moved it."""
    # local=False on a shared filesystem (save_on_each_node false, the default): one process of the whole launch
    # checks first, not one per node (several nodes would rename the same shared folder at once)
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking the Stage-1 output"):
        if not Path(adapter).exists():
            return False
        return set_aside_if_trained_on_another_base(adapter, base) or set_aside_if_trained_otherwise(adapter,
                                                                                                    sft_config)


def _recorded_release(adapter: str | None) -> str | None:
    """The release checkout a Stage-1 adapter's prompt record names."""
    try:
        return json.loads((Path(adapter) / PROMPT_RECORD).read_text()).get("release") if adapter else None
    except (OSError, ValueError):
        return None


def main(script_args: SOREBScriptArguments, training_args: SOREBConfig, model_args: ModelConfig) -> SOREBTrainer:
    setup_threads(script_args)
    if script_args.report_cases:
        problem = report_backend_problem(training_args)
        if problem:
            raise ValueError(f"report_cases={script_args.report_cases}: {problem}")
    zero3 = training_args.deepspeed_plugin is not None and training_args.deepspeed_plugin.zero_stage == 3
    adapter = script_args.sft_adapter
    base = resolve_model_name(model_args.model_name_or_path)
    if adapter and script_args.sft_config:
        set_aside_stale_stage1(adapter, base, script_args.sft_config, training_args)
    if adapter and script_args.sft_config and not Path(adapter).exists():
        print(f"Stage 1 output {adapter} is absent: running Stage 1 with {script_args.sft_config}")
        run_stage1(script_args.sft_config, adapter)

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
    if script_args.report_cases:  # Table 1 before and after on held-out cases, and with mismatched images
        held_out = load_cases("dermtrl:synthetic", n=script_args.report_cases, start=HELD_OUT_START)
        trainer.add_callback(HeldOutReportCallback(
            held_out, Path(training_args.output_dir) / "report", processor, image_dims=IMAGE_DEPENDENT,
            labels=("Before SOREB (Stage 1)", "After SOREB (Stage 2)"),
            title=f"Held-out agreement with expert scores, {len(held_out)} synthetic {SYNTHETIC_VERSION} cases"))
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
