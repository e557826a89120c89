"""The demo's held-out summary: paired difference after - before, and vision reliance (true vs mismatched)."""

import csv
import io
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from dermtrl.cases.controls import blanked, derangement, mismatched
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, generate_cases
from dermtrl.dermeval.held_out import (
    HeldOut,
    constant_baseline,
    record_errors,
    skin_tone_line,
    skin_tone_slices,
    summary_lines,
    write_skin_tone_slices,
)
from dermtrl.dimensions import DIMENSIONS


def _held(errors):
    return HeldOut(report=None, errors=np.asarray(errors, dtype=float), records=[])


def test_record_errors_follow_case_order_and_keep_missing_scores_missing():
    experts = [dict.fromkeys(DIMENSIONS, 3.0), dict.fromkeys(DIMENSIONS, 1.0)]
    records = [{"case_id": "b", "scores": dict.fromkeys(DIMENSIONS, 2.0)},
               {"case_id": "a", "scores": {"Accuracy": 4.6}}]
    err = record_errors(records, ["a", "b"], experts)
    assert err[0, 0] == pytest.approx(2.0) and np.isnan(err[0, 1:]).all()  # 4.6 rounds to 5; the rest missing
    assert err[1].tolist() == [1.0] * 6
    assert np.isnan(record_errors([], ["c"], experts[:1])).all()  # a case without a record is missing, never 0


def test_summary_says_better_worse_or_no_difference_and_the_vision_ratio():
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 2, size=(200, 6))
    better = summary_lines(_held(before), _held(before - 0.3))[0]
    assert better.startswith("Macro MAE after - before: -0.300") and better.endswith("Stage 2 is better")
    assert summary_lines(_held(before), _held(before + 0.3))[0].endswith("Stage 2 is worse")
    same = summary_lines(_held(before), _held(before + rng.normal(0, 0.05, before.shape)))[0]
    assert same.endswith("no difference shown")
    mis = before.copy()
    cols = [DIMENSIONS.index(d) for d in IMAGE_DEPENDENT]
    mis[:, cols] *= 3  # three times the error on the image-dependent dimensions only
    line = summary_lines(_held(before), _held(before), _held(mis), IMAGE_DEPENDENT)[1]
    assert line.startswith("Vision reliance (image-dependent dimensions)") and "(3.00x [3.00, 3.00])" in line


def test_the_constant_baseline_row_and_the_model_against_it():
    train = [dict.fromkeys(DIMENSIONS, 4.0), dict.fromkeys(DIMENSIONS, 2.0)]  # mean 3.0 everywhere
    cases = {"case_id": ["a", "b"], "expert_scores": [dict.fromkeys(DIMENSIONS, 3.5), dict.fromkeys(DIMENSIONS, 1.0)]}
    base = constant_baseline(train, cases, n_bootstrap=0)
    assert base.report.label == "Constant train mean" and base.report.macro_mae == pytest.approx(1.25)  # never rounded
    assert base.errors.tolist() == [[0.5] * 6, [2.0] * 6]
    model = _held(base.errors - 0.4)
    line = summary_lines(model, model, baseline=base)[-1]
    assert line.startswith("Macro MAE after - constant train-mean baseline: -0.400")
    assert line.endswith("better than the constant")
    assert summary_lines(model, _held(base.errors), baseline=base)[-1].endswith("not shown to beat the constant")
    with pytest.raises(ValueError, match="train_experts is empty"):
        constant_baseline([], cases)
    uneven = constant_baseline([dict.fromkeys(DIMENSIONS, 3.4)], cases, n_bootstrap=0)
    assert uneven.errors[0].tolist() == pytest.approx([0.1] * 6)  # a constant is never rounded


