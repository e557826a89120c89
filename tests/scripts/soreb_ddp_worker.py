"""Run by tests/test_soreb_ddp.py under `accelerate launch --cpu --num_processes 2`: a few SOREB steps, then each
process writes its baseline and a checksum of its trainable weights."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForImageTextToText, AutoProcessor

from dermtrl.cases.synthetic import generate_cases
from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
from dermtrl.tiny import tiny_llava_path
from dermtrl.trainer.soreb_config import SOREBConfig
from dermtrl.trainer.soreb_trainer import SOREBTrainer


def length_reward(prompts, completions, **kwargs):
    return [-len(c) / 100 for c in completions]


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_path())
    processor = AutoProcessor.from_pretrained(tiny_llava_path())
    args = SOREBConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=3, logging_steps=1,
                       learning_rate=1e-2, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                       save_strategy="no", max_completion_length=10, log_completions=False, seed=0)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX)
    trainer = SOREBTrainer(model=model, args=args, train_dataset=generate_cases(12), processing_class=processor,
                           reward_funcs=[length_reward], peft_config=peft)
    trainer.train()
    digest = hashlib.sha256()
    for name, param in sorted(trainer.model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": trainer.accelerator.num_processes, "baseline": trainer.baseline.value,
        "count": trainer.baseline.count, "weights": digest.hexdigest(),
    }))
    trainer.end()  # destroy the process group before exit, as TRL's scripts do
    # CPU/gloo processes sometimes hang in native teardown after everything has finished (seen here in about half
    # of the runs, with only daemon threads left): leave at once, the results are on disk.
    sys.stdout.flush()
    os._exit(0)

if __name__ == "__main__":
    main(Path(sys.argv[1]))
