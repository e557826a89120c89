"""The demo's held-out summary: paired difference after - before, and vision reliance (true vs mismatched)."""

import numpy as np
import pytest

from dermtrl.cases.controls import blanked, derangement, mismatched
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, generate_cases
from dermtrl.dermeval.held_out import HeldOut, constant_baseline, record_errors, summary_lines
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
    paired difference and the mismatched-image control, written and printed on the main process."""
    from types import SimpleNamespace

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dermtrl.tiny import tiny_llava_path
    from dermtrl.trainer.callbacks import HeldOutReportCallback

    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_llava_path()), demo_adapter)
    cases = generate_cases(4, start=200_000)
    callback = HeldOutReportCallback(cases, tmp_path, AutoProcessor.from_pretrained(demo_adapter),
                                     image_dims=IMAGE_DEPENDENT)
    args = SimpleNamespace(world_size=1, deepspeed_plugin=None, fsdp_plugin_args=None)  # one process, no sharding
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(args, state, None, model=model)
    state.global_step = 3
    callback.on_train_end(args, state, None, model=model)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"before.jsonl", "after.jsonl", "mismatched.jsonl", "summary.txt", "agreement.md"} <= written, written
    assert callback.lines[0].startswith("Macro MAE after - before") and "Vision reliance" in callback.lines[1]
    assert model.training  # handed back to the trainer in training mode
    other = HeldOutReportCallback(cases, tmp_path / "other", None)
    other.on_train_begin(args, SimpleNamespace(is_world_process_zero=False, global_step=0), None, model=model)
    assert other.before is None and not (tmp_path / "other").exists()  # only the main process evaluates
