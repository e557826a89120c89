"""Does DermEval hold across skin tones? Test-case MAE by Fitzpatrick type, with true and with mismatched images.

Synthetic cases carry a Fitzpatrick type (``skin_tone``, I-VI, balanced: case ``i`` has type ``i % 6``) that sets the
skin's colour and the lesions' contrast against it, as clinically: erythema fades on darker skin, pigment lies closer
to dark skin, depigmentation stands out. This scores test cases (indices from 200,000: never trained on, never used
to choose settings) with a DermEval adapter (default: the demo Stage-1 adapter the Space serves) and reports:

- per Fitzpatrick type, with each case's own image and with the **mismatched-image control** (every case shown
  another test case's picture, same narrative; the case keeps its own type): Table 1's MAE (rounded scores) on the
  image-dependent dimensions and their macro, and the macro over all six with a 95% bootstrap CI over cases
  (:mod:`dermtrl.agreement.subgroups`);
- the grouped types I-II, III-IV and V-VI and the gap **V-VI minus I-II** (positive: larger error on darker skin),
  with a 95% CI over cases *and* seeds: several case seeds (``--seeds``: independent draws of the test cases) and,
  with ``--adapter`` given more than once, adapters trained with different seeds, resampled together.

There is no target on the gap's size; the one target line says whether the gap's CI covers seeds as well as cases.

    python benchmarks/skin_tone.py                            # the demo adapter, 600 test cases x 3 case seeds
                                                              # (3,600 evaluations: about 2 h on 2 CPU cores)
    python benchmarks/skin_tone.py --n 12 --seeds 2           # a quick check
    python benchmarks/skin_tone.py --adapter run-seed0 --adapter run-seed1   # adapters of several training seeds

Rerun after an interrupt and it resumes: each evaluation appends its per-case records to a JSONL in ``--out`` and a
rerun scores only the cases not yet there (records of other weights are scored afresh; ``--fresh`` rescores all).
Writes ``skin_tone.json``, the per-type slices (``skin_tone_slices.md/.csv/.json``) and their grouped plot
(``skin_tone_slices.png``).
"""

# Annotations are evaluated (no ``from __future__ import annotations``): the dataclasses below then work when the
# script is loaded by path, as the tests load benchmarks, without being registered in sys.modules.
import argparse
import json
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import add_write_docs_argument, report_only, write_console_docs  # noqa: E402  (benchmarks/ is on sys.path)
from _shared import demo_adapter  # noqa: E402

from dermtrl.agreement.reliability import Estimate, bootstrap_counts, finite_or_none, percentile_ci  # noqa: E402
from dermtrl.agreement.subgroups import FEW_CASES, Slices, slice_table, write_slices  # noqa: E402
from dermtrl.cases.synthetic import IMAGE_DEPENDENT  # noqa: E402
from dermtrl.data.sources.skin_tone import FITZPATRICK_TYPES  # noqa: E402
from dermtrl.dimensions import ABBREVIATIONS, DIMENSIONS  # noqa: E402
from dermtrl.metrics import case_errors  # noqa: E402

COLUMN = "skin_tone"
#: The grouped types (as DDI reports them); the gap is the last minus the first.
GROUPS: dict[str, tuple[str, ...]] = {"I-II": ("I", "II"), "III-IV": ("III", "IV"), "V-VI": ("V", "VI")}
LIGHT, DARK = "I-II", "V-VI"
CONDITIONS = {"true": "true images", "mismatched": "mismatched images"}
MIN_CASES = 10  # a type with fewer cases is marked "few cases", as the subgroup report marks it


# ------------------------------------------------------------------------------------------------ records


