"""Candidate narratives (Section 3.2): each vision-language model answers the paper's fixed instruction.

Every model sees the same image and :data:`~dermtrl.prompts.CANDIDATE_INSTRUCTION`, through one of two
backends:

* :class:`OpenAIGenerator`: any OpenAI-compatible endpoint (OpenAI, Gemini's OpenAI-compatible API, a vLLM
  server) through the shared :class:`~dermtrl.llm.client.LLMClient` (its concurrency, retries and cache);
* :class:`TransformersGenerator`: a local ``AutoModelForImageTextToText`` (``dermtrl:tiny`` included),
  batched, left-padded.

:func:`generate_candidates` writes one JSONL per model (one record per case, written as it goes, resumable),
each record holding the prompt version and the generation settings; an unreadable image costs that case
only. :func:`read_candidates` and :func:`candidates_from_dataset` give the judge its input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dermtrl.bench.cases import case_rows, image_name, image_reader, image_source, load_case_image
from dermtrl.bench.jobs import JobProgress, results_file, run_concurrently
from dermtrl.llm.client import ClientConfig, LLMClient, user_message
from dermtrl.prompts import CANDIDATE_INSTRUCTION, PROMPT_VERSION

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image as PILImage

__all__ = [
    "OpenAIGenerator",
    "TransformersGenerator",
    "candidates_from_dataset",
    "generate_candidates",
    "read_candidates",
]


class OpenAIGenerator:
    """A VLM behind an OpenAI-compatible endpoint; ``config`` says where (``base_url``) and which ``model``."""

    backend = "openai"

    def __init__(self, config: ClientConfig | LLMClient, *, max_side: int | None = 1024,
                 instruction: str | None = None) -> None:
        self.client = config if isinstance(config, LLMClient) else LLMClient(config)
        self._owns_client = not isinstance(config, LLMClient)
        self.max_side = max_side
        self.instruction = instruction or CANDIDATE_INSTRUCTION  # another protocol's prompt (the release's)

    @property
    def name(self) -> str:
        return self.client.config.model

    @property
    def workers(self) -> int:
        return self.client.config.max_concurrency

    def settings(self) -> dict[str, Any]:
        cfg = self.client.config
        return {"backend": self.backend, "model": cfg.model, "temperature": float(cfg.temperature),
                "max_tokens": cfg.max_tokens, "seed": cfg.seed, "extra_body": cfg.extra_body,
                "max_side": self.max_side, **_instruction_setting(self.instruction)}

    def message(self, image: Any, where: str | None = None) -> dict[str, Any]:
        """The user turn for one image cell (bytes, path, PIL image or a datasets ``{bytes, path}`` cell);
        raises ``ValueError``/``OSError`` naming ``where`` and the file when the image cannot be read."""
        return user_message(self.instruction, [image_source(image, where)], max_side=self.max_side)

    def generate(self, image: Any) -> str:
        """One narrative for one image cell."""
        return self.client.complete([self.message(image)]).text

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class TransformersGenerator:
    """A local ``AutoModelForImageTextToText`` (a Hub id, a folder, or ``dermtrl:tiny``), batched generation.

    ``temperature`` 0 means greedy decoding. The model is loaded on first use.
    """

    backend = "transformers"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        device: str | None = None,
        dtype: str | None = None,
        instruction: str | None = None,
    ) -> None:
        from dermtrl.tiny import resolve_model_name

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be a number in [0, 2], got {temperature!r}")
        self.name = model
        self.path = resolve_model_name(model)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = float(temperature)
        self.device = device
        self.dtype = dtype
        self.instruction = instruction or CANDIDATE_INSTRUCTION
        self._model: Any = None
        self._processor: Any = None

    def settings(self) -> dict[str, Any]:
        from dermtrl.dermeval.evaluator import fingerprint

        return {"backend": self.backend, "model": self.name, "fingerprint": fingerprint(self.path),
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                **_instruction_setting(self.instruction)}

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype
        model = AutoModelForImageTextToText.from_pretrained(self.path, dtype=dtype)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = model.to(device).eval()
        self._processor = AutoProcessor.from_pretrained(self.path)
        if getattr(self._processor, "chat_template", None) is None:
            raise ValueError(f"{self.name}: the processor has no chat template; cannot prompt it")

    def generate_batch(self, images: Sequence[PILImage.Image]) -> list[str]:
        """Narratives for a batch of RGB images, in order."""
        import torch

        self._load()
        processor, model = self._processor, self._model
        conversations = [
            [{"role": "user", "content": [{"type": "image", "image": image},
                                          {"type": "text", "text": self.instruction}]}]
            for image in images
        ]
        batch = processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "left"},
        ).to(model.device)
        tokenizer = processor.tokenizer
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=self.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **sampling)
        new = out[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        self._model = self._processor = None


Generator = OpenAIGenerator | TransformersGenerator


def _instruction_setting(instruction: str) -> dict[str, str]:
    """Nothing for the paper's instruction (earlier files resume); another one's sha256, so that candidates made
    with different prompts never mix in one file."""
    if instruction == CANDIDATE_INSTRUCTION:
        return {}
    import hashlib

    return {"instruction": "sha256:" + hashlib.sha256(instruction.encode("utf-8")).hexdigest()}


def generate_candidates(
    cases: Dataset | Sequence[Mapping[str, Any]],
    generator: Generator,
    out: str | os.PathLike[str],
    *,
    name: str | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate a candidate for every case not yet in ``out`` (JSONL); return all of this model's records.

    ``retry_failed`` generates again the cases whose record is an error (a server that was down, an image
    fixed since).

    Records: ``model`` (``name``, default the generator's model), ``case_id``, ``text`` or ``error``;
    each also carries ``generation`` (prompt version, instruction and generation settings), and resuming a
    file made with other settings is refused (``overwrite=True`` starts afresh).
    """
    name = name or generator.name
    settings = {"prompt_version": PROMPT_VERSION, "instruction": "CANDIDATE_INSTRUCTION",
                **generator.settings()}
    ids = [row["case_id"] for row in case_rows(cases, (), required=("image",))]
    image_of = image_reader(cases)
    with results_file(out, "generation", settings,
                     overwrite=overwrite, redo=(lambda r: r.get("error") is not None) if retry_failed else None
                     ) as results:
        todo = [(index, case_id) for index, case_id in enumerate(ids) if (name, case_id) not in results]
        usage = generator.client.usage if isinstance(generator, OpenAIGenerator) else None
        wanted = set(ids)
        failed = sum(1 for r in results.records.values()
                     if r["model"] == name and r["case_id"] in wanted and r.get("error"))
        bar = JobProgress(f"generate · {name}", len(ids), len(ids) - len(todo), failed=failed, usage=usage,
                          enabled=progress)

        def record(case_id: str, text: str | None = None, error: str | None = None) -> dict[str, Any]:
            return {"model": name, "case_id": case_id, "text": text, "error": error}

        def image_error(cell: Any, exc: BaseException) -> str:
            file = image_name(cell)
            return f"image {file!r}: {exc}" if file and file not in str(exc) else f"image: {exc}"

        if isinstance(generator, OpenAIGenerator):
            redact = generator.client.redact

            def work(item: tuple[int, str]) -> dict[str, Any]:
                index, case_id = item
                cell = image_of(index)
                try:
                    message = generator.message(cell, f"case {case_id!r}")
                except (ValueError, OSError, TypeError) as exc:
                    return record(case_id, error=image_error(cell, exc))
                try:
                    return record(case_id, text=generator.client.complete([message]).text)
                except Exception as exc:  # noqa: BLE001 - LLMError and the like: this case only
                    return record(case_id, error=redact(f"{type(exc).__name__}: {exc}"))

            run_concurrently(todo, work, results, bar, workers=generator.workers,
                             on_error=lambda item, exc: record(item[1], error=f"{type(exc).__name__}: {exc}"))
        else:
            with bar:
                for start in range(0, len(todo), generator.batch_size):
                    done: list[dict[str, Any]] = []
                    good: list[tuple[str, Any]] = []
                    for index, case_id in todo[start:start + generator.batch_size]:
                        cell = image_of(index)
                        try:
                            good.append((case_id, load_case_image(cell, f"case {case_id!r}")))
                        except (ValueError, OSError, TypeError) as exc:
                            done.append(record(case_id, error=image_error(cell, exc)))
                    if good:
                        texts = generator.generate_batch([image for _, image in good])
                        done += [record(case_id, text=text) for (case_id, _), text in zip(good, texts, strict=True)]
                    for r in done:
                        results.write(r)
                    bar.advance_records(done)
        return [r for r in results.records.values() if r["model"] == name and r["case_id"] in wanted]


