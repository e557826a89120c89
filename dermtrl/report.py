"""Rendering of agreement reports (Table 1 layout): rich table, Markdown, CSV and JSON.

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

__all__ = ["CSV_FIELDS", "render_table", "to_csv", "to_json", "to_markdown", "write_report"]

DEFAULT_TITLE = "Agreement with expert scores (MAE, lower is better)"
CSV_FIELDS: tuple[str, ...] = (
    "label", "dimension", "mae", "mae_lo", "mae_hi", "spearman", "kendall", "qwk", "n", "n_missing",
)
_NA = "n/a"


def _reports(reports: Sequence[AgreementReport] | AgreementReport) -> list[AgreementReport]:
    return [reports] if isinstance(reports, AgreementReport) else list(reports)


def _label(report: AgreementReport, i: int) -> str:
    return report.label or f"Evaluator {i + 1}"


def _num(value: float | None, digits: int = 3) -> str:
    return _NA if value is None else f"{value:.{digits}f}"


def _cell(mae: float | None, ci: tuple[float, float] | None) -> str:
    """'0.117 [0.09, 0.14]'; just the MAE when there is no interval."""
    if mae is None:
        return _NA
    return f"{mae:.3f}" if ci is None else f"{mae:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _row(report: AgreementReport, i: int) -> list[str]:
    cells = [_cell(report.per_dimension[d].mae, report.per_dimension[d].mae_ci) for d in DIMENSIONS]
    return [_label(report, i), *cells, _cell(report.macro_mae, report.macro_mae_ci)]


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
    table = Table(title=title, caption="\n".join(_note(r, i) for i, r in enumerate(reports)))
    for j, name in enumerate(_header()):
        table.add_column(name, justify="left" if j == 0 else "right")
    for i, report in enumerate(reports):
        table.add_row(*_row(report, i))
    return table


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _detail_cells(label: str, dim: str, a: DimensionAgreement) -> list[str]:
    ci = _NA if a.mae_ci is None else f"[{a.mae_ci[0]:.3f}, {a.mae_ci[1]:.3f}]"
    return [
        label, ABBREVIATIONS[dim], _num(a.mae), ci, _num(a.spearman), _num(a.kendall), _num(a.qwk),
        str(a.n), str(a.n_missing),
    ]


def to_markdown(reports: Sequence[AgreementReport] | AgreementReport, title: str = DEFAULT_TITLE) -> str:
    """A Table 1 style MAE table, notes per evaluator, then a per-dimension detail table of all metrics."""
    reports = _reports(reports)
    header = _header()
    lines = [f"### {title}", "", _md_row(header), _md_row(["---"] + ["---:"] * (len(header) - 1))]
    lines += [_md_row(_row(r, i)) for i, r in enumerate(reports)]
    lines += [""] + [f"- {_note(r, i)}" for i, r in enumerate(reports)]
    detail = ["Evaluator", "Dimension", "MAE", "MAE CI", "Spearman", "Kendall", "QWK", "n", "missing"]
    lines += ["", "#### All metrics", "", _md_row(detail), _md_row(["---", "---"] + ["---:"] * 7)]
    for i, r in enumerate(reports):
        lines += [_md_row(_detail_cells(_label(r, i), d, a)) for d, a in r.per_dimension.items()]
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
