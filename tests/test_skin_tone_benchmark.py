"""benchmarks/skin_tone.py on records built here (no model run): the per-type table, the grouped gap and its CI over
cases and seeds, and the errors for records that cannot be sliced by skin tone."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from dermtrl.cases.synthetic import IMAGE_DEPENDENT
from dermtrl.dimensions import DIMENSIONS

TYPES = ("I", "II", "III", "IV", "V", "VI")
EXPERT = dict.fromkeys(DIMENSIONS, 2.0)


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("skin_tone")


def _records(errors_by_type: dict[str, float | list[float]], n: int, *, seed: int = 0, jitter: int = 0) -> list[dict]:
    """``n`` records cycling through I-VI (as synthetic case i has type i % 6); a case of type t is off by
    ``errors_by_type[t]`` points on every dimension (a list: per dimension), plus a seeded 0/1 ``jitter``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tone = TYPES[i % 6]
        off = errors_by_type[tone]
        offs = off if isinstance(off, list) else [off] * len(DIMENSIONS)
        noise = rng.integers(0, jitter + 1, len(DIMENSIONS))
        scores = {d: 2.0 + o + e for d, o, e in zip(DIMENSIONS, offs, noise, strict=True)}
        out.append({"case_id": f"synth-v2.5-{seed}-{200_000 + i}", "scores": scores, "expert_scores": dict(EXPERT),
                    "skin_tone": tone})
    return out


def test_per_type_table_reads_the_records(bench):
    # image-dependent dimensions off by 2 on V-VI, by 0 elsewhere; the text-only ones off by 1 everywhere
    off = {t: [2.0 if d in IMAGE_DEPENDENT and t in ("V", "VI") else 0.0 if d in IMAGE_DEPENDENT else 1.0
               for d in DIMENSIONS] for t in TYPES}
    data = bench.stack_runs([[_records(off, 60)]])
    assert data.errors.shape == (1, 1, 60, len(DIMENSIONS))
    slices = bench.per_type(data, "true images", n_bootstrap=200)
    groups = {g.value: g for g in slices.groups}
    assert list(groups) == list(TYPES) and all(g.n == 10 and not g.few for g in groups.values())
    assert bench.image_macro(groups["VI"].per_dimension) == pytest.approx(2.0)
    assert bench.image_macro(groups["I"].per_dimension) == pytest.approx(0.0)
    assert groups["V"].macro.value == pytest.approx((4 * 2.0 + 2 * 1.0) / 6)
    assert groups["III"].macro.value == pytest.approx(2 * 1.0 / 6)
    table = io.StringIO()
    Console(file=table, width=200).print(bench.type_table(slices, "t"))
    assert "Macro, image-dep." in table.getvalue() and "2.000" in table.getvalue()


def test_grouped_gap_is_dark_minus_light_with_a_ci_around_it(bench):
    # per type: mean error 0.5 on I-II, 1.5 on V-VI, with 0/1 noise so the CI has width
    off = {"I": 0.0, "II": 0.0, "III": 0.5, "IV": 0.5, "V": 1.0, "VI": 1.0}
    recs = _records(off, 120, jitter=1)
    data = bench.stack_runs([[recs]])
    errors = np.array([[abs(np.floor(r["scores"][d] + 0.5) - 2.0) for d in DIMENSIONS] for r in recs])
    tones = np.array([r["skin_tone"] for r in recs])
    image = [DIMENSIONS.index(d) for d in IMAGE_DEPENDENT]
    for gap in bench.grouped_gaps(data, "true images", n_bootstrap=500):
        cols = image if gap.dimensions == "image-dependent" else list(range(len(DIMENSIONS)))
        light = errors[np.isin(tones, ["I", "II"])][:, cols].mean()
        dark = errors[np.isin(tones, ["V", "VI"])][:, cols].mean()
        assert gap.groups["I-II"].value == pytest.approx(light)
        assert gap.groups["V-VI"].value == pytest.approx(dark)
        assert gap.gap.value == pytest.approx(dark - light)
        lo, hi = gap.gap.ci
        assert lo < dark - light < hi and hi - lo > 0.05
        assert gap.resampled == "cases"


def test_the_gap_ci_covers_the_spread_between_case_seeds(bench):
    """Within each seed every case of a type has the same error (a case-only CI would be a point); the seeds
    disagree on the gap (+1, 0, -1), so a CI over seeds must span them."""
    per_seed = [{"I": 1.0, "II": 1.0, "III": 1.0, "IV": 1.0, "V": 1.0 + g, "VI": 1.0 + g} for g in (1.0, 0.0, -1.0)]
    data = bench.stack_runs([[_records(off, 60, seed=s) for s, off in enumerate(per_seed)]])
    assert data.errors.shape == (1, 3, 60, len(DIMENSIONS))
    gap = bench.grouped_gaps(data, "true images", n_bootstrap=500)[0]
    assert gap.gap.value == pytest.approx(0.0)
    assert gap.gap.ci[0] <= -0.3 and gap.gap.ci[1] >= 0.3
    assert gap.resampled == "cases and 3 case seeds"
    one_seed = bench.grouped_gaps(bench.stack_runs([[_records(per_seed[0], 60)]]), "t", n_bootstrap=200)[0]
    assert one_seed.gap.value == pytest.approx(1.0) and one_seed.gap.ci == pytest.approx((1.0, 1.0))


