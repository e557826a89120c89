"""What a construction step did, and every item it skipped or flagged and why, as data and as a rich table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["Skip", "StepSummary"]


@dataclass(frozen=True)
class Skip:
    """One item left out (or kept with a flag): which item, and a message a person can act on."""

    item: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason, "message": self.message}


@dataclass
class StepSummary:
    """Counts for one step: ``done`` made now, ``reused`` found in the records, ``skipped`` and ``flagged``."""

    step: str
    total: int = 0
    done: int = 0
    reused: int = 0
    skipped: list[Skip] = field(default_factory=list)
    flagged: list[Skip] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, item: str, reason: str, message: str) -> None:
        self.skipped.append(Skip(item, reason, message))

    def flag(self, item: str, reason: str, message: str) -> None:
        self.flagged.append(Skip(item, reason, message))

    @property
    def ok(self) -> int:
        return self.done + self.reused

    def headline(self) -> str:
        parts = [f"{self.step}: {self.ok} of {self.total} ok ({self.done} new, {self.reused} resumed)",
                 f"{len(self.skipped)} skipped", f"{len(self.flagged)} flagged"]
        parts += [f"{k} {v}" for k, v in self.extra.items() if isinstance(v, (int, float, str))]
        return ", ".join(parts)

    def table(self) -> Table:
        """Every skipped and flagged item with its reason (an empty table says there were none)."""
        from rich.table import Table

        table = Table(title=f"{self.step}: skipped and flagged items", show_lines=False)
        table.add_column("item", overflow="fold")
        table.add_column("outcome")
        table.add_column("reason")
        table.add_column("message", overflow="fold")
        for entry in self.skipped:
            table.add_row(entry.item, "[red]skipped[/red]", entry.reason, entry.message)
        for entry in self.flagged:
            table.add_row(entry.item, "[yellow]flagged[/yellow]", entry.reason, entry.message)
        return table

    def print(self, console: Console | None = None) -> None:

        if console is None:
            from dermtrl.console import err_console as console
        console.print(self.headline())
        if self.skipped or self.flagged:
            console.print(self.table())

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "total": self.total, "done": self.done, "reused": self.reused,
                "skipped": [s.to_dict() for s in self.skipped], "flagged": [s.to_dict() for s in self.flagged],
                **self.extra}
