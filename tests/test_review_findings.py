"""Regression tests for bugs found in an adversarial review of the apply loop (DESIGN §6)."""

from __future__ import annotations

import pytest

from batchops.apply.evaluator import Evaluator
from batchops.errors import BatchopsError
from batchops.spec.desired import items_for
from tests.projects import apply, context, rows, write_project
from tests.test_apply import DAY, db_rows, states, submissions


class Killed(BaseException):
    """Stands in for a SIGKILL: nothing after the raise runs, committed transactions stay."""


def test_crash_between_deleted_drift_and_requeue_still_converges(
    tmp_path, emulator, emulator_admin, sdk_client, monkeypatch, state_location, list_caught_up
):
    # A batch deleted outside batchops before harvest: refresh saves drift=deleted (which makes
    # the batch `finished`, never polled again) and only then requeues its items. A crash between
    # the two left the items in flight in a finished batch: pending forever.
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # sent; the batch ends at once but is not harvested yet
    [(batch_id,)] = db_rows(ctx, "select id from batches")
    sdk_client.messages.batches.delete(batch_id)

    def die(self, step, index=0):
        raise Killed

    monkeypatch.setattr(Evaluator, "requeue", die)
    with pytest.raises(Killed):
        apply(ctx)
    monkeypatch.undo()

    report = apply(ctx, wait=True, timeout=10)
    assert not report.timed_out
    assert set(states(ctx).values()) == {"succeeded"}
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {2}


def test_results_lost_do_not_reset_the_attempt_count(
    tmp_path, emulator, emulator_admin, state_location
):
    # max_attempts = 2. Attempt 1 errors (retryable); attempt 2's results expire before harvest,
    # so it does not count. It is sent again as attempt 2 (not 1), errors, and the item fails:
    # three submissions in all, not four.
    write_project(tmp_path, rows(1, r1="[[emulator:fail=api_error]]"), max_attempts=2)
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # attempt 1
    apply(ctx)  # harvest attempt 1 (api_error), send attempt 2
    assert submissions(emulator_admin, "r1") == 2
    emulator_admin.advance_clock(30 * DAY)  # attempt 2's results expire unharvested
    report = apply(ctx, wait=True, timeout=20)
    assert len(report.requeued) == 1
    assert states(ctx) == {"r1": "failed"}
    assert submissions(emulator_admin, "r1") == 3
    assert db_rows(ctx, "select attempts from items") == [(2,)]


def test_import_with_a_short_results_read_records_nothing(
    tmp_path, emulator, emulator_admin, sdk_client, state_location
):
    # import learns the batch's custom_ids from one read of its results. A read missing a line
    # used to be recorded as the batch's contents; every later harvest then failed ("result for
    # custom_id ..., which this batch was not sent") and its items stayed pending forever.
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    _, desired = ctx.plan(refresh=False)
    items = {i.key: i for i in items_for(desired.project, "demo")}
    made = sdk_client.messages.batches.create(
        requests=[
            {"custom_id": items[k].custom_id, "params": items[k].params} for k in ("r1", "r2", "r3")
        ]
    )
    emulator_admin.add_faults([{"kind": "drop_line", "endpoint": "results"}])
    with pytest.raises(BatchopsError):
        ctx.import_batch("demo", made.id)
    assert db_rows(ctx, "select count(*) from batches") == [(0,)]
    assert db_rows(ctx, "select count(*) from items where inflight_attempt is not null") == [(0,)]
    assert ctx.import_batch("demo", made.id) == 3
    assert set(states(ctx).values()) == {"succeeded"}


def test_prune_cut_short_after_the_delete_is_recorded_even_once_results_expired(
    tmp_path, emulator, emulator_admin, monkeypatch, state_location
):
    # refresh() recognises "deleted remotely, harvested, near expiry" as our own prune cut short
    # and sets pruned_at, but _save_batch dropped that field. Before expiry a re-prune papered
    # over it; once the results had expired, the batch was polled (a 404) by every run forever.
    import batchops.apply.evaluator as applier_mod

    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)  # sent and harvested
    from datetime import timedelta

    from batchops.clock import utcnow

    # 28 days pass by batchops' clock (a harvested batch is not polled again before its stored
    # results expiry nears, so a jump of the emulator's clock alone would not be seen)
    ctx.clock = lambda: utcnow() + timedelta(days=28)
    real_checkpoint = applier_mod.checkpoint

    def die_after_delete(name):
        if name == "after-delete":
            raise Killed

    monkeypatch.setattr(applier_mod, "checkpoint", die_after_delete)
    with pytest.raises(Killed):
        apply(ctx)  # the batch is deleted remotely, pruned_at not written
    monkeypatch.setattr(applier_mod, "checkpoint", real_checkpoint)
    assert db_rows(ctx, "select count(*) from batches where pruned_at is null") == [(1,)]
    # the next run comes after day 29 (by batchops' clock): no prune action any more
    ctx.clock = lambda: utcnow() + timedelta(days=30)
    report = apply(ctx)
    assert report.drift == [] and report.pruned == []
    assert db_rows(ctx, "select count(*) from batches where pruned_at is null") == [(0,)]
    assert set(states(ctx).values()) == {"succeeded"}
