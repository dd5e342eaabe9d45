"""The plan memo (`batchops.plan.memo`): the same plan as a full render in every output form, and
a full plan again whenever anything the plan depends on changes."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import batchops
from batchops.cli import cli
from batchops.clock import utcnow
from batchops.commands.context import Context
from batchops.plan import memo
from batchops.plan.diff import DEFAULT_PRUNE_MARGIN, make_plan
from batchops.spec import desired as desired_mod
from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.state import open_writer
from batchops.state.records import BatchRecord, ItemRecord
from tests.projects import apply, context, rows, write_project, write_rows


@pytest.fixture
def memo_on(tmp_path, monkeypatch):
    """The memo kept for these small jobs, with this test's own cache key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    monkeypatch.setattr(memo, "MIN_ITEMS", 0)


@pytest.fixture
def renders(monkeypatch):
    """How many times the desired items were rendered (not served by the memo)."""
    count = {"n": 0}
    real = desired_mod.collect

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(desired_mod, "collect", counting)
    return count


def done(tmp_path: Path, emulator: str, state, n: int = 5) -> Context:
    """A project whose every item succeeded (one harvested batch in state)."""
    write_project(tmp_path, rows(n))
    ctx = context(tmp_path, emulator, state=state)
    report = apply(ctx, wait=True)
    assert report.submitted == n
    for path in memo_files(tmp_path):  # its last plan was kept: start without it
        path.unlink()
    return ctx


def at(ctx: Context, moment: datetime) -> Context:
    return Context(ctx.settings, clock=lambda: moment)


def full_plan(ctx: Context, monkeypatch, **kw):
    """The plan with every cache off: rendered in full, diffed in full."""
    with monkeypatch.context() as m:
        m.setenv("BATCHOPS_CACHE", "off")
        return ctx.plan(refresh=False, **kw)[0]


def memo_files(root: Path) -> list[Path]:
    return sorted((root / ".batchops-cache" / "plans").glob("*.json"))


def test_a_no_op_plan_is_served_as_the_full_plan(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())
    full = full_plan(ctx, monkeypatch)
    assert not full.changes and full.jobs[0].counts["succeeded"] == 5
    renders["n"] = 0
    first, _ = ctx.plan(refresh=False)  # rendered, and kept
    assert renders["n"] == 1 and len(memo_files(tmp_path)) == 1
    second, planned = ctx.plan(refresh=False)
    assert renders["n"] == 1  # served: nothing rendered
    assert first == second == full
    # with a refresh too: the harvested batch is polled, and the remote says what state says
    online, _ = ctx.plan(refresh=True)
    assert renders["n"] == 1 and online == full
    # what it was planned from still renders on demand, as a full render does
    assert planned.spec_digest == full.spec_digest
    assert [i.key for i in planned.jobs[0].items] == ["r1", "r2", "r3", "r4", "r5"]


def test_a_no_op_apply_plans_once_from_the_memo(
    tmp_path, emulator, emulator_admin, state_location, memo_on, renders, monkeypatch
):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())
    full = full_plan(ctx, monkeypatch)
    before = emulator_admin.stats()
    renders["n"] = 0
    first = apply(ctx)  # rendered, planned, kept
    assert renders["n"] == 1
    second = apply(ctx)
    assert renders["n"] == 1  # served
    assert first.submitted == second.submitted == 0
    for report in (first, second):
        assert report.final_plan == full
    assert emulator_admin.stats()["batches_created"] == before["batches_created"]
    served, _ = ctx.plan(refresh=False)
    assert renders["n"] == 1  # the memo apply kept serves plan too
    assert served == full


def cli_outputs(root: Path, state, env: dict) -> dict:
    out = {}
    base = ["--jobs", str(root / "jobs"), "--state", str(state)]
    for name, extra in {
        "text": [],
        "json": ["--json"],
        "markdown": ["--markdown"],
        "saved": ["-o", str(root / "saved.jsonl")],
    }.items():
        result = CliRunner().invoke(
            cli, [*base, "plan", "--no-refresh", "--detailed-exitcode", *extra], env=env
        )
        text = result.output
        if name == "json":
            shape = json.loads(text)
            shape.pop("created_at")
            text = shape
        out[name] = (result.exit_code, text)
        if name == "saved":
            lines = [json.loads(x) for x in (root / "saved.jsonl").read_text().splitlines()]
            lines[0].pop("plan_id")
            lines[0]["plan"].pop("created_at")
            lines[-1].pop("digest")  # over the lines, plan_id and created_at with them
            out["saved-file"] = lines
    return out


