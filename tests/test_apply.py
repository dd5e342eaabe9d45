"""apply end to end: the real SDK over HTTP against the emulator on loopback (DESIGN §5–§6)."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest

from batchops.clock import utcnow
from batchops.commands.context import Context
from batchops.emulator import EmulatorAdmin
from batchops.errors import BudgetExceeded, LockHeld, PlanError, StateError
from batchops.spec.desired import items_for
from batchops.state.sqlite import SqliteWriter as StateStore
from tests import statedb
from tests.projects import apply, context, rows, write_project, write_rows

DAY = 24 * 3600


def states(ctx) -> dict[str, str]:
    """key → DESIGN §5 state, as a fresh offline plan sees it."""
    plan, desired = ctx.plan(refresh=False)
    from batchops.plan.diff import classify
    from batchops.state import open_reader

    reader = open_reader(ctx.settings.state_path)
    records = {r.key: r for r in reader.item_records()}
    reader.close()
    out = {}
    for job in desired.jobs:
        for item in job.items:
            out[item.key] = classify(item, records.get(item.key), job.max_attempts)[0]
    return out


def submissions(admin: EmulatorAdmin, key: str, job: str = "demo") -> int:
    """How often any request of item `key` was sent (its custom_id changes with its content)."""
    prefix = f"{job}-{key}-"
    return sum(n for cid, n in admin.stats()["submissions"].items() if cid.startswith(prefix))


def db_rows(ctx, sql: str, params=()) -> list[tuple]:
    """Raw SQL on the context's state, whichever backend holds it."""
    return statedb.rows(ctx.settings.state_path, sql, params)


def test_apply_then_apply_again_sends_nothing(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(5))
    ctx = context(tmp_path, emulator, state=state_location)
    report = apply(ctx, wait=True)
    assert report.submitted == 5
    assert set(states(ctx).values()) == {"succeeded"}
    assert db_rows(ctx, "select count(*) from results where type = 'succeeded'") == [(5,)]
    before = emulator_admin.stats()

    again = apply(ctx, wait=True)
    assert again.submitted == 0
    assert emulator_admin.stats() == before


def test_editing_one_row_sends_exactly_that_item(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(5))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    write_rows(tmp_path, rows(5, r3="a different text"))
    plan, _ = ctx.plan(refresh=False)
    assert [(a.key, a.reason) for a in plan.jobs[0].submits] == [("r3", "changed")]
    report = apply(ctx, wait=True)
    assert report.submitted == 1
    assert {k: submissions(emulator_admin, k) for k in ("r1", "r2", "r3", "r4", "r5")} == {
        "r1": 1,
        "r2": 1,
        "r3": 2,
        "r4": 1,
        "r5": 1,
    }
    # the old result is kept as history; the current one is for the new fingerprint
    assert db_rows(ctx, "select count(*) from results where key = 'r3'") == [(2,)]
    assert states(ctx)["r3"] == "succeeded"


def test_retries_up_to_max_attempts_and_never_invalid_requests(
    tmp_path, emulator, emulator_admin, state_location, clock_running
):
    write_project(
        tmp_path,
        rows(
            6,
            r1="[[emulator:fail=overloaded_error:times=2]]",  # succeeds on the third attempt
            r2="[[emulator:fail=api_error]]",  # never succeeds: three attempts, then failed
            r3="[[emulator:fail=invalid_request_error]]",  # not retryable: one attempt
            r4="[[emulator:expired:times=1]]",
            r5="[[emulator:fail=timeout_error:times=1]]",
        ),
        max_attempts=3,
    )
    ctx = context(tmp_path, emulator, state=state_location)
    with clock_running():  # r4's first batch ends at its expiry, a day on
        apply(ctx, wait=True)
    assert states(ctx) == {
        "r1": "succeeded",
        "r2": "failed",
        "r3": "failed",
        "r4": "succeeded",
        "r5": "succeeded",
        "r6": "succeeded",
    }
    assert {k: submissions(emulator_admin, k) for k in ("r1", "r2", "r3", "r4", "r5", "r6")} == {
        "r1": 3,
        "r2": 3,
        "r3": 1,
        "r4": 2,
        "r5": 2,
        "r6": 1,
    }
    plan, _ = ctx.plan(refresh=False)
    failed = {f.key: f for f in plan.jobs[0].failed}
    assert failed["r3"].error_type == "invalid_request_error"
    assert failed["r3"].message.startswith("invalid_request_error: ")
    assert failed["r2"].message.startswith("max_attempts (3) used up; last: api_error")
    # nothing more to do: a further apply sends nothing
    before = emulator_admin.stats()
    assert apply(ctx, wait=True).submitted == 0
    assert emulator_admin.stats() == before


