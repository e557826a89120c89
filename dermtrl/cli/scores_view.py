"""How the command line shows DermEval scores: one case's table (``dermtrl score``), the summary of many
(``dermtrl eval``), and the legend that says how to read them.

Every table here fits 100 columns, and every table of scores carries :data:`LEGEND` and the mapping of the two
dimensions the critique names as the paper's Figure 4 does (:data:`~dermtrl.dimensions.LABEL_NAMES`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from dermtrl.dimensions import DIMENSIONS, LABEL_NAMES, SCORE_MAX, SCORE_MIN, Overall

__all__ = ["CRITIQUE_NAMES", "LEGEND", "score_table", "summary_table"]

#: How to read every score the CLI prints.
LEGEND = (f"Scores run {SCORE_MIN:g}-{SCORE_MAX:g}; higher is better on every dimension ({SCORE_MAX:g} = best, "
          "Safety 5 = no harm). Score: the digit DermEval wrote. Expected: the mean of its probabilities for "
          "0-5 at that digit; Spread: their standard deviation (0 = certain, 2.5 at most; lower = more "
          "confident). Expected and Spread are the model's own self-report, not calibrated.")
#: The dimensions the critique names differently (Figure 4's label text), as one line.
CRITIQUE_NAMES = "The critique names " + "; ".join(
    f"{dim} '{LABEL_NAMES[dim]}'" for dim in DIMENSIONS if LABEL_NAMES[dim] != dim) + "."


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


def score_table(record: Mapping[str, Any], title: str = "DermEval scores") -> Table:
    """One evaluation (``Evaluation.to_dict()``) as a table: score, expected, spread and the critique's name for
    each dimension; the overall (how many of six it averages, the Safety flag) and the legend below."""
    scores = record.get("scores") or {}
    expected, spread = record.get("expected") or {}, record.get("spread") or {}
    intervals, uncertain = record.get("intervals") or {}, set(record.get("uncertain") or ())
    overall = Overall.of(scores)
    calibrated = (f"Interval: calibrated on validation cases to hold the experts' score {record['coverage']:.0%} of "
                  f"the time; 'uncertain' marks one 3 points or wider." if intervals and record.get("coverage")
                  else "No calibration file beside this adapter: no intervals (`dermtrl calibrate` fits one).")
    table = Table(title=title, caption=f"Overall: {overall.text()}\n{LEGEND}\n{calibrated}\n{CRITIQUE_NAMES}",
                  caption_justify="left", width=100)
    table.add_column("Dimension")
    table.add_column("Score", justify="right")
    table.add_column("Expected", justify="right")
    table.add_column("Spread", justify="right")
    if intervals:
        table.add_column("Interval", justify="right")
    table.add_column("Named in the critique")
    for dim in DIMENSIONS:
        score = scores.get(dim)
        cells = ["[red]missing[/red]" if score is None else f"{score:g}", _num(expected.get(dim)),
                 _num(spread.get(dim))]
        if intervals:
            low_high = intervals.get(dim)
            cells.append("-" if not low_high else f"{low_high[0]:.1f}-{low_high[1]:.1f}"
                         + (" uncertain" if dim in uncertain else ""))
        table.add_row(dim, *cells, LABEL_NAMES[dim])
    return table


def summary_table(records: Sequence[Mapping[str, Any]], title: str = "DermEval scores over the evaluated cases"
                  ) -> Table:
    """Many evaluations: per dimension the mean score, how many cases scored it and the share at 2 or less; the
    mean overall and the number of Safety flags below. Cases that failed (an ``error``) are left out."""
    scored = [r for r in records if "error" not in r]
    overalls = [Overall.of(r.get("scores") or {}) for r in scored]
    means = [o.mean for o in overalls if o.mean is not None]
    flags = sum(o.unsafe for o in overalls)
    mean_text = f"{sum(means) / len(means):.2f}/5" if means else "none"
    caption = (f"{len(scored)} case(s); mean overall {mean_text}; Safety flag (Safety 2 or less) on {flags}.\n"
               f"{LEGEND}\n{CRITIQUE_NAMES}")
    table = Table(title=title, caption=caption, caption_justify="left", width=100)
    table.add_column("Dimension")
    table.add_column("Mean score", justify="right")
    table.add_column("Scored", justify="right")
    table.add_column("Missing", justify="right")
    table.add_column("Score 2 or less", justify="right")
    for dim in DIMENSIONS:
        values = [float(v) for r in scored if (v := (r.get("scores") or {}).get(dim)) is not None]
        low = sum(v <= 2 for v in values)
        table.add_row(dim, f"{sum(values) / len(values):.2f}" if values else "-", str(len(values)),
                      str(len(scored) - len(values)), f"{low} ({low / len(values):.0%})" if values else "-")
    return table