def test_every_output_form_is_the_same_from_the_memo(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    done(tmp_path, emulator, state_location)
    full = cli_outputs(tmp_path, state_location, {"BATCHOPS_CACHE": "off"})
    assert full["text"][0] == 0 and "No changes" in full["text"][1]
    renders["n"] = 0
    cli_outputs(tmp_path, state_location, {})  # fills the memo
    count = renders["n"]
    served = cli_outputs(tmp_path, state_location, {})
    assert renders["n"] == count  # every form was served
    assert served == full


def test_any_change_of_input_plans_in_full(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())

    def planned() -> bool:
        """Plan once; True when it was rendered (not served), checked against a full plan."""
        before = renders["n"]
        got, _ = ctx.plan(refresh=False)
        rendered = renders["n"] > before
        assert got == full_plan(ctx, monkeypatch)
        return rendered

    assert planned() and not planned()

    # a spec edit that changes no request still changes the job's definition
    spec = tmp_path / "jobs" / "demo.toml"
    spec.write_text(spec.read_text() + 'description = "now described"\n')
    assert planned() and not planned()

    # a data file rewritten with other content of the same size, its mtime put back
    data = tmp_path / "jobs" / "data" / "rows.jsonl"
    st = data.stat()
    write_rows(tmp_path, rows(5, r2="text number X"))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size
    assert planned()
    assert ctx.plan(refresh=False)[0].changes  # r2 changed: such a plan is not kept
    assert planned()
    write_rows(tmp_path, rows(5))  # back as it was: rewritten, the same bytes as the memo's
    assert not planned()  # hashed again: served
    os.utime(data)
    assert not planned()

    # the price table
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."claude-haiku-4-5"]\ninput = 0.9\noutput = 4.5\n')
    monkeypatch.setenv("BATCHOPS_PRICES", str(prices))
    ctx = at(ctx, ctx.clock())
    assert planned() and not planned()
    prices.write_text('[models."claude-haiku-4-5"]\ninput = 1.0\noutput = 4.5\n')
    ctx = at(ctx, ctx.clock())
    assert planned() and not planned()

    # batchops: its version, and its code
    monkeypatch.setattr(batchops, "__version__", batchops.__version__ + ".dev1")
    assert planned() and not planned()
    monkeypatch.setattr(memo, "_CODE_DIGEST", "another checkout")
    assert planned() and not planned()

    # the batch limits
    ctx.settings.max_batch_requests = 50_000
    assert planned() and not planned()

    # today (dated prices)
    ctx = at(ctx, ctx.clock() + timedelta(days=1))
    assert planned() and not planned()


def test_a_state_write_plans_in_full(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())
    first, _ = ctx.plan(refresh=False)
    writer = open_writer(ctx.settings.state_path, "test")
    try:
        writer.record_plan_applied("some-plan", utcnow())  # a write: the serial moves
    finally:
        writer.close()
    before = renders["n"]
    second, _ = ctx.plan(refresh=False)
    assert renders["n"] == before + 1
    assert second.serial == first.serial + 1
    ctx.plan(refresh=False)
    assert renders["n"] == before + 1
    assert second == full_plan(ctx, monkeypatch)


def test_scope_and_replace(tmp_path, emulator, state_location, memo_on, renders, monkeypatch):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())
    ctx.plan(refresh=False)
    ctx.plan(refresh=False)
    before = renders["n"]
    scoped, _ = ctx.plan(["demo"], refresh=False)  # another scope: its own memo
    assert renders["n"] == before + 1
    ctx.plan(["demo"], refresh=False)
    assert renders["n"] == before + 1
    for _ in range(2):  # --replace is never served from the memo
        replaced, _ = ctx.plan(refresh=False, replace_items=["demo:r1"])
        assert [a.reason for a in replaced.jobs[0].actions] == ["replace"]
    assert renders["n"] == before + 3
    assert not ctx.plan(refresh=False)[0].changes
    assert renders["n"] == before + 3
    assert scoped == full_plan(ctx, monkeypatch, job_names=["demo"])
    assert scoped.job_names == ("demo",)