def test_invalid_request_is_sent_again_only_when_the_item_changes(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2, r1="[[emulator:fail=invalid_request_error]]"))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    assert states(ctx)["r1"] == "failed"
    write_rows(tmp_path, rows(2, r1="fixed text"))
    apply(ctx, wait=True)
    assert states(ctx)["r1"] == "succeeded"
    assert submissions(emulator_admin, "r1") == 2


def test_lost_create_response_is_adopted_not_sent_again(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(4))
    emulator_admin.add_faults([{"kind": "lost_response", "endpoint": "create"}])
    ctx = context(tmp_path, emulator, state=state_location)
    report = apply(ctx, wait=True)
    assert len(report.adopted) == 1
    stats = emulator_admin.stats()
    assert stats["batches_created"] == 1
    assert set(stats["submissions"].values()) == {1}
    assert set(states(ctx).values()) == {"succeeded"}


def test_truncated_results_store_nothing_then_harvest_whole(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(30))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # submits; the batch ends at once but is harvested on the next run
    emulator_admin.add_faults([{"kind": "truncate", "endpoint": "results", "after_bytes": 2000}])
    report = apply(ctx)
    assert report.harvested == []
    assert report.problems and "harvest of batch" in report.problems[0]
    assert db_rows(ctx, "select count(*) from results") == [(0,)]
    report = apply(ctx)
    assert len(report.harvested) == 1
    assert db_rows(ctx, "select count(*) from results") == [(30,)]
    assert set(emulator_admin.stats()["submissions"].values()) == {1}


@pytest.mark.parametrize("status", [429, 529])
def test_rate_limits_and_overload_are_survived(
    tmp_path, emulator, emulator_admin, status, state_location, monkeypatch
):
    # A 529 on create may come after the batch was made: its items are held until the create
    # grace has passed with no batch of theirs listed (a second here), then sent once.
    monkeypatch.setenv("BATCHOPS_CREATE_GRACE_SECONDS", "1")
    write_project(tmp_path, rows(3))
    emulator_admin.add_faults(
        [
            {"kind": "status", "status": status, "endpoint": "create", "retry_after_ms": 10},
            {"kind": "status", "status": status, "endpoint": "retrieve", "retry_after_ms": 10},
            {"kind": "status", "status": status, "endpoint": "list", "retry_after_ms": 10},
        ]
    )
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    assert set(states(ctx).values()) == {"succeeded"}
    stats = emulator_admin.stats()
    assert stats["batches_created"] == 1
    assert set(stats["submissions"].values()) == {1}


def test_lock_held_fails_at_once_naming_the_holder(tmp_path, emulator):
    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator)
    store = StateStore.open(ctx.settings.state_path)
    held = store.held
    try:
        with pytest.raises(LockHeld) as caught:
            apply(ctx)
        assert f"lock {held.lock_id} held by pid {held.pid}" in caught.value.problems[0]
    finally:
        store.release_lock(held.lock_id)
        store.close()
    assert apply(ctx, wait=True).submitted == 1


def test_budget_exceeded_refuses_before_sending(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(3), extra="budget_usd = 0.000001\n")
    ctx = context(tmp_path, emulator, state=state_location)
    with pytest.raises(BudgetExceeded) as caught:
        apply(ctx)
    assert caught.value.problems[0].startswith("job demo: estimated cost up to $0.0")
    assert "exceeds its budget_usd <$0.0001" in caught.value.problems[0]
    assert emulator_admin.stats()["batches_created"] == 0