def read_candidates(path: str | os.PathLike[str]) -> tuple[str, list[dict[str, Any]]]:
    """``(model name, records)`` of a candidates JSONL written by :func:`generate_candidates` (or by hand:
    one object per line with ``case_id`` and ``text``, optionally ``model``, ``error``, ``expert_scores``).
    The name comes from the records' ``model`` field, else the file name."""
    from dermtrl.jsonl import read_records

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such candidates file")
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no candidate records")
    names = {str(r["model"]) for r in records if r.get("model")}
    if len(names) > 1:
        raise ValueError(f"{path}: records of several models ({', '.join(sorted(names))}); one file per model")
    for i, r in enumerate(records, start=1):
        if "case_id" not in r:
            raise ValueError(f"{path}: record {i} has no case_id")
        if not r.get("error") and not isinstance(r.get("text"), str):
            raise ValueError(f"{path}: record {i} (case {r['case_id']!r}) has neither text nor error")
    return (names.pop() if names else path.stem), records


def candidates_from_dataset(
    cases: Dataset | Sequence[Mapping[str, Any]], column: str = "narrative", *, expert_scores: str | None = None
) -> list[dict[str, Any]]:
    """Candidates already in the dataset (e.g. the ``narrative`` column), with their expert scores if named.

    This is how the judge is checked against physicians: judge the narratives the experts scored.
    """
    columns = (column,) if expert_scores is None else (column, expert_scores)
    out = []
    for row in case_rows(cases, columns, required=columns):
        text = row.get(column)
        ok = isinstance(text, str) and bool(text.strip())
        out.append({"case_id": row["case_id"], "text": text if ok else None,
                    "error": None if ok else f"column {column!r} is empty",
                    "expert_scores": row.get(expert_scores) if expert_scores else None})
    return out
