"""What `make demo` adds around the SOREB script: Stage 1 when its output is absent or stale, and the held-out report.

The demo config (``recipes/configs/demo_soreb.yaml``) names a Stage-1 output (``sft_adapter``), the Stage-1 config
that produces it (``sft_config``) and a number of held-out synthetic cases (``report_cases``). From a fresh machine
one command then trains both stages and prints Table 1 before and after Stage 2. None of this acts when training
on real data: with ``sft_config`` and ``report_cases`` unset, :mod:`dermtrl.scripts.soreb` trains and saves only.

- :func:`prepare_stage1`: a Stage-1 output trained on another base, or with settings ``sft_config`` would not give,
  is renamed (kept, never deleted or reused), then Stage 1 runs when its output is absent;
- :func:`check_report` / :func:`add_held_out_report`: the before/after report on held-out synthetic cases
  (:class:`~dermtrl.trainer.callbacks.HeldOutReportCallback`), refused where it would deadlock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dermtrl.cases.loading import load_cases
from dermtrl.cases.splits import TEST_START
from dermtrl.cases.synthetic import IMAGE_DEPENDENT, SYNTHETIC_VERSION
from dermtrl.scripts import sft
from dermtrl.scripts.lora import other_base
from dermtrl.scripts.script_args import STAGE1_SETTINGS_FILE, recorded_stage1_settings, stage1_settings
from dermtrl.trainer.callbacks import HeldOutReportCallback, report_backend_problem
from dermtrl.trainer.soreb_config import SOREBConfig

__all__ = ["HELD_OUT_START", "add_held_out_report", "check_report", "prepare_stage1", "run_stage1",
           "set_aside_if_trained_on_another_base", "set_aside_if_trained_otherwise", "set_aside_stale_stage1"]

#: The held-out report reads the synthetic test cases (dermtrl.cases.splits)
HELD_OUT_START = TEST_START


def run_stage1(config: str, output_dir: str) -> None:
    """Stage 1 with its own recipe and config, so Stage 2 can start from a fresh machine."""
    sft.main(*sft.make_parser().parse_args_and_config(args=["--config", config, "--output_dir", output_dir]))


def _set_aside(adapter: str, suffix: str, why: str) -> None:
    """Rename ``adapter`` to ``adapter.suffix`` (numbered when taken): kept, never deleted or reused."""
    aside = Path(f"{adapter.rstrip('/')}.{suffix}")
    for n in range(2, 100):
        if not aside.exists():
            break
        aside = Path(f"{adapter.rstrip('/')}.{suffix}-{n}")
    Path(adapter).rename(aside)
    print(f"Stage 1 output {adapter} {why}: moved it to {aside}")


def set_aside_if_trained_on_another_base(adapter: str, base: str) -> bool:
    """A Stage-1 output this recipe trained on another base (an older tiny model, another checkpoint) is renamed,
    not reused or deleted, so Stage 1 runs again on the current base and the old adapter is kept."""
    trained_on = other_base(adapter, base)
    if trained_on is None:
        return False
    _set_aside(adapter, Path(trained_on).name, f"was trained on {trained_on}, not on {base}")
    return True


def set_aside_if_trained_otherwise(adapter: str, sft_config: str) -> bool:
    """A Stage-1 output that ``sft_config`` would not produce (the config was edited since: another learning rate,
    more epochs, other cases), or that records no settings (an earlier dermtrl), is renamed like one of another
    base, so `make demo` after an edit of the Stage-1 config trains Stage 1 again instead of continuing stale weights.
    """
    args = sft.make_parser().parse_args_and_config(args=["--config", sft_config, "--output_dir", adapter])
    wanted = stage1_settings(*args)
    recorded = recorded_stage1_settings(adapter)
    if recorded == wanted:
        return False
    if recorded is None:
        why = f"records no Stage-1 settings ({STAGE1_SETTINGS_FILE}; an earlier dermtrl wrote it)"
    else:
        changed = [f"{name} {recorded.get(group, {}).get(name)!r} -> {value!r}"
                   for group, values in wanted.items() for name, value in values.items()
                   if recorded.get(group, {}).get(name) != value]
        why = f"was trained with other settings than {sft_config} gives ({'; '.join(changed)})"
    _set_aside(adapter, "previous", why)
    return True


def set_aside_stale_stage1(adapter: str, base: str, sft_config: str, training_args: SOREBConfig) -> bool:
    """Both checks above, the main process first while the others wait (TrainingArguments.main_process_first): in a
    launch of several processes they would otherwise rename the same folder at once, or find it half-moved. The
    others then check after it and find the output moved or current. Returns whether this process moved it."""
    # local=False on a shared filesystem (save_on_each_node false, the default): one process of the whole launch
    # checks first, not one per node (several nodes would rename the same shared folder at once)
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking the Stage-1 output"):
        if not Path(adapter).exists():
            return False
        return set_aside_if_trained_on_another_base(adapter, base) or set_aside_if_trained_otherwise(adapter,
                                                                                                    sft_config)


def prepare_stage1(adapter: str, base: str, sft_config: str, training_args: SOREBConfig) -> None:
    """The Stage-1 output Stage 2 continues, current for ``base`` and ``sft_config``: a stale one is set aside, and
    Stage 1 runs (every process of the launch takes part) when the output is absent."""
    set_aside_stale_stage1(adapter, base, sft_config, training_args)
    if not Path(adapter).exists():
        print(f"Stage 1 output {adapter} is absent: running Stage 1 with {sft_config}")
        run_stage1(sft_config, adapter)


def check_report(report_cases: int, training_args: SOREBConfig) -> None:
    """Refuse ``report_cases`` before any training where the report would deadlock (ZeRO-3 / FSDP, several
    processes), rather than after Stage 1."""
    problem = report_backend_problem(training_args) if report_cases else None
    if problem:
        raise ValueError(f"report_cases={report_cases}: {problem}")


def add_held_out_report(trainer: Any, report_cases: int, processor: Any,
                        output_dir: str | Path) -> HeldOutReportCallback:
    """Table 1 on ``report_cases`` held-out synthetic cases before and after training, with the mismatched-image
    control and the skin-tone slices, written under ``output_dir/report``. Returns the callback added."""
    held_out = load_cases("dermtrl:synthetic", n=report_cases, start=HELD_OUT_START)
    callback = HeldOutReportCallback(
        held_out, Path(output_dir) / "report", processor, image_dims=IMAGE_DEPENDENT,
        labels=("Before SOREB (Stage 1)", "After SOREB (Stage 2)"),
        title=f"Held-out agreement with expert scores, {len(held_out)} synthetic {SYNTHETIC_VERSION} cases")
    trainer.add_callback(callback)
    return callback
