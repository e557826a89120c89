"""What the DermEval benchmarks share: launching recipes as users do, and per-case Table-1 error matrices
(paired intervals come from ``dermtrl.metrics.paired_bootstrap``, image controls from ``dermtrl.cases.controls``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dermtrl.cases.splits import TEST_START, VALIDATION_START  # noqa: F401  (re-exported to the benchmarks)
from dermtrl.dermeval.held_out import record_errors
from dermtrl.dimensions import DIMENSIONS
from dermtrl.metrics import case_errors

ROOT = Path(__file__).resolve().parents[1]
#: Test cases (never trained on, never used to choose settings) and validation cases (where the benchmarks choose
#: settings): the synthetic splits of dermtrl.cases.splits.
HELD_OUT_START = TEST_START


def demo_adapter() -> Path:
    """The Space's demo Stage-1 adapter, found as the Space finds it (the shipped copy, else trained once into the
    cache); ``SystemExit`` when there is none (then give ``--adapter``)."""
    name = "dermeval_space_app"
    space = sys.modules.get(name)
    if space is None:  # the Space is a script folder, not a package
        spec = importlib.util.spec_from_file_location(name, ROOT / "space" / "app.py")
        assert spec is not None and spec.loader is not None
        space = importlib.util.module_from_spec(spec)
        sys.modules[name] = space  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(space)
    path, _ = space.demo_adapter_path(space.Settings.from_env({**os.environ, "DERMEVAL_DEMO": "1"}))
    if path is None:
        raise SystemExit("no demo adapter could be had; give --adapter")
    return Path(path)


#: Written into a run's folder when it finished: the settings it ran with and what it reported.
STAMP = "benchmark_run.json"


def file_digest(path: str | Path) -> str:
    """A short content hash: a config or an adapter that changed is a different run."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run_settings(**settings: Any) -> dict:
    """What decides a run's outcome: the given settings plus the synthetic cases' and the tiny base's versions."""
    from dermtrl.cases.synthetic import SYNTHETIC_VERSION
    from dermtrl.tiny import corpus_key

    return json.loads(json.dumps({**settings, "synthetic_version": SYNTHETIC_VERSION, "tiny_base": corpus_key()}))


def finished(run_dir: str | Path, settings: dict) -> dict | None:
    """The stamp of a run in ``run_dir`` that finished with exactly these settings, else ``None``.

    A benchmark interrupted after some arms reuses those arms when rerun; a run that stopped half way (no stamp) or
    ran with other settings (another config, seed, base model or case version) is trained again.
    """
    path = Path(run_dir) / STAMP
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) and stamp.get("settings") == settings else None


def mark_finished(run_dir: str | Path, settings: dict, result: dict | None = None) -> None:
    """Stamp ``run_dir`` as finished with ``settings`` (atomically: a stamp is never half written)."""
    path = Path(run_dir) / STAMP
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result or {}}, indent=1))
    os.replace(tmp, path)


def evaluate_resuming(adapter: str, cases: Any, path: str | Path, *, fresh: bool) -> list[dict]:
    """DermEval's records for ``cases`` in ``path`` (JSONL), continuing an earlier run of the same weights unless
    ``fresh``; records written by other weights cannot be resumed, so they are scored afresh."""
    from dermtrl.dermeval.eval_job import run_evaluation
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.jsonl import SettingsMismatch

    evaluator = DermEval.from_pretrained(adapter=adapter)
    try:
        return run_evaluation(evaluator, cases, path, overwrite=fresh, progress=False)
    except SettingsMismatch:
        return run_evaluation(evaluator, cases, path, overwrite=True, progress=False)


def _command(recipe: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            str(ROOT / "recipes" / recipe), *args]


def launch(console: Any, stage: str, recipe: str, *args: str) -> None:
    """Run a recipe exactly as users do: `accelerate launch recipes/<recipe> ...` (quietly; log on failure)."""
    launch_together(console, {stage: (recipe, args)})


def launch_together(console: Any, runs: dict[str, tuple[str, Sequence[str]]]) -> None:
    """Several recipe runs at once, one process each (a one-thread CPU run leaves the other cores idle): the arms of
    a comparison then get the same machine at the same time. Logs are printed for any run that fails."""
    import tempfile

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    procs = {}
    for stage, (recipe, args) in runs.items():
        console.print(f"[bold]{stage}:[/bold] accelerate launch recipes/{recipe} " + " ".join(args))
        log = tempfile.TemporaryFile(mode="w+")
        procs[stage] = (subprocess.Popen(_command(recipe, args), env=env, stdout=log, stderr=subprocess.STDOUT), log)
    failed = []
    for stage, (proc, log) in procs.items():
        if proc.wait() != 0:
            log.seek(0)
            console.print(log.read()[-6000:], markup=False)
            failed.append(f"{stage} (exit {proc.returncode})")
        log.close()
    if failed:
        raise SystemExit("failed: " + ", ".join(failed))


def errors(records: Sequence[dict], experts: Sequence[tuple[str, dict]]) -> np.ndarray:
    """(cases, 6) Table-1 errors of an evaluation's records against (case_id, expert scores) pairs."""
    return record_errors(records, [c for c, _ in experts], [e for _, e in experts])


def constant_errors(train_experts: Sequence[dict], experts: Sequence[tuple[str, dict]]) -> np.ndarray:
    """The constant baseline: the training set's mean expert score per dimension, for every case."""
    means = {d: float(np.mean([e[d] for e in train_experts])) for d in DIMENSIONS}
    return case_errors([means] * len(experts), [e for _, e in experts])


def fmt_ci(value: tuple[float, float, float], digits: int = 3) -> str:
    return f"{value[0]:.{digits}f} [{value[1]:.{digits}f}, {value[2]:.{digits}f}]"
