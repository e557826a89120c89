"""DermBench (Section 3.2, Figure 3): candidate narratives from any VLM, judged against certified references.

Users meet one object, :class:`DermBench`, and one command, ``dermtrl bench``. The pieces, in the order data
flows through them: :mod:`~dermtrl.bench.cases` (rows of a dataset) -> :mod:`~dermtrl.bench.generate`
(candidates) -> :mod:`~dermtrl.bench.judge` (six scores per candidate) -> :mod:`~dermtrl.bench.leaderboard`
and :mod:`~dermtrl.bench.probes` (statistics) -> :mod:`~dermtrl.bench.render` (tables, files, plot);
:mod:`~dermtrl.bench.jobs` makes every long step resumable, :mod:`~dermtrl.bench.config` reads ``bench run``
YAML files. The official release: :mod:`~dermtrl.bench.release` reads a checkout, :mod:`~dermtrl.bench.official`
speaks its prompts and file formats, :mod:`~dermtrl.bench.audit` flags references not to trust. Names are
imported on first use (as in :mod:`dermtrl`), so ``dermtrl --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dermtrl.bench.config import BenchConfig, ConfigError, load_config
    from dermtrl.bench.dermbench import BenchResult, DermBench, read_judgments, run_config
    from dermtrl.bench.generate import (
        OpenAIGenerator,
        TransformersGenerator,
        candidates_from_dataset,
        read_candidates,
    )
    from dermtrl.bench.judge import Judge, JudgeItem, judge_items
    from dermtrl.bench.leaderboard import Leaderboard, build_leaderboard
    from dermtrl.bench.probes import PROBES, ProbeReport
    from dermtrl.bench.release import Release, load_release

_LAZY = {
    "BenchConfig": "dermtrl.bench.config",
    "ConfigError": "dermtrl.bench.config",
    "load_config": "dermtrl.bench.config",
    "BenchResult": "dermtrl.bench.dermbench",
    "DermBench": "dermtrl.bench.dermbench",
    "read_judgments": "dermtrl.bench.dermbench",
    "run_config": "dermtrl.bench.dermbench",
    "OpenAIGenerator": "dermtrl.bench.generate",
    "TransformersGenerator": "dermtrl.bench.generate",
    "candidates_from_dataset": "dermtrl.bench.generate",
    "read_candidates": "dermtrl.bench.generate",
    "Judge": "dermtrl.bench.judge",
    "JudgeItem": "dermtrl.bench.judge",
    "judge_items": "dermtrl.bench.judge",
    "Leaderboard": "dermtrl.bench.leaderboard",
    "build_leaderboard": "dermtrl.bench.leaderboard",
    "PROBES": "dermtrl.bench.probes",
    "ProbeReport": "dermtrl.bench.probes",
    "Release": "dermtrl.bench.release",
    "load_release": "dermtrl.bench.release",
}

__all__ = [
    "PROBES",
    "BenchConfig",
    "BenchResult",
    "ConfigError",
    "DermBench",
    "Judge",
    "JudgeItem",
    "Leaderboard",
    "OpenAIGenerator",
    "ProbeReport",
    "Release",
    "TransformersGenerator",
    "build_leaderboard",
    "candidates_from_dataset",
    "judge_items",
    "load_config",
    "load_release",
    "read_candidates",
    "read_judgments",
    "run_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dermtrl.bench' has no attribute {name!r}")
