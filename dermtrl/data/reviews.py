"""Expert scores: the reviewer sheet out, the ratings back in, and the certified stream's revision rule.

Board-certified dermatologists rate every text on the six dimensions from 0 to 5 (Section 3.1).
:func:`export_for_review` writes a CSV a reviewer can fill in a spreadsheet: one row per text (or per text and
rater), the image path, the caption, the text and any form violations, six empty score columns, a rater id and a
``revised_text`` column. :func:`import_reviews` reads filled sheets back, validates every row (known text id, a
rater id, all six scores present and numbers in 0-5) and keeps every rater's scores (``RUN/reviews.jsonl``; a
later row of the same text and rater replaces the earlier one). Rows that fail are skipped with a message naming
the sheet, line and field; the rest are imported.

The certified stream's rule: *if any dimension receives a score below 5, clinicians revise the text until all
dimensions are rated 5, after which the recorded scores are fixed at 5.* :func:`review_status` applies it: a
certified text rated 5 everywhere by every rater is certified as is; one with a score below 5 and a revised text
is certified with the revision and scores fixed at 5 (the raters' own scores are kept beside them); one with a
score below 5 and no revision awaits revision, and is listed. Regular-stream texts keep their scores (the mean
over raters is the expert score).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermtrl.data.run import STREAMS, RunDir
from dermtrl.data.summary import StepSummary
from dermtrl.dimensions import DIMENSIONS, SCORE_MAX, SCORE_MIN
from dermtrl.jsonl import RecordLog

__all__ = ["SHEET_COLUMNS", "TextStatus", "export_for_review", "import_reviews", "review_status"]

#: The reviewer sheet's columns, in order. Reviewers fill ``rater_id``, the six scores, ``revised_text`` and
#: ``comment``; the other columns identify and show the text.
SHEET_COLUMNS: tuple[str, ...] = (
    "text_id", "stream", "item_id", "image", "label", "category", "caption", "text", "form_violations",
    "rater_id", *DIMENSIONS, "revised_text", "comment",
)
_REQUIRED = ("text_id", "rater_id", *DIMENSIONS)


@dataclass
class TextStatus:
    """Where one text stands after the reviews imported so far."""

    text_id: str
    stream: str
    status: str  # unreviewed | certified | revised | awaiting-revision | reviewed
    narrative: str  # the text to use: the revision when there is one
    ratings: list[dict[str, Any]] = field(default_factory=list)  # [{"rater_id", "scores"}]
    scores: dict[str, float] | None = None  # the recorded expert scores (certified: fixed at 5)
    note: str = ""

    @property
    def final(self) -> bool:
        """Scored and, in the certified stream, certified: ready for a rationale and the datasets."""
        return self.status in ("certified", "revised", "reviewed")


def export_for_review(
    run: RunDir | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    streams: Sequence[str] = STREAMS,
    raters: Sequence[str] = (),
    pending_only: bool = False,
) -> int:
    """Write the reviewer sheet (CSV, UTF-8 with BOM so spreadsheets read it); returns the number of rows.

    ``raters`` pre-fills one row per text and rater; ``pending_only`` leaves out texts that need nothing more.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    items = run.items()
    status = review_status(run) if pending_only else {}
    rows = 0
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SHEET_COLUMNS))
        writer.writeheader()
        for stream in streams:
            for tid, text in run.texts(stream).items():
                st = status.get(tid)
                if pending_only and st is not None and st.status not in ("unreviewed", "awaiting-revision"):
                    continue
                item = items.get(text["item_id"], {})
                base = {
                    "text_id": tid, "stream": stream, "item_id": text["item_id"],
                    "image": str(run.image_path(item).resolve()) if item else "", "label": item.get("label", ""),
                    "category": item.get("category", ""), "caption": text.get("caption", ""),
                    "text": text["narrative"], "form_violations": "; ".join(text.get("violations") or []),
                }
                for rater in raters or [""]:
                    writer.writerow({**base, "rater_id": rater})
                    rows += 1
    os.replace(tmp, out)
    return rows


def _score(value: str | None) -> tuple[float | None, str | None]:
    """A score cell: (value, None) or (None, why it is unusable)."""
    text = (value or "").strip()
    if not text:
        return None, "missing"
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return None, f"{text!r} is not a number"
    if not math.isfinite(number) or not SCORE_MIN <= number <= SCORE_MAX:
        return None, f"{text} is outside {SCORE_MIN:g}-{SCORE_MAX:g}"
    return number, None


