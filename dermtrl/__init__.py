"""dermtrl: DermBench and DermEval for dermatology diagnostic narratives, built on TRL.

Light names are imported eagerly; anything that needs torch is imported on first use so that
``import dermtrl`` and the CLI's text commands stay fast.
"""

from __future__ import annotations

import warnings

# TRL (unwrap_model_for_generation) and peft before 0.22 (PeftModel, get_peft_model) still read transformers' deprecated
# `model.is_gradient_checkpointing`; the FutureWarning is theirs to fix (nothing in dermtrl reads it) and repeats at
# every generation step of a training run, burying the progress and the metrics. Only that message is filtered.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

from dermtrl.dimensions import (  # noqa: E402
    ABBREVIATIONS,
    ALIASES,
    DIMENSIONS,
    LABEL_NAMES,
    SCORE_MAX,
    SCORE_MIN,
    Scores,
    canonical_dimension,
)
from dermtrl.prompts import PROMPT_VERSION  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "parse_scores": "dermtrl.parsing",
    "ParsedScores": "dermtrl.parsing",
    "ClientConfig": "dermtrl.llm.client",
    "LLMClient": "dermtrl.llm.client",
    "generate_cases": "dermtrl.cases.synthetic",
    "tiny_llava_path": "dermtrl.tiny",
    "DermEval": "dermtrl.dermeval.evaluator",
    "DermBench": "dermtrl.bench",
    "SOREBConfig": "dermtrl.trainer.soreb_config",
    "SOREBTrainer": "dermtrl.trainer.soreb_trainer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dermtrl' has no attribute {name!r}")


__all__ = [
    "ABBREVIATIONS",
    "ALIASES",
    "DIMENSIONS",
    "LABEL_NAMES",
    "PROMPT_VERSION",
    "SCORE_MAX",
    "SCORE_MIN",
    "Scores",
    "canonical_dimension",
    *_LAZY,
]
