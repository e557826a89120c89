"""Callbacks for DermEval training runs, in TRL's manner (``trainer.add_callback(...)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["HeldOutReportCallback", "report_backend_problem"]


def report_backend_problem(args: Any) -> str | None:
    """Why the held-out report cannot run with these training arguments, or ``None``.

    The report generates on the main process only; under DeepSpeed ZeRO-3 or FSDP with several processes every
    process must take part in each forward pass (the parameters are sharded), so it would deadlock.
    """
    import os

    from accelerate.utils import str_to_bool

    if args.world_size <= 1:
        return None
    zero3 = args.deepspeed_plugin is not None and args.deepspeed_plugin.zero_stage == 3
    fsdp = args.fsdp_plugin_args is not None or bool(str_to_bool(os.environ.get("ACCELERATE_USE_FSDP", "false")))
    if not (zero3 or fsdp):
        return None
    return ("the held-out report generates on the main process only, which deadlocks when the parameters are "
            f"sharded over {args.world_size} processes ({'ZeRO-3' if zero3 else 'FSDP'}); set report_cases: 0 and "
            "run `dermtrl eval` on the saved adapter, or train with DDP / ZeRO-2")


class HeldOutReportCallback(TrainerCallback):
    """Table 1 on held-out cases before and after training, the paired difference with its CI, and the model's
    agreement with every image swapped for another case's (does it look at the picture?).

    Runs on the main process only (refused under ZeRO-3 or FSDP with several processes). Writes
    ``before.jsonl``, ``after.jsonl``, ``mismatched.jsonl``, the agreement report and ``summary.txt`` under
    ``out_dir``, and prints the table and the summary lines. ``cases`` need
    ``image``, ``narrative``, ``expert_scores`` and ``case_id``; ``image_dims`` names the dimensions whose scores
    need the picture (for synthetic cases, ``dermtrl.cases.synthetic.IMAGE_DEPENDENT``). Cases with a
    ``skin_tone`` add one line, the MAE after training by skin-tone group, and ``slices_skin_tone.*`` files.
    """

    def __init__(self, cases: Any, out_dir: str | Path, processor: Any, *, image_dims: tuple[str, ...] = (),
                 title: str = "Held-out agreement with expert scores", labels: tuple[str, str] = ("Before", "After")):
        self.cases, self.out_dir, self.processor = cases, Path(out_dir), processor
        self.image_dims, self.title, self.labels = image_dims, title, labels
        self.before: Any = None
        self.lines: list[str] = []

    def _report(self, model: Any, label: str, tag: str, cases: Any, step: int) -> Any:
        from dermtrl.dermeval.evaluator import DermEval
        from dermtrl.dermeval.held_out import evaluate_held_out

        evaluator = DermEval(model, self.processor, model_id=label, model_fingerprint=f"{label}-{step}")
        result = evaluate_held_out(evaluator, cases, self.out_dir / f"{tag}.jsonl", label)
        model.train()
        return result

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        problem = report_backend_problem(args)  # every process raises, none waits on the others
        if problem:
            raise ValueError(f"HeldOutReportCallback: {problem}")
        if state.is_world_process_zero:
            self.before = self._report(model, self.labels[0], "before", self.cases, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.before is None:
            return
        from dermtrl.cases.controls import mismatched
        from dermtrl.console import console
        from dermtrl.dermeval.held_out import summary_lines, write_skin_tone_slices
        from dermtrl.report import render_table, write_report

        after = self._report(model, self.labels[1], "after", self.cases, state.global_step)
        swapped = self._report(model, f"{self.labels[1]}, mismatched images", "mismatched",
                               mismatched(self.cases), state.global_step)
        write_report([self.before.report, after.report], self.out_dir)
        console.print(render_table([self.before.report, after.report], title=self.title))
        skin_tone = write_skin_tone_slices(self.before, after, self.out_dir)  # None: the cases have no skin tone
        self.lines = summary_lines(self.before, after, swapped, self.image_dims or None, skin_tone=skin_tone)
        (self.out_dir / "summary.txt").write_text("\n".join(self.lines) + "\n")
        for line in self.lines:
            console.print(line)
