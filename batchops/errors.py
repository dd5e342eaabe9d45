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
    """The Message Batches API failed in a way batchops cannot recover from in this run.

    `status` is the HTTP status when there was a response; `retryable` says whether the same
    call may succeed later (429, 5xx, a dropped connection), so callers never read the message.
    """

    def __init__(self, *problems: str, status: int | None = None, retryable: bool = False):
        super().__init__(*problems)
        self.status = status
        self.retryable = retryable


class NotFound(RemoteError):
    """The API answered 404 for a batch (deleted, never existed, or a passing fault)."""

    def __init__(self, batch_id: str):
        super().__init__(f"batch {batch_id} not found", status=404)
        self.batch_id = batch_id


class CreateOutcomeUnknown(RemoteError):
    """A create may or may not have made a batch (timeout, dropped connection, 5xx)."""


class NoCredentials(BatchopsError):
    """No API key, and not running against the emulator."""


def location(file: object, *parts: object) -> str:
    """Format `file: part: part` for error lines, skipping empty parts."""
    return ": ".join(str(p) for p in (file, *parts) if p not in (None, ""))


class Interrupted(BaseException):  # noqa: N818 (not an error: a request to stop)
    """SIGINT or SIGTERM arrived (a cancelled CI job, Ctrl-C). A BaseException, like
    KeyboardInterrupt: it unwinds through every `finally`, rolling back the transaction in
    progress and releasing the lease, and no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# The signal a stop was asked by (set by the CLI's handler). The handler raises `Interrupted`
# where the signal lands; landing in a weakref callback or a `__del__`, the raise is printed as
# "Exception ignored" and lost, and the process waited on with the signal ignored: `pause` and
# the wait loop raise it again.
STOP_REQUESTED: list[int] = []


def pause(seconds: float) -> None:
    """`time.sleep`, then `Interrupted` if a stop was asked for and its raise was lost."""
    import time

    time.sleep(seconds)
    stop_if_requested()


def stop_if_requested() -> None:
    """`Interrupted` if a stop was asked for and its raise was lost: called before anything new
    begins (an apply's cycle, a step, a create), so a lost stop runs nothing more."""
    if STOP_REQUESTED:
        raise Interrupted(STOP_REQUESTED[0])
