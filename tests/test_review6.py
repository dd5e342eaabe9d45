"""Review of b547c65..b4b40e8 (cancel 404 as drift, rows cache HMAC, export on up to four
processes): defects found, each test failing on the code as reviewed."""

from __future__ import annotations

import contextlib
import io
import os
from datetime import timedelta

import anthropic
import pytest

from batchops.clock import utcnow
from batchops.commands import results as results_mod
from batchops.commands.context import Context
from batchops.commands.results import ExportOptions, export
from batchops.spec import cache
from tests.projects import apply, context, rows, write_project
from tests.test_apply import db_rows
from tests.test_results_golden import filled  # noqa: F401

# ------------------------------------------------------------------ prune: a delete answered 404


def test_a_prune_whose_delete_is_answered_404_is_not_said_pruned_while_the_batch_remains(
    tmp_path, emulator, emulator_admin, sdk_client
) -> None:
    """b547c65 made a cancel answered 404 drift ("a 404 is a question", README), but prune's
    delete still swallows a 404 (`Evaluator.prune`: `except NotFound: pass`): one passing 404
    and apply reports the batch pruned ("Pruned batch …", `--json` "pruned"), records it pruned
    in the state, says no drift, and never plans its delete again. The batch and its results
    stay on the API, while the user was told they were deleted."""
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    [(batch_id,)] = db_rows(ctx, "select id from batches")
    ctx.clock = lambda: utcnow() + timedelta(days=28)  # its results near their expiry: prune
    emulator_admin.add_faults([{"status": 404, "endpoint": "delete"}])
    report = apply(ctx)
    sdk_client.messages.batches.retrieve(batch_id)  # it is still there: the 404 was passing
    assert batch_id not in report.pruned, (
        f"apply reported {batch_id} pruned, but the API still holds it (drift: {report.drift})"
    )
    apply(ctx)  # the fault used up: the next apply deletes it
    with pytest.raises(anthropic.NotFoundError):
        sdk_client.messages.batches.retrieve(batch_id)


# ------------------------------------------------------------------ export: a fork refused


@pytest.fixture
def three_with_a_refused_fork(filled: Context, monkeypatch: pytest.MonkeyPatch) -> list[int]:  # noqa: F811
    """Rows kept, three processes from the first byte, and the second fork refused as the
    kernel refuses one at a pids limit (EAGAIN); the pids of the children made."""
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    filled.desired()
    monkeypatch.setattr(results_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 4)
    monkeypatch.setattr(results_mod, "_idle_cores", lambda: 3)
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        if forked:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(results_mod.os, "fork", fork)
    return forked


def _open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="Linux /proc")
def test_a_refused_fork_leaves_no_pipe_open(
    filled: Context,  # noqa: F811
    three_with_a_refused_fork: list[int],
) -> None:
    """`_parts` makes each child's pipe (`os.pipe()`) before its `os.fork()`, and only a pipe
    whose fork succeeded is recorded for the cleanup: when a fork fails, both ends of that
    pipe stay open in the process for good. A program (or service) exporting through the
    library leaks two descriptors at each refused fork, and with MAX_PROCESSES now 4 there
    are up to three forks in an export that the system may refuse."""
    before = _open_fds()
    with contextlib.suppress(BlockingIOError):  # what it raises is the other test's
        export(filled, "mix", "jsonl", io.BytesIO(), options=ExportOptions())
    assert three_with_a_refused_fork, "the first child was forked"
    after = _open_fds()
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(after) - set(before)}
    assert leaked == {}, f"left open by the export: {leaked}"


def test_a_refused_fork_does_not_fail_the_export(
    filled: Context,  # noqa: F811
    three_with_a_refused_fork: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The processes an export runs on are batchops' own choice (one per idle core, now up to
    four); when the system refuses one of them (EAGAIN at a container's pids limit or
    RLIMIT_NPROC, ENOMEM), the whole `batchops results` fails with "Error: unexpected
    BlockingIOError: … (a bug in batchops, or a damaged state file …)", exit 1, and no file,
    though the export can run on the processes it has, or on this one, as it does on a
    one-core machine."""
    out = io.BytesIO()
    summary = export(filled, "mix", "jsonl", out, options=ExportOptions())
    monkeypatch.setattr(results_mod, "_idle_cores", lambda: 1)
    alone = io.BytesIO()
    assert export(filled, "mix", "jsonl", alone, options=ExportOptions()).rows == summary.rows
    assert out.getvalue() == alone.getvalue()
    (child,) = three_with_a_refused_fork  # made before the refused fork, and ended by it
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # reaped already
