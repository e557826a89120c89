"""SOREB's logged metrics under data parallelism are every process's, not rank 0's: two CPU processes (gloo).

This file is also the worker: ``accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml <this file> OUT``
runs two SOREB steps per process and writes each process's own batch rewards and its logged history.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).parents[1] / "recipes" / "accelerate" / "cpu_ddp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_logged_rewards_are_the_mean_over_both_processes(tmp_path):
    from dermtrl.tiny import tiny_llava_path

    tiny_llava_path()  # built once, before two processes race for it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--main_process_port",
           str(_free_port()), __file__, str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    local = [r["local_rewards"] for r in ranks]
    logged = [[h["reward"] for h in r["history"] if "reward" in h] for r in ranks]
    assert len(local[0]) == len(local[1]) == len(logged[0]) == 2
    assert local[0] != local[1]  # the processes saw different cases, so rank 0's value alone would differ
    for step in range(2):
        expected = (local[0][step] + local[1][step]) / 2
        assert logged[0][step] == pytest.approx(expected) and logged[1][step] == pytest.approx(expected)


def _worker(out: Path) -> None:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermtrl.cases.synthetic import generate_cases
    from dermtrl.scripts.lora import LANGUAGE_MODEL_LORA_REGEX
    from dermtrl.tiny import tiny_llava_path
    from dermtrl.trainer.soreb_config import SOREBConfig
    from dermtrl.trainer.soreb_trainer import SOREBTrainer

    torch.set_num_threads(1)
    local: list[float] = []

    def case_reward(prompts, completions, **kwargs):
        rewards = [-float(len(p) % 7) for p in prompts]  # differs between cases, not between samples
        local.append(sum(rewards) / len(rewards))
        return rewards

    args = SOREBConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                       learning_rate=1e-3, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                       max_completion_length=4, log_completions=False, seed=0)
    trainer = SOREBTrainer(model=AutoModelForImageTextToText.from_pretrained(tiny_llava_path()), args=args,
                           train_dataset=generate_cases(8), processing_class=AutoProcessor.from_pretrained(
                               tiny_llava_path()), reward_funcs=[case_reward],
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LORA_REGEX))
    trainer.train()
    rank = trainer.accelerator.process_index
    (out / f"rank{rank}.json").write_text(json.dumps({"local_rewards": local, "history": trainer.state.log_history}))
    trainer.end()
    sys.stdout.flush()
    os._exit(0)  # gloo teardown can hang after everything has finished (see tests/scripts/soreb_ddp_worker.py)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