def test_time_passing_the_bound_plans_in_full(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    ctx = done(tmp_path, emulator, state_location)
    reader = ctx.reader()
    try:
        bound = memo.valid_until(reader.batches())
    finally:
        reader.close()
    assert bound is not None  # a harvested batch, its results kept remotely until day 29
    early = bound - timedelta(milliseconds=2)  # the same day (the memo keys on the date too)
    at(ctx, early).plan(refresh=False)
    count = renders["n"]
    late = at(ctx, bound - timedelta(microseconds=1))
    served, _ = late.plan(refresh=False)
    assert renders["n"] == count  # served up to the bound
    assert served == full_plan(late, monkeypatch)
    count = renders["n"]
    due = at(ctx, bound)
    served, _ = due.plan(refresh=False)
    assert renders["n"] == count + 1  # not from it on: the batch is due for pruning
    assert served == full_plan(due, monkeypatch)
    assert [s.kind for s in served.steps] == ["prune"]


def test_a_planted_or_tampered_memo_is_refused(
    tmp_path, emulator, state_location, memo_on, renders, monkeypatch
):
    ctx = at(done(tmp_path, emulator, state_location), utcnow())
    ctx.plan(refresh=False)
    [path] = memo_files(tmp_path)
    good = path.read_bytes()
    body, mac = good.split(b"\n", 1)
    entry = json.loads(body)
    entry["plan"]["jobs"][0]["counts"]["succeeded"] = 4
    entry["plan"]["jobs"][0]["counts"]["failed"] = 1
    tampered = json.dumps(entry, separators=(",", ":")).encode()
    for planted in (tampered + b"\n" + mac, good[:-10], b"", good + b"junk\n"):
        path.write_bytes(planted)
        before = renders["n"]
        got, _ = ctx.plan(refresh=False)
        assert renders["n"] == before + 1  # refused: planned in full (and kept again)
        assert got == full_plan(ctx, monkeypatch)
        assert got.jobs[0].counts["succeeded"] == 5
    # a symlink in its place (to a file that never ends) is not read
    path.unlink()
    path.symlink_to("/dev/zero")
    before = renders["n"]
    got, _ = ctx.plan(refresh=False)
    assert renders["n"] == before + 1
    assert got == full_plan(ctx, monkeypatch)
    assert path.is_symlink()  # and not written through
    path.unlink()
    # a memo made with another user's key (as a pull request could plant) is refused too
    path.write_bytes(good)
    key = tmp_path / "home-cache" / "batchops" / "cache.key"
    key.write_bytes(os.urandom(32))
    before = renders["n"]
    got, _ = ctx.plan(refresh=False)
    assert renders["n"] == before + 1
    assert got == full_plan(ctx, monkeypatch)


def test_no_memo_when_the_cache_is_off_or_the_jobs_are_small(
    tmp_path, emulator, state_location, memo_on, monkeypatch
):
    ctx = done(tmp_path, emulator, state_location)
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    ctx.plan(refresh=False)
    assert memo_files(tmp_path) == []
    monkeypatch.delenv("BATCHOPS_CACHE")
    monkeypatch.setattr(memo, "MIN_ITEMS", 6)
    ctx.plan(refresh=False)
    assert memo_files(tmp_path) == []
    monkeypatch.setattr(memo, "MIN_ITEMS", 5)
    ctx.plan(refresh=False)
    assert len(memo_files(tmp_path)) == 1


# -- the time bound against the diff's own rules

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _batch(rng: random.Random, n: int) -> BatchRecord:
    created = T0 - timedelta(hours=rng.randrange(0, 40 * 24))
    status = rng.choice(["in_progress", "canceling", "ended"])
    ended = status == "ended"
    harvested = ended and rng.random() < 0.6
    return BatchRecord(
        id=f"b{n}",
        job="demo",
        request_count=1,
        processing_status=status,
        created_at=created,
        expires_at=created + timedelta(days=1),
        ended_at=created + timedelta(hours=1) if ended else None,
        archived_at=created + timedelta(days=29) if ended and rng.random() < 0.2 else None,
        results_expire_at=created + timedelta(days=29),
        harvested_at=created + timedelta(hours=2) if harvested else None,
        canceled_by_us_at=None,
        pruned_at=created + timedelta(days=27) if harvested and rng.random() < 0.3 else None,
        drift=rng.choice([None, None, None, "deleted", "results-lost", "not-ours", "canceled"]),
        request_counts="{}",
    )


def test_the_time_bound_holds_for_the_diff():
    """Before `valid_until`, the diff's plan is the same whatever the clock says."""
    rng = random.Random(12)
    item = DesiredItem("k0", "demo-k0", "sha256:f", 0.0)
    job = DesiredJob("demo", 3, None, (item,))
    reached = 0
    for case in range(400):
        batches = [_batch(rng, i) for i in range(rng.randrange(1, 4))]
        inflight = rng.random() < 0.5
        record = ItemRecord(
            "demo", "k0", "demo-k0", "sha256:f", 1, inflight, None if inflight else "succeeded",
            None, None, False, False, batches[0].id if inflight else None,
        )  # fmt: skip
        bound = memo.valid_until(batches)

        def plan_at(now: datetime, batches=batches, record=record):
            members = {batches[0].id: {"demo\x1fk0"}} if record.inflight else {}
            made = make_plan(
                [job], [record], batches, [], now=now, lineage="l", serial=1,
                spec_digest="d", inflight_batches=members,
            )  # fmt: skip
            return replace(made, created_at=T0)

        start = T0 - timedelta(days=45)
        if bound is not None and bound <= start:
            continue
        first = plan_at(start)
        end = bound if bound is not None else T0 + timedelta(days=60)
        moments = [start + (end - start) * rng.random() for _ in range(6)]
        moments.append(end - timedelta(microseconds=1))
        for moment in moments:
            assert plan_at(moment) == first, (case, moment, bound)
        if bound is not None and plan_at(bound + DEFAULT_PRUNE_MARGIN) != first:
            reached += 1
    assert reached > 10  # the cases cover batches whose judgement does change after the bound
