"""Review of the planner rules for items changed, removed or re-keyed while in flight
(fbb65cf): never paying twice, plan ≡ apply, the deferred budget."""

from __future__ import annotations

import pytest

from batchops.errors import BudgetExceeded
from tests import statedb
from tests.projects import apply, context, rows, write_project, write_rows
from tests.test_review3_batches import write_twin

HOUR = 3600


def db_rows(ctx, sql: str, params=()) -> list[tuple]:
    return statedb.rows(ctx.settings.state_path, sql, params)


def answered_twice(ctx) -> list[tuple]:
    """Fingerprints answered (and billed) more than once."""
    return db_rows(
        ctx,
        "select fingerprint, count(*) from results where type = 'succeeded'"
        " group by fingerprint having count(*) > 1",
    )


def ended_batch(root, emulator, admin, state):
    """demo r1, r2 sent in one batch that has ended remotely and was never harvested."""
    write_project(root, rows(2))
    admin.set_config(processing_seconds=2)
    ctx = context(root, emulator, state=state)
    (batch_id,) = apply(ctx).batches_created
    admin.advance_clock(5)
    return ctx, batch_id


def test_rows_reordered_in_an_ended_batch_are_not_sent_again(
    tmp_path, emulator, emulator_admin, state_location
):
    """r1 and r2 swap texts (a data file re-sorted under positional keys) once their batch has
    ended but before it is harvested. The same plan harvests that batch, which holds the answer
    to each item's new request: they are reused (as they were before fbb65cf, and as they are
    when the swap comes while the batch runs), not sent and paid for again."""
    ctx, ended = ended_batch(tmp_path, emulator, emulator_admin, state_location)
    write_rows(tmp_path, rows(2, r1="text number 2", r2="text number 1"))
    plan, _ = ctx.plan(refresh=True)
    shown = sum(len(b.items) for b in plan.submits)
    apply(ctx, wait=True)
    twice = answered_twice(ctx)
    assert shown == 0 and twice == [], (
        f"the plan harvests {ended}, which answers both new requests, and sends "
        f"{shown} of them again (${plan.estimated_cost_usd}); answered twice: {twice}"
    )


def test_a_failed_harvest_does_not_make_another_job_pay_for_an_answer_it_waited_for(
    tmp_path, emulator, emulator_admin, state_location
):
    """twin's r1 sends demo's r1 request, whose answer sits in demo's ended batch: it waits.
    demo's r1 is edited; the plan harvests the batch and sends demo's r1 anew. The harvest
    fails once (a cut stream), yet the submit still goes: demo's r1 no longer carries the old
    request in flight, so the next cycle plans twin's r1 as todo and sends it, while that very
    cycle harvests the batch holding its answer. The request is answered, and billed, twice."""
    ctx, _ = ended_batch(tmp_path, emulator, emulator_admin, state_location)
    write_twin(tmp_path, ["r1"])
    write_rows(tmp_path, rows(2, r1="edited one"))
    plan, _ = ctx.plan(refresh=True)
    assert plan.job("twin").counts["pending"] == 1  # waits for demo's r1
    emulator_admin.add_faults([{"kind": "truncate", "endpoint": "results", "after_bytes": 100}])
    report = apply(ctx, wait=True)
    twice = answered_twice(ctx)
    assert twice == [], (
        f"problems {report.problems}; harvested {report.harvested}; answered twice: {twice}"
    )


def test_apply_refuses_the_deferred_resend_its_plan_refuses(tmp_path, emulator, emulator_admin):
    """r1 of four is edited while their batch runs (the batch is not cancelled: r2..r4 are
    current). Its resend's ceiling is over budget_usd: `plan` refuses (exit 1, "estimated cost
    … exceeds its budget_usd"), but `apply` with the same state and specs says nothing to do and
    exits 0, because apply checks the budget only for a plan with changes; `apply --wait` then
    waits the whole batch out before it is refused."""
    from batchops.plan.build import check_budget

    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4), extra="budget_usd = 0.0003\n")
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, rows(4, r1="long text " * 200))
    plan, _ = ctx.plan(refresh=True)
    assert not plan.changes and plan.jobs[0].deferred == 1
    assert plan.jobs[0].deferred_usd > 0.0003
    with pytest.raises(BudgetExceeded):
        check_budget(plan)  # what `batchops plan` does
    try:
        report = apply(ctx)
    except BudgetExceeded:
        return
    pytest.fail(
        f"plan refuses the job over its budget, apply approved it (approved={report.approved}, "
        f"problems={report.problems})"
    )


