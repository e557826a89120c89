"""How many evaluation texts per second does the rule-based parser read on one core?

    python benchmarks/parse_speed.py [--n 20000] [--repeats 3] [--seed 0]

Builds a deterministic mix of realistic texts, mostly Figure 4's label format (``format_evaluation`` with a
random critique of about 600 characters) plus JSON, markdown-table, titled-section and prose answers as LLM
judges write them, checks that every text parses to the scores it was built from, then times
:func:`dermtrl.parsing.parse_scores` per format (best of ``--repeats``). The goal is 50,000 texts/s overall.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _docs import add_write_docs_argument, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS  # noqa: E402
from dermtrl.parsing import parse_scores  # noqa: E402
from dermtrl.prompts import format_evaluation  # noqa: E402

GOAL = 50_000.0
#: Share of each format in the mix: evaluator outputs dominate; judges' answers make up the rest.
MIX = {"figure4-label": 0.80, "json": 0.05, "table": 0.05, "sections": 0.05, "prose": 0.05}

_SENTENCES = (
    "The image depicts an erythematous, scaly plaque on the extensor surface of the forearm.",
    "The narrative describes morphology, color, distribution and surface changes accurately.",
    "Another possibility is lamellar ichthyosis, but the distribution argues against it.",
    "Given the information, the most likely diagnosis is psoriasis vulgaris.",
    "The differential diagnosis includes nummular eczema, tinea corporis and lichen simplex chronicus.",
    "No harmful treatment advice is given, and the text recommends a dermatology referral.",
    "Some claims about prevalence are not supported by the image, which lowers groundedness.",
    "The reasoning moves from the lesion family to specific diseases in a coherent order.",
    "The description of the border and scale is precise, though the size is not stated.",
    "Coverage is good: the candidate mentions triggers, course and typical sites.",
    "The final answer matches the reference diagnosis, although the subtype is omitted.",
    "Lesions measure 3 mm to 2 cm and are distributed symmetrically.",
)


def _critique(rng: random.Random, chars: int = 420) -> str:
    out: list[str] = []
    while sum(len(s) + 1 for s in out) < chars:
        out.append(rng.choice(_SENTENCES))
    return " ".join(out)


def _scores(rng: random.Random) -> dict[str, float]:
    return {d: rng.randint(0, 10) / 2 for d in DIMENSIONS}


def _label(rng: random.Random, s: dict[str, float]) -> str:
    return format_evaluation(_critique(rng), s)


def _json(rng: random.Random, s: dict[str, float]) -> str:
    body = json.dumps({"scores": {d.lower().replace(" ", "_"): v for d, v in s.items()}, "overall": 3})
    return f"{_critique(rng, 300)}\n\n```json\n{body}\n```"


def _table(rng: random.Random, s: dict[str, float]) -> str:
    rows = "\n".join(f"| {d} | {v:g}/5 | {rng.choice(_SENTENCES)} |" for d, v in s.items())
    if rng.random() < 0.5:
        return f"{_critique(rng, 200)}\n\n| Dimension | Score | Justification |\n|---|---|---|\n{rows}"
    head = " | ".join(ABBREVIATIONS[d] for d in DIMENSIONS)
    vals = " | ".join(f"{s[d]:g}" for d in DIMENSIONS)
    return f"{_critique(rng, 300)}\n\n| {head} |\n|{'---|' * 6}\n| {vals} |"


def _sections(rng: random.Random, s: dict[str, float]) -> str:
    return "\n\n".join(
        f"## {d}\nScore: {v:g}\n{rng.choice(_SENTENCES)}\nSuggestion: {rng.choice(_SENTENCES)}"
        for d, v in s.items()
    )


def _prose(rng: random.Random, s: dict[str, float]) -> str:
    parts = [f"I would rate {d} at {v:g} out of 5. {rng.choice(_SENTENCES)}" for d, v in s.items()]
    return " ".join(parts)


BUILDERS: dict[str, Callable[[random.Random, dict[str, float]], str]] = {
    "figure4-label": _label,
    "json": _json,
    "table": _table,
    "sections": _sections,
    "prose": _prose,
}


def build(n: int, seed: int) -> dict[str, list[tuple[str, dict[str, float]]]]:
    rng = random.Random(seed)
    corpus: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for fmt, share in MIX.items():
        k = max(1, round(n * share))
        items = []
        for _ in range(k):
            s = _scores(rng)
            items.append((BUILDERS[fmt](rng, s), s))
        corpus[fmt] = items
    return corpus


def pin_one_core() -> str:
    """Pin this process to a single CPU (Linux) so the number is a one-core number."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity on this platform)"


def time_texts(texts: list[str], repeats: int) -> float:
    """Best wall time over ``repeats`` passes of parse_scores over ``texts``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            parse_scores(text)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="texts in the mix (default 20000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per format; the best counts")
    ap.add_argument("--seed", type=int, default=0)
    add_write_docs_argument(ap)
    args = ap.parse_args(argv)
    console = Console(record=True)
    pinned = pin_one_core()
    corpus = build(args.n, args.seed)

    wrong = sum(parse_scores(t).scores != s for items in corpus.values() for t, s in items)
    for items in corpus.values():  # warm caches and the regex engine before timing
        for t, _ in items[:200]:
            parse_scores(t)

    table = Table(title=f"parse_scores speed, one core ({pinned}), best of {args.repeats}")
    table.add_column("format")
    table.add_column("n", justify="right")
    table.add_column("mean chars", justify="right")
    table.add_column("texts/s", justify="right")
    table.add_column("µs/text", justify="right")
    total_n, total_t = 0, 0.0
    for fmt, items in corpus.items():
        texts = [t for t, _ in items]
        dt = time_texts(texts, args.repeats)
        total_n, total_t = total_n + len(texts), total_t + dt
        mean_chars = sum(map(len, texts)) / len(texts)
        table.add_row(
            fmt,
            str(len(texts)),
            f"{mean_chars:.0f}",
            f"{len(texts) / dt:,.0f}",
            f"{dt / len(texts) * 1e6:.1f}",
        )
    console.print(table)
    if wrong:
        console.print(f"[red]{wrong} texts parsed to scores other than those they were built from[/red]")
    overall = total_n / total_t
    console.print(
        f"overall: {overall:,.0f} texts/s on the mix (goal {GOAL:,.0f}/s, ratio {overall / GOAL:.2f}x)",
        highlight=False,
    )
    if args.write_docs:
        write_console_docs("parse_speed", "Score parser speed", console)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