def test_adapters_are_resampled_on_the_same_cases(bench):
    light = {"I": 0.0, "II": 0.0, "III": 0.0, "IV": 0.0, "V": 0.0, "VI": 0.0}
    dark = {**light, "V": 2.0, "VI": 2.0}
    data = bench.stack_runs([[_records(light, 60)], [_records(dark, 60)]])
    assert data.errors.shape == (2, 1, 60, len(DIMENSIONS))
    gap = bench.grouped_gaps(data, "t", n_bootstrap=500)[0]
    assert gap.gap.value == pytest.approx(1.0)  # the adapters' mean
    assert gap.gap.ci[0] <= 0.5 and gap.gap.ci[1] >= 1.5
    assert gap.resampled == "cases and 2 adapters"
    pooled, tones = data.pooled  # the per-type table counts each case once, averaged over the adapters
    assert pooled.shape == (60, len(DIMENSIONS)) and tones[:6] == list(TYPES)
    assert pooled[np.array(tones) == "VI"].mean() == pytest.approx(1.0)


def test_report_writes_tables_plot_and_the_target(bench, tmp_path):
    off = {"I": 0.0, "II": 0.0, "III": 0.5, "IV": 0.5, "V": 1.0, "VI": 1.0}
    runs = {"true": [[_records(off, 24, seed=s, jitter=1) for s in range(2)]],
            "mismatched": [[_records({t: 2.0 for t in TYPES}, 24, seed=s, jitter=1) for s in range(2)]]}
    data = {k: bench.stack_runs(v) for k, v in runs.items()}
    printed = io.StringIO()
    result = bench.report(Console(file=printed, width=250), data, tmp_path, n_bootstrap=200, case_seeds=[0, 1])
    text = printed.getvalue()
    assert "true images" in text and "mismatched images" in text and "few cases" in text
    assert "Gap V-VI - I-II" in text and "honest report" in text and "met" in text and "NOT met" not in text
    assert (tmp_path / "skin_tone_slices.png").stat().st_size > 0
    assert f"Plot: {tmp_path / 'skin_tone_slices.png'}" in text.replace("\n", "")
    saved = json.loads((tmp_path / "skin_tone.json").read_text())
    assert saved["target"]["met"] is True and saved["target"]["resampled"] == "cases and 2 case seeds"
    assert [g["value"] for g in saved["per_type"][0]["groups"]] == list(TYPES)
    mismatched_gap = next(g for g in saved["grouped"] if g["label"] == "mismatched images")
    assert mismatched_gap["gap"]["value"] == pytest.approx(
        bench.grouped_gaps(data["mismatched"], "m", n_bootstrap=0)[0].gap.value)

    single = {k: bench.stack_runs([v[0][:1]]) for k, v in runs.items()}
    printed = io.StringIO()
    result = bench.report(Console(file=printed, width=250), single, tmp_path / "one", n_bootstrap=100)
    assert result["target"]["met"] is False and "NOT met" in printed.getvalue()


def test_records_without_skin_tone_are_refused_by_name(bench):
    recs = _records({t: 0.0 for t in TYPES}, 12)
    del recs[4]["skin_tone"]
    with pytest.raises(ValueError, match=r"synth-v2.5-0-200004.*has no 'skin_tone'"):
        bench.stack_runs([[recs]], where="outputs/skin_tone/true-seed0.jsonl")
    recs[4]["skin_tone"] = "unknown"
    with pytest.raises(ValueError, match="has skin_tone 'unknown'; expected one of I, II"):
        bench.stack_runs([[recs]])


def test_adapters_must_have_scored_the_same_cases(bench):
    a = _records({t: 0.0 for t in TYPES}, 12)
    with pytest.raises(ValueError, match=r"adapter 2, case seed 0\): no record of case"):
        bench.stack_runs([[a], [a[:6]]])


def test_an_unscored_case_is_left_out_not_counted_as_zero(bench):
    recs = _records({"I": 1.0, "II": 1.0, "III": 0.0, "IV": 0.0, "V": 2.0, "VI": 2.0}, 24)
    recs[0] = {**recs[0], "scores": None, "error": "image: unreadable"}  # a type-I case whose image failed
    recs[6] = {**recs[6], "scores": dict(EXPERT)}  # another type-I case, scored perfectly
    data = bench.stack_runs([[recs]])
    assert np.isnan(data.errors[0, 0, 0]).all()
    slices = bench.per_type(data, "t", n_bootstrap=50)
    assert slices.groups[0].value == "I" and slices.groups[0].macro.value == pytest.approx(2 / 3)
    gap = bench.grouped_gaps(data, "t", n_bootstrap=50)[0]
    assert gap.groups["I-II"].value == pytest.approx((0 + 1 + 1 + 4 * 1) / 7)
    assert gap.gap.value == pytest.approx(2.0 - 6 / 7)


def test_a_smoke_run_is_not_published(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--n", "12", "--seeds", "2", "--write-docs"])
    assert exc.value.code == 2 and "measures nothing to publish" in capsys.readouterr().err