def test_results_near_expiry_are_pruned(tmp_path, emulator, sdk_client, state_location):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    [(batch_id,)] = db_rows(ctx, "select id from batches")
    assert [b.action for b in ctx.plan(refresh=False)[0].batches] == []
    # 28 days pass by batchops' clock, not by the emulator's: a harvested batch is not polled
    # again before its stored results expiry nears, so a jump of the emulator's clock alone
    # (which moves the remote timestamps back) would not be seen.
    ctx.clock = lambda: utcnow() + timedelta(days=28)
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("prune", batch_id)]
    report = apply(ctx)
    assert report.pruned == [batch_id]
    import anthropic

    with pytest.raises(anthropic.NotFoundError):
        sdk_client.messages.batches.retrieve(batch_id)
    assert set(states(ctx).values()) == {"succeeded"}
    assert db_rows(ctx, "select count(*) from results") == [(3,)]


def test_unharvested_batch_harvested_then_pruned_on_day_28(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # sent, not harvested
    emulator_admin.advance_clock(28 * DAY)
    report = apply(ctx)
    assert len(report.harvested) == 1 and report.pruned == report.harvested
    assert db_rows(ctx, "select count(*) from results") == [(3,)]
    assert set(emulator_admin.stats()["submissions"].values()) == {1}


def test_results_archived_before_harvest_are_sent_again(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # sent, not harvested
    emulator_admin.advance_clock(30 * DAY)
    report = apply(ctx, wait=True)
    assert len(report.requeued) == 1
    assert any("expired remotely before they were harvested" in d for d in report.drift)
    assert set(states(ctx).values()) == {"succeeded"}
    assert set(emulator_admin.stats()["submissions"].values()) == {2}


def _sent_then_replaced(tmp_path, emulator, emulator_admin, state_location) -> Context:
    """Two items sent in a batch that runs for an hour, then replaced in the data file by
    another: the plan cancels that batch."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)
    write_rows(tmp_path, [{"id": "other", "text": "something else"}])
    return ctx


def test_removed_items_cancel_their_batch_and_are_forgotten(
    tmp_path, emulator, emulator_admin, state_location
):
    ctx = _sent_then_replaced(tmp_path, emulator, emulator_admin, state_location)
    plan, _ = ctx.plan(refresh=True)
    # r1 and r2 are forgotten once their cancelled batch is harvested, not by this plan
    assert [(a.action, a.key) for a in plan.jobs[0].actions] == [("submit", "other")]
    assert (plan.jobs[0].counts["removed"], plan.jobs[0].removed_in_flight) == (2, 2)
    assert [b.action for b in plan.batches] == ["cancel"]
    emulator_admin.set_config(processing_seconds=0)
    report = apply(ctx, wait=True)
    assert len(report.canceled) == 1
    assert states(ctx) == {"other": "succeeded"}
    assert db_rows(ctx, "select key from items where forgotten_at is null") == [("other",)]


def test_a_cancel_answered_404_is_said_and_the_next_apply_cancels(
    tmp_path, emulator, emulator_admin, state_location
):
    # The plan cancels a batch the API then does not know (a key of another workspace, a
    # passing 404): apply said nothing and exited as if it had cancelled it.
    ctx = _sent_then_replaced(tmp_path, emulator, emulator_admin, state_location)
    (batch_id,) = db_rows(ctx, "select id from batches")[0]
    emulator_admin.add_faults([{"status": 404, "endpoint": "cancel"}])
    report = apply(ctx)
    assert report.canceled == []
    assert report.drift == [
        f"batch {batch_id} (job demo): the API answered 404 to its cancel; the next refresh"
        " checks whether it is gone, and the cancel is tried again while it is not"
    ]
    assert report.problems == []
    report = apply(ctx)  # the fault used up: the same cancel, answered
    assert (report.canceled, report.drift) == ([batch_id], [])
    emulator_admin.advance_clock(2 * 3600)  # "other", sent by the first apply, ends
    apply(ctx, wait=True)
    assert states(ctx) == {"other": "succeeded"}


def test_plan_never_writes_state(tmp_path, emulator):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    state = ctx.settings.state_path
    digest = hashlib.sha256(state.read_bytes()).hexdigest()
    ctx.plan(refresh=True)
    ctx.plan(refresh=False)
    assert hashlib.sha256(state.read_bytes()).hexdigest() == digest


def test_plan_does_not_create_a_state_file(tmp_path, emulator):
    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator)
    ctx.plan(refresh=True)
    assert not ctx.settings.state_path.exists()


def test_saved_plan_applies_exactly_once(tmp_path, emulator, emulator_admin, state_location):
    from batchops.plan import saved as planfile

    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    write_rows(tmp_path, rows(3))  # rewriting identical data changes nothing
    report = apply(ctx, plan_file=path, wait=True)
    assert report.submitted == 3
    with pytest.raises(StateError) as caught:
        apply(ctx, plan_file=path)
    assert any("already applied" in p for p in caught.value.problems)
    assert emulator_admin.stats()["batches_created"] == 1


def test_stale_saved_plan_is_refused_without_network(tmp_path, emulator):
    from batchops.plan import saved as planfile

    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    write_rows(tmp_path, rows(3, r2="edited"))
    offline = context(tmp_path, "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(PlanError) as caught:
        offline.apply(plan_file=path)
    assert caught.value.problems == [
        f"{path}: specs changed since the plan was made; make a new plan"
    ]
    assert not ctx.settings.state_path.exists()


def test_batches_are_split_by_count_and_size(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(7))
    ctx = context(tmp_path, emulator, state=state_location, max_batch_requests=3)
    report = apply(ctx, wait=True)
    assert len(report.batches_created) == 3
    ctx = context(tmp_path, emulator, state=state_location, max_batch_bytes=1500)
    write_rows(tmp_path, rows(7, r1="x" * 200, r2="y" * 200))
    report = apply(ctx, wait=True)
    assert report.submitted == 2 and len(report.batches_created) == 2


def test_changed_while_in_flight_waits_for_its_batch(
    tmp_path, emulator, emulator_admin, state_location
):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)
    write_rows(tmp_path, rows(2, r1="new text"))
    plan, _ = ctx.plan(refresh=False)
    assert plan.jobs[0].counts["pending"] == 2 and not plan.jobs[0].submits
    assert apply(ctx).submitted == 0  # never two unfinished batches for one item
    emulator_admin.advance_clock(2 * 3600)  # the batch ends
    emulator_admin.set_config(processing_seconds=0)
    apply(ctx, wait=True)
    assert states(ctx) == {"r1": "succeeded", "r2": "succeeded"}
    assert submissions(emulator_admin, "r1") == 2


def test_import_adopts_a_batch_made_by_hand(
    tmp_path, emulator, emulator_admin, sdk_client, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    _, desired = ctx.plan(refresh=False)
    items = {i.key: i for i in items_for(desired.project, "demo")}
    made = sdk_client.messages.batches.create(
        requests=[
            {"custom_id": items[k].custom_id, "params": items[k].params} for k in ("r1", "r2")
        ]
    )
    assert ctx.import_batch("demo", made.id) == 2
    assert states(ctx) == {"r1": "succeeded", "r2": "succeeded", "r3": "todo"}
    report = apply(ctx, wait=True)
    assert report.submitted == 1
    assert submissions(emulator_admin, "r1") == 1
    with pytest.raises(StateError) as caught:
        ctx.import_batch("demo", made.id)
    assert caught.value.problems == [f"batch {made.id} is already in state (job demo)"]


def test_import_refuses_a_batch_still_running(
    tmp_path, emulator, emulator_admin, sdk_client, state_location
):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator, state=state_location)
    made = sdk_client.messages.batches.create(
        requests=[{"custom_id": "r1", "params": {"model": "m", "max_tokens": 1, "messages": []}}]
    )
    with pytest.raises(StateError) as caught:
        ctx.import_batch("demo", made.id)
    assert caught.value.problems == [
        f"batch {made.id} is still in_progress: its custom_ids are only known from its results; "
        "import it once it ends"
    ]


def test_force_unlock_needs_the_lock_id(tmp_path):
    from click.testing import CliRunner

    from batchops.cli import cli

    write_project(tmp_path, rows(1))
    state = tmp_path / "state" / "batchops.db"
    store = StateStore.open(state)
    held, store.held = store.held, None  # left behind, as by a process that died holding it
    store.close()
    # ... and that process is gone: a live holder on this host is refused without --force
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    held = dataclasses.replace(held, pid=int(gone.stdout))
    with sqlite3.connect(state) as conn:
        conn.execute("update leases set pid = ? where lock_id = ?", [held.pid, held.lock_id])
    conn.close()
    runner = CliRunner()
    wrong = runner.invoke(cli, ["--state", str(state), "force-unlock", "nope"])
    assert wrong.exit_code == 1
    assert wrong.stderr.startswith(
        f"Error: {state}: lock id 'nope' does not match the lock held "
        f"(lock {held.lock_id} held by pid {held.pid}"
    )
    right = runner.invoke(cli, ["--state", str(state), "force-unlock", held.lock_id])
    assert right.exit_code == 0
    assert right.stdout == (
        f"Removed lock {held.lock_id} (pid {held.pid} on {held.host}, since {held.since}).\n"
    )


def test_declining_the_confirmation_sends_nothing(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    shown = []
    report = apply(ctx, confirm=lambda plan: shown.append(plan.summary()["submit"]) or False)
    assert not report.approved and shown == [2]
    assert emulator_admin.stats()["batches_created"] == 0


def test_lock_timeout_waits_for_the_holder(tmp_path, emulator):
    import threading

    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator)
    store = StateStore.open(ctx.settings.state_path)
    held, store.held = store.held, None
    store.close()

    def release() -> None:
        StateStore.force_unlock_at(ctx.settings.state_path, held.lock_id)

    timer = threading.Timer(1.0, release)
    timer.start()
    try:
        assert apply(ctx, lock_timeout=30, wait=True).submitted == 1
    finally:
        timer.join()


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("duplicate_line", "appears twice in the results"),
        ("drop_line", "result lines, but request_counts add up to 5"),
    ],
)
def test_results_that_do_not_check_out_store_nothing(
    tmp_path, emulator, emulator_admin, fault, problem, state_location
):
    write_project(tmp_path, rows(5))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)
    emulator_admin.add_faults([{"kind": fault, "endpoint": "results"}])
    report = apply(ctx)
    assert len(report.problems) == 1 and problem in report.problems[0]
    assert db_rows(ctx, "select count(*) from results") == [(0,)]
    assert len(apply(ctx).harvested) == 1
    assert db_rows(ctx, "select count(*) from results") == [(5,)]


def test_an_item_removed_then_added_back_is_not_paid_for_again(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    write_rows(tmp_path, rows(2))
    plan, _ = ctx.plan(refresh=False)
    assert [(a.action, a.key) for a in plan.jobs[0].actions] == [("forget", "r3")]
    apply(ctx, wait=True)
    plan, _ = ctx.plan(refresh=False)
    assert not plan.changes and plan.jobs[0].counts["removed"] == 0
    write_rows(tmp_path, rows(3))
    plan, _ = ctx.plan(refresh=False)
    assert not plan.changes and plan.jobs[0].counts["succeeded"] == 3
    assert apply(ctx, wait=True).submitted == 0
    # the whole job file gone, then back: nothing is sent either
    spec = tmp_path / "jobs" / "demo.toml"
    text = spec.read_text()
    spec.unlink()
    (tmp_path / "jobs" / "other.toml").write_text(
        'version = 1\n[jobs.other]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\nprompt = "x"\n'
        'items = [{ key = "o1" }]\n'
    )
    plan, _ = ctx.plan(refresh=False)
    assert [(j.name, j.counts["removed"]) for j in plan.jobs] == [("other", 0), ("demo", 3)]
    apply(ctx, wait=True)
    spec.write_text(text)
    assert apply(ctx, wait=True).submitted == 0
    assert {k: submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {
        "r1": 1,
        "r2": 1,
        "r3": 1,
    }
    assert states(ctx) == {
        "o1": "succeeded",
        "r1": "succeeded",
        "r2": "succeeded",
        "r3": "succeeded",
    }


def test_an_offline_plan_says_which_batches_it_did_not_refresh(
    tmp_path, emulator, emulator_admin, state_location
):
    from batchops.views.plan import plan_text

    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    apply(context(tmp_path, emulator, state=state_location))
    offline, _ = context(tmp_path, emulator, state=state_location).plan(refresh=False)
    assert offline.offline_note == (
        "1 batch in flight was not refreshed (--no-refresh): the plan uses its last recorded state"
    )
    assert f"Note: {offline.offline_note}" in plan_text(offline)
    no_key, _ = context(tmp_path, None, state=state_location).plan(refresh=True)
    assert "(no ANTHROPIC_API_KEY)" in no_key.offline_note
    online, _ = context(tmp_path, emulator, state=state_location).plan(refresh=True)
    assert online.offline_note is None
