"""SOREB under data parallelism: `accelerate launch --cpu --num_processes 2` on the tiny model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from dermtrl.tiny import tiny_llava_path

WORKER = Path(__file__).parent / "scripts" / "soreb_ddp_worker.py"
CONFIG = Path(__file__).parents[1] / "recipes" / "accelerate" / "cpu_ddp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_baseline_and_the_weights(tmp_path):
    tiny_llava_path()  # build the model once, before two processes race for it
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    # torchrun + gloo: `--cpu --num_processes 2` would start a single process without MPI (see cpu_ddp.yaml)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "--main_process_port",
           str(_free_port()), str(WORKER), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # 3 steps x 2 processes x 2 examples: every reward of both processes entered the one shared baseline
    assert ranks[0]["count"] == ranks[1]["count"] == 12
    assert ranks[0]["baseline"] == ranks[1]["baseline"] is not None
    assert ranks[0]["weights"] == ranks[1]["weights"]