def case_matrix(records: Sequence[Mapping[str, Any]], case_ids: Sequence[str] | None = None, *,
                where: str = "records") -> tuple[list[str], np.ndarray, list[str]]:
    """Case ids, (cases, 6) Table-1 errors (rounded scores; NaN where unscored) and each case's Fitzpatrick type.

    ``case_ids`` fixes the order (default: the records'); every case needs a record with ``expert_scores`` and a
    ``skin_tone`` in I-VI, else a ``ValueError`` names ``where`` and the case.
    """
    by_id = {str(r.get("case_id")): r for r in records}
    ids = [str(c) for c in (case_ids if case_ids is not None else by_id)]
    if not ids:
        raise ValueError(f"{where}: no records")
    tones, predictions, experts = [], [], []
    for case_id in ids:
        record = by_id.get(case_id)
        if record is None:
            raise ValueError(f"{where}: no record of case {case_id!r}")
        tone = record.get(COLUMN)
        if tone is None or str(tone).strip() == "":
            raise ValueError(f"{where}: record {case_id!r} has no {COLUMN!r}; score cases that carry a Fitzpatrick "
                             f"type (synthetic cases v2.5 or later, or data with a {COLUMN!r} column); rerun with "
                             "--fresh if these records predate it")
        if str(tone) not in FITZPATRICK_TYPES:
            raise ValueError(f"{where}: record {case_id!r} has {COLUMN} {tone!r}; expected one of "
                             f"{', '.join(FITZPATRICK_TYPES)}")
        if not record.get("expert_scores"):
            raise ValueError(f"{where}: record {case_id!r} has no expert_scores")
        tones.append(str(tone))
        predictions.append(None if "error" in record else record.get("scores"))
        experts.append(record["expert_scores"])
    return ids, case_errors(predictions, experts), tones


@dataclass(frozen=True)
class ToneErrors:
    """Errors of one image condition: ``errors`` (adapters, case seeds, cases, 6), ``tones`` (case seeds, cases)."""

    errors: np.ndarray
    tones: np.ndarray

    @property
    def pooled(self) -> tuple[np.ndarray, list[str]]:
        """One row per distinct case (cases of every seed), each adapter's errors averaged: the per-type table's
        input, so a case scored by several adapters is still one case."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a case no adapter scored stays NaN
            mean = np.nanmean(self.errors, axis=0)
        return mean.reshape(-1, len(DIMENSIONS)), [str(t) for t in self.tones.reshape(-1)]


def stack_runs(runs: Sequence[Sequence[Sequence[Mapping[str, Any]]]], *, where: str = "records") -> ToneErrors:
    """``runs[a][s]``: the records of adapter ``a`` on case seed ``s``. Every adapter must have scored the same
    cases of a seed (ordered as the first adapter's records) and every seed the same number of cases."""
    if not runs or not runs[0]:
        raise ValueError(f"{where}: no runs")
    n_seeds = len(runs[0])
    if any(len(per_seed) != n_seeds for per_seed in runs):
        raise ValueError(f"{where}: every adapter needs records of the same {n_seeds} case seed(s)")
    errors = []
    tones: list[list[str]] = []
    for s in range(n_seeds):
        ids, first, first_tones = case_matrix(runs[0][s], where=f"{where} (adapter 1, case seed {s})")
        per_adapter = [first]
        for a in range(1, len(runs)):
            _, err, other = case_matrix(runs[a][s], ids, where=f"{where} (adapter {a + 1}, case seed {s})")
            if other != first_tones:
                raise ValueError(f"{where}: adapters disagree on the skin tone of cases of case seed {s}")
            per_adapter.append(err)
        errors.append(np.stack(per_adapter))
        tones.append(first_tones)
    if len({len(t) for t in tones}) != 1:
        raise ValueError(f"{where}: case seeds hold different numbers of cases ({[len(t) for t in tones]})")
    return ToneErrors(np.stack(errors, axis=1), np.array(tones, dtype=object))


# ------------------------------------------------------------------------------------------------ statistics


def per_type(data: ToneErrors, label: str, *, n_bootstrap: int = 2000, seed: int = 0, ci: float = 0.95) -> Slices:
    """The per-type table (:func:`dermtrl.agreement.subgroups.slice_table`): MAE by Fitzpatrick type with a
    stratified bootstrap CI over cases."""
    errors, tones = data.pooled
    return slice_table(errors, tones, column=COLUMN, label=label, n_bootstrap=n_bootstrap, seed=seed, ci=ci,
                       min_cases=MIN_CASES)


def image_macro(values: Mapping[str, float | None]) -> float | None:
    """The macro over the image-dependent dimensions of one group's per-dimension values."""
    picked = [values[d] for d in IMAGE_DEPENDENT]
    return None if any(v is None for v in picked) else float(np.mean(picked))  # type: ignore[arg-type]


@dataclass(frozen=True)
class GroupedGap:
    """The grouped types' macro MAE and the gap V-VI minus I-II, with CIs over cases and seeds."""

    label: str
    dimensions: str  # "all six" or "image-dependent"
    groups: dict[str, Estimate]
    gap: Estimate
    resampled: str  # what the CI resamples, in words

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "dimensions": self.dimensions,
                "groups": {k: v.to_dict() for k, v in self.groups.items()},
                "gap": {**self.gap.to_dict(), "definition": f"{DARK} minus {LIGHT}"}, "resampled": self.resampled}


