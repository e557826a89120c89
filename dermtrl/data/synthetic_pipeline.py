"""The embedded default: the whole Section 3.1 pipeline offline over synthetic cases.

``dermtrl data build --synthetic`` runs every step of the real pipeline (ingest from an image folder, caption,
both reasoning streams, the reviewer sheet out and back, rationales, build, cards) on synthetic cases
(:mod:`dermtrl.cases.synthetic`). The model calls go to an OpenAI-compatible endpoint like any run; without one,
:class:`SyntheticOracle` answers them from a loopback server started in-process. The oracle knows each case by its
image's pixel hash, so it captions what the image shows, reasons from the caption and label (certified stream)
or restates the case's graded candidate narrative (regular stream), and writes rationales that restate the
given scores. It also slips on purpose (a caption naming the diagnosis, a rationale misstating a score) on the
first attempt for some cases, so the retry paths run. :func:`fill_review_sheet` plays two raters: certified
texts get 5s except some that a rater revises (with the case's reference narrative); regular texts get the
case's computed expert scores. None of this is clinical data.
"""

from __future__ import annotations

import base64
import csv
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.cases.images import content_hash, read_image
from dermtrl.data.run import RunDir
from dermtrl.data.summary import StepSummary
from dermtrl.data.vocabulary import Vocabulary
from dermtrl.dimensions import DIMENSIONS
from dermtrl.prompts import CAPTION_PROMPT, RATIONALE_INSTRUCTION

__all__ = ["SyntheticOracle", "build_synthetic", "fill_review_sheet", "synthetic_cases", "write_image_folder"]

RATERS = ("synthetic-rater-1", "synthetic-rater-2")
_FITZPATRICK = ("I", "II", "III", "IV", "V", "VI")


