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
from pathlib import Path

from rich.table import Table

from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.metrics import AgreementReport, DimensionAgreement

__all__ = ["CSV_FIELDS", "NA", "cell", "md_row", "md_table", "render_table", "rich_table", "to_csv", "to_json",
           "to_markdown", "write_report"]

DEFAULT_TITLE = "Agreement with expert scores (MAE, lower is better)"
CSV_FIELDS: tuple[str, ...] = (
    "label", "dimension", "mae", "mae_lo", "mae_hi", "spearman", "kendall", "qwk", "n", "n_missing",
)
NA = "n/a"


def cell(value: float | None, ci: tuple[float, float] | None = None, digits: int = 3) -> str:
    """'0.117 [0.09, 0.14]'; just the value when there is no interval; 'n/a' when there is no value."""
    if value is None:
        return NA
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


def render_table(
    reports: Sequence[AgreementReport] | AgreementReport, title: str = DEFAULT_TITLE
) -> Table:
    """Table 1 layout: one row per evaluator, MAE [CI] per dimension and the macro average."""
    reports = _reports(reports)
    return rich_table(title, _header(), [_row(r, i) for i, r in enumerate(reports)],
                      caption="\n".join(_note(r, i) for i, r in enumerate(reports)))


def _detail_cells(label: str, dim: str, a: DimensionAgreement) -> list[str]:
    ci = NA if a.mae_ci is None else f"[{a.mae_ci[0]:.3f}, {a.mae_ci[1]:.3f}]"
    return [
        label, ABBREVIATIONS[dim], cell(a.mae), ci, cell(a.spearman), cell(a.kendall), cell(a.qwk),
        str(a.n), str(a.n_missing),
    ]


def to_markdown(reports: Sequence[AgreementReport] | AgreementReport, title: str = DEFAULT_TITLE) -> str:
    """A Table 1 style MAE table, notes per evaluator, then a per-dimension detail table of all metrics."""
    reports = _reports(reports)
    lines = [f"### {title}", "", *md_table(_header(), [_row(r, i) for i, r in enumerate(reports)])]
    lines += [""] + [f"- {_note(r, i)}" for i, r in enumerate(reports)]
    detail = ["Evaluator", "Dimension", "MAE", "MAE CI", "Spearman", "Kendall", "QWK", "n", "missing"]
    rows = [_detail_cells(_label(r, i), d, a) for i, r in enumerate(reports) for d, a in r.per_dimension.items()]
    lines += ["", "#### All metrics", "", *md_table(detail, rows, left=2)]
    return "\n".join(lines) + "\n"


def to_csv(reports: Sequence[AgreementReport] | AgreementReport) -> str:
    """One row per (report, dimension) with every metric; empty cells for undefined values."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for i, report in enumerate(_reports(reports)):
        for dim, a in report.per_dimension.items():
            lo, hi = a.mae_ci if a.mae_ci is not None else (None, None)
            values = (_label(report, i), dim, a.mae, lo, hi, a.spearman, a.kendall, a.qwk, a.n, a.n_missing)
            writer.writerow({k: "" if v is None else v for k, v in zip(CSV_FIELDS, values, strict=True)})
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