def test_a_saved_plan_keeps_its_deferred_resend(tmp_path, emulator, emulator_admin):
    """`plan -o` of a plan with an item changed while in flight: `show PLANFILE` must render it
    the way `plan` did ("1 item changed while in flight: sent once their batch ends, up to
    $X"), and `apply PLANFILE` check the same budget; the saved plan reads back with
    deferred = 0, deferred_usd = 0 (and waiting_outside = 0): "No changes. State matches the
    specs." instead."""
    from batchops.plan.saved import save
    from batchops.views.plan import plan_text

    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_project(tmp_path, rows(4))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, rows(4, r1="edited one"))
    plan, planner = ctx.plan(refresh=True, keep_requests=True)
    assert plan.jobs[0].deferred == 1
    out = tmp_path / "deferred.plan"
    save(plan, planner, out, None)
    loaded = ctx.load_plan(out).plan
    shown, reread = plan_text(plan, None), plan_text(loaded, None)
    assert (loaded.jobs[0].deferred, loaded.jobs[0].deferred_usd) == (
        plan.jobs[0].deferred,
        plan.jobs[0].deferred_usd,
    ), f"plan says:\n{shown}\nshow says:\n{reread}"


def test_apply_planfile_wait_ends_once_a_removed_item_is_harvested(
    tmp_path, emulator, emulator_admin
):
    """r3 is removed while its batch (with current r1, r2) runs; the saved plan has nothing to
    do for it (no forget: it is in flight). `apply PLANFILE --wait` polls and harvests only, so
    it never forgets r3 once harvested; yet its loop keeps going while any forget is planned,
    and only the timeout (exit 3) ends it, with nothing pending."""
    from batchops.plan.saved import save

    emulator_admin.set_config(processing_seconds=3)
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, rows(2))
    plan, planner = ctx.plan(refresh=True, keep_requests=True)
    assert plan.jobs[0].counts["removed"] == 1 and not plan.batches
    out = tmp_path / "removed.plan"
    save(plan, planner, out, None)
    report = apply(ctx, plan_file=out, wait=True, timeout=10)
    final = report.final_plan
    assert not report.timed_out, (
        f"--wait ran into its timeout with counts {final.jobs[0].counts} and actions "
        f"{[(a.action, a.key) for a in final.jobs[0].actions]}"
    )


def test_results_label_an_item_changed_in_an_ended_batch_as_the_plan_does(
    tmp_path, emulator, emulator_admin, ended_unharvested
):
    """r1 edited after its batch ended, before the harvest: the plan keeps it pending (sent once
    its batch is harvested, by the next plan: that batch's answers may answer it) and shows its
    resend; `batchops results` labels it so too. (A first fix sent it at once as `changed`,
    and `results` disagreed.)"""
    from batchops.commands.results import iter_results

    ctx = context(tmp_path, emulator)
    # the state records the batch ended (its harvest cut short once)
    emulator_admin.add_faults([{"kind": "truncate", "endpoint": "results", "after_bytes": 100}])
    assert apply(ctx).harvested == []
    write_rows(tmp_path, rows(2, r1="edited one"))
    plan, _ = ctx.plan(refresh=False)
    assert (plan.jobs[0].counts["pending"], plan.jobs[0].deferred) == (2, 1)
    row = next(r for r in iter_results(ctx, "demo") if r["key"] == "r1")
    assert (row["state"], row["detail"]) == (
        "pending",
        "changed while in flight: sent again once its batch ends",
    )


def test_the_deferred_ceiling_leaves_out_a_resend_that_a_stored_answer_covers(
    tmp_path, emulator, emulator_admin
):
    """r1 is edited and sent; while that batch runs the edit is undone: r1 asks again what its
    stored answer already answers. Once the batch ends r1 reuses that answer ($0), yet the plan
    counts its full ceiling as deferred against budget_usd, refuses the job, and so does not
    cancel the batch nobody wants any more: it runs on and is billed."""
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)  # r1, r2 answered and stored
    emulator_admin.set_config(processing_seconds=2 * HOUR)
    write_rows(tmp_path, rows(2, r1="a regrettable edit"))
    (batch_id,) = apply(ctx).batches_created
    write_project(tmp_path, rows(2), extra="budget_usd = 0.00001\n")  # the edit undone
    plan, _ = ctx.plan(refresh=True)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("cancel", batch_id)]
    [job] = plan.jobs
    assert plan.over_budget() == [], (
        f"r1's resend reuses its stored answer, yet {job.deferred} item counted "
        f"${job.deferred_usd} against budget_usd {job.budget_usd}"
    )
