"""What the DermEval benchmarks share: launching recipes as users do, and per-case Table-1 error matrices
(paired intervals come from ``dermtrl.metrics.paired_bootstrap``, image controls from ``dermtrl.cases.controls``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.dermeval.held_out import record_errors
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import case_errors

ROOT = Path(__file__).resolve().parents[1]
#: Test cases: never used to train, to choose settings, or in development probes (those used 100,000-100,099).
HELD_OUT_START = 200_000
VALIDATION_START = 50_000  # validation cases: where the benchmarks choose settings


def launch(console: Any, stage: str, recipe: str, *args: str) -> None:
    """Run a recipe exactly as users do: `accelerate launch recipes/<recipe> ...` (quietly; log on failure)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "recipes" / recipe), *args]
    console.print(f"[bold]{stage}:[/bold] accelerate launch recipes/{recipe} " + " ".join(args))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        console.print(done.stdout[-4000:], done.stderr[-4000:], markup=False)
        raise SystemExit(f"{stage} failed (exit {done.returncode})")


def errors(records: Sequence[dict], experts: Sequence[tuple[str, dict]]) -> np.ndarray:
    """(cases, 6) Table-1 errors of an evaluation's records against (case_id, expert scores) pairs."""
    return record_errors(records, [c for c, _ in experts], [e for _, e in experts])


def constant_errors(train_experts: Sequence[dict], experts: Sequence[tuple[str, dict]]) -> np.ndarray:
    """The constant baseline: the training set's mean expert score per dimension, for every case."""
    means = {d: float(np.mean([e[d] for e in train_experts])) for d in DIMENSIONS}
    return case_errors([means] * len(experts), [e for _, e in experts])


def fmt_ci(value: tuple[float, float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]"