def _toned(tones, errors, label="After SOREB (Stage 2)"):
    """Records as run_evaluation writes them: expert 3 everywhere, a prediction off by ``error`` on every dimension."""
    records = [{"case_id": f"c{i}", "skin_tone": tone, "expert_scores": dict.fromkeys(DIMENSIONS, 3.0),
                "scores": dict.fromkeys(DIMENSIONS, 3.0 - err)}
               for i, (tone, err) in enumerate(zip(tones, errors, strict=True))]
    report = SimpleNamespace(label=label)
    return HeldOut(report=report, errors=np.abs(np.asarray(errors, dtype=float))[:, None].repeat(6, 1),
                   records=records)


def test_the_skin_tone_line_gives_each_group_its_mae_ci_and_the_largest_gap():
    """Types I-VI are read in DDI's three groups; MAE per group by hand: I-II 0, III-IV 1, V-VI 1.5."""
    tones = ["I", "II", "III", "IV", "V", "VI"] * 4  # 8 cases a group: under 10, so each is marked
    errors = [{"I": 0, "II": 0, "III": 1, "IV": 1, "V": 2, "VI": 1}[t] for t in tones]
    slices = skin_tone_slices(_toned(tones, errors), n_bootstrap=200)
    assert [(g.value, g.n, g.macro.value) for g in slices.groups] == [("I-II", 8, 0.0), ("III-IV", 8, 1.0),
                                                                     ("V-VI", 8, 1.5)]
    line = skin_tone_line(slices)
    assert line.startswith("Skin tone (after SOREB): MAE I-II 0.000 [0.00, 0.00] (n=8, few cases), "
                           "III-IV 1.000 [1.00, 1.00] (n=8, few cases), V-VI 1.500 [")
    gap = re.search(r"largest gap V-VI - I-II \+1\.500 \[\+(\d\.\d\d), \+(\d\.\d\d)\] \(95% bootstrap CIs\)$", line)
    assert gap and 1.0 <= float(gap[1]) < 1.5 < float(gap[2]) <= 2.0, line  # V-VI's cases are off by 1 or 2
    # twelve cases a group: none marked; a group of three is marked and left out of the gap's pair
    tones = ["I", "III", "V", "V"] * 12 + ["unknown"] * 3
    big = skin_tone_slices(_toned(tones, [{"I": 0, "III": 1, "V": 0, "unknown": 3}[t] for t in tones]), n_bootstrap=50)
    text = skin_tone_line(big)
    assert "few cases" not in text.split("unknown")[0] and "unknown 3.000 [3.00, 3.00] (n=3, few cases)" in text
    assert "largest gap III-IV - I-II +1.000 [+1.00, +1.00] (of the 3 groups with 10+ cases)" in text
    unscored = _toned(["I", "V"], [0, 0])  # evaluations whose scores could not be read: said, never 0
    for r in unscored.records:
        r["scores"] = {}
    assert skin_tone_line(skin_tone_slices(unscored)) == ("Skin tone (after SOREB): MAE I-II n/a (n=1, few cases), "
                                                          "V-VI n/a (n=1, few cases); largest gap n/a (fewer than "
                                                          "two groups with a value)")


def test_without_a_skin_tone_nothing_is_sliced_written_or_printed(tmp_path):
    held = _toned([None] * 4, [0, 1, 0, 1])
    for r in held.records:
        del r["skin_tone"]
    assert skin_tone_slices(held) is None
    assert write_skin_tone_slices(held, held, tmp_path / "report") is None
    assert not (tmp_path / "report").exists()
    assert len(summary_lines(held, held, skin_tone=None)) == 1


