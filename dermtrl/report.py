"""Rendering of agreement reports (Table 1 layout): rich table, Markdown, CSV and JSON; and the project's one set
of table helpers (:func:`cell`, :func:`md_table`, :func:`rich_table`) that every other report (DermBench's
leaderboard, Table 2, the probes) renders with, so all tables read alike.

Data flows one way: :func:`dermtrl.metrics.agreement` computes, this module only formats what an
:class:`~dermtrl.metrics.AgreementReport` already holds. Nothing here recomputes a metric.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from dermtrl.agreement.ceiling import MACRO, Ceiling
from dermtrl.agreement.reliability import STATISTIC_NAMES, STATISTICS, Estimate
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.metrics import AgreementReport, DimensionAgreement

__all__ = ["CSV_FIELDS", "NA", "ceiling_lines", "cell", "md_row", "md_table", "render_table", "rich_table", "to_csv",
           "to_json", "to_markdown", "write_report"]

DEFAULT_TITLE = "Agreement with expert scores (MAE, lower is better)"
#: Shown statistics, agreement coefficients first; the ceiling table shows the first of them and the MAE.
SHOWN: tuple[str, ...] = ("icc21", "icc31", "alpha", "qwk", "spearman", "mae")
CEILING_SHOWN: tuple[str, ...] = ("mae", "icc21", "alpha")
CSV_FIELDS: tuple[str, ...] = (
    "section", "label", "dimension",
    *(f"{s}{suffix}" for s in STATISTICS for suffix in ("", "_lo", "_hi")),
    "kendall", "n", "n_missing",
)
NA = "n/a"
LEGEND = ("Scores 0-5, higher is better. MAE: lower is better. ICC(2,1) (absolute agreement), ICC(3,1) "
          "(consistency), Krippendorff's ordinal alpha, QWK and Spearman: 1 is perfect agreement, 0 is chance.")


def cell(value: float | None, ci: tuple[float, float] | None = None, digits: int = 3) -> str:
    """'0.117 [0.09, 0.14]'; just the value when there is no interval; 'n/a' when there is no value."""
    if value is None:
        return NA
    value = 0.0 if abs(value) < 0.5 * 10**-digits else value  # no "-0.000"
    return f"{value:.{digits}f}" if ci is None else f"{value:.{digits}f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> list[str]:
    """Markdown table lines: the first ``left`` columns left-aligned (labels), the rest right-aligned (numbers)."""
    return [md_row(header), md_row(["---"] * left + ["---:"] * (len(header) - left)), *map(md_row, rows)]


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None,
               left: int = 1) -> Table:
    """The same table for the terminal."""
    table = Table(title=title, caption=caption)
    for j, name in enumerate(header):
        table.add_column(name, justify="left" if j < left else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _reports(reports: Sequence[AgreementReport] | AgreementReport) -> list[AgreementReport]:
    return [reports] if isinstance(reports, AgreementReport) else list(reports)


def _with_baselines(reports: list[AgreementReport]) -> list[AgreementReport]:
    """Each report (its placeholder label filled in) followed by its constant baseline; a baseline already listed
    (nested in another report, or passed as a report of its own: same label and scores) is listed once, and none
    is added when the caller passed a constant baseline of its own (a report with ``constant=True``)."""

    def key(r: AgreementReport) -> tuple:
        return r.label, r.rounded, r.n_cases, tuple(sorted((d, a.mae, a.n) for d, a in r.per_dimension.items()))

    seen = {key(r) for r in reports}
    out: list[AgreementReport] = []
    for i, report in enumerate(reports):
        out.append(report if report.label else replace(report, label=_label(report, i)))
        own_constant = any(r.constant for r in reports)
        if report.baseline is not None and not own_constant and key(report.baseline) not in seen:
            seen.add(key(report.baseline))
            out.append(report.baseline)
    return out


def _est(report: AgreementReport, stat: str, dim: str | None) -> Estimate:
    if dim is None:
        if stat == "mae":
            return Estimate(report.macro_mae, report.macro_mae_ci)
        return report.macro.get(stat, Estimate(None))
    return report.per_dimension[dim].stat(stat)


def _label(report: AgreementReport, i: int) -> str:
    return report.label or f"Evaluator {i + 1}"


def _row(report: AgreementReport, i: int) -> list[str]:
    cells = [cell(report.per_dimension[d].mae, report.per_dimension[d].mae_ci) for d in DIMENSIONS]
    return [_label(report, i), *cells, cell(report.macro_mae, report.macro_mae_ci)]


def _header() -> list[str]:
    return ["Evaluator", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Macro"]


def _note(report: AgreementReport, i: int) -> str:
    """One line per report: rounding, case counts, missing scores, skipped cases, CI method."""
    rounding = "model scores rounded half-up to integers" if report.rounded else "raw (unrounded) scores"
    missing = {ABBREVIATIONS[d]: a.n_missing for d, a in report.per_dimension.items() if a.n_missing}
    missing_text = ", ".join(f"{k} {v}" for k, v in missing.items()) if missing else "none"
    ci_text = (
        f"{report.ci_level:.0%} percentile bootstrap CI ({report.n_bootstrap} resamples, seed {report.seed})"
        if report.n_bootstrap
        else "no bootstrap CI"
    )
    return (
        f"{_label(report, i)}: {rounding}; n = {report.n_cases} cases; missing: {missing_text}; "
        f"skipped: {report.skipped}; truncated: {report.truncated}; {ci_text}"
    )


def _macro_line(report: AgreementReport, i: int) -> str:
    """The agreement coefficients' macro averages in one line (the terminal shows no per-dimension detail)."""
    parts = [f"{STATISTIC_NAMES[s]} {cell(e.value, e.ci)}" for s in SHOWN if s != "mae"
             for e in [_est(report, s, None)]]
    return f"{_label(report, i)}, macro: " + "; ".join(parts)


