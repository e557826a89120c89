"""Which part of DermEval's critique goes wrong? Slot-by-slot accuracy of critiques of synthetic cases.

A synthetic case's critique checks each feature the narrative names against the picture ("Count: narrative two,
image a single, wrong."). For DermEval's per-case records (the JSONL that ``vision_reliance.py``, ``soreb_ablation.py``
or ``dermtrl eval`` write) this prints, per slot:

- **copied**: the narrative's word written as the narrative's (a reading of the text);
- **read**: the picture's word written as the picture's (a reading of the image);
- **verdict**: right/wrong agrees with the two words written (a comparison);
- **true verdict**: right/wrong agrees with the truth;

and, per kind of sentence (each slot, extra findings seen, "Not visible: ...", the diagnosis, ...), how often it
differs from the generator's own critique. Diagnostics only: nothing here chooses a setting.

    python benchmarks/critique_slots.py outputs/vision_reliance/true-seed42.jsonl [more.jsonl ...]

Records of any adapter on the synthetic test cases come from ``dermtrl eval``, e.g. the Space's demo adapter's:

    dermtrl eval --adapter DIR --dataset dermtrl:synthetic --n 200 --out outputs/critique_slots/demo-adapter-test
    python benchmarks/critique_slots.py outputs/critique_slots/demo-adapter-test/evaluations.jsonl --write-docs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, write_console_docs  # noqa: E402

from dermtrl.cases.synthetic import (  # noqa: E402
    EXTRAS,
    SYNTHETIC_VERSION,
    claim_words,
    critique,
    draw_case,
    finding_words,
)

SLOTS = tuple(claim_words())  # the critique's checked slots, in order: Count ... Site, Diagnosis
MEASURES = ("copied", "read", "verdict", "true verdict")
#: How each sentence of a critique begins, by kind (the slots' own lines, then the rest).
SENTENCE_KINDS = (*(f"{slot}:" for slot in SLOTS), "The image also shows", "Not visible", "These findings",
                  "Its reasoning", "Its advice", "No differential", "The narrative does not")


def _case_index(case_id: str) -> int:
    """The stream index of a synthetic case id (``synth-v2.4-0-200013`` -> 200013), checking the version."""
    parts = case_id.split("-")
    if len(parts) != 4 or parts[0] != "synth":
        raise ValueError(f"case_id {case_id!r} is not a synthetic case id (synth-VERSION-SEED-INDEX)")
    if parts[1] != SYNTHETIC_VERSION:
        raise ValueError(f"case_id {case_id!r} is from synthetic {parts[1]}; this is synthetic {SYNTHETIC_VERSION}")
    return int(parts[3])


def _kind(sentence: str) -> str:
    return next((k.rstrip(":") for k in SENTENCE_KINDS if sentence.startswith(k)), "other")


def _sentences(text: str) -> dict[str, str]:
    return {_kind(s): s for s in re.split(r"(?<=\.) ", text.strip()) if s}


def slot_accuracy(records: Iterable[dict]) -> tuple[dict[str, Counter], Counter, Counter, dict[tuple, Counter]]:
    """Per slot, the count of records meeting each of ``MEASURES`` (with ``"n"`` the records checked); per sentence
    kind, how many critiques differ from the generator's critique, and how many have that kind at all; and per (slot,
    narrative's word), ``n``, ``copied`` and ``as read`` (a miscopy that repeats the word written for the picture)."""
    slots: dict[str, Counter] = {slot: Counter() for slot in SLOTS}
    wrong, present = Counter(), Counter()
    by_word: dict[tuple, Counter] = {}
    for record in records:
        draw = draw_case(_case_index(record["case_id"]))
        claims, truth, text = draw.claims, draw.truth, record.get("critique") or ""
        pairs = {}
        if claims.findings is not None:
            seen = finding_words(truth)
            pairs = {slot: (said, seen[slot]) for slot, said in finding_words(claims.findings).items()}
        if claims.diagnosis:
            pairs["Diagnosis"] = (claims.diagnosis, draw.cond.label)
        for slot, (said, seen) in pairs.items():
            tally, word = slots[slot], by_word.setdefault((slot, said), Counter())
            tally["n"] += 1
            word["n"] += 1
            m = re.search(re.escape(slot) + r": narrative (.+?), image (.+?), (right|wrong)\.", text)
            if m is None:
                continue
            tally["copied"] += m.group(1) == said
            word["copied"] += m.group(1) == said
            word["as read"] += m.group(1) != said and m.group(1) == m.group(2)
            tally["read"] += m.group(2) == seen
            tally["verdict"] += (m.group(3) == "right") == (m.group(1) == m.group(2))
            tally["true verdict"] += (m.group(3) == "right") == (said == seen)
        reference = _sentences(critique(claims, draw.cond, truth, {}))
        written = _sentences(text)
        for kind in set(reference) | set(written):
            present[kind] += 1
            wrong[kind] += reference.get(kind) != written.get(kind)
    return slots, wrong, present, by_word


