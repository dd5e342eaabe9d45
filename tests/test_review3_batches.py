"""Review: the batch actions cancel, prune, requeue, and items removed or changed in flight."""

from __future__ import annotations

import pytest

from batchops.emulator import EmulatorAdmin
from batchops.errors import BudgetExceeded
from batchops.pricing import money
from tests import statedb
from tests.projects import apply, context, rows, write_project, write_rows

DAY = 24 * 3600
HOUR = 3600


def submissions(admin: EmulatorAdmin, key: str, job: str = "demo") -> int:
    prefix = f"{job}-{key}-"
    return sum(n for cid, n in admin.stats()["submissions"].items() if cid.startswith(prefix))


def db_rows(ctx, sql: str, params=()) -> list[tuple]:
    return statedb.rows(ctx.settings.state_path, sql, params)


def item_states(ctx, job_names=None) -> dict[str, dict[str, int]]:
    plan, _ = ctx.plan(job_names, refresh=False)
    return {j.name: {k: v for k, v in j.counts.items() if v} for j in plan.jobs}


def test_cancel_after_partial_processing_keeps_finished_results_and_resends_once(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(10))
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    emulator_admin.advance_clock(HOUR)  # half the requests are done
    write_rows(tmp_path, rows(10, **{f"r{i}": f"edited {i}" for i in range(1, 11)}))
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("cancel", batch_id)]
    emulator_admin.set_config(processing_seconds=0)
    report = apply(ctx, wait=True)
    assert report.canceled == [batch_id], report
    # the 5 finished before the cancel are stored (history of the old fingerprint)
    assert db_rows(
        ctx, "select type, count(*) from results where batch_id = ? group by type", [batch_id]
    ) == [("canceled", 5), ("succeeded", 5)]
    assert item_states(ctx) == {"demo": {"succeeded": 10}}
    for i in range(1, 11):
        assert submissions(emulator_admin, f"r{i}") == 2, f"r{i} sent other than once more"


def write_twin(root, keys, job: str = "twin") -> None:
    """A second job whose items send the very same requests as demo's r<k> (same fingerprint)."""
    items = ", ".join(f'{{ key = "{k}", text = "text number {k[1:]}" }}' for k in keys)
    (root / "jobs" / f"{job}.toml").write_text(
        f'version = 1\n\n[jobs.{job}]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'
        f'prompt = "Classify: {{{{ text }}}}"\nitems = [{items}]\n',
        encoding="utf-8",
    )


def test_batch_another_job_waits_on_is_not_cancelled_when_its_own_items_are_removed(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4))
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    write_twin(tmp_path, ["r1", "r2", "r3", "r4"])
    plan, _ = ctx.plan(refresh=True)
    twin = plan.job("twin")
    assert twin.counts["pending"] == 4 and not twin.submits  # waits for demo's batch
    apply(ctx)
    emulator_admin.advance_clock(HOUR)  # r1, r2 answered; r3, r4 still to come
    # demo's rows go away: its items are removed, but twin still waits for that very batch
    write_rows(tmp_path, [])
    plan, _ = ctx.plan(refresh=True)
    assert plan.job("twin").counts["pending"] == 4 and plan.estimated_cost_usd == 0
    emulator_admin.set_config(processing_seconds=0)
    report = apply(ctx, wait=True)
    twin_sent = sum(submissions(emulator_admin, k, "twin") for k in ("r1", "r2", "r3", "r4"))
    assert not report.canceled and twin_sent == 0, (
        f"the plan showed twin's 4 items waiting for batch {batch_id} at $0, and also "
        f"{[(b.action, b.batch_id) for b in plan.batches]}; apply cancelled "
        f"{report.canceled} and then sent {twin_sent} of twin's requests"
    )


def test_expired_batch_sends_only_the_expired_requests_again(tmp_path, emulator, emulator_admin):
    emulator_admin.set_config(processing_seconds=48 * HOUR)
    write_project(tmp_path, rows(10), max_attempts=2)
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    emulator_admin.advance_clock(25 * HOUR)  # 24 h window: half done, the rest expired
    emulator_admin.set_config(processing_seconds=0)
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("harvest", batch_id)]
    report = apply(ctx, wait=True)
    assert db_rows(
        ctx, "select type, count(*) from results where batch_id = ? group by type", [batch_id]
    ) == [("expired", 5), ("succeeded", 5)]
    assert report.submitted == 5
    assert item_states(ctx) == {"demo": {"succeeded": 10}}
    sent = sorted(submissions(emulator_admin, f"r{i}") for i in range(1, 11))
    assert sent == [1] * 5 + [2] * 5


