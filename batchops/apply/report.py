"""What an apply reports, and the progress seam it reports through: light to import, since a
no-op apply needs these and nothing of the evaluator."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from batchops.lazyclass import dataclass

if TYPE_CHECKING:
    from batchops.plan.actions import Plan


class Progress(Protocol):
    def note(self, message: str) -> None: ...

    def waiting(self, done: int, total: int, in_flight: int) -> None: ...


class NullProgress:
    def note(self, message: str) -> None:
        pass

    def waiting(self, done: int, total: int, in_flight: int) -> None:
        pass


@dataclass
class ApplyReport:
    submitted: int = 0
    reused: int = 0  # items answered by stored results of the same requests
    saved_usd: float = 0.0  # their expected cost
    batches_created: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    harvested: list[str] = field(default_factory=list)
    results_stored: int = 0
    canceled: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final_plan: Plan | None = None
    timed_out: bool = False
    approved: bool = True
    outputs: list[Path] = field(default_factory=list)  # job output files written

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `apply --json` / `refresh --json` (format_version 1)."""
        from batchops.plan.serialize import failed_dict

        final = self.final_plan
        return {
            "format_version": 1,
            "approved": self.approved,
            "submitted": self.submitted,
            "reused": self.reused,
            "saved_usd": round(self.saved_usd, 6),
            "batches_created": self.batches_created,
            "adopted": self.adopted,
            "harvested": self.harvested,
            "results_stored": self.results_stored,
            "canceled": self.canceled,
            "pruned": self.pruned,
            "requeued": self.requeued,
            "drift": self.drift,
            "problems": self.problems,
            "timed_out": self.timed_out,
            "outputs": [str(p) for p in self.outputs],
            "jobs": [
                {"name": j.name, "counts": j.counts, "failed": [failed_dict(f) for f in j.failed]}
                for j in (final.jobs if final is not None else ())
            ],
        }
