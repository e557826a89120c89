"""The run folder: where each construction step reads its input and writes its records.

Steps are separate commands (an expert review happens between two of them), so they share state only through
files in one folder, each written as the step goes::

    RUN/vocabulary.json                 the label vocabulary ingest checked labels against
    RUN/items.jsonl                     ingested items (and skipped sources, with the reason)
    RUN/images/<item id>.<jpg|png>      the normalised image of each item
    RUN/captions.jsonl                  observation-only captions
    RUN/reasoning-<stream>.jsonl        hierarchical reasoning texts, stream = certified | regular
    RUN/review-sheet*.csv               what export-for-review wrote (reviewers fill it in)
    RUN/reviews.jsonl                   every rater's validated scores and revisions
    RUN/rationales.jsonl                rationales and the evaluation text y*
    RUN/datasets/{dermbench,dermeval}   the built datasets (save_to_disk) with their README.md cards
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from dermtrl.data.vocabulary import Vocabulary
from dermtrl.jsonl import read_records

__all__ = ["STREAMS", "RunDir", "Stream", "text_id"]

Stream = Literal["certified", "regular"]
STREAMS: tuple[str, ...] = ("certified", "regular")


def text_id(item_id: str, stream: str) -> str:
    """The id of one reasoning text: one per image and stream."""
    return f"{item_id}:{stream}"


class RunDir:
    """Paths of one run and read access to what earlier steps finished."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def items_path(self) -> Path:
        return self.root / "items.jsonl"

    @property
    def vocabulary_path(self) -> Path:
        return self.root / "vocabulary.json"

    def vocabulary(self) -> Vocabulary:
        """The vocabulary ingest used (the default one when the run has none recorded)."""
        if self.vocabulary_path.is_file():
            return Vocabulary.from_file(self.vocabulary_path)
        return Vocabulary.default()

    def save_vocabulary(self, vocabulary: Vocabulary) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(dict(vocabulary.labels), indent=1, ensure_ascii=False)
        self.vocabulary_path.write_text(text + "\n", encoding="utf-8")

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def captions_path(self) -> Path:
        return self.root / "captions.jsonl"

    def reasoning_path(self, stream: str) -> Path:
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
        return self.root / f"reasoning-{stream}.jsonl"

    @property
    def reviews_path(self) -> Path:
        return self.root / "reviews.jsonl"

    @property
    def rationales_path(self) -> Path:
        return self.root / "rationales.jsonl"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    # --- finished work ----------------------------------------------------------------------------------
    @staticmethod
    def _latest_ok(path: Path, key: str = "id") -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for record in read_records(path):
            if key in record:
                latest[str(record[key])] = record
        return {k: r for k, r in latest.items() if not r.get("error")}

    def items(self) -> dict[str, dict[str, Any]]:
        """Ingested items by id (those that passed every check), in ingestion order."""
        out: dict[str, dict[str, Any]] = {}
        for record in self._latest_ok(self.items_path, key="source").values():
            out[record["id"]] = record
        return out

    def require_items(self) -> dict[str, dict[str, Any]]:
        items = self.items()
        if not items:
            raise ValueError(f"{self.items_path}: no ingested items; run `dermtrl data ingest SOURCE --run "
                             f"{self.root}` (or pass --input to caption) first")
        return items

    def image_path(self, item: dict[str, Any]) -> Path:
        return self.root / item["image"]

    def captions(self) -> dict[str, dict[str, Any]]:
        return self._latest_ok(self.captions_path)

    def texts(self, stream: str) -> dict[str, dict[str, Any]]:
        """Reasoning records of one stream by text id."""
        return self._latest_ok(self.reasoning_path(stream))

    def all_texts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for stream in STREAMS:
            out.update(self.texts(stream))
        return out

    def rationales(self) -> dict[str, dict[str, Any]]:
        return self._latest_ok(self.rationales_path)
