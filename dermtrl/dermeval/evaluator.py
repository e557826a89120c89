"""DermEval inference: (image, narrative) -> critique, six scores and a confidence for each score.

One object, one call (as GREEN does): ``DermEval.from_pretrained(...)`` then ``.evaluate(image, narrative)``.
Besides the greedy score it reports, for each score field, the expected score and its spread under the model's
own distribution over the score digit at that position. Both come from the logits of the same generation pass,
so they cost no extra sampling.

Scores are read as the SOREB reward reads them: the rules first, then, with ``llm_parser`` (a
:class:`~dermtrl.llm.client.ClientConfig` or client for any OpenAI-compatible endpoint), Figure 4's LLM parser fills
what the rules missed (:func:`dermtrl.parsing.parse_scores_with_llm`). Each evaluation records which scores the
rules found and which the LLM filled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dermtrl.cases.images import load_image
from dermtrl.conversation import prompt_batch, use_training_template
from dermtrl.dimensions import ALIASES, DIMENSIONS, Scores, normalize_name
from dermtrl.lengths import FALLBACK_MAX_NEW_TOKENS, recorded_max_new_tokens
from dermtrl.parsing import ParsedScores, parse_scores, parse_scores_with_llm
from dermtrl.tiny import resolve_model_name

# The text before a score digit in Figure 4's label format: "<name>:" at the start of a line.
_FIELD_END = re.compile(r"(?:^|\n)[ \t]*([A-Za-z][A-Za-z /&_-]*?)[ \t]*:[ \t]*$")


@dataclass
class Evaluation:
    """DermEval's answer for one case."""

    text: str  # the raw generated evaluation
    scores: Scores  # parsed; missing dimensions are absent, never 0
    sources: dict[str, str] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)  # E[score] from the score-digit probabilities
    spread: dict[str, float] = field(default_factory=dict)  # its standard deviation: lower = more confident
    truncated: bool = False  # generation hit max_new_tokens before its EOS: the score block may be cut off
    llm_error: str | None = None  # the LLM parser was asked and failed: the rules' scores stand
    #: Calibrated intervals (split conformal, from the adapter's calibration.json) at ``coverage``; empty without one
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    coverage: float | None = None

    @property
    def uncertain(self) -> list[str]:
        """Dimensions whose calibrated interval spans 3 points or more: scores not to act on alone."""
        from dermtrl.agreement.calibration import UNCERTAIN_WIDTH

        return [d for d in DIMENSIONS if d in self.intervals
                and self.intervals[d][1] - self.intervals[d][0] >= UNCERTAIN_WIDTH]

    @property
    def rules_found(self) -> list[str]:
        """Dimensions the rule-based parser read from the text."""
        return [d for d in DIMENSIONS if d in self.sources and self.sources[d] != "llm"]

    @property
    def llm_filled(self) -> list[str]:
        """Dimensions the LLM parser filled (the rules missed them)."""
        return [d for d in DIMENSIONS if self.sources.get(d) == "llm"]

    @property
    def critique(self) -> str:
        """The evaluation text before the score block."""
        return self.text.split("The evaluation scores are:")[0].strip()

    @property
    def missing(self) -> tuple[str, ...]:
        return self.scores.missing

    @property
    def overall(self) -> float | None:
        return self.scores.mean()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "critique": self.critique, "scores": self.scores.to_dict(),
                "missing": list(self.missing), "overall": self.overall, "expected": self.expected,
                "spread": self.spread, "sources": self.sources, "truncated": self.truncated,
                "rules_found": self.rules_found, "llm_filled": self.llm_filled, "llm_error": self.llm_error,
                "intervals": {d: list(v) for d, v in self.intervals.items()}, "coverage": self.coverage,
                "uncertain": self.uncertain}


def fingerprint(*sources: str | None) -> str:
    """Identify model weights: a hash of local weight and config files, or the Hub id itself.

    Resumed jobs compare it with their records so that answers from other weights are never mixed in.
    """
    import hashlib

    digest = hashlib.sha256()
    for source in sources:
        if source is None:
            continue
        path = Path(source)
        weights = {".safetensors", ".json", ".bin"}
        files = sorted(f for f in path.glob("*") if f.suffix in weights) if path.is_dir() else []
        if not files:
            digest.update(f"id:{source}".encode())
        for f in files:
            digest.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def adapter_prompt(adapter: str | None, release: str | None = None) -> Any | None:
    """The prompt an adapter was trained with: ``None`` (the paper's), or the official release's DermEval prompt
    builder when ``dermeval_prompt.json`` says so, read from ``release`` or the checkout recorded there."""
    from dermtrl.conversation import PROMPT_RECORD

    if adapter is None or not (Path(adapter) / PROMPT_RECORD).is_file():
        return None
    record = json.loads((Path(adapter) / PROMPT_RECORD).read_text())
    if record.get("target_format") != "official":
        return None
    checkout = release or record.get("release")
    if not checkout or not Path(checkout).exists():
        from dermtrl.errors import DermtrlError

        raise DermtrlError(f"{adapter} was trained on the official DermBench release's format and prompt; give "
                           f"release=PATH (a checkout of yuhos16/DermBench; recorded: {record.get('release')})")
    from dermtrl.bench.release import load_release

    return load_release(checkout).dermeval_prompt_builder()


