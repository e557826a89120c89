"""Table 1 in one command (paper Section 4.1): DermBench and DermEval against expert scores on the same narratives.

The protocol: many models' narratives per image, each rated by dermatologists on the six dimensions, and a
certified reference per image. DermBench's judge compares each narrative with the reference; DermEval reads the
image and the narrative alone. Both are scored against the experts with Table 1's metric
(:func:`dermtrl.metrics.agreement`: per-dimension MAE on scores rounded to integers, the macro average, with
bootstrap CIs, ICC, Krippendorff's alpha, QWK and Spearman beside it, and a constant-mean baseline row), and the two
are compared case by case: the paired difference of their MAEs (DermEval minus DermBench) with a paired bootstrap CI
over the narratives both scored. When the rows keep every rater's scores (``rater_scores``, or the data pipeline's
``ratings``), both rows are read against the expert ceiling; when they carry a ``skin_tone`` column (or the column
named by ``by``), both are sliced by it (:mod:`dermtrl.agreement.subgroups`).

Columns of the dataset (one row per rated narrative; several rows may share an image): ``image``, ``narrative``,
``reference`` (the image's certified reference), ``expert_scores`` (six 0-5 scores), and optionally ``case_id``
(unique per row), ``category``, ``model``, ``rater_scores`` / ``ratings`` and any column to slice by.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dermtrl.agreement.subgroups import Slices, default_column, slice_agreement, write_slices
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS
from dermtrl.metrics import AgreementReport, agreement, case_errors, macro_mae, paired_bootstrap

if TYPE_CHECKING:
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.llm.client import ClientConfig

__all__ = ["Table1", "table1_from_records", "run_table1"]

REQUIRED_COLUMNS = ("image", "narrative", "reference", "expert_scores")
SET_NAME = "rated-narratives"


@dataclass
class Table1:
    """Table 1's two rows and their paired difference (DermEval minus DermBench, per dimension and macro)."""

    dermbench: AgreementReport
    dermeval: AgreementReport
    difference: dict[str, tuple[float, float, float] | None]  # dimension or "Macro" -> (value, lo, hi)
    n_paired: int
    slices: list[Slices] = field(default_factory=list)  # DermBench's and DermEval's MAE by a column, when sliced

    def to_dict(self) -> dict[str, Any]:
        return {"dermbench": self.dermbench.to_dict(), "dermeval": self.dermeval.to_dict(), "n_paired": self.n_paired,
                "difference_dermeval_minus_dermbench": {k: None if v is None else list(v)
                                                        for k, v in self.difference.items()},
                "slices": [s.to_dict() for s in self.slices]}


def _predictions(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, float] | None]:
    return [r["scores"] if r["status"] == "scored" else r.get("partial_scores") for r in records]


