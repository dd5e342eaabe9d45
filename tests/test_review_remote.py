"""Review of the remote promises (never pay twice, never lose a result, in a shared workspace):
each test here failed when written, and names the finding it shows."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import statedb
from tests.projects import rows, run_cli, write_project
from tests.test_apply import submissions

STATE = Path("state") / "batchops.db"
FAST_GRACE = {"BATCHOPS_CREATE_GRACE_SECONDS": "1"}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def apply(root, emulator, *args, env=None):
    return run_cli(root, emulator, "apply", "--yes", "--poll-interval", "0.1", *args, env=env)


def state_rows(root: Path, sql: str) -> list[tuple]:
    return statedb.rows(root / STATE, sql)


def results(root: Path, emulator: str) -> list[dict]:
    out = ok(run_cli(root, emulator, "results", "demo", "--format", "jsonl")).stdout
    return [json.loads(line) for line in out.splitlines()]


# FINDING R1 (pays twice): resolve_intent treats a candidate whose results could not be read
# (a stream cut mid-way, a 5xx past the SDK's retries, a passing 404) exactly like a batch proven
# foreign (`_custom_ids_of` returns None, `None != expected` -> `continue`). Once the create
# grace has passed, the intent is marked unsent and its items are sent again, although the
# batch that a lost create response made is ours, ended, and paid for.
def test_r1_a_results_read_failing_once_during_adoption_does_not_send_again(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=5)
    write_project(tmp_path, rows(2))
    emulator_admin.lose_next_create_response()
    first = ok(apply(tmp_path, emulator))  # our batch exists, is in flight: items held
    assert "held" in first.stdout
    assert state_rows(tmp_path, "select status from intents") == [("open",)]
    emulator_admin.advance_clock(10)  # the batch ends; the create is older than the grace
    # its results stream breaks off once, mid-way
    emulator_admin.add_faults([{"kind": "truncate", "endpoint": "results", "after_bytes": 40}])
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", env=FAST_GRACE))
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}  # sent once, not twice
    assert emulator_admin.stats()["batches_created"] == 1


@pytest.mark.parametrize("spoil", ["drop_line", "duplicate_line"])
def test_a_lost_creates_candidate_read_in_part_is_read_again_not_taken_for_foreign(
    tmp_path, emulator, emulator_admin, spoil
):
    """A results file that reads well but shows only some of our custom_ids (a line left out, or
    one repeated in its place) proves nothing: the items stay held, and the next read, whole,
    adopts the batch. Nothing is sent twice."""
    emulator_admin.set_config(processing_seconds=5)
    write_project(tmp_path, rows(3))
    emulator_admin.lose_next_create_response()
    assert "held" in ok(apply(tmp_path, emulator)).stdout
    emulator_admin.advance_clock(10)  # the batch ends; the create is older than the grace
    emulator_admin.add_faults([{"kind": spoil, "endpoint": "results"}])
    partly = ok(apply(tmp_path, emulator, env=FAST_GRACE))
    assert "could not be read in full this time" in partly.stdout, partly.stdout
    assert state_rows(tmp_path, "select status from intents") == [("open",)]
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", env=FAST_GRACE))
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {1}
    assert emulator_admin.stats()["batches_created"] == 1


# FINDING R2 (wrong plan: items held for ever): resolve_intent puts an archived candidate in
# `waiting` (`remote.processing_status != "ended" or remote.archived_at is not None`), and a
# candidate there holds the intent's items "until it ends". An archived batch has ended and its
# results are gone for good: it can never be proven ours, nor unproven, so the items are never
# sent again and `apply --wait` spins until its timeout. (Reached when the run after a lost
# create response comes 29 days later, e.g. a scheduled job paused for a month.) Whether the
# batch was ours or not, its results cannot be had: the items must be sent again, as DESIGN §5
# requeues the items of a batch whose results expired unharvested.
def test_r2_an_archived_candidate_does_not_hold_the_items_for_ever(
    tmp_path, emulator, emulator_admin
):
    emulator_admin.set_config(processing_seconds=5)
    write_project(tmp_path, rows(2))
    emulator_admin.lose_next_create_response()
    first = ok(apply(tmp_path, emulator))
    assert "held" in first.stdout
    emulator_admin.advance_clock(30 * 86400)  # a month later: the batch is archived
    done = apply(tmp_path, emulator, "--wait", "--timeout", "30", env=FAST_GRACE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Timed out" not in done.stdout + done.stderr
    assert {r["state"] for r in results(tmp_path, emulator)} == {"succeeded"}


# FINDING R3 (bad error: a hang far past --timeout): every read (list, retrieve, results) goes
# through the SDK with max_retries=5, and this SDK obeys any `retry-after` it is given, with no
# cap (ANTHROPIC_BATCHES_API.md §7; SDK _base_client._calculate_retry_timeout). One 429 whose
# retry-after says an hour (a spend or queue limit) makes `apply --timeout 20` sleep an hour,
# silently, up to five times over. batchops should bound what it waits for (its own retry loop
# with a cap, or fail at once with one line naming the 429 and its retry-after).
def test_r3_a_long_retry_after_does_not_hang_apply_past_its_timeout(
    tmp_path, emulator, emulator_admin
):
    write_project(tmp_path, rows(1))
    emulator_admin.add_faults(
        [{"kind": "status", "status": 429, "endpoint": "list", "retry_after_ms": 3_600_000}]
    )
    started = time.monotonic()
    try:
        done = run_cli(
            tmp_path, emulator, "apply", "--yes", "--timeout", "20", "--poll-interval", "0.1",
            timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AssertionError("apply --timeout 20 was still asleep after 60 s") from None
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: list batches failed: HTTP 429 "), line
    assert line.endswith("; the API asks to wait 3,600 s before trying again"), line
    assert emulator_admin.stats()["batches_created"] == 0


def test_a_short_retry_after_is_waited_out_and_the_read_retried(tmp_path, emulator, emulator_admin):
    """Under LONGEST_RETRY_AFTER, a 429's wait is the SDK's to honour: the read is tried again
    and apply goes on."""
    write_project(tmp_path, rows(1))
    emulator_admin.add_faults(
        [{"kind": "status", "status": 429, "endpoint": "list", "retry_after_ms": 300}]
    )
    ok(run_cli(tmp_path, emulator, "apply", "--yes"))
    assert emulator_admin.stats()["batches_created"] == 1


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "3600000"}, 3600.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "7.5"}, 7.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_the_headers_the_sdk_reads(headers, seconds) -> None:
    from batchops.remote.client import retry_after

    assert retry_after(httpx_headers(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    from email.utils import format_datetime

    from batchops.remote.client import retry_after

    when = datetime.now(UTC) + timedelta(seconds=120)
    got = retry_after(httpx_headers({"retry-after": format_datetime(when, usegmt=True)}))
    assert got is not None and 110 < got <= 120


def httpx_headers(values: dict[str, str]):
    import httpx2

    return httpx2.Headers(values)


def _lose_state(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / STATE}{suffix}").unlink(missing_ok=True)


# FINDING R4 (pays twice): `state recover` skips a whole ended batch as soon as one of its
# custom_ids matches no item as the specs render it now (recover.py `_recover_batch`,
# `len(matched) != len(custom_ids)`). A custom_id is a 60-bit hash of job, key and fingerprint,
# so the matching lines are proven ours; the others are older versions of our items. After one
# item is edited and re-sent, then the state is lost, every other item of that batch is sent
# (and paid for) again although its answer is still on the API.
def test_r4_recover_keeps_the_answers_of_a_batch_holding_one_edited_item(
    tmp_path, emulator, emulator_admin
):
    write_project(tmp_path, rows(3))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    write_project(tmp_path, rows(3, r3="edited after its answer"))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))  # r3 alone in a second batch
    assert [submissions(emulator_admin, k) for k in ("r1", "r2", "r3")] == [1, 1, 2]
    _lose_state(tmp_path)
    recovered = ok(run_cli(tmp_path, emulator, "state", "recover", "--yes"))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    assert [submissions(emulator_admin, k) for k in ("r1", "r2", "r3")] == [1, 1, 2], (
        recovered.stdout
    )
    assert {r["state"] for r in results(tmp_path, emulator)} == {"succeeded"}


# FINDING R5 (bad error: the workspace's shared rate limit is spent polling): refresh polls every
# batch that is not `finished`, and a harvested batch is finished only once archived (29 days)
# or pruned (records.py `BatchRecord.finished`; run.py `refresh_state`; refresh.py
# `remote_view`). So every plan, apply and `--wait` cycle retrieves every batch harvested in
# the last 29 days, although nothing it could learn changes the plan: prune is judged from the
# stored `results_expire_at`. Batch endpoints share one per-minute limit across the workspace
# (1,000 RPM at the Start tier, ANTHROPIC_BATCHES_API.md §5): a few hundred harvested batches
# polled every 5 s makes teammates' and batchops' own calls answer 429.
def test_r5_a_harvested_batch_is_not_polled_again(tmp_path, emulator, emulator_admin):
    write_project(tmp_path, rows(2))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    [(batch_id,)] = state_rows(tmp_path, "select id from batches where harvested_at is not null")
    # a no-op fault, used up by the first retrieve of that batch: it shows whether one was made
    emulator_admin.add_faults(
        [{"kind": "slow", "delay_seconds": 0, "endpoint": "retrieve", "batch_id": batch_id}]
    )
    ok(apply(tmp_path, emulator))
    ok(run_cli(tmp_path, emulator, "plan"))
    assert [f["batch_id"] for f in emulator_admin.add_faults([])] == [batch_id]


# ---------------------------------------------------------------- R4, further


def _edited_then_lost(root: Path, emulator: str) -> tuple[str, str]:
    """r1..r3 answered in one batch, r3 edited and answered alone in a second; the state lost.
    Returns (the first batch, the second)."""
    write_project(root, rows(3))
    ok(apply(root, emulator, "--wait", "--timeout", "60"))
    write_project(root, rows(3, r3="edited after its answer"))
    ok(apply(root, emulator, "--wait", "--timeout", "60"))
    [(first,), (second,)] = state_rows(root, "select id from batches order by created_at, id")
    _lose_state(root)
    return first, second


def test_r4_recover_says_what_it_left_out_and_stores_only_proven_answers(
    tmp_path, emulator, emulator_admin
):
    first, second = _edited_then_lost(tmp_path, emulator)
    out = ok(run_cli(tmp_path, emulator, "state", "recover", "--yes")).stdout
    assert out == (
        f"Recovered batch {first} (demo): 2 results; 1 result not stored: it answers an older "
        "version of an item, or a removed one (its custom_id matches no item as the specs render "
        "now).\n"
        f"Recovered batch {second} (demo): 1 result.\n"
        "Recovered 2 of 2 batches on the API (3 results) into state/batchops.db; `batchops plan` "
        "shows what is left.\n"
    )
    # r3's first answer (to the prompt before the edit) is nowhere: its key is not provable
    assert state_rows(tmp_path, "select key, batch_id from results order by key") == [
        ("r1", first),
        ("r2", first),
        ("r3", second),
    ]
    attempts = f"select count(*) from attempts where batch_id = '{first}'"
    assert state_rows(tmp_path, attempts) == [(2,)]
    plan = ok(run_cli(tmp_path, emulator, "plan", "--json"))
    assert json.loads(plan.stdout)["changes"] is False


def test_r4_a_recovered_batch_whose_results_then_fail_is_not_left_half_recorded(
    tmp_path, emulator, emulator_admin
):
    """Apply's harvest refuses the lines a batch was not sent, so a batch recorded with only
    some of its items must be harvested by recover itself, or not be left in the state: else
    every apply would plan its harvest, fail, and hold its items until its results expire."""
    first, second = _edited_then_lost(tmp_path, emulator)
    emulator_admin.add_faults(
        [
            {"kind": "slow", "delay_seconds": 0, "endpoint": "results", "batch_id": first},
            {"kind": "truncate", "endpoint": "results", "batch_id": first, "times": 50},
        ]
    )  # the first read (its custom_ids) works, every one after it breaks off
    out = ok(run_cli(tmp_path, emulator, "state", "recover", "--yes")).stdout
    assert f"Not recovered: batch {first} (ended): its results could not be harvested (" in out
    assert (
        "so nothing of it was kept; the next apply sends its items again, unless it is recovered "
        "into a new state.\n"
    ) in out
    assert f"Recovered batch {second} (demo): 1 result.\n" in out
    assert state_rows(tmp_path, f"select count(*) from batches where id = '{first}'") == [(0,)]
    done = ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    assert "Timed out" not in done.stdout + done.stderr
    # what the report said: r1 and r2 sent again, r3 not
    assert [submissions(emulator_admin, k) for k in ("r1", "r2", "r3")] == [2, 2, 2]
    assert {r["state"] for r in results(tmp_path, emulator)} == {"succeeded"}


def test_r4_apply_harvest_still_refuses_a_line_it_was_not_sent() -> None:
    """Only recover skips (and counts) lines that match no item; apply's harvest refuses them."""
    import pytest

    from batchops.apply.harvest import ForeignResults, HarvestFailed, verified_rows
    from batchops.state.records import SentAttempt

    def line(custom_id: str) -> dict:
        return {"custom_id": custom_id, "result": {"type": "expired"}}

    def sent() -> dict:
        return {"a": SentAttempt(1, "k1", "fp1"), "b": SentAttempt(2, "k2", "fp2")}

    def run(lines: list[dict], expected: int, unmatched: set[str] | None = None) -> list[tuple]:
        return list(
            verified_rows("demo", "b1", "now", iter(lines), sent(), expected, unmatched=unmatched)
        )

    lines = [line("a"), line("old"), line("b")]
    with pytest.raises(ForeignResults, match="'old', which this batch was not sent"):
        run(lines, 3)
    skipped: set[str] = set()
    assert [row[2] for row in run(lines, 3, skipped)] == ["a", "b"] and skipped == {"old"}
    # every other check stands: the count, a custom_id twice, a sent one missing, the type
    with pytest.raises(HarvestFailed, match="3 result lines, but request_counts add up to 4"):
        run(lines, 4, set())
    with pytest.raises(HarvestFailed, match="'old' appears twice"):
        run([*lines, line("old")], 4, set())
    with pytest.raises(HarvestFailed, match="1 submitted custom_ids have no result"):
        run([line("a"), line("old")], 2, set())
    odd = {"custom_id": "old", "result": {"type": "mystery"}}
    with pytest.raises(HarvestFailed, match="unknown type 'mystery'"):
        run([line("a"), odd, line("b")], 3, set())


