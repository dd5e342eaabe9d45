"""The server, not the local clock, says when a batch's results are gone (never pay twice, never
lose a result): results retained 29 days are judged from `archived_at` and from what the results
URL answers, a local clock that runs ahead notwithstanding. End-to-end over the emulator on
loopback, and the diff's rule on its own; never the real API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.plan.diff import lost_batches, make_plan
from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.state.records import BatchRecord, ItemRecord
from tests import statedb
from tests.projects import API_KEY, apply, context
from tests.test_apply import submissions

DAY = 24 * 3600
HOUR = 3600
KEYS = ("r1", "r2")


def ahead(seconds: float):
    """A clock `seconds` ahead of the emulator's (which reports real time)."""
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


def batch_drift(root: Path) -> list[tuple]:
    return statedb.rows(root / "state" / "batchops.db", "select drift, harvested_at from batches")


def stored_states(root: Path, emulator: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The state of every current result, as `batchops results` shows them."""
    monkeypatch.chdir(root)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    shown = CliRunner().invoke(cli, ["results", "demo", "--format", "jsonl"])
    assert shown.exit_code == 0, shown.output
    return {json.loads(line)["state"] for line in shown.stdout.splitlines()}


# -- a client clock ahead of the server's


def test_a_client_clock_ahead_harvests_results_the_server_still_serves(
    tmp_path, emulator, emulator_admin, ended_unharvested, monkeypatch
):
    # Day 29 less an hour on the server: the results are still served (no archived_at). The
    # client's clock runs 2 hours ahead, so by its own reckoning the 29 days have passed.
    emulator_admin.advance_clock(29 * DAY - HOUR - 5)
    ctx = context(tmp_path, emulator)
    ctx.clock = ahead(2 * HOUR)
    report = apply(ctx, wait=True)
    assert report.requeued == [] and report.drift == [], (report.requeued, report.drift)
    assert report.harvested == [ended_unharvested]
    assert {submissions(emulator_admin, k) for k in KEYS} == {1}  # paid once
    assert stored_states(tmp_path, emulator, monkeypatch) == {"succeeded"}
    assert emulator_admin.stats()["batches_created"] == 1


# -- results that answer 404 while the batch still exists


def test_results_404_past_the_local_expiry_records_results_lost_and_sends_again_once(
    tmp_path, emulator, emulator_admin, ended_unharvested, monkeypatch
):
    # A server that stops serving the results without setting archived_at: the batch still
    # exists, its results URL answers 404, and by the local clock the 29 days have passed.
    # (asked twice, as a 404 is a question: `test_review_remote2.py` has a single one)
    emulator_admin.advance_clock(29 * DAY - HOUR - 5)
    emulator_admin.not_found(ended_unharvested, endpoint="results", times=2)
    ctx = context(tmp_path, emulator)
    ctx.clock = ahead(2 * HOUR)
    report = apply(ctx)
    note = f"batch {ended_unharvested} (demo): its results answered 404 at the end of retention"
    assert [d for d in report.drift if d.startswith(note)], report.drift
    assert report.problems == []
    assert report.requeued == [ended_unharvested]  # this very apply's next plan sent them again
    assert batch_drift(tmp_path)[0] == ("results-lost", None)
    assert {submissions(emulator_admin, k) for k in KEYS} == {2}
    apply(ctx, wait=True)
    assert {submissions(emulator_admin, k) for k in KEYS} == {2}  # once more, not again
    assert stored_states(tmp_path, emulator, monkeypatch) == {"succeeded"}
    assert apply(ctx).submitted == 0


def test_results_404_well_before_expiry_is_a_problem_tried_again(
    tmp_path, emulator, emulator_admin, ended_unharvested, monkeypatch
):
    # Three days before the end of retention (outside the prune margin too, whose step would
    # harvest it again at once) a 404 from a batch that exists proves nothing yet.
    emulator_admin.advance_clock(26 * DAY - 5)
    emulator_admin.not_found(ended_unharvested, endpoint="results", times=1)
    ctx = context(tmp_path, emulator)
    report = apply(ctx)
    assert report.drift == [] and report.requeued == []
    assert [p for p in report.problems if "answered 404 although it exists" in p], report.problems
    assert batch_drift(tmp_path) == [(None, None)]
    report = apply(ctx, wait=True)
    assert report.harvested == [ended_unharvested]
    assert {submissions(emulator_admin, k) for k in KEYS} == {1}
    assert stored_states(tmp_path, emulator, monkeypatch) == {"succeeded"}


# -- the diff's rule


NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def ended_batch(*, archived: bool = False, drift: str | None = None) -> BatchRecord:
    """Ended an hour after it was made, 29 days and an hour ago: past its local results expiry."""
    created = NOW - timedelta(days=29, hours=1)
    return BatchRecord(
        "b1", "j", 1, "ended", created, created + timedelta(hours=24),
        created + timedelta(hours=1), NOW if archived else None, created + timedelta(days=29),
        None, None, None, drift, None,
    )  # fmt: skip


def plan_with(batch: BatchRecord):
    record = ItemRecord("j", "k", "cid-k", "fp1", 1, True, None, None, None, False, False, "b1")
    return make_plan(
        [DesiredJob("j", 3, None, (DesiredItem("k", "cid-k", "fp1", 0.01),))],
        [record], [batch], [], now=NOW, lineage="l", serial=1, spec_digest="d",
        inflight_batches={"b1": {"j\x1fk"}},
    )  # fmt: skip


def test_an_ended_batch_past_its_local_expiry_is_harvested_unless_the_server_archived_it():
    unarchived = ended_batch()
    assert lost_batches([unarchived]) == {}
    plan = plan_with(unarchived)
    assert [s.kind for s in plan.steps] == ["harvest", "prune"]
    assert plan.jobs[0].counts["pending"] == 1 and not plan.submits

    for lost in (ended_batch(archived=True), ended_batch(drift="results-lost")):
        assert lost_batches([lost]) == {"b1": "results-lost"}
        plan = plan_with(lost)
        assert [s.kind for s in plan.steps] == ["requeue", "submit"]
        assert plan.steps[0].reason == "results expired before harvest: items sent again"