def synthetic_cases(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic cases (dicts with a PIL image), reproducible from the seed."""
    from dermtrl.cases.synthetic import generate_case

    return [generate_case(i, seed) for i in range(n)]


def write_image_folder(cases: list[dict[str, Any]], root: str | os.PathLike[str], seed: int = 0) -> Path:
    """The cases as an image folder, ``ROOT/<category>/<label>/<case id>.png`` with a ``metadata.csv``."""
    root = Path(root)
    rng = random.Random(f"fitzpatrick:{seed}")
    rows = []
    for case in cases:
        rel = Path(case["category"]) / case["label"] / f"{case['case_id']}.png"
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        case["image"].save(root / rel)
        rows.append({"file_name": rel.as_posix(), "case_id": case["case_id"], "fitzpatrick": rng.choice(_FITZPATRICK),
                     "synthetic": "true"})
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file_name", "case_id", "fitzpatrick", "synthetic"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _image_hash(body: Mapping[str, Any]) -> str | None:
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
            if url.startswith("data:image/"):
                return read_image(base64.b64decode(url.split(",", 1)[1]), "the image sent").content_hash
    return None


def _texts(body: Mapping[str, Any]) -> tuple[str, bool]:
    """The first user turn's text and whether this is a follow-up (a retry)."""
    messages = body.get("messages") or []
    first = ""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            first = content if isinstance(content, str) else "\n".join(
                p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            break
    return first, any(m.get("role") == "assistant" for m in messages)


@dataclass
class SyntheticOracle:
    """Answers the pipeline's prompts for known synthetic cases; a responder for ``FakeOpenAIServer``."""

    cases: list[dict[str, Any]]
    slip_every: int = 5  # every n-th case slips on its first attempt (0: never)
    _by_hash: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for index, case in enumerate(self.cases):
            case.setdefault("_index", index)
            self._by_hash[content_hash(case["image"].convert("RGB"))] = case

    def case_for(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        key = _image_hash(body)
        return self._by_hash.get(key) if key else None

    def _slips(self, case: dict[str, Any] | None, retry: bool) -> bool:
        return bool(case) and not retry and self.slip_every > 0 and case["_index"] % self.slip_every == 0

    def __call__(self, body: dict[str, Any]) -> str:
        from dermtrl.cases.synthetic import Findings, describe

        text, retry = _texts(body)
        case = self.case_for(body)
        if text.strip() == CAPTION_PROMPT:
            if case is None:
                return "This image shows an area of skin with a visible lesion."
            caption = f"This image shows {describe(Findings(**case['findings']))}."
            if self._slips(case, retry):
                caption += f" The appearance suggests {case['label']}."
            return caption
        if "Simulate expert hierarchical reasoning" in text:
            return self._reasoning(text, case)
        if text.startswith(RATIONALE_INSTRUCTION):
            return self._rationale(text, case, retry)
        return "I cannot help with that request."

    def _reasoning(self, text: str, case: dict[str, Any] | None) -> str:
        from dermtrl.cases.synthetic import CONDITIONS

        caption = re.search(r"Caption: (.*?)\n\n", text, re.DOTALL)
        seen = caption.group(1).strip() if caption else "the lesion"
        seen = re.sub(r"^This image shows\s*", "", seen).rstrip(".")
        label_match = re.search(r"ground truth (.+?)\. Begin with", text)
        if label_match:  # certified stream: caption + ground truth
            label = label_match.group(1)
            family = next((c.family for c in CONDITIONS if c.label == label), "a group of skin diseases")
            return (f"First, I observe {seen}. Next, I consider the broad family: these features point to {family}. "
                    f"The colour, border and size of the lesions narrow the possibilities within that family. "
                    f"Finally, based on the above analysis, the most likely diagnosis is {label}.")
        if case is None:  # regular stream, unknown image
            return f"First, I observe {seen}. Next, the features suggest an inflammatory condition. It is unclear."
        return case["narrative"]  # the graded candidate: its expert scores were computed for this claim

    def _rationale(self, text: str, case: dict[str, Any] | None, retry: bool) -> str:
        scores = {}
        block = text.split("\n\nScores:\n", 1)[-1]
        for line in block.splitlines():
            name, _, value = line.partition(":")
            if name.strip() in DIMENSIONS:
                scores[name.strip()] = float(value)
        sections = []
        for n, dim in enumerate(DIMENSIONS):
            score = scores.get(dim, 0.0)
            if self._slips(case, retry) and n == 0:
                score = 5.0 - score if score != 2.5 else 1.0  # misstated on purpose, fixed on the retry
            quality = "fully supported" if score >= 4.5 else "partly supported" if score >= 2.5 else "not supported"
            sections.append(
                f"## {dim}\nScore: {score:g}\nEvidence: the narrative's claims on {dim.lower()} are {quality} by the "
                f"observable findings.\nSuggestion: tie every statement on {dim.lower()} to a visible feature.")
        return "\n\n".join(sections)


def fill_review_sheet(sheet: str | os.PathLike[str], out: str | os.PathLike[str], run: RunDir,
                      oracle: SyntheticOracle, *, revise_every: int = 4) -> Path:
    """Play the raters: fill the exported sheet as dermatologists would (see the module docstring)."""
    items = run.items()
    by_hash = oracle._by_hash
    rows_out = []
    with Path(sheet).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fieldnames = list(reader.fieldnames or [])
        for row in reader:
            item = items.get(row["item_id"])
            case = by_hash.get(item["content_hash"]) if item else None
            if case is None:
                continue
            if row["stream"] == "certified":
                scores = dict.fromkeys(DIMENSIONS, 5.0)
                revised = ""
                if revise_every and case["_index"] % revise_every == 1:
                    scores["Description Precision"] = 4.0
                    revised = case["reference"]
                rows_out.append({**row, "rater_id": RATERS[0], **{d: f"{scores[d]:g}" for d in DIMENSIONS},
                                 "revised_text": revised})
            else:
                for k, rater in enumerate(RATERS):
                    scores = dict(case["expert_scores"])
                    if k == 1 and case["_index"] % 3 == 0:  # the second rater disagrees a little
                        dim = DIMENSIONS[case["_index"] % len(DIMENSIONS)]
                        scores[dim] = min(5.0, scores[dim] + 1.0) if scores[dim] < 5 else 4.0
                    rows_out.append({**row, "rater_id": rater, **{d: f"{scores[d]:g}" for d in DIMENSIONS}})
    out = Path(out)
    with out.open("w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows_out)
    return out


@dataclass
class SyntheticBuild:
    """What ``build --synthetic`` produced: the run folder, each step's summary, the build result, the time."""

    run: RunDir
    summaries: list[StepSummary]
    result: Any
    seconds: float


def build_synthetic(
    run: RunDir | str | os.PathLike[str],
    *,
    n: int = 40,
    seed: int = 0,
    client: Any = None,
    test_fraction: float = 0.25,
    progress: bool = False,
    on_step: Callable[[StepSummary], None] | None = None,
    build_options: dict[str, Any] | None = None,
) -> SyntheticBuild:
    """Run the whole pipeline on ``n`` synthetic cases into ``run`` and build both datasets with cards.

    ``client`` is an :class:`~dermtrl.llm.client.LLMClient`; ``None`` starts the oracle on a loopback server.
    ``build_options`` go to :func:`~dermtrl.data.build.build_datasets` (``selection``, ``allow_eval_images_in_train``).
    """
    from dermtrl.data.build import build_datasets
    from dermtrl.data.captioning import caption_items
    from dermtrl.data.inputs import ingest
    from dermtrl.data.rationale import rationale_items
    from dermtrl.data.reasoning import reason_items
    from dermtrl.data.reviews import export_for_review, import_reviews
    from dermtrl.llm.client import ClientConfig, LLMClient

    started = time.perf_counter()
    run = run if isinstance(run, RunDir) else RunDir(run)
    cases = synthetic_cases(n, seed)
    oracle = SyntheticOracle(cases)
    server = None
    own_client = client is None
    if client is None:
        from dermtrl.llm.server import FakeOpenAIServer

        server = FakeOpenAIServer(oracle, model="dermtrl-synthetic-oracle").start()
        client = LLMClient(ClientConfig(base_url=server.base_url, model="dermtrl-synthetic-oracle",
                                        max_concurrency=4, max_retries=2, timeout=30.0))
    summaries: list[StepSummary] = []

    def step(summary: StepSummary) -> None:
        summaries.append(summary)
        if on_step is not None:
            on_step(summary)

    try:
        source = write_image_folder(cases, run.root / "source", seed)
        vocabulary = Vocabulary.default()
        step(ingest(str(source), run, vocabulary=vocabulary, progress=progress))
        step(caption_items(run, client, progress=progress))
        for stream in ("certified", "regular"):
            step(reason_items(run, client, stream, progress=progress))
        sheet = run.root / "review-sheet.csv"
        export_for_review(run, sheet)
        filled = fill_review_sheet(sheet, run.root / "review-sheet-filled.csv", run, oracle)
        step(import_reviews(run, [filled]))
        step(rationale_items(run, client, progress=progress))
        result = build_datasets(run, test_fraction=test_fraction, seed=seed, license="apache-2.0",
                                progress=progress, **(build_options or {}))
        step(result.summary)
    finally:
        if own_client:
            client.close()
        if server is not None:
            server.stop()
    return SyntheticBuild(run, summaries, result, time.perf_counter() - started)