# ---------------------------------------------------------------- R5, further


def _no_op_fault(admin, batch_id: str) -> None:
    """A fault used up by the next retrieve of `batch_id`: whether it is left shows whether one
    was made."""
    admin.add_faults(
        [{"kind": "slow", "delay_seconds": 0, "endpoint": "retrieve", "batch_id": batch_id}]
    )


def _faults_left(admin) -> list[str]:
    return [f["batch_id"] for f in admin.add_faults([])]


def test_r5_the_wait_loop_polls_the_batch_in_flight_not_the_harvested_one(
    tmp_path, emulator, emulator_admin
):
    write_project(tmp_path, rows(2))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    [(harvested,)] = state_rows(tmp_path, "select id from batches")
    _no_op_fault(emulator_admin, harvested)
    emulator_admin.set_config(processing_seconds=1)
    write_project(tmp_path, rows(3))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))  # r3: several cycles in flight
    assert state_rows(tmp_path, "select count(*) from batches where harvested_at is null") == [(0,)]
    assert _faults_left(emulator_admin) == [harvested]


def test_r5_a_harvested_batch_is_polled_again_once_its_results_near_expiry(
    tmp_path, emulator, emulator_admin, sdk_client
):
    """Within the prune margin the plan prunes it: polled again then, so that a batch deleted
    meanwhile is not planned a prune. (Days pass by batchops' clock: a jump of the emulator's
    moves the remote timestamps back, which only a poll would see.)"""
    from datetime import timedelta

    from batchops.clock import utcnow
    from tests.projects import context

    write_project(tmp_path, rows(2))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    [(batch_id,)] = state_rows(tmp_path, "select id from batches")
    ctx = context(tmp_path, emulator)
    ctx.clock = lambda: utcnow() + timedelta(days=26)  # three days before its results expire
    _no_op_fault(emulator_admin, batch_id)
    assert ctx.plan(refresh=True)[0].batches == ()
    assert _faults_left(emulator_admin) == [batch_id]
    ctx.clock = lambda: utcnow() + timedelta(days=28)  # within the two days' margin
    plan, _ = ctx.plan(refresh=True)
    assert _faults_left(emulator_admin) == []
    assert [(b.action, b.batch_id) for b in plan.batches] == [("prune", batch_id)]
    sdk_client.messages.batches.delete(batch_id)  # deleted by someone else meanwhile
    assert ctx.plan(refresh=True)[0].batches == ()