def test_the_skin_tone_slices_before_and_after_go_into_the_report_files(tmp_path):
    tones = ["I", "II", "III", "IV", "V", "VI"] * 2
    before = _toned(tones, [1] * 12, label="Before SOREB (Stage 1)")
    after = _toned(tones, [0, 0, 0, 1, 1, 1] * 2)
    after_slices = write_skin_tone_slices(before, after, tmp_path)
    assert after_slices.label == "After SOREB (Stage 2)"
    written = json.loads((tmp_path / "slices_skin_tone.json").read_text())
    assert [s["label"] for s in written] == ["Before SOREB (Stage 1)", "After SOREB (Stage 2)"]
    assert [(g["value"], g["n"], g["few_cases"]) for g in written[1]["groups"]] == [
        ("I-II", 4, True), ("III-IV", 4, True), ("V-VI", 4, True)]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "slices_skin_tone.csv").read_text())))
    assert [(r["label"], r["group"]) for r in rows][-4:] == [
        ("After SOREB (Stage 2)", "I-II"), ("After SOREB (Stage 2)", "III-IV"), ("After SOREB (Stage 2)", "V-VI"),
        ("After SOREB (Stage 2)", "V-VI - I-II")]
    assert "### After SOREB (Stage 2): MAE by skin_tone" in (tmp_path / "slices_skin_tone.md").read_text()
    lines = summary_lines(before, after, skin_tone=after_slices)
    assert len(lines) == 2 and lines[-1] == skin_tone_line(after_slices)  # one line, after the others


def test_image_controls_keep_narratives_and_scores_and_change_only_the_picture():
    cases = generate_cases(6, start=900_000)
    perm = derangement(6)
    assert sorted(perm) == list(range(6)) and all(i != j for i, j in enumerate(perm))
    swapped, blank = mismatched(cases), blanked(cases)
    assert swapped["narrative"] == cases["narrative"] and swapped["expert_scores"] == cases["expert_scores"]
    assert [a.tobytes() for a in swapped["image"]] == [cases["image"][j].tobytes() for j in perm]
    assert len({img.tobytes() for img in blank["image"]}) == 1
    with pytest.raises(ValueError, match="at least two"):
        derangement(1)


@pytest.mark.timeout(900)  # may train the shared demo adapter first
def test_held_out_report_callback_reports_before_after_and_mismatched(demo_adapter, tmp_path):
    """The SOREB script's report is a TrainerCallback any trainer can take: Table 1 before and after training, the
    paired difference, the mismatched-image control and the skin-tone line, written and printed on the main process."""
    from types import SimpleNamespace

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermtrl.tiny import tiny_llava_path
    from dermtrl.trainer.callbacks import HeldOutReportCallback

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_llava_path()), demo_adapter)
    cases = generate_cases(4, start=200_000)
    tones = ["I", "VI", "II", "V"]  # two cases in each of groups I-II and V-VI, whatever the generator's own mix
    cases = cases.remove_columns([c for c in ("skin_tone",) if c in cases.column_names]).add_column("skin_tone", tones)
    callback = HeldOutReportCallback(cases, tmp_path, AutoProcessor.from_pretrained(demo_adapter),
                                     image_dims=IMAGE_DEPENDENT)
    args = SimpleNamespace(world_size=1, deepspeed_plugin=None, fsdp_plugin_args=None)  # one process, no sharding
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(args, state, None, model=model)
    state.global_step = 3
    callback.on_train_end(args, state, None, model=model)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"before.jsonl", "after.jsonl", "mismatched.jsonl", "summary.txt", "agreement.md",
            "slices_skin_tone.md", "slices_skin_tone.csv", "slices_skin_tone.json"} <= written, written
    assert callback.lines[0].startswith("Macro MAE after - before") and "Vision reliance" in callback.lines[1]
    assert callback.lines[2].startswith("Skin tone (after): MAE I-II ") and len(callback.lines) == 3
    assert "(n=2, few cases), V-VI " in callback.lines[2] and "largest gap" in callback.lines[2]
    assert (tmp_path / "summary.txt").read_text().splitlines() == callback.lines
    assert model.training  # handed back to the trainer in training mode
    other = HeldOutReportCallback(cases, tmp_path / "other", None)
    other.on_train_begin(args, SimpleNamespace(is_world_process_zero=False, global_step=0), None, model=model)
    assert other.before is None and not (tmp_path / "other").exists()  # only the main process evaluates