def test_item_removed_then_added_back_while_its_batch_is_canceling(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=4 * HOUR, cancel_seconds=HOUR)
    write_project(tmp_path, rows(4))
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    emulator_admin.advance_clock(2 * HOUR)  # half of them done
    write_rows(tmp_path, [])
    assert apply(ctx).canceled == [batch_id]
    write_rows(tmp_path, rows(4))  # back, same fingerprints, while the batch is canceling
    plan, _ = ctx.plan(refresh=True)
    assert plan.jobs[0].counts["pending"] == 4 and not plan.changes
    assert apply(ctx).submitted == 0  # never in two unfinished batches
    emulator_admin.advance_clock(2 * HOUR)
    emulator_admin.set_config(processing_seconds=0)
    apply(ctx, wait=True)
    assert item_states(ctx) == {"demo": {"succeeded": 4}}
    sent = sorted(submissions(emulator_admin, f"r{i}") for i in range(1, 5))
    assert sent == [1, 1, 2, 2]


def test_plan_shows_the_resend_of_items_changed_in_an_ended_batch_it_harvests(
    tmp_path, emulator, ended_unharvested
):
    """Both items edited after their batch ended, before its harvest: the plan harvests it and
    shows the two resends with their ceiling ("sent once their batch ends"); a plain apply
    harvests and then sends exactly those two, by the cycle after the harvest."""
    write_rows(tmp_path, rows(2, r1="edited one", r2="edited two"))
    ctx = context(tmp_path, emulator)
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("harvest", ended_unharvested)]
    [job] = plan.jobs
    assert job.deferred == 2 and job.deferred_usd > 0
    report = apply(ctx)  # plain apply, no --wait
    assert report.harvested == [ended_unharvested]
    assert report.submitted == job.deferred


def write_other(root) -> None:
    (root / "jobs" / "other.toml").write_text(
        'version = 1\n\n[jobs.other]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'prompt = "Other: {{ key }}"\nitems = [{ key = "o1" }, { key = "o2" }]\n',
        encoding="utf-8",
    )


def test_job_scope_keeps_cancel_to_the_named_job(tmp_path, emulator, emulator_admin):
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(3))
    write_other(tmp_path)
    ctx = context(tmp_path, emulator)
    created = apply(ctx).batches_created
    assert len(created) == 2
    [(demo_batch,)] = db_rows(ctx, "select id from batches where job = 'demo'")
    write_rows(tmp_path, [])  # demo's items removed, while its batch is in flight
    other_plan, _ = ctx.plan(["other"], refresh=True)
    assert other_plan.batches == ()
    report = apply(ctx, job_names=["other"])
    assert report.canceled == [] and report.submitted == 0
    demo_plan, _ = ctx.plan(["demo"], refresh=True)
    assert [(b.action, b.batch_id) for b in demo_plan.batches] == [("cancel", demo_batch)]
    report = apply(ctx, job_names=["demo"])
    assert report.canceled == [demo_batch]
    [(status,)] = db_rows(ctx, "select processing_status from batches where job = 'other'")
    assert status == "in_progress"


def test_whole_job_removed_in_flight_is_cancelled_harvested_and_forgotten(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4))
    write_other(tmp_path)
    ctx = context(tmp_path, emulator)
    apply(ctx)
    [(demo_batch,)] = db_rows(ctx, "select id from batches where job = 'demo'")
    emulator_admin.advance_clock(HOUR)  # r1, r2 done
    (tmp_path / "jobs" / "demo.toml").unlink()
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("cancel", demo_batch)]
    saved = tmp_path / "cancel.plan"
    plan, planner = ctx.plan(refresh=True, keep_requests=True)
    from batchops.plan.saved import save

    save(plan, planner, saved, None)
    report = apply(ctx, plan_file=saved)
    assert report.canceled == [demo_batch]
    emulator_admin.set_config(processing_seconds=0)
    emulator_admin.advance_clock(2 * HOUR)
    report = apply(ctx, wait=True)
    assert report.harvested and report.submitted == 0
    assert db_rows(
        ctx, "select type, count(*) from results where batch_id = ? group by type", [demo_batch]
    ) == [("canceled", 2), ("succeeded", 2)]
    assert db_rows(
        ctx, "select count(*) from items where job = 'demo' and forgotten_at is null"
    ) == [(0,)]
    final, _ = ctx.plan(refresh=True)
    assert not final.changes


