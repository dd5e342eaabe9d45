"""Every expected failure of batchops is a BatchopsError.

The CLI turns these into one `Error: ...` line per problem and exit code 1, in exactly one place
(`cli.main`). Anything else is a bug and shows a traceback only with `--debug`.
"""

from __future__ import annotations

from collections.abc import Iterable


class BatchopsError(Exception):
    """An expected failure; `problems` holds one human-readable line per problem."""

    def __init__(self, *problems: str):
        self.problems: list[str] = [p for p in problems if p] or ["unknown error"]
        super().__init__("\n".join(self.problems))

    @classmethod
    def many(cls, problems: Iterable[str]) -> BatchopsError:
        return cls(*problems)


class SpecError(BatchopsError):
    """A job spec, data file or template is wrong (file and place named in each line)."""


class StateError(BatchopsError):
    """The state file is unusable: corrupt, newer, locked, or does not match a saved plan."""


class LockHeld(StateError):
    """Another apply holds the state lock."""


class PlanError(BatchopsError):
    """A saved plan cannot be applied, or a plan was refused (budget)."""


class BudgetExceeded(PlanError):
    """A job's estimated cost is above its `budget_usd`."""


class RemoteError(BatchopsError):
    """The Message Batches API failed in a way batchops cannot recover from in this run."""


def location(file: object, *parts: object) -> str:
    """Format `file: part: part` for error lines, skipping empty parts."""
    return ": ".join(str(p) for p in (file, *parts) if p not in (None, ""))