def _ratio_verdict(ratio: Estimate, ci_level: float) -> str:
    if ratio.value is None:
        return "undefined"
    if ratio.ci is None:
        return "no interval"
    if ratio.ci[1] < 1:
        return "closer to the experts' mean than one expert is to the others'"
    if ratio.ci[0] > 1:
        return "further from the experts than they are from each other"
    return f"as close to the experts as they are to each other (the {ci_level:.0%} CI includes 1)"


def ceiling_lines(report: AgreementReport, i: int = 0) -> list[str]:
    """The expert ceiling as sentences: raters' and the model's macro MAE and their ratio, with the verdict."""
    c = report.ceiling
    if c is None:
        return []
    raters, model, ratio = c.raters[MACRO]["mae"], c.model[MACRO]["mae"], c.ratio[MACRO]["mae"]

    def span(low: int, high: int) -> str:
        return str(low) if low == high else f"{low}-{high}"

    raters_span = span(*c.raters_per_case)
    cases_span = span(min(c.n_cases.values()), max(c.n_cases.values()))
    return [f"Expert ceiling ({raters_span} raters per case, {cases_span} cases per dimension): macro MAE of each "
            f"rater vs the mean of the others {cell(raters.value, raters.ci)}; "
            f"{_label(report, i)} vs the mean of all raters {cell(model.value, model.ci)}; ratio "
            f"{cell(ratio.value, ratio.ci, digits=2)}: {_label(report, i)} is "
            f"{_ratio_verdict(ratio, c.ci_level)}"]


def render_table(
    reports: Sequence[AgreementReport] | AgreementReport, title: str = DEFAULT_TITLE
) -> Table:
    """Table 1 layout: one row per evaluator (and its constant baseline), MAE [CI] per dimension and the macro
    average; the caption holds the notes, the macro agreement coefficients and the expert ceiling."""
    reports = _reports(reports)
    rows = _with_baselines(reports)
    caption = [_note(r, i) for i, r in enumerate(reports)]
    caption += [_macro_line(r, i) for i, r in enumerate(reports)]
    caption += [line for i, r in enumerate(reports) for line in ceiling_lines(r, i)]
    return rich_table(title, _header(), [_row(r, i) for i, r in enumerate(rows)], caption="\n".join(caption))


def _detail_cells(label: str, dim: str, a: DimensionAgreement) -> list[str]:
    ci = NA if a.mae_ci is None else f"[{a.mae_ci[0]:.3f}, {a.mae_ci[1]:.3f}]"
    return [
        label, ABBREVIATIONS[dim], cell(a.mae), ci, cell(a.spearman), cell(a.kendall), cell(a.qwk),
        str(a.n), str(a.n_missing),
    ]


def _stat_rows(reports: list[AgreementReport]) -> list[list[str]]:
    rows = []
    for i, r in enumerate(reports):
        for s in SHOWN:
            rows.append([_label(r, i), STATISTIC_NAMES[s],
                         *(cell(e.value, e.ci) for d in (*DIMENSIONS, None) for e in [_est(r, s, d)])])
    return rows


def _ceiling_rows(report: AgreementReport, i: int) -> list[list[str]]:
    c = report.ceiling
    assert c is not None
    label = _label(report, i)
    sides = (("Raters, each vs the mean of the others", c.raters), (f"{label} vs the mean of all raters", c.model),
             (f"Ratio {label} / raters", c.ratio))
    return [[name, STATISTIC_NAMES[s], *(cell(e.value, e.ci, digits=2 if table is c.ratio else 3)
                                         for k in (*DIMENSIONS, MACRO) for e in [table[k][s]])]
            for s in CEILING_SHOWN for name, table in sides]