def adapter_calibration(adapter: str | None) -> Any | None:
    """The ``calibration.json`` written beside an adapter by ``dermtrl calibrate`` (a folder, or a Hub repo when it
    can be reached), else ``None``: intervals are then absent, never made up."""
    if adapter is None:
        return None
    from dermtrl.agreement.calibration import CALIBRATION_FILE, Calibration

    path = Path(adapter) / CALIBRATION_FILE
    if not path.exists() and not Path(adapter).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(adapter, CALIBRATION_FILE))
        except Exception:  # not on the Hub, not cached offline, or no such file: no intervals
            return None
    return Calibration.load(path) if path.exists() else None


def _adapter_base(adapter: str) -> str:
    path = Path(adapter) / "adapter_config.json"
    if path.exists():
        return json.loads(path.read_text())["base_model_name_or_path"]
    from peft import PeftConfig

    return PeftConfig.from_pretrained(adapter).base_model_name_or_path


class DermEval:
    """A DermEval evaluator: a LLaVA-1.5 model, optionally with a DermEval LoRA adapter."""

    def __init__(self, model: Any, processor: Any, *, max_new_tokens: int | None = None, batch_size: int = 8,
                 model_id: str = "", model_fingerprint: str = "", llm_parser: Any | None = None,
                 calibration: Any | None = None, coverage: float = 0.9, prompt_fn: Any | None = None):
        """``llm_parser``: a :class:`~dermtrl.llm.client.ClientConfig` (or a client with ``complete(messages)``) for
        Figure 4's LLM parser, which fills the scores the rules miss; ``None`` reads scores by rules alone.
        ``calibration``: a :class:`~dermtrl.agreement.calibration.Calibration`; with it every evaluation carries
        intervals at ``coverage`` (one the calibration was fitted at: 0.8, 0.9 or 0.95 by default)."""
        from dermtrl.llm.client import ClientConfig, LLMClient

        if calibration is not None:
            calibration._q("Accuracy", coverage)  # a coverage it was not fitted at fails now, naming the fitted ones
        self.calibration = calibration
        self.coverage = coverage
        self.prompt_fn = prompt_fn  # None: the paper's prompt; the release's for an adapter trained on its format

        self.llm_parser = LLMClient(llm_parser) if isinstance(llm_parser, ClientConfig) else llm_parser
        self.model = model.eval()
        self.model_id = model_id
        self.model_fingerprint = model_fingerprint
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_new_tokens = max_new_tokens or FALLBACK_MAX_NEW_TOKENS
        self.batch_size = batch_size
        self._digit_ids = [self.tokenizer.encode(str(k), add_special_tokens=False)[-1] for k in range(6)]
        self._digit_set = set(self._digit_ids)

    @classmethod
    def from_pretrained(
        cls,
        base: str | None = None,
        adapter: str | None = None,
        *,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        merge: bool = True,
        release: str | None = None,
        **kwargs: Any,
    ) -> DermEval:
        """Load base + adapter from Hub ids or folders; the adapter's config names its base when ``base`` is None.

        ``dtype`` defaults to bf16 on a GPU (fp16 where bf16 is unsupported), as the recipes train, and to the
        checkpoint's own dtype on the CPU; on a GPU the weights load onto it directly and the adapter merges there.

        ``max_new_tokens`` defaults to the budget the training recipe recorded beside the adapter
        (``generation_config.json``: the longest label evaluation plus a margin, see :mod:`dermtrl.lengths`), and to
        ``FALLBACK_MAX_NEW_TOKENS`` when there is none.

        An adapter trained on the official release's target format (``dermeval_prompt.json`` beside it) is prompted
        with the release's DermEval prompt, read from ``release`` (a checkout; default: the one it was trained with).
        A ``calibration.json`` beside the adapter adds calibrated intervals (``coverage``, default 0.9).
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if base is None and adapter is None:
            raise ValueError("give a base model, an adapter, or both (Hub ids or folders)")
        if adapter is None and base is not None and (Path(base) / "adapter_config.json").exists():
            base, adapter = None, base  # a folder written by the SFT / SOREB recipes
        base_path = resolve_model_name(base or _adapter_base(adapter))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        on_gpu = torch.device(device).type == "cuda"
        if dtype is None and on_gpu:  # the recipes train in bf16; the checkpoint's own dtype may be fp16
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # straight onto the GPU, so the adapter is loaded and merged there, not on the CPU before moving
        placement = {"device_map": {"": device}} if on_gpu else {}
        model = AutoModelForImageTextToText.from_pretrained(base_path, dtype=dtype, **placement)
        processor_source = base_path
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
            if merge:
                model = model.merge_and_unload()
            if (Path(adapter) / "processor_config.json").exists():
                processor_source = adapter
        processor = AutoProcessor.from_pretrained(processor_source)
        use_training_template(processor)
        processor.tokenizer.padding_side = "left"
        if kwargs.get("max_new_tokens") is None:
            kwargs["max_new_tokens"] = recorded_max_new_tokens(adapter)
        if "prompt_fn" not in kwargs:
            kwargs["prompt_fn"] = adapter_prompt(adapter, release)
        if "calibration" not in kwargs:
            kwargs["calibration"] = adapter_calibration(adapter)
        elif isinstance(kwargs["calibration"], (str, Path)):
            from dermtrl.agreement.calibration import Calibration

            kwargs["calibration"] = Calibration.load(kwargs["calibration"])
        return cls(model.to(device), processor, model_id=adapter or base_path,
                   model_fingerprint=fingerprint(base_path, adapter), **kwargs)

    def evaluate(self, image: Image.Image | str | Path, narrative: str) -> Evaluation:
        return self.evaluate_batch([image], [narrative])[0]

    @torch.no_grad()
    def evaluate_batch(
        self, images: Sequence[Image.Image | str | Path], narratives: Sequence[str]
    ) -> list[Evaluation]:
        """Evaluate many cases with left-padded batched generation, ``batch_size`` at a time."""
        if len(images) != len(narratives):
            raise ValueError(f"got {len(images)} images but {len(narratives)} narratives")
        results: list[Evaluation] = []
        for start in range(0, len(images), self.batch_size):
            results += self._generate(
                [load_image(im) for im in images[start : start + self.batch_size]],
                list(narratives[start : start + self.batch_size]),
            )
        return results

    def _generate(self, images: list[Image.Image], narratives: list[str]) -> list[Evaluation]:
        batch = prompt_batch(self.processor, images, narratives, self.prompt_fn).to(self.model.device)
        # only the six digit columns of each step's raw logits are kept (output_logits would hold
        # batch x new tokens x 32,064 fp32 values, about 8 GB at batch 64 for the 7B model)
        digit_steps: list[torch.Tensor] = []
        digit_ids = torch.tensor(self._digit_ids, device=self.model.device)
        hook = self.model.get_output_embeddings().register_forward_hook(
            lambda _module, _args, out: digit_steps.append(out[:, -1, :].index_select(-1, digit_ids).float()))
        try:
            out = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id, suppress_tokens=[self.model.config.image_token_id],
            )
        finally:
            hook.remove()
        prompt_len = batch["input_ids"].shape[1]
        logits = torch.stack(digit_steps, dim=1)  # (batch, new_tokens, 6): the logits of the digits 0-5
        results = []
        for i in range(len(images)):
            ids = out.sequences[i, prompt_len:].tolist()
            truncated = self.tokenizer.eos_token_id not in ids and len(ids) >= self.max_new_tokens
            if self.tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(self.tokenizer.eos_token_id)]
            ids = [t for t in ids if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            parsed = self.parse(text)
            expected, spread = self._score_distributions(ids, logits[i])
            intervals = ({} if self.calibration is None else
                         self.calibration.intervals(expected, spread, self.coverage))
            results.append(Evaluation(text=text, scores=parsed.as_scores(), sources=dict(parsed.sources),
                                      expected=expected, spread=spread, truncated=truncated,
                                      llm_error=parsed.llm_error, intervals=intervals,
                                      coverage=self.coverage if self.calibration is not None else None))
        return results

    def parse(self, text: str) -> ParsedScores:
        """Scores of one evaluation text: rules, then the LLM parser (when configured) for what they missed."""
        return parse_scores(text) if self.llm_parser is None else parse_scores_with_llm(text, self.llm_parser)

    def _score_distributions(self, ids: list[int], logits: torch.Tensor) -> tuple[dict, dict]:
        """E[score] and its spread at each score-field digit, from the logits that produced it.

        ``logits`` (new tokens, 6) are each step's logits of the digits 0-5.

        A digit token is a score field's when the text just before it ends a line like ``Safety Harmfulness:``;
        only a short window is decoded per digit, so this stays cheap beside generation. Last field wins, as
        in the parser.
        """
        expected: dict[str, float] = {}
        spread: dict[str, float] = {}
        values = torch.arange(6, dtype=logits.dtype, device=logits.device)
        for pos, token in enumerate(ids):
            if token not in self._digit_set:
                continue
            before = self.tokenizer.decode(ids[max(0, pos - 24) : pos], skip_special_tokens=True)
            match = _FIELD_END.search(before)
            dim = ALIASES.get(normalize_name(match.group(1))) if match else None
            if dim is None:
                continue
            p = torch.softmax(logits[pos], dim=-1)
            mean = float((p * values).sum())
            expected[dim] = round(mean, 4)
            spread[dim] = round(math.sqrt(max(0.0, float((p * (values - mean) ** 2).sum()))), 4)
        return ({d: expected[d] for d in DIMENSIONS if d in expected},
                {d: spread[d] for d in DIMENSIONS if d in spread})