def test_r5_needs_refresh_from_the_stored_expiry() -> None:
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from batchops.plan.diff import DEFAULT_PRUNE_MARGIN
    from batchops.state.records import BatchRecord

    created = datetime(2026, 3, 1, tzinfo=UTC)
    sent = BatchRecord(
        id="b1", job="demo", request_count=1, processing_status="in_progress",
        created_at=created, expires_at=created + timedelta(days=1), ended_at=None,
        archived_at=None, results_expire_at=created + timedelta(days=29), harvested_at=None,
        canceled_by_us_at=None, pruned_at=None, drift=None, request_counts=None,
    )  # fmt: skip
    ended = replace(sent, processing_status="ended", ended_at=created + timedelta(hours=1))
    harvested = replace(ended, harvested_at=created + timedelta(hours=2))
    day = timedelta(days=1)

    def polled(record: BatchRecord, at: timedelta) -> bool:
        return record.needs_refresh(created + at, DEFAULT_PRUNE_MARGIN)

    assert polled(sent, day) and polled(ended, day) and polled(ended, 20 * day)
    assert not polled(harvested, day) and not polled(harvested, 26 * day)
    assert polled(harvested, 27 * day) and polled(harvested, 30 * day)
    assert polled(replace(harvested, results_expire_at=None), day)  # unknown: ask
    assert not polled(replace(harvested, pruned_at=created + 27 * day), 28 * day)
    assert not polled(replace(harvested, drift="deleted"), 28 * day)