def resample_weights(tones: np.ndarray, n_adapters: int, n_bootstrap: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Multiplicities of one two-level bootstrap: adapters (B, A), case seeds (B, S) and, within each seed, cases
    drawn within their own type (B, n), so each type keeps its size. The same rows serve every condition and
    statistic, so true and mismatched images are resampled on the same cases."""
    n_seeds, n_cases = tones.shape
    adapters = bootstrap_counts(n_adapters, n_bootstrap, seed + 1)
    seeds = bootstrap_counts(n_seeds, n_bootstrap, seed + 2)
    cases = []
    for s in range(n_seeds):
        w = np.zeros((n_bootstrap, n_cases))
        for t, tone in enumerate(FITZPATRICK_TYPES):
            idx = np.flatnonzero(tones[s] == tone)
            if idx.size:
                w[:, idx] = bootstrap_counts(idx.size, n_bootstrap, seed + 7919 * (1 + s * len(FITZPATRICK_TYPES) + t))
        cases.append(w)
    return adapters, seeds, cases


def _grouped_means(data: ToneErrors, adapters: np.ndarray, seeds: np.ndarray, cases: list[np.ndarray]) -> np.ndarray:
    """(B, groups, 6) per-dimension MAE of each grouped type under each row of multiplicities."""
    n_adapters = data.errors.shape[0]
    num = np.zeros((len(adapters), len(GROUPS), len(DIMENSIONS)))
    den = np.zeros_like(num)
    for s, w in enumerate(cases):
        member = np.stack([np.isin(data.tones[s], list(types)) for types in GROUPS.values()], axis=1).astype(float)
        values = data.errors[:, s]  # (A, n, 6)
        present = np.isfinite(values)
        for total, x in ((num, np.where(present, values, 0.0)), (den, present.astype(float))):
            per_case = np.einsum("ig,aij->iagj", member, x).reshape(len(member), -1)  # (n, A*G*6)
            drawn = (w @ per_case).reshape(len(w), n_adapters, len(GROUPS), len(DIMENSIONS))
            total += seeds[:, s, None, None] * np.einsum("ba,bagj->bgj", adapters, drawn)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def grouped_gaps(data: ToneErrors, label: str, *, n_bootstrap: int = 2000, seed: int = 0, ci: float = 0.95
                 ) -> list[GroupedGap]:
    """The grouped types and the gap V-VI minus I-II, on all six dimensions and on the image-dependent ones.

    The CI resamples adapters, case seeds and, within each seed, cases within their type, all together; with one
    adapter and one case seed it is a bootstrap over cases only (and says so).
    """
    n_adapters, n_seeds = data.errors.shape[:2]
    ones = [np.ones((1, data.tones.shape[1]))] * n_seeds
    point = _grouped_means(data, np.ones((1, n_adapters)), np.ones((1, n_seeds)), ones)[0]
    samples = None
    if n_bootstrap:
        samples = _grouped_means(data, *resample_weights(data.tones, n_adapters, n_bootstrap, seed))
    over = ["cases"] + ([f"{n_seeds} case seeds"] if n_seeds > 1 else []) + (
        [f"{n_adapters} adapters"] if n_adapters > 1 else [])
    names = list(GROUPS)
    out = []
    for dims, cols in (("all six", list(range(len(DIMENSIONS)))),
                       ("image-dependent", [DIMENSIONS.index(d) for d in IMAGE_DEPENDENT])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro = point[:, cols].mean(axis=1)
            drawn = None if samples is None else samples[:, :, cols].mean(axis=2)

        def est(value: float, draws: np.ndarray | None) -> Estimate:
            value_ = finite_or_none(value)
            return Estimate(value_, None if draws is None or value_ is None else percentile_ci(draws, ci))

        groups = {g: est(macro[k], None if drawn is None else drawn[:, k]) for k, g in enumerate(names)}
        light, dark = names.index(LIGHT), names.index(DARK)
        gap = est(macro[dark] - macro[light], None if drawn is None else drawn[:, dark] - drawn[:, light])
        out.append(GroupedGap(label, dims, groups, gap, " and ".join(over)))
    return out


# ------------------------------------------------------------------------------------------------ report


def _cell(e: Estimate, sign: str = "") -> str:
    if e.value is None:
        return "n/a"
    return f"{e.value:{sign}.3f}" + ("" if e.ci is None else f" [{e.ci[0]:{sign}.3f}, {e.ci[1]:{sign}.3f}]")


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def type_table(slices: Slices, title: str) -> Table:
    """One row per Fitzpatrick type: the image-dependent dimensions, their macro and the macro over all six."""
    table = Table(title=title)
    for col in ("Type", "n", *(ABBREVIATIONS[d] for d in IMAGE_DEPENDENT), "Macro, image-dep.",
                f"Macro, all six [{slices.ci_level:.0%} CI]", "Note"):
        table.add_column(col, justify="left" if col in ("Type", "Note") else "right")
    for g in slices.groups:
        table.add_row(g.value, str(g.n), *(_num(g.per_dimension[d]) for d in IMAGE_DEPENDENT),
                      _num(image_macro(g.per_dimension)), _cell(g.macro), FEW_CASES if g.few else "")
    return table


def gap_table(gaps: Sequence[GroupedGap], title: str) -> Table:
    """One row per image condition and set of dimensions: the grouped types and the gap, each with its CI."""
    table = Table(title=title)
    for col in ("Images", "Dimensions", *(f"{g} [CI]" for g in GROUPS), f"Gap {DARK} - {LIGHT} [CI]"):
        table.add_column(col, justify="left" if col in ("Images", "Dimensions") else "right")
    for g in gaps:
        table.add_row(g.label, g.dimensions, *(_cell(g.groups[k]) for k in GROUPS), _cell(g.gap, "+"))
    return table


def report(console: Console, data: Mapping[str, ToneErrors], out: Path, *, n_bootstrap: int = 2000, seed: int = 0,
           adapters: Sequence[str] = (), case_seeds: Sequence[int] = (), seconds: float | None = None) -> dict:
    """Print the per-type tables, the grouped gap and the target line; write ``skin_tone.json`` and the slices
    (Markdown, CSV, JSON and the grouped plot). ``data`` maps ``true`` / ``mismatched`` to their errors."""
    if not data:
        raise ValueError("skin-tone report: no image condition to report")
    out.mkdir(parents=True, exist_ok=True)
    slices, gaps = [], []
    first = next(iter(data.values()))
    n_adapters, n_seeds, n_cases = first.errors.shape[:3]
    for key, values in data.items():
        label = CONDITIONS.get(key, key)
        s = per_type(values, label, n_bootstrap=n_bootstrap, seed=seed)
        slices.append(s)
        parsed = float(np.mean(np.isfinite(values.errors)))
        console.print(type_table(s, f"DermEval with {label}: test-case MAE by Fitzpatrick type (rounded scores, "
                                    f"Table 1's metric), {n_cases} cases x {n_seeds} case seed(s), "
                                    f"95% bootstrap CI over cases"))
        console.print(f"Scores parsed: {parsed:.1%}" + (f"; each case's errors averaged over {n_adapters} adapters"
                                                        if n_adapters > 1 else ""))
        gaps += grouped_gaps(values, label, n_bootstrap=n_bootstrap, seed=seed)
    resampled = gaps[0].resampled if gaps else "cases"
    console.print(gap_table(gaps, f"Grouped Fitzpatrick types: macro MAE and the gap {DARK} minus {LIGHT} "
                                  f"(positive: larger error on darker skin), 95% CI over {resampled}"))
    over_seeds = n_seeds * n_adapters > 1
    target = Table(title="Target (none on the gap's size)")
    for col in ("Target", "Measured", "Result"):
        target.add_column(col)
    target.add_row("honest report: the gap's CI is computed over cases and seeds", resampled,
                   "[green]met[/green]" if over_seeds else "[red]NOT met[/red] (one case seed, one adapter)")
    paths = write_slices(slices, out, stem="skin_tone_slices")
    result = {"adapters": list(adapters), "case_seeds": list(case_seeds), "cases_per_seed": n_cases,
              "n_bootstrap": n_bootstrap, "bootstrap_seed": seed, "per_type": [s.to_dict() for s in slices],
              "grouped": [g.to_dict() for g in gaps],
              "target": {"name": "the gap's CI is computed over cases and seeds", "met": over_seeds,
                         "resampled": resampled}}
    (out / "skin_tone.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    wall = "" if seconds is None else f"Wall time: {seconds / 60:.1f} min; "
    console.print(f"{wall}records, skin_tone.json and the slices (Markdown, CSV, JSON) in {out}")
    console.print(f"Plot: {paths['png']}")
    console.print(target)
    return result


# ------------------------------------------------------------------------------------------------ scoring


def score(evaluator: Any, cases: Any, path: Path, *, fresh: bool) -> list[dict]:
    """DermEval's records for ``cases``, appended to ``path`` as each batch finishes (a rerun continues them;
    records of other weights are scored afresh), with the project's progress bar."""
    from dermtrl.dermeval.eval_job import run_evaluation
    from dermtrl.jsonl import SettingsMismatch

    try:
        return run_evaluation(evaluator, cases, path, overwrite=fresh)
    except SettingsMismatch:
        return run_evaluation(evaluator, cases, path, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", default=None,
                        help="a DermEval adapter; give it once per training seed (default: the demo adapter)")
    parser.add_argument("--n", type=int, default=600, help="test cases per case seed (default 600: 100 per type)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="case seeds 0..N-1: independent draws of the test cases (default 3)")
    parser.add_argument("--out", default="outputs/skin_tone", help="per-case records, the report and the plot")
    parser.add_argument("--n-bootstrap", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true", help="score every case again instead of resuming")
    add_write_docs_argument(parser)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n must be at least 2 (the mismatched images pair cases), got {args.n}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.n_bootstrap < 1:
        parser.error(f"--n-bootstrap must be at least 1, got {args.n_bootstrap}")
    if args.write_docs and args.n * args.seeds < MIN_CASES * len(FITZPATRICK_TYPES):
        parser.error(f"--write-docs with {args.n} cases x {args.seeds} case seed(s): under {MIN_CASES} cases per "
                     "Fitzpatrick type is a smoke run, which measures nothing to publish")

    from dermtrl.cases.controls import mismatched
    from dermtrl.cases.loading import load_cases
    from dermtrl.cases.splits import TEST_START
    from dermtrl.dermeval.evaluator import DermEval
    from dermtrl.progress import library_bars_off

    console = Console(width=None if sys.stdout.isatty() else 160, record=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    adapters = args.adapter or [str(demo_adapter())]
    case_seeds = list(range(args.seeds))
    runs: dict[str, list[list[list[dict]]]] = {key: [] for key in CONDITIONS}
    for a, adapter in enumerate(adapters):
        with library_bars_off():  # the project's bars only, not "Loading weights"
            evaluator = DermEval.from_pretrained(adapter=adapter)
        for key in CONDITIONS:
            runs[key].append([])
        for s in case_seeds:
            cases = load_cases("dermtrl:synthetic", n=args.n, start=TEST_START, seed=s)
            tag = f"-seed{s}" if len(adapters) == 1 else f"-adapter{a}-seed{s}"
            # the derangement depends on how many cases there are, so its records are kept per --n
            for key, ds, name in (("true", cases, f"true{tag}.jsonl"),
                                  ("mismatched", mismatched(cases), f"mismatched-n{args.n}{tag}.jsonl")):
                console.print(f"{Path(adapter).name}, case seed {s}: {args.n} test cases with {CONDITIONS[key]}")
                runs[key][a].append(score(evaluator, ds, out / name, fresh=args.fresh))
    data = {key: stack_runs(r, where=f"{out} ({CONDITIONS[key]})") for key, r in runs.items()}
    report_only(console)  # the docs section holds the report, not the progress lines above
    report(console, data, out, n_bootstrap=args.n_bootstrap, adapters=adapters, case_seeds=case_seeds,
           seconds=time.time() - started)
    if args.write_docs:
        write_console_docs("skin_tone", "Skin tone: DermEval's error by Fitzpatrick type", console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