def _ceiling_markdown(reports: list[AgreementReport]) -> list[str]:
    lines: list[str] = []
    header = ["", "Statistic", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Macro"]
    for i, r in enumerate(reports):
        if r.ceiling is None:
            continue
        c = r.ceiling
        n = ", ".join(f"{ABBREVIATIONS[d]} {c.n_cases[d]} cases / {c.n_ratings[d]} ratings" for d in DIMENSIONS)
        lines += ["", f"#### Expert ceiling: {_label(r, i)} beside rater-to-rater agreement", "",
                  *md_table(header, _ceiling_rows(r, i), left=2), "", *(f"- {x}" for x in ceiling_lines(r, i)),
                  f"- Cases with two or more raters and a score: {n}. Ratio = model / raters, each with a "
                  f"{c.ci_level:.0%} paired percentile bootstrap CI over cases (the same resamples for both). MAE "
                  "ratio below 1, or agreement ratio above 1: the model is closer to the experts' mean than one "
                  "expert is to the others'. Each rater is compared with the mean of one rater fewer than the model "
                  "is, so at equal skill the MAE ratio sits a little under 1."]
    return lines


def to_markdown(reports: Sequence[AgreementReport] | AgreementReport, title: str = DEFAULT_TITLE) -> str:
    """A Table 1 style MAE table (with the constant baseline), notes per evaluator, the agreement statistics with
    CIs, the expert ceiling when raters are known, then a per-dimension detail table of all metrics."""
    reports = _reports(reports)
    rows = _with_baselines(reports)
    lines = [f"### {title}", "", *md_table(_header(), [_row(r, i) for i, r in enumerate(rows)])]
    lines += [""] + [f"- {_note(r, i)}" for i, r in enumerate(rows)] + [f"- {LEGEND}"]
    header = ["Evaluator", "Statistic", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Macro"]
    lines += ["", "#### Agreement statistics [CI]", "", *md_table(header, _stat_rows(rows), left=2)]
    lines += _ceiling_markdown(reports)
    detail = ["Evaluator", "Dimension", "MAE", "MAE CI", "Spearman", "Kendall", "QWK", "n", "missing"]
    rows_detail = [_detail_cells(_label(r, i), d, a) for i, r in enumerate(rows) for d, a in r.per_dimension.items()]
    lines += ["", "#### All metrics", "", *md_table(detail, rows_detail, left=2)]
    return "\n".join(lines) + "\n"


def _stat_cells(get: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for s in STATISTICS:
        e: Estimate = get(s)  # type: ignore[operator]
        lo, hi = e.ci if e.ci is not None else (None, None)
        out.update({s: e.value, f"{s}_lo": lo, f"{s}_hi": hi})
    return out


def _ceiling_csv_rows(report: AgreementReport, i: int, ceiling: Ceiling) -> list[dict[str, object]]:
    rows = []
    for section, table in (("ceiling: raters", ceiling.raters), ("ceiling: model", ceiling.model),
                           ("ceiling: ratio model/raters", ceiling.ratio)):
        for key in (*DIMENSIONS, MACRO):
            n = ceiling.n_ratings.get(key) if section == "ceiling: raters" else ceiling.n_cases.get(key)
            rows.append({"section": section, "label": _label(report, i), "dimension": key,
                         **_stat_cells(lambda s, t=table, k=key: t[k][s]), "n": n})
    return rows


def to_csv(reports: Sequence[AgreementReport] | AgreementReport) -> str:
    """One row per (report or its baseline, dimension) with every statistic and its CI, then the expert ceiling's
    rows (``section`` says which); empty cells for undefined values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    reports = _reports(reports)
    rows: list[dict[str, object]] = []
    for i, report in enumerate(_with_baselines(reports)):
        section = "baseline" if report.constant else "agreement"
        for dim, a in report.per_dimension.items():
            rows.append({"section": section, "label": _label(report, i), "dimension": dim, **_stat_cells(a.stat),
                         "kendall": a.kendall, "n": a.n, "n_missing": a.n_missing})
        rows.append({"section": section, "label": _label(report, i), "dimension": MACRO,
                     **_stat_cells(lambda s, r=report: _est(r, s, None))})
    for i, report in enumerate(reports):
        if report.ceiling is not None:
            rows += _ceiling_csv_rows(report, i, report.ceiling)
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_FIELDS})
    return buf.getvalue()


def to_json(reports: Sequence[AgreementReport] | AgreementReport) -> str:
    """A JSON list of :meth:`AgreementReport.to_dict` (strict JSON: no NaN)."""
    return json.dumps([r.to_dict() for r in _reports(reports)], indent=2, allow_nan=False) + "\n"


def write_report(
    reports: Sequence[AgreementReport] | AgreementReport, out_dir: str | Path, stem: str = "agreement"
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` under ``out_dir``; return their paths."""
    reports = _reports(reports)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    paths["md"].write_text(to_markdown(reports), encoding="utf-8")
    paths["csv"].write_text(to_csv(reports), encoding="utf-8", newline="")
    paths["json"].write_text(to_json(reports), encoding="utf-8")
    return paths
