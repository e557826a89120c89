"""Callbacks for DermEval training runs, in TRL's manner (``trainer.add_callback(...)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

__all__ = ["HeldOutReportCallback"]


class HeldOutReportCallback(TrainerCallback):
    """Table 1 on held-out cases before and after training, the paired difference with its CI, and the model's
    agreement with every image swapped for another case's (does it look at the picture?).

    Runs on the main process only. Writes ``before.jsonl``, ``after.jsonl``, ``mismatched.jsonl``, the agreement
    report and ``summary.txt`` under ``out_dir``, and prints the table and the summary lines. ``cases`` need
    ``image``, ``narrative``, ``expert_scores`` and ``case_id``; ``image_dims`` names the dimensions whose scores
    need the picture (for synthetic cases, ``dermtrl.cases.synthetic.IMAGE_DEPENDENT``).
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
        if state.is_world_process_zero:
            self.before = self._report(model, self.labels[0], "before", self.cases, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.before is None:
            return
        from dermtrl.cases.controls import mismatched
        from dermtrl.console import console
        from dermtrl.dermeval.held_out import summary_lines
        from dermtrl.report import render_table, write_report

        after = self._report(model, self.labels[1], "after", self.cases, state.global_step)
        swapped = self._report(model, f"{self.labels[1]}, mismatched images", "mismatched",
                               mismatched(self.cases), state.global_step)
        write_report([self.before.report, after.report], self.out_dir)
        console.print(render_table([self.before.report, after.report], title=self.title))
        self.lines = summary_lines(self.before, after, swapped, self.image_dims or None)
        (self.out_dir / "summary.txt").write_text("\n".join(self.lines) + "\n")
        for line in self.lines:
            console.print(line)
