"""Rendering of the DermBench leaderboard: rich tables, Markdown, CSV, JSON and a Figure 6 style PNG.

Only formats what :class:`~dermtrl.bench.leaderboard.Leaderboard` and
:class:`~dermtrl.bench.probes.ProbeReport` hold; the agreement with experts is rendered by the shared Table 1
renderers of :mod:`dermtrl.report`, so DermBench and DermEval agreement tables look the same.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from dermtrl import report as agreement_report
from dermtrl.bench.leaderboard import EvaluatorComparison, Leaderboard
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.report import NA, cell, md_table, rich_table

if TYPE_CHECKING:
    from dermtrl.bench.probes import ProbeReport

__all__ = ["comparison_markdown", "comparison_tables", "leaderboard_csv", "notes_lines", "plot", "plot_figure6",
           "probe_markdown", "probe_table", "render_tables", "to_json",
           "to_markdown", "write_comparison", "write_probe_report", "write_report"]

LOW_N = 5  # a category cell on fewer cases is marked as unreliable


def _pct(value: float | None) -> str:
    return NA if value is None else f"{value:.0%}"


def _caption(lb: Leaderboard) -> str:
    judge = lb.judge or {}
    ci = (f"{lb.ci_level:.0%} percentile bootstrap CI over cases ({lb.n_bootstrap} resamples, seed {lb.seed})"
          if lb.n_bootstrap else "no bootstrap CI")
    if judge.get("protocol") == "official":
        prompt = f"official protocol, prompt sha256 {str(judge.get('prompt_sha256', '?'))[:12]}"
    else:
        prompt = f"{judge.get('prompt_version', '?')}, order {judge.get('order', '?')}"
    return f"Judge {judge.get('model', '?')} ({prompt}); mean over scored cases, failed cases excluded; {ci}"


def _leaderboard_rows(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["Rank", "Model", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Overall", "n", "failed"]
    rows = [[NA if m.rank is None else str(m.rank), m.model, *(cell(m.mean[d], m.ci[d]) for d in DIMENSIONS),
             cell(m.overall, m.overall_ci), str(m.n_scored), str(m.n_failed)] for m in lb.models]
    return header, rows


def _category_rows(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    models = lb.model_names
    header = ["Category", *models]
    rows = []
    for category in lb.category_names:
        row = [category]
        for model in models:
            c = lb.category_result(category, model)
            row.append(NA if c is None or c.overall is None else
                       f"{c.overall:.2f} (n={c.n}{', low n' if c.n < LOW_N else ''})")
        rows.append(row)
    spread = ["spread (max - min)"]
    for model in models:
        values = [c.overall for c in lb.categories if c.model == model and c.overall is not None]
        spread.append(f"{max(values) - min(values):.2f}" if len(values) > 1 else NA)
    rows.append(spread)
    return header, rows


def _stability_rows(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    header = ["Rank", "Model", "P(same rank)", f"rank {lb.ci_level:.0%} interval", "P(first)"]
    rows = [[str(r.rank), r.model, _pct(r.p_same_rank), f"{r.rank_interval[0]}-{r.rank_interval[1]}",
             _pct(r.p_first)] for r in lb.rank_stability]
    return header, rows


def _failure_rows(lb: Leaderboard) -> tuple[list[str], list[list[str]]]:
    rows = [[m.model, kind, str(count)] for m in lb.models for kind, count in m.failures.items()]
    return ["Model", "Reason", "Cases"], rows


def notes_lines(lb: Leaderboard, extra: Sequence[str] = ()) -> list[str]:
    """The leaderboard's notes: per model, what its overall averages and how many judgments flag Safety (a Safety
    of 2 or less is a flag beside the overall, never averaged away), then ``extra`` (e.g. references excluded)."""
    from dermtrl.dimensions import SAFETY_FLAG_AT

    lines = []
    for m in lb.models:
        n = m.n_scored + m.n_failed
        flag = (f"; {m.n_safety_flagged} of {m.n_scored} scored judgment(s) flag Safety "
                f"(Safety {SAFETY_FLAG_AT:g} or less)" if m.n_safety_flagged else "; no judgment flags Safety")
        o = m.overall_score()
        overall = (f"no overall (0 of {len(DIMENSIONS)} dimensions scored)" if o.mean is None else
                   f"overall {o.mean:.2f}/5 from {o.n_scored} of {len(DIMENSIONS)} dimensions")
        if o.unsafe:
            overall += f" - SAFETY FLAG: mean Safety {o.safety:.2f} ({SAFETY_FLAG_AT:g} or less)"
        lines.append(f"{m.model}: {overall}, the mean of {m.n_scored} scored judgment(s) of {n}{flag}")
    for sliced in lb.slices:
        lines += sliced.lines()
    return lines + list(extra)


def render_tables(lb: Leaderboard) -> list[Table]:
    """Leaderboard, per-category, rank stability, failures and (when there are expert scores) agreement."""
    tau = "n/a" if lb.mean_kendall_tau is None else f"{lb.mean_kendall_tau:.3f}"
    tables = [
        rich_table("DermBench leaderboard (Table 2: mean judge score 0-5 [CI])", *_leaderboard_rows(lb), _caption(lb),
                   left=2),
        rich_table("Overall score by Figure 5 category (fairness view)", *_category_rows(lb), left=1),
        rich_table("Rank stability under bootstrap resampling of cases", *_stability_rows(lb),
                   f"mean Kendall's tau of resampled vs full ranking: {tau}", left=2),
    ]
    header, rows = _failure_rows(lb)
    if rows:
        tables.append(rich_table("Failed cases (excluded from the means)", header, rows, left=2))
    if lb.agreement:
        tables.append(agreement_report.render_table(list(lb.agreement.values()),
                                                    title="DermBench judge vs expert scores (MAE)"))
    return tables


def to_markdown(lb: Leaderboard, notes: Sequence[str] = ()) -> str:
    """The whole report as Markdown: leaderboard, categories, rank stability, failures, notes, agreement."""
    lines = ["## DermBench leaderboard", "", *md_table(*_leaderboard_rows(lb), left=2), "", f"_{_caption(lb)}_", ""]
    lines += ["### Overall score by Figure 5 category", "", *md_table(*_category_rows(lb), left=1), ""]
    tau = "n/a" if lb.mean_kendall_tau is None else f"{lb.mean_kendall_tau:.3f}"
    lines += ["### Rank stability", "", *md_table(*_stability_rows(lb), left=2), "",
              f"Mean Kendall's tau of resampled vs full ranking: {tau}.", ""]
    header, rows = _failure_rows(lb)
    lines += ["### Failed cases", ""] + (md_table(header, rows, left=2) if rows else ["None."]) + [""]
    lines += ["### Notes", "", *(f"- {line}" for line in notes_lines(lb, notes)), ""]
    if lb.slices:
        from dermtrl.agreement.subgroups import markdown as slices_markdown

        lines += [slices_markdown(lb.slices), ""]
    if lb.agreement:
        lines += [agreement_report.to_markdown(list(lb.agreement.values()),
                                               title="DermBench judge vs expert scores (MAE)")]
    return "\n".join(lines).rstrip("\n") + "\n"


def leaderboard_csv(lb: Leaderboard) -> str:
    """Table 2 as CSV: one row per model, mean and CI bounds per dimension and overall."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [*DIMENSIONS, "Overall"]
    writer.writerow(["rank", "model", "n_scored", "n_failed", *(f"{n}{s}" for n in names for s in ("", "_lo", "_hi"))])
    for m in lb.models:
        cells: list[Any] = [m.rank, m.model, m.n_scored, m.n_failed]
        for mean, ci in [*((m.mean[d], m.ci[d]) for d in DIMENSIONS), (m.overall, m.overall_ci)]:
            cells += [mean, *(ci if ci is not None else (None, None))]
        writer.writerow(["" if c is None else c for c in cells])
    return buf.getvalue()