def test_prune_never_deletes_a_batch_holding_results_not_stored(tmp_path, emulator, emulator_admin):
    from batchops.commands.recover import recover

    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    (first,) = apply(ctx, wait=True).batches_created
    write_rows(tmp_path, rows(3, r3="edited after its answer"))
    apply(ctx, wait=True)  # r3 alone in a second batch
    emulator_admin.advance_clock(27 * DAY + 12 * HOUR)  # both batches' results expire in 1.5 d
    lost = context(tmp_path, emulator, state=tmp_path / "state" / "recovered.db")
    recovery = recover(lost)
    assert [(b.id, b.results, b.unmatched) for b in recovery.recovered][0] == (first, 2, 1)
    plan, _ = lost.plan(refresh=True)
    report = apply(lost)
    stored = db_rows(lost, "select count(*) from results where batch_id = ?", [first])
    assert first not in report.pruned, (
        f"batch {first} was deleted remotely with 3 results of which only {stored[0][0]} are "
        f"stored (plan: {[(b.action, b.batch_id) for b in plan.batches]})"
    )


def test_rekeyed_rows_while_in_flight_are_not_paid_twice(tmp_path, emulator, emulator_admin):
    """The data's key column is renamed (r1..r4 → k1..k4, same texts) while their batch runs.
    Had the batch been harvested first, k1..k4 would reuse the stored answers (any key); in
    flight, the plan cancels the batch holding them and sends all four again."""
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    emulator_admin.advance_clock(HOUR)  # r1, r2 answered (and billed) already
    write_rows(tmp_path, [{"id": f"k{i}", "text": f"text number {i}"} for i in range(1, 5)])
    plan, _ = ctx.plan(refresh=True)
    emulator_admin.set_config(processing_seconds=0)
    apply(ctx, wait=True)
    answered = db_rows(
        ctx,
        "select fingerprint from results where type = 'succeeded' group by fingerprint"
        " having count(*) > 1",
    )
    assert answered == [], (
        f"{len(answered)} identical requests were answered (and billed) twice; the plan "
        f"{[(b.action, b.batch_id) for b in plan.batches]} with "
        f"{sum(len(s.items) for s in plan.submits)} submits"
    )


def test_plan_forgets_only_what_apply_forgets(tmp_path, emulator, emulator_admin):
    """r3 removed while its batch (shared with current r1, r2) runs: it cannot be forgotten yet."""
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, rows(2))
    plan, _ = ctx.plan(refresh=True)
    shown = plan.summary()["forget"]
    apply(ctx)
    forgotten = db_rows(ctx, "select count(*) from items where forgotten_at is not null")[0][0]
    assert shown == forgotten, (
        f"plan shows {shown} forget (changes={plan.changes}), apply forgot {forgotten}"
    )


def test_a_plan_counts_the_resend_of_items_changed_in_flight_against_the_budget(
    tmp_path, emulator, emulator_admin
):
    """Every item is edited while its batch runs: the plan cancels the batch, and the items are
    sent again once it ends. That resend was shown at $0, within budget, so apply cancelled the
    batch and was refused only afterwards: the running work gone, nothing to replace it. The
    plan now counts the resend against budget_usd, and apply refuses before it cancels."""
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4), extra="budget_usd = 0.0003\n")
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    write_rows(tmp_path, rows(4, **{f"r{i}": "long text " * 60 for i in range(1, 5)}))
    plan, _ = ctx.plan(refresh=True)
    [job] = plan.jobs
    assert [(b.action, b.batch_id) for b in plan.batches] == [("cancel", batch_id)]
    assert (job.counts["pending"], job.deferred) == (4, 4)
    assert job.deferred_usd > 0.0003 and plan.over_budget() == [job]
    emulator_admin.set_config(processing_seconds=0)
    with pytest.raises(BudgetExceeded) as refused:
        apply(ctx, wait=True)
    assert refused.value.problems == [
        f"job demo: estimated cost up to $0.0000, with {money(job.deferred_usd)} for 4 items changed "
        "while in flight (sent once their batch ends), exceeds its budget_usd $0.0003"
    ]
    assert db_rows(ctx, "select canceled_by_us_at is null from batches") == [(1,)]
    assert submissions(emulator_admin, "r1") == 1  # nothing sent again
