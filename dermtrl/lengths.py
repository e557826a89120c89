"""Token lengths of DermEval's training data, and the generation budget they imply.

The label evaluations y* decide how many tokens DermEval must be allowed to write: a budget below the longest
y* cuts the score block off the end and the scores go missing. The recipes record the lengths here and write a
``generation_config.json`` beside the adapter whose ``max_new_tokens`` covers the longest y* with a margin;
``DermEval.from_pretrained`` reads it. ``label_lengths.json`` keeps the numbers (and the prompt lengths, image
tokens included) for the memory plan (``benchmarks/memory_plan.py``) and for the record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LENGTHS_FILE = "label_lengths.json"
#: ``max_new_tokens`` = longest y* (its EOS included) * (1 + MARGIN), rounded up to a multiple of 16
MARGIN = 0.25
#: DermEval's budget when the adapter records none (a base model, or an adapter trained before lengths existed)
FALLBACK_MAX_NEW_TOKENS = 512


@dataclass
class LengthStats:
    """Summary of one length distribution (in tokens)."""

    n: int
    mean: float
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        if not lengths:
            raise ValueError("no lengths to summarise (the training set is empty)")
        ordered = sorted(lengths)
        return cls(n=len(ordered), mean=round(sum(ordered) / len(ordered), 1),
                   p95=ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], max=ordered[-1])


@dataclass
class SequenceLengths:
    """What the recipes record: y* (with its EOS) and prompt (image tokens and BOS included) lengths."""

    label: LengthStats
    prompt: LengthStats
    max_new_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {"label_tokens": asdict(self.label), "prompt_tokens": asdict(self.prompt),
                "max_new_tokens": self.max_new_tokens, "margin": MARGIN}


def budget_for(longest_label: int) -> int:
    """``max_new_tokens`` covering the longest y* with the margin."""
    return int(math.ceil(longest_label * (1.0 + MARGIN) / 16.0) * 16)


def _image_tokens(processor: Any, image: Any) -> int:
    from dermtrl.conversation import prompt_batch

    batch = prompt_batch(processor, [image], ["x"])
    image_id = processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", None) or "<image>")
    return int((batch["input_ids"] == image_id).sum())


def measure(processor: Any, images: Sequence[Any], narratives: Sequence[str], evaluations: Sequence[str]
            ) -> SequenceLengths:
    """Token lengths of every training example, as :mod:`dermtrl.conversation` tokenizes them.

    One example is tokenized with its image to count the image tokens; the others are tokenized as text (the
    image sentinel stands for them), so measuring thousands of cases costs seconds, not an image pass each.
    """
    from dermtrl.conversation import _conversations

    tokenizer = processor.tokenizer
    labels = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in evaluations]  # + EOS
    extra_image_tokens = _image_tokens(processor, images[0]) - 1
    prompts = []
    for narrative in narratives:
        conversation = _conversations(processor, [None], [narrative], None)[0]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        prompts.append(len(tokenizer(text, add_special_tokens=True)["input_ids"]) + extra_image_tokens)
    label = LengthStats.of(labels)
    return SequenceLengths(label=label, prompt=LengthStats.of(prompts), max_new_tokens=budget_for(label.max))


def measure_cases(processor: Any, cases: Any) -> SequenceLengths:
    """:func:`measure` over a ``datasets.Dataset`` of cases (``image``, ``narrative``, ``evaluation``)."""
    return measure(processor, [cases[0]["image"]], cases["narrative"], cases["evaluation"])


def save(lengths: SequenceLengths, output_dir: str | Path, generation_config: Any = None) -> Path:
    """Write ``label_lengths.json`` and a ``generation_config.json`` with the budget into ``output_dir``.

    ``generation_config`` (the trained model's) keeps its token ids; greedy decoding is DermEval's default.
    """
    from transformers import GenerationConfig

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / LENGTHS_FILE).write_text(json.dumps(lengths.to_dict(), indent=2) + "\n", encoding="utf-8")
    config = GenerationConfig(**(generation_config.to_diff_dict() if generation_config is not None else {}))
    config.max_new_tokens = lengths.max_new_tokens
    config.do_sample = False
    for name in ("temperature", "top_p", "top_k"):  # sampling settings would only draw warnings under greedy
        setattr(config, name, None)
    config.save_pretrained(out)
    return out / "generation_config.json"


def recorded_max_new_tokens(source: str | Path | None) -> int | None:
    """The ``max_new_tokens`` an adapter folder records (``generation_config.json``), or ``None``."""
    if source is None:
        return None
    path = Path(source) / "generation_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("max_new_tokens")
    if Path(source).exists():
        return None
    try:  # a Hub id: the adapter repo may carry one
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(source), "generation_config.json")).read_text()).get(
            "max_new_tokens")
    except (OSError, ValueError):  # absent file, offline, or no such repo: the caller falls back
        return None


def read(output_dir: str | Path) -> dict[str, Any] | None:
    """The recorded ``label_lengths.json`` of a recipe's output folder, or ``None``."""
    path = Path(output_dir) / LENGTHS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