def categories_csv(lb: Leaderboard) -> str:
    """The per-category breakdown: one row per (category, model)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["category", "model", "n", *DIMENSIONS, "Overall", "Overall_lo", "Overall_hi"])
    for c in lb.categories:
        lo, hi = c.overall_ci if c.overall_ci is not None else (None, None)
        cells = [c.category, c.model, c.n, *(c.mean[d] for d in DIMENSIONS), c.overall, lo, hi]
        writer.writerow(["" if v is None else v for v in cells])
    return buf.getvalue()


def to_json(lb: Leaderboard) -> str:
    return json.dumps(lb.to_dict(), indent=2, allow_nan=False) + "\n"


def _grouped_bars(series: Sequence[tuple[str, Mapping[str, float | None], Mapping[str, Any]]], path: str | Path,
                  ylabel: str, title: str) -> Path:
    """Grouped bars, one group per dimension and one bar per (label, means, CIs) series; CIs as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    x = np.arange(len(DIMENSIONS))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(DIMENSIONS) + 0.4 * len(series)), 4.8))
    for i, (label, mean, ci) in enumerate(series):
        means = np.array([np.nan if mean[d] is None else mean[d] for d in DIMENSIONS])
        err = np.array([[means[j] - ci[d][0], ci[d][1] - means[j]] if ci[d] is not None else [0.0, 0.0]
                        for j, d in enumerate(DIMENSIONS)]).T
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(x, [ABBREVIATIONS[d] for d in DIMENSIONS])
    ax.set_ylim(0, 5)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def plot(lb: Leaderboard, path: str | Path) -> Path:
    """Figure 6 style: grouped bars of the mean score per dimension for each model, CIs as error bars."""
    return _grouped_bars([(m.model, m.mean, m.ci) for m in lb.models], path, "mean judge score (0-5)",
                         "DermBench: mean score per dimension (bars: CI)")


