"""Review 8 (second reader): defects found, each test failing on the code as reviewed."""

from __future__ import annotations

import json

from batchops.plan import saved as planfile
from tests import statedb
from tests.projects import apply, context, refused, rows, write_edited, write_project, write_rows
from tests.test_apply import submissions

# ------------------------------------------------------------------ saved plan: made again at apply


def test_a_saved_plan_forgetting_removed_items_applies_on_postgresql_whatever_the_row_order(
    tmp_path, emulator, emulator_admin, pg_dsn
):
    """`check_steps` compares the saved steps with the plan made again, tuple for tuple. A
    forget step lists its keys in the order `item_records` returns them, and that query has no
    `order by`: on PostgreSQL it is the heap's order (here already the emulator's shuffled
    result order) or whatever a join, a parallel scan or an index scan yields. Anything that
    reorders the rows without a write to the state (CLUSTER or pg_repack by the DBA; another
    query plan after autovacuum's ANALYZE; a parallel scan of a large table) leaves the serial
    as it was, yet the legitimate plan is refused as "edited"."""
    write_project(tmp_path, rows(12))
    ctx = context(tmp_path, emulator, state=pg_dsn)
    apply(ctx, wait=True)
    write_rows(tmp_path, rows(1))  # r2..r12 leave the specs: one forget step
    plan, desired = ctx.plan(refresh=True, keep_requests=True)
    assert [s.kind for s in plan.steps] == ["forget"]
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    statedb.rows(pg_dsn, "cluster items using items_pkey")  # same rows, same serial
    apply(ctx, plan_file=path, wait=True)  # was: PlanError: its step 1 (forget ...) ... edited
    assert {r.key for r in ctx.reader().item_records() if r.forgotten} == {
        f"r{i}" for i in range(2, 13)
    }


def test_a_saved_plan_with_a_request_added_for_an_answered_item_is_refused_with_replace_too(
    tmp_path, emulator, emulator_admin
):
    """test_review7's first test, with one more line of the file edited: its header's new
    `replace` field, which `check_steps` takes on the file's word when it makes the plan
    again. The plan the reviewer saw sends r4; the file, with `"replace": [["demo", "r1"]]`
    and r1's request beside r4's (digest made anew), passes every check and pays for r1, which
    has its answer, a second time (DESIGN §6.6: a request added in the file is refused)."""
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    write_rows(tmp_path, rows(4))  # r4 new: the plan sends r4 alone
    plan, desired = ctx.plan(refresh=True, keep_requests=True)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    # r1's request line as batchops writes it for a replacement
    plan_r, desired_r = ctx.plan(refresh=True, replace_items=["demo:r1"], keep_requests=True)
    other = tmp_path / "other.jsonl"
    planfile.save(plan_r, desired_r, other, None)
    r1_line = next(
        line for line in other.read_text().splitlines() if '"key":"r1"' in line.replace(" ", "")
    )

    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["replace"] = [["demo", "r1"]]
    lines[0] = json.dumps(header)
    step_at = next(i for i, line in enumerate(lines) if '"step"' in line[:10])
    step = json.loads(lines[step_at])
    assert step["step"]["action"] == "submit" and step["step"]["requests"] == 1
    step["step"]["requests"] = 2
    lines[step_at] = json.dumps(step)
    lines.insert(step_at + 1, r1_line)  # r1 before r4, as the specs order them
    write_edited(path, lines)

    assert refused(ctx, plan_file=path, wait=True) == (
        f"{path}: the plan sends demo:r1 again on purpose (plan --replace); apply it with the "
        "same --replace to confirm"
    )
    assert submissions(emulator_admin, "r1") == 1, "r1, answered already, was sent again"


def test_what_the_file_says_its_refresh_saw_cannot_say_whose_a_batch_is(
    tmp_path, emulator, emulator_admin
):
    """Of each batch the file says its refresh saw, only what a refresh learns (status, times,
    counts) is taken from it: a batch said `adopted` in the file (where the state says it was
    recorded from our own create) would lose the cancel the plan made for it."""
    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=3600)  # the batch stays in flight
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, rows(0))  # every item obsolete: the batch is cancelled
    plan, desired = ctx.plan(refresh=True, keep_requests=True)
    assert [s.kind for s in plan.steps] == ["cancel"] and len(plan.observed) == 1
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["observed"][0]["adopted"] = True  # an adopted batch is never cancelled
    lines[0] = json.dumps(header)
    edited = [line for line in lines if not line.startswith('{"step":{"action":"cancel"')]
    assert len(edited) == len(lines) - 1
    write_edited(path, edited)
    assert refused(ctx, plan_file=path) == (
        f"{path}: it lacks a step (cancel for job demo) that the state and the specs call for; "
        "the file was edited: refusing the plan; make a new plan"
    )
