"""The pure diff (DESIGN §5): every item state and batch action, without I/O or a clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchops.plan.diff import classify, make_plan
from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.state.records import BatchRecord, IntentRecord, ItemRecord
from batchops.views.plan import plan_text

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def record(
    key="k",
    fp="fp1",
    attempts=1,
    inflight=False,
    outcome=None,
    error_type=None,
    canceled_by_us=False,
    job="j",
    batch_id=None,
) -> ItemRecord:
    return ItemRecord(
        job,
        key,
        f"cid-{key}",
        fp,
        attempts,
        inflight,
        outcome,
        error_type,
        "message" if error_type else None,
        canceled_by_us,
        inflight_batch=batch_id,
    )


def item(key="k", fp="fp1", cost=0.01) -> DesiredItem:
    return DesiredItem(key, f"cid-{key}", fp, cost)


def batch(
    id_="b1",
    status="in_progress",
    created=NOW - timedelta(hours=1),
    harvested=None,
    archived=None,
    canceled=None,
    job="j",
    pruned=None,
) -> BatchRecord:
    return BatchRecord(
        id_,
        job,
        1,
        status,
        created,
        created + timedelta(hours=24),
        None,
        archived,
        created + timedelta(days=29),
        harvested,
        canceled,
        pruned,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (None, "todo"),
        (record(inflight=True), "pending"),
        (record(inflight=True, fp="old"), "pending"),
        (record(fp="old", outcome="succeeded"), "changed"),
        (record(outcome="succeeded"), "succeeded"),
        (record(outcome="errored", error_type="overloaded_error"), "retry"),
        (record(outcome="errored", error_type="api_error", attempts=3), "failed"),
        (record(outcome="errored", error_type="timeout_error"), "retry"),
        (record(outcome="errored", error_type="rate_limit_error", attempts=2), "retry"),
        (record(outcome="errored", error_type="invalid_request_error"), "failed"),
        (record(outcome="expired"), "retry"),
        (record(outcome="expired", attempts=3), "failed"),
        (record(outcome="canceled", canceled_by_us=True), "retry"),
        (record(outcome="canceled", canceled_by_us=False), "failed"),
        (record(outcome="lost", attempts=0), "todo"),
    ],
)
def test_classify(rec, expected):
    assert classify(item(), rec, max_attempts=3)[0] == expected


def test_failed_items_carry_the_api_message():
    state, detail = classify(
        item(), record(outcome="errored", error_type="invalid_request_error"), 3
    )
    assert (state, detail) == ("failed", "invalid_request_error: message")
    state, detail = classify(item(), record(outcome="expired", attempts=2), 2)
    assert (state, detail) == ("failed", "max_attempts (2) used up; last: expired")


def plan_for(items, records=(), batches=(), intents=(), inflight=None, scope_all=True, job="j"):
    return make_plan(
        [DesiredJob(job, 3, 1.0, tuple(items))],
        records,
        batches,
        intents,
        now=NOW,
        lineage="L",
        serial=7,
        spec_digest="sha256:x",
        inflight_batches=inflight or {},
        all_jobs_in_scope=scope_all,
    )


def test_submit_actions_carry_reason_attempt_and_cost():
    plan = plan_for(
        [item("a"), item("b", fp="new"), item("c"), item("d")],
        [
            record("b", fp="old", outcome="succeeded"),
            record("c", outcome="errored", error_type="api_error", attempts=2),
            record("d", outcome="succeeded"),
        ],
    )
    job = plan.jobs[0]
    assert [(a.key, a.reason, a.attempt) for a in job.submits] == [
        ("a", "todo", 1),
        ("b", "changed", 1),
        ("c", "retry", 3),
    ]
    assert job.estimated_cost_usd == pytest.approx(0.03)
    assert job.counts == {
        "todo": 1,
        "changed": 1,
        "pending": 0,
        "retry": 1,
        "failed": 0,
        "succeeded": 1,
        "removed": 0,
    }
    assert plan.summary()["submit"] == 3 and plan.changes


def test_no_changes_when_everything_succeeded():
    plan = plan_for([item("a")], [record("a", outcome="succeeded")])
    assert not plan.changes
    assert plan.summary() == {a: 0 for a in plan.summary()}


def test_removed_items_are_forgotten_and_their_batch_cancelled():
    """A removed item in flight is forgotten once its batch is harvested, by a later plan: this
    one cancels the batch and shows no forget, since apply forgets nothing of it now."""
    plan = plan_for(
        [item("a")],
        [
            record("a", outcome="succeeded"),
            record("gone", inflight=True),
            record("idle", outcome="succeeded"),
        ],
        [batch("b1")],
        inflight={"b1": {"j\x1fgone"}},
    )
    [job] = plan.jobs
    assert [(a.action, a.key) for a in job.actions] == [("forget", "idle")]
    assert (job.counts["removed"], job.removed_in_flight) == (2, 1)
    assert [(b.action, b.batch_id) for b in plan.batches] == [("cancel", "b1")]


def test_a_batch_with_one_current_item_is_not_cancelled():
    plan = plan_for(
        [item("a")],
        [record("a", inflight=True), record("gone", inflight=True)],
        [batch("b1")],
        inflight={"b1": {"j\x1fgone", "j\x1fa"}},
    )
    assert plan.batches == ()


def test_a_batch_whose_items_all_changed_is_cancelled():
    plan = plan_for(
        [item("a", fp="new")],
        [record("a", fp="old", inflight=True)],
        [batch("b1")],
        inflight={"b1": {"j\x1fa"}},
    )
    assert plan.jobs[0].counts["pending"] == 1 and not plan.jobs[0].submits
    assert [b.action for b in plan.batches] == ["cancel"]
    # its resend, once the batch ends, is shown with its ceiling and counted against the budget
    assert (plan.jobs[0].deferred, plan.jobs[0].deferred_usd) == (1, 0.01)
    assert plan_text(plan, None).splitlines()[-1] == (
        "Plan: 1 to cancel. Estimated cost $0.0000. 1 item changed while in flight: sent once "
        "their batch ends, up to $0.0100 (counted against budget_usd)."
    )


def test_an_item_changed_in_an_ended_batch_is_sent_after_its_harvest_by_a_later_plan():
    """The batch has ended, not yet harvested: its answers may answer the item's new request
    (rows re-sorted under positional keys), so it is sent by the plan after the harvest, and
    this one shows its ceiling."""
    plan = plan_for(
        [item("a", fp="new"), item("b")],
        [
            record("a", fp="old", inflight=True, batch_id="b1"),
            record("b", inflight=True, batch_id="b1"),
        ],
        [batch("b1", status="ended")],
        inflight={"b1": {"j\x1fa", "j\x1fb"}},
    )
    [job] = plan.jobs
    assert list(job.actions) == []
    assert (job.counts["pending"], job.deferred, job.deferred_usd) == (2, 1, 0.01)
    assert [b.action for b in plan.batches] == ["harvest"]


def test_jobs_gone_from_every_spec_are_removed_only_when_all_jobs_are_in_scope():
    records = [record("x", job="old-job", outcome="succeeded")]
    plan = plan_for([item("a")], records)
    assert [(j.name, j.counts["removed"]) for j in plan.jobs] == [("j", 0), ("old-job", 1)]
    plan = plan_for([item("a")], records, scope_all=False)
    assert [j.name for j in plan.jobs] == ["j"]


def test_batch_actions_harvest_prune_requeue_adopt():
    ended = dict(status="ended")
    batches = [
        batch("harvest-me", **ended),
        batch("prune-me", **ended, created=NOW - timedelta(days=27, hours=1), harvested=NOW),
        batch("keep-me", **ended, created=NOW - timedelta(days=26, hours=23), harvested=NOW),
        batch("harvest-and-prune", **ended, created=NOW - timedelta(days=28)),
        batch("lost", **ended, created=NOW - timedelta(days=30), archived=NOW),
        batch("done", **ended, harvested=NOW, pruned=NOW),
        batch("running"),
    ]
    intents = [IntentRecord("intent_1", "j", NOW, 3, "open", None)]
    plan = plan_for([item("a")], [], batches, intents)
    assert [(b.action, b.batch_id or b.intent_id) for b in plan.batches] == [
        ("adopt", "intent_1"),
        ("harvest", "harvest-me"),
        ("harvest", "harvest-and-prune"),
        ("requeue", "lost"),
        ("prune", "prune-me"),
        ("prune", "harvest-and-prune"),
    ]


@pytest.mark.parametrize(("other", "waits"), [("alpha", True), ("zed", False)])
@pytest.mark.parametrize("reverse", [False, True])
def test_an_item_waits_for_the_same_answer_whatever_order_the_state_lists_records_in(
    other, waits, reverse
):
    """fp1 is in flight for j's k1 (a key still wanted) and for another job's x. j's k2 asks
    the same request: whether it waits (pending) or is sent depends on which of the two it is
    told of, the first by job and key (x of alpha: another job's answer; k1 of j, before zed:
    its own job's, a distinct item) — never on the order the state lists them in (SQLite and
    PostgreSQL list them differently), so that `results` and `status` pick the same one."""
    records = [
        record("k1", inflight=True, batch_id="b1"),
        record("x", inflight=True, job=other, batch_id="b2"),
    ]
    plan = plan_for(
        [item("k1"), item("k2")],
        records[::-1] if reverse else records,
        [batch("b1"), batch("b2", job=other)],
        inflight={"b1": {"j\x1fk1"}, "b2": {f"{other}\x1fx"}},
    )
    job = plan.job("j")
    assert job is not None
    if waits:
        assert job.counts["pending"] == 2 and job.submits == []
        assert [(r.key, r.reason) for r in job.reuses] == [
            ("k2", f"same request as {other} x: takes its result once harvested")
        ]
    else:
        assert job.counts["pending"] == 1 and [a.key for a in job.submits] == ["k2"]


def test_plan_is_a_pure_function_of_its_inputs():
    args = ([item("a"), item("b")], [record("a", outcome="expired")], [batch("b1", status="ended")])
    assert plan_for(*args) == plan_for(*args)