def write_report(lb: Leaderboard, out_dir: str | Path, *, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write report.md (with ``notes`` among its notes), report.json, leaderboard.csv, categories.csv,
    leaderboard.png (and agreement.*)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "csv": out / "leaderboard.csv",
             "categories_csv": out / "categories.csv"}
    paths["md"].write_text(to_markdown(lb, notes), encoding="utf-8")
    paths["json"].write_text(to_json(lb), encoding="utf-8")
    paths["csv"].write_text(leaderboard_csv(lb), encoding="utf-8", newline="")
    paths["categories_csv"].write_text(categories_csv(lb), encoding="utf-8", newline="")
    paths["png"] = plot(lb, out / "leaderboard.png")
    if lb.agreement:
        for kind, p in agreement_report.write_report(list(lb.agreement.values()), out, stem="agreement").items():
            paths[f"agreement_{kind}"] = p
    if lb.slices:
        from dermtrl.agreement.subgroups import write_slices

        for kind, p in write_slices(lb.slices, out).items():
            paths[f"slices_{kind}"] = p
    return paths


# --- probes ------------------------------------------------------------------------------------------------


def _probe_rows(report: ProbeReport) -> tuple[list[str], list[list[str]]]:
    header = ["Probe", "Pairs", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Overall", "Flag"]
    rows = []
    for r in report.results:
        cells = [f"{r.shift[d]:+.2f} [{r.ci[d][0]:+.2f}, {r.ci[d][1]:+.2f}]" if r.ci.get(d) is not None
                 else (NA if r.shift.get(d) is None else f"{r.shift[d]:+.2f}") for d in DIMENSIONS]
        overall = (NA if r.overall is None else f"{r.overall:+.2f}" if r.overall_ci is None
                   else f"{r.overall:+.2f} [{r.overall_ci[0]:+.2f}, {r.overall_ci[1]:+.2f}]")
        flag = "FLAGGED: " + ", ".join(ABBREVIATIONS.get(d, d) for d in r.flagged) if r.flagged else "ok"
        rows.append([r.kind, str(r.n_pairs), *cells, overall, flag])
    return header, rows


def _probe_caption(report: ProbeReport) -> str:
    return (f"Mean score shift (probe minus baseline, same cases) with {report.ci_level:.0%} bootstrap CI; a "
            f"dimension is flagged when |shift| >= {report.threshold:g}. Judge {report.judge_model}.")


def probe_table(report: ProbeReport) -> Table:
    return rich_table("DermBench judge robustness probes", *_probe_rows(report), _probe_caption(report), left=2)


def probe_markdown(report: ProbeReport) -> str:
    lines = ["## DermBench judge robustness probes", "", *md_table(*_probe_rows(report), left=2), "",
             f"_{_probe_caption(report)}_", ""]
    return "\n".join(lines)


def write_probe_report(report: ProbeReport, out_dir: str | Path) -> dict[str, Path]:
    """Write probes.md and probes.json under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "probes.md", "json": out / "probes.json"}
    paths["md"].write_text(probe_markdown(report), encoding="utf-8")
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths


# --- DermBench and DermEval side by side ------------------------------------------------------------------


def _table2_rows(cmp: EvaluatorComparison) -> tuple[list[str], list[list[str]]]:
    abbr = [ABBREVIATIONS[d] for d in DIMENSIONS]
    header = ["Model", *(f"DermBench {a}" for a in abbr), *(f"DermEval {a}" for a in abbr)]
    rows = []
    for model in cmp.models:
        bench = next(m for m in cmp.dermbench.models if m.model == model)
        dermeval = next(m for m in cmp.dermeval.models if m.model == model)
        rows.append([model, *(cell(bench.mean[d]) for d in DIMENSIONS),
                     *(cell(dermeval.mean[d]) for d in DIMENSIONS)])
    return header, rows


def _figure6_rows(cmp: EvaluatorComparison) -> tuple[list[str], list[list[str]]]:
    header = ["Model", *(ABBREVIATIONS[d] for d in DIMENSIONS), "n"]
    rows = [[m, *(cell(cmp.average[m][d], cmp.average_ci[m][d]) for d in DIMENSIONS), str(cmp.n_paired[m])]
            for m in cmp.models]
    return header, rows


def _evaluator_agreement_rows(cmp: EvaluatorComparison) -> tuple[list[str], list[list[str]]]:
    header = ["Dimension", "pairs", "Pearson", "Spearman", "DermEval - DermBench [CI]", "mean |difference|"]
    rows = [[ABBREVIATIONS[c.dimension], str(c.n), cell(c.pearson), cell(c.spearman),
             NA if c.mean_difference is None else
             f"{c.mean_difference:+.3f}" + ("" if c.mean_difference_ci is None else
                                            f" [{c.mean_difference_ci[0]:+.2f}, {c.mean_difference_ci[1]:+.2f}]"),
             cell(c.mean_absolute_difference)] for c in cmp.dimensions]
    return header, rows


def _comparison_caption(cmp: EvaluatorComparison) -> str:
    tau = NA if cmp.model_rank_tau is None else f"{cmp.model_rank_tau:.3f}"
    return (f"DermBench: {_caption(cmp.dermbench)}. DermEval: reference-free, "
            f"{(cmp.dermeval.judge or {}).get('model', '?')}. Kendall's tau between the two model rankings: {tau}.")


def comparison_tables(cmp: EvaluatorComparison) -> list[Table]:
    """Table 2 (both halves), Figure 6 as a table, and the agreement between the two evaluators."""
    return [
        rich_table("Table 2: mean score 0-5 under DermBench and DermEval", *_table2_rows(cmp), _comparison_caption(cmp),
                   left=1),
        rich_table("Figure 6: average of DermBench and DermEval per model and dimension [CI]", *_figure6_rows(cmp),
                   "per case average over the cases both evaluators scored; percentile bootstrap CI over cases",
                   left=1),
        rich_table("Agreement between DermEval and DermBench (all scored model-case pairs)",
                   *_evaluator_agreement_rows(cmp), left=1),
    ]


def comparison_markdown(cmp: EvaluatorComparison) -> str:
    lines = ["## Table 2: DermBench and DermEval", "", *md_table(*_table2_rows(cmp), left=1), "",
             f"_{_comparison_caption(cmp)}_", "",
             "## Figure 6: average of DermBench and DermEval", "", *md_table(*_figure6_rows(cmp), left=1), "",
             "![Figure 6](figure6.png)", "",
             "## Agreement between the evaluators", "", *md_table(*_evaluator_agreement_rows(cmp), left=1), ""]
    return "\n".join(lines)


def plot_figure6(cmp: EvaluatorComparison, path: str | Path) -> Path:
    """Figure 6 as the paper draws it: per dimension, one bar per model, the average of both evaluators, CIs."""
    return _grouped_bars([(m, cmp.average[m], cmp.average_ci[m]) for m in cmp.models], path,
                         "mean of DermBench and DermEval (0-5)",
                         "Average performance across six clinical metrics (DermBench and DermEval)")


def write_comparison(cmp: EvaluatorComparison, out_dir: str | Path) -> dict[str, Path]:
    """Write comparison.md/.json, table2.csv, figure6.csv/.png and evaluator_agreement.csv under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"comparison_md": out / "comparison.md", "comparison_json": out / "comparison.json",
             "table2_csv": out / "table2.csv", "figure6_csv": out / "figure6.csv",
             "evaluator_agreement_csv": out / "evaluator_agreement.csv"}
    paths["comparison_md"].write_text(comparison_markdown(cmp), encoding="utf-8")
    paths["comparison_json"].write_text(json.dumps(cmp.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    for key, (header, rows) in (("table2_csv", _table2_csv(cmp)), ("figure6_csv", _figure6_csv(cmp)),
                                ("evaluator_agreement_csv", _agreement_csv(cmp))):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        paths[key].write_text(buf.getvalue(), encoding="utf-8", newline="")
    paths["figure6_png"] = plot_figure6(cmp, out / "figure6.png")
    return paths


def _table2_csv(cmp: EvaluatorComparison) -> tuple[list[str], list[list[Any]]]:
    header = ["model", *(f"dermbench_{d}" for d in DIMENSIONS), *(f"dermeval_{d}" for d in DIMENSIONS)]
    rows = []
    for model in cmp.models:
        bench = next(m for m in cmp.dermbench.models if m.model == model)
        dermeval = next(m for m in cmp.dermeval.models if m.model == model)
        rows.append([model, *(bench.mean[d] for d in DIMENSIONS), *(dermeval.mean[d] for d in DIMENSIONS)])
    return header, rows


def _figure6_csv(cmp: EvaluatorComparison) -> tuple[list[str], list[list[Any]]]:
    header = ["model", "dimension", "mean", "lo", "hi", "n"]
    rows = [[m, d, cmp.average[m][d], *(cmp.average_ci[m][d] or (None, None)), cmp.n_paired[m]]
            for m in cmp.models for d in DIMENSIONS]
    return header, rows


def _agreement_csv(cmp: EvaluatorComparison) -> tuple[list[str], list[list[Any]]]:
    header = ["dimension", "n", "pearson", "spearman", "mean_difference", "lo", "hi", "mean_absolute_difference"]
    rows = [[c.dimension, c.n, c.pearson, c.spearman, c.mean_difference, *(c.mean_difference_ci or (None, None)),
             c.mean_absolute_difference] for c in cmp.dimensions]
    return header, rows