def read_records(path: str) -> list[dict]:
    """DermEval's per-case records (JSONL); an unreadable file stops the script with its name."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: cannot read DermEval records ({err})") from None


def picture_readings(records: Iterable[dict]) -> tuple[dict[str, Counter], dict[str, Counter]]:
    """How DermEval reads the pictures, from its critiques: per feature slot, counts of (the picture's word, the word
    written for the image); per extra finding, how often it is written as seen when the picture has it (``present``
    of ``n present``) and when it does not (``absent`` of ``n absent``). Only records of cases shown their own image
    measure a reading (a mismatched image is not the case's picture). ``task_bounds.py --reading-from`` samples
    from these to bound what an evaluator that reads this way can reach."""
    confusion: dict[str, Counter] = {slot: Counter() for slot in SLOTS if slot != "Diagnosis"}
    extras: dict[str, Counter] = {extra: Counter() for extra in EXTRAS}
    for record in records:
        draw = draw_case(_case_index(record["case_id"]))
        text = record.get("critique") or ""
        if draw.claims.findings is not None:  # the critique checks the narrative's features one by one
            for slot, seen in finding_words(draw.truth).items():
                m = re.search(re.escape(slot) + r": narrative (.+?), image (.+?), (right|wrong)\.", text)
                if m is not None:
                    confusion[slot][seen, m.group(2)] += 1
        written = set(re.findall(r"The image also shows (.+?)\.", text))
        for extra, tally in extras.items():
            key = "present" if extra in draw.truth.extras else "absent"
            tally[f"n {key}"] += 1
            tally[key] += extra in written
    return confusion, extras


def writers(records: Iterable[dict]) -> str:
    """Which weights wrote the records (their ``model`` field, a local folder by its name), with counts: what the
    tables describe, stated beside them."""
    counts = Counter(str(r.get("model") or "unknown model") for r in records)
    names = {m: Path(m).name if Path(m).is_absolute() else m for m in counts}
    return ", ".join(f"{names[m]} ({n})" for m, n in counts.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", help="DermEval per-case records (JSONL) of synthetic cases")
    add_write_docs_argument(parser)
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140, record=True)
    for path in args.records:
        records = read_records(path)
        if not records:
            raise SystemExit(f"{path}: no records in it")
        slots, wrong, present, by_word = slot_accuracy(records)
        table = Table(title=f"{path}: {len(records)} critiques, share of slots right")
        for col in ("slot", "n", *MEASURES):
            table.add_column(col, justify="left" if col == "slot" else "right")
        for slot, tally in slots.items():
            n = tally["n"]
            table.add_row(slot, str(n), *(f"{tally[m] / n:.0%}" if n else "-" for m in MEASURES))
        console.print(table)
        cases = sorted({_case_index(r["case_id"]) for r in records})
        console.print(f"written by: {writers(records)}; synthetic {SYNTHETIC_VERSION} cases {cases[0]:,}-{cases[-1]:,} "
                      f"({len(cases)} distinct)")
        parts = Table(title="Sentences that differ from the generator's critique")
        for col in ("sentence", "differs", "of"):
            parts.add_column(col, justify="left" if col == "sentence" else "right")
        for kind in sorted(present, key=lambda k: -wrong[k] / present[k]):
            parts.add_row(kind, str(wrong[kind]), str(present[kind]))
        console.print(parts)
        words = Table(title="Copies of the narrative's word, by word (miscopies that repeat the picture's word)")
        for col in ("slot", "narrative's word", "n", "copied", "miscopied as read"):
            words.add_column(col, justify="left" if col in ("slot", "narrative's word") else "right")
        for (slot, word), tally in sorted(by_word.items(), key=lambda kv: kv[1]["copied"] / kv[1]["n"]):
            words.add_row(slot, word, str(tally["n"]), f"{tally['copied'] / tally['n']:.0%}", str(tally["as read"]))
        console.print(words)
        _, extras = picture_readings(records)
        seen = Table(title="Extra findings written as seen (\"The image also shows ...\"): when the picture has them, "
                           "and when it does not")
        for col in ("extra finding", "present", "seen when present", "absent", "seen when absent"):
            seen.add_column(col, justify="left" if col == "extra finding" else "right")
        for extra, tally in extras.items():
            rates = [f"{tally[k] / tally[f'n {k}']:.0%}" if tally[f"n {k}"] else "-" for k in ("present", "absent")]
            seen.add_row(extra, str(tally["n present"]), rates[0], str(tally["n absent"]), rates[1])
        console.print(seen)
    if args.write_docs:
        write_console_docs("critique_slots", "Which part of DermEval's critique goes wrong", console)


if __name__ == "__main__":
    main()