def import_reviews(run: RunDir | str | os.PathLike[str], sheets: Iterable[str | os.PathLike[str]]) -> StepSummary:
    """Validate and record every row of the filled sheets; bad rows are skipped with a per-row message."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    texts = run.all_texts()
    summary = StepSummary("import-reviews")
    with RecordLog(run.reviews_path, {"step": "review"}, key="review_id") as log:
        for sheet in sheets:
            sheet = Path(sheet)
            if not sheet.is_file():
                raise ValueError(f"{sheet}: no such reviewer sheet")
            with sheet.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or []
                missing = [c for c in _REQUIRED if c not in header]
                if missing:
                    raise ValueError(f"{sheet}: not a reviewer sheet: missing column(s) {', '.join(missing)} "
                                     "(write one with `dermtrl data export-for-review`)")
                for row in reader:
                    summary.total += 1
                    where = f"{sheet.name}:{reader.line_num}"
                    _import_row(row, where, sheet, texts, log, summary)
    status = review_status(run)
    for st in status.values():
        if st.status == "awaiting-revision":
            summary.flag(st.text_id, "awaiting-revision", st.note)
    counts: dict[str, int] = {}
    for st in status.values():
        counts[st.status] = counts.get(st.status, 0) + 1
    summary.extra.update({f"texts {k}": v for k, v in sorted(counts.items())})
    return summary


def _import_row(row: dict[str, Any], where: str, sheet: Path, texts: dict[str, dict[str, Any]], log: RecordLog,
                summary: StepSummary) -> None:
    tid = (row.get("text_id") or "").strip()
    rater = (row.get("rater_id") or "").strip()
    revised = (row.get("revised_text") or "").strip()
    label = f"{where} ({tid or 'no text id'}{', rater ' + rater if rater else ''})"
    cells = [(row.get(d) or "").strip() for d in DIMENSIONS]
    if not any(cells) and not revised and not rater:
        summary.skip(label, "not-reviewed", f"{label}: no scores and no rater id (not reviewed yet)")
        return
    if tid not in texts:
        summary.skip(label, "unknown-text", f"{label}: unknown text id {tid!r} (not in this run)")
        return
    problems = []
    if not rater:
        problems.append("rater_id is empty")
    scores: dict[str, float] = {}
    for dim in DIMENSIONS:
        value, why = _score(row.get(dim))
        if why is not None:
            problems.append(f"{dim} {why}")
        else:
            scores[dim] = value  # type: ignore[assignment]
    if problems:
        summary.skip(label, "invalid-row", f"{label}: " + "; ".join(problems))
        return
    stream = texts[tid].get("stream") or tid.rsplit(":", 1)[-1]
    notes = []
    if revised and stream != "certified":
        notes.append("revised_text ignored: only certified-stream texts are revised")
        summary.flag(label, "revision-ignored", f"{label}: revised_text ignored (a {stream}-stream text)")
        revised = ""
    log.write({"review_id": f"{tid}|{rater}", "text_id": tid, "rater_id": rater, "stream": stream,
               "scores": scores, "revised_text": revised or None, "comment": (row.get("comment") or "").strip(),
               "sheet": str(sheet), "row": where, "notes": notes})
    summary.done += 1


def review_status(run: RunDir | str | os.PathLike[str]) -> dict[str, TextStatus]:
    """Every text's status after the imported reviews (see the module docstring for the certified rule)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    reviews: dict[str, list[dict[str, Any]]] = {}
    with RecordLog(run.reviews_path, {"step": "review"}, key="review_id") as log:
        for record in log.records.values():
            reviews.setdefault(record["text_id"], []).append(record)
    out: dict[str, TextStatus] = {}
    for stream in STREAMS:
        for tid, text in run.texts(stream).items():
            rows = reviews.get(tid, [])
            ratings = [{"rater_id": r["rater_id"], "scores": r["scores"]} for r in rows]
            st = TextStatus(tid, stream, "unreviewed", text["narrative"], ratings)
            if not rows:
                st.note = "no ratings imported"
            elif stream == "certified":
                low = sorted({f"{d} {r['scores'][d]:g} ({r['rater_id']})" for r in rows for d in DIMENSIONS
                              if r["scores"][d] < SCORE_MAX})
                revisions = [r for r in rows if r.get("revised_text")]
                if revisions:
                    st.status, st.narrative = "revised", revisions[-1]["revised_text"]
                    st.scores = dict.fromkeys(DIMENSIONS, SCORE_MAX)
                    distinct = {r["revised_text"] for r in revisions}
                    st.note = f"revised by {revisions[-1]['rater_id']}" + (
                        f"; {len(distinct)} different revisions, the last imported is used" if len(distinct) > 1
                        else "")
                elif low:
                    st.status = "awaiting-revision"
                    st.note = "scores below 5 need a revised text: " + ", ".join(low)
                else:
                    st.status, st.scores = "certified", dict.fromkeys(DIMENSIONS, SCORE_MAX)
            else:
                st.status = "reviewed"
                st.scores = {d: sum(r["scores"][d] for r in rows) / len(rows) for d in DIMENSIONS}
            out[tid] = st
    return out