def table1_from_records(judged: Sequence[Mapping[str, Any]], dermeval: Sequence[Mapping[str, Any]], *,
                        n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
                        raters: Mapping[str, Sequence[Any]] | None = None,
                        groups: Mapping[str, Any] | None = None, by: str = "skin_tone") -> Table1:
    """Table 1 from judge and DermEval records of the same rated narratives (each record with ``expert_scores``).

    ``raters`` (case id -> every rater's scores) adds the expert ceiling to both rows; ``groups`` (case id -> the
    value of column ``by``) slices both rows' MAE by it.
    """
    by_case = {str(r["case_id"]): r for r in dermeval}
    missing = [str(r["case_id"]) for r in judged if str(r["case_id"]) not in by_case]
    if missing:
        raise ValueError(f"DermEval records lack case(s) {', '.join(missing[:5])}: score the same narratives")
    judged = [r for r in judged if r.get("expert_scores")]
    if not judged:
        raise ValueError("no record carries expert_scores: Table 1 needs the experts' ratings")
    paired = [by_case[str(r["case_id"])] for r in judged]
    experts = [r["expert_scores"] for r in judged]
    reports = []  # a failed record counts as missing on the dimensions it lacks, never as a 0
    ids = [str(r["case_id"]) for r in judged]
    case_raters = None if raters is None else [raters.get(i) for i in ids]
    slices = []
    for label, records in (("DermBench", judged), ("DermEval", paired)):
        reports.append(agreement(_predictions(records), experts, n_bootstrap=n_bootstrap, seed=seed, ci=ci,
                                 label=label, truncated=sum(1 for r in records if r.get("truncated")),
                                 raters=case_raters))
        if groups is not None:
            slices.append(slice_agreement(_predictions(records), experts, [groups.get(i) for i in ids], column=by,
                                          label=label, n_bootstrap=n_bootstrap, seed=seed, ci=ci))
    bench_err = case_errors([p or {} for p in _predictions(judged)], experts)
    eval_err = case_errors([p or {} for p in _predictions(paired)], experts)
    both = ~np.isnan(bench_err) & ~np.isnan(eval_err)
    keep = both.all(axis=1)  # narratives both evaluators scored on every dimension
    difference: dict[str, tuple[float, float, float] | None] = {}
    if keep.sum() >= 2:
        a, b = bench_err[keep], eval_err[keep]
        for j, dim in enumerate(DIMENSIONS):
            difference[dim] = paired_bootstrap(lambda x, y, j=j: np.mean(y[:, j]) - np.mean(x[:, j]), [a, b],
                                               n_bootstrap=n_bootstrap, seed=seed, ci=ci)
        difference["Macro"] = paired_bootstrap(lambda x, y: macro_mae(y) - macro_mae(x), [a, b],
                                               n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    else:
        difference = dict.fromkeys([*DIMENSIONS, "Macro"])
    return Table1(dermbench=reports[0], dermeval=reports[1], difference=difference, n_paired=int(keep.sum()),
                  slices=slices)


def difference_markdown(table: Table1) -> str:
    header = ["", *(ABBREVIATIONS[d] for d in DIMENSIONS), "Macro"]
    cells = ["DermEval - DermBench"]
    for key in (*DIMENSIONS, "Macro"):
        v = table.difference[key]
        cells.append("n/a" if v is None else f"{v[0]:+.3f} [{v[1]:+.2f}, {v[2]:+.2f}]")
    return "\n".join([
        "### Paired difference of MAE (DermEval minus DermBench; negative: DermEval closer to the experts)", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |", "",
        f"Paired percentile bootstrap over the {table.n_paired} narratives both evaluators scored on all six "
        "dimensions.", ""])


def write_table1(table: Table1, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``table1.md`` (Table 1 as the paper lays it out, plus notes, the agreement statistics, the expert ceiling,
    the paired difference and the slices), ``table1.csv``, ``table1.json``; when sliced, also
    ``table1_slices_<column>.{md,csv,json,png}``."""
    from dermtrl.agreement.subgroups import markdown as slices_markdown
    from dermtrl.report import to_csv, to_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "table1.md", "csv": out / "table1.csv", "json": out / "table1.json"}
    title = "Table 1: MAE between evaluator scores and expert annotations (scores rounded to integers)"
    sliced = ("\n" + slices_markdown(table.slices)) if table.slices else ""
    paths["md"].write_text(to_markdown([table.dermbench, table.dermeval], title=title) + "\n"
                           + difference_markdown(table) + sliced, encoding="utf-8")
    paths["csv"].write_text(to_csv([table.dermbench, table.dermeval]), encoding="utf-8", newline="")
    paths["json"].write_text(json.dumps(table.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if table.slices:
        for ext, path in write_slices(table.slices, out, stem=f"table1_slices_{table.slices[0].column}").items():
            paths[f"slices_{ext}"] = path
    return paths


def case_columns(cases: Any, by: str | None = None) -> tuple[str | None, dict[str, Any] | None,
                                                            dict[str, Any] | None]:
    """(column to slice by, case id -> raters, case id -> group) from the rated narratives: raters from
    ``rater_scores`` or ``ratings``, the column ``by`` (default ``skin_tone`` when present); ``None`` where absent."""
    from dermtrl.agreement.ceiling import RATER_COLUMNS
    from dermtrl.bench.cases import case_rows

    columns = set(cases.column_names) if hasattr(cases, "column_names") else set().union(*cases)
    column = default_column(sorted(columns), by)
    rater_column = next((c for c in RATER_COLUMNS if c in columns), None)
    extra = [c for c in (column, rater_column) if c]
    rows = list(case_rows(cases, extra)) if extra else []
    raters = {str(r["case_id"]): r.get(rater_column) for r in rows} if rater_column else None
    groups = {str(r["case_id"]): r.get(column) for r in rows} if column else None
    return column, raters, groups


def run_table1(cases: Any, judge: ClientConfig, evaluator: DermEval, out: str | os.PathLike[str], *,
               parse_retries: int = 2, n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95,
               overwrite: bool = False, progress: bool = True, by: str | None = None) -> tuple[Table1, dict[str, Path]]:
    """Judge and DermEval every rated narrative (resumable JSONL under ``out``), then write Table 1.

    ``by`` names a column to slice by (default ``skin_tone`` when the data has it); ``rater_scores`` or ``ratings``
    columns add the expert ceiling.
    """
    from dermtrl.bench.dermbench import DermBench
    from dermtrl.bench.dermeval_scoring import score_candidates
    from dermtrl.bench.generate import candidates_from_dataset

    columns = set(cases.column_names) if hasattr(cases, "column_names") else set().union(*cases)
    absent = [c for c in REQUIRED_COLUMNS if c not in columns]
    if absent:
        raise ValueError(f"dataset: missing column(s) {', '.join(absent)} (Table 1 needs {', '.join(REQUIRED_COLUMNS)};"
                         f" columns: {', '.join(sorted(columns))})")
    out = Path(out)
    sets = {SET_NAME: candidates_from_dataset(cases, "narrative", expert_scores="expert_scores")}
    with DermBench(judge, parse_retries=parse_retries, progress=progress) as bench:
        judged = bench.judge(cases, sets, out / "judgments.jsonl", overwrite=overwrite)
    scored = score_candidates(cases, sets, evaluator, out / "dermeval.jsonl", overwrite=overwrite, progress=progress)
    column, raters, groups = case_columns(cases, by)
    table = table1_from_records(judged, scored, n_bootstrap=n_bootstrap, seed=seed, ci=ci, raters=raters,
                                groups=groups, by=column or "skin_tone")
    return table, write_table1(table, out)
