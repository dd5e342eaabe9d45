"""Review 7 (second reader): defects found, each test failing on the code as reviewed."""

from __future__ import annotations

import json

import pytest

from batchops.plan import saved as planfile
from tests.projects import (
    apply,
    context,
    refused,
    rewrite_digest,
    rows,
    write_edited,
    write_project,
    write_rows,
)
from tests.test_apply import states, submissions
from tests.test_harvest_odd_results import harvest_once

# ------------------------------------------------------------------ saved plan: tampering


def _refused_as_edited(ctx, path, kind: str) -> None:
    """Apply of `path` is refused, its first step named as not what the state calls for."""
    assert refused(ctx, plan_file=path) == (
        f"{path}: its step 1 ({kind} for job demo) is not what the state and the specs call "
        "for; the file was edited: refusing the plan; make a new plan"
    )


def _request_lines(path) -> dict[str, str]:
    """key → request line of a saved plan."""
    out = {}
    for line in path.read_text().splitlines()[1:-1]:
        entry = json.loads(line)
        if "params" in entry:
            out[entry["key"]] = line
    return out


def test_a_saved_plan_with_a_request_added_for_an_answered_item_is_refused(
    tmp_path, emulator, emulator_admin
):
    """DESIGN §6.6: a saved plan applies "only as written: a request edited, added or removed
    in the file ... is refused before any network call", and §6.2: "an item whose result
    succeeded is never sent again unless its fingerprint changes". `plan.saved.load` checks
    only that each request line is an item the specs render now (key, custom_id,
    fingerprint): a line added for an item that already has its current answer passes, and
    apply pays for it a second time."""
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    plan, desired = ctx.plan(refresh=False)
    first = tmp_path / "first.jsonl"
    planfile.save(plan, desired, first, None)
    r1_line = _request_lines(first)["r1"]  # what the specs render for r1, as batchops writes it
    apply(ctx, wait=True)
    assert set(states(ctx).values()) == {"succeeded"}

    write_rows(tmp_path, rows(4))  # one new row: the plan sends r4 alone
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    lines = path.read_text().splitlines()
    step_at = next(i for i, line in enumerate(lines) if '"step"' in line[:10])
    step = json.loads(lines[step_at])
    assert step["step"]["action"] == "submit" and step["step"]["requests"] == 1
    step["step"]["requests"] = 2
    lines[step_at] = json.dumps(step)
    lines.insert(step_at + 2, r1_line)  # r1's request beside r4's
    write_edited(path, lines)

    _refused_as_edited(ctx, path, "submit")
    assert submissions(emulator_admin, "r1") == 1, "r1, answered already, was sent again"
    assert submissions(emulator_admin, "r4") == 0


def test_a_saved_plan_with_a_request_removed_is_refused_even_with_its_digest_rewritten(tmp_path):
    """DESIGN §6.6 names "a request ... removed in the file" among what is refused. The test
    of it (`test_plan_is_the_program`, "removed") leaves the old digest in place, so the digest
    refuses it; with the digest recomputed (which anyone can do) and the step's count lowered,
    `load` took the plan, and apply would send two of the three requests the plan was made
    with. Refused now before any network call (nothing listens at the API's address)."""
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, "http://127.0.0.1:9")  # nothing listens there: no network call
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, ctx.prices.source)
    lines = path.read_text().splitlines()
    step = json.loads(lines[1])
    assert step["step"]["action"] == "submit" and step["step"]["requests"] == 3
    step["step"]["requests"] = 2
    tampered = rewrite_digest([lines[0], json.dumps(step), *lines[3:]])  # r1's line gone
    path.write_text("".join(line + "\n" for line in tampered))
    _refused_as_edited(ctx, path, "submit")


def test_a_saved_plan_with_a_step_added_that_the_state_does_not_call_for_is_refused(
    tmp_path, emulator, emulator_admin
):
    """Only a saved plan's submit and reuse steps are checked against what the specs render;
    its other steps (requeue, cancel, forget, prune, harvest) are taken from the file as they
    are, at the state's lineage and serial, whatever the state holds. A `requeue` step added
    for the batch in flight (digest recomputed) gives its items back while the batch runs on,
    and the next apply sends them again: every item paid twice, each in two unfinished
    batches at once (DESIGN §6.2)."""
    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=3600)  # the batch stays in flight
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    plan, desired = ctx.plan(refresh=False)
    assert not plan.steps  # nothing to do while the batch runs
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    lines = path.read_text().splitlines()
    requeue = {
        "action": "requeue",
        "job": "demo",
        "batch_id": batch_id,
        "items": 3,
        "drift": "deleted",
        "reason": "deleted outside batchops",
    }
    tampered = rewrite_digest([lines[0], json.dumps({"step": requeue}), lines[-1]])
    path.write_text("".join(line + "\n" for line in tampered))
    _refused_as_edited(ctx, path, "requeue")
    apply(ctx)
    assert submissions(emulator_admin, "r1") == 1, "r1, in flight, was sent a second time"


# ------------------------------------------------------------------ harvest: a succeeded line without its message


NO_MESSAGE = "its message is not an object"
NO_CONTENT = "its message's content is not a list"


@pytest.mark.parametrize("worker", ["0", "1"])
@pytest.mark.parametrize(
    ("odd", "why"),
    [
        pytest.param({"type": "succeeded", "message": None}, NO_MESSAGE, id="message-null"),
        pytest.param({"type": "succeeded"}, NO_MESSAGE, id="no-message"),
        pytest.param({"type": "succeeded", "message": []}, NO_MESSAGE, id="message-an-empty-list"),
        pytest.param(
            {"type": "succeeded", "message": {"content": "hi", "usage": {"input_tokens": 1}}},
            NO_CONTENT,
            id="content-a-string",
        ),
    ],
)
def test_a_succeeded_line_without_a_message_is_a_harvest_problem_not_an_empty_answer(
    odd: dict, why: str, worker: str, tmp_path, monkeypatch
) -> None:
    """`verified_rows` reads a succeeded result's message as `result.get("message") or {}`:
    a line whose message is null, missing or empty (or whose content is a string, iterated
    letter by letter) is stored as a success with an empty text, no model and no usage. The
    item is then `succeeded` for good: never sent again, exported with no answer, and nothing
    said. A message that is a string is refused as "not of the shape the API sends"
    (test_harvest_odd_results); these are the same protocol slip, and should be refused the
    same way (nothing stored, a harvest problem, tried again next run)."""
    outcome, _, problems, stored, inflight = harvest_once(
        str(tmp_path / "state.db"), odd, worker, monkeypatch
    )
    assert (outcome, stored, inflight) == (False, 0, 20), (
        f"stored {stored} results, {inflight} items still in flight, problems {problems}"
    )
    [problem] = problems
    assert problem.startswith("harvest of batch msgbatch_1 (")
    assert problem.endswith(f"is not of the shape the API sends ({why})")


def test_a_saved_plan_whose_refresh_says_a_running_batch_was_deleted_is_refused(
    tmp_path, emulator, emulator_admin, monkeypatch
):
    """The file keeps the batches as its refresh saw them, and apply makes the plan again from
    them: a file made consistent on purpose (a batch in flight said deleted, its items sent
    again with reason requeue) passes that check. So apply asks the API again of each batch
    the file says is lost before anything runs, and refuses the plan when it is not."""
    from dataclasses import replace

    from batchops.apply import refresh

    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=3600)  # the batch stays in flight
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created

    def lying(batches, client, now):  # what a forged file would say its refresh saw
        return {b.id: replace(b, drift="deleted") for b in batches}, []

    monkeypatch.setattr(refresh, "remote_view", lying)
    plan, desired = ctx.plan(refresh=True)
    monkeypatch.undo()
    assert [s.kind for s in plan.steps] == ["requeue", "submit"]
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    assert refused(ctx, plan_file=path) == (
        f"{path}: batch {batch_id} (demo) is not lost as the plan says (the API, asked again, "
        "does not say so); refusing the plan; make a new plan"
    )
    assert submissions(emulator_admin, "r1") == 1
    assert set(states(ctx).values()) == {"pending"}


def test_a_saved_plan_made_with_replace_applies_as_made(tmp_path, emulator, emulator_admin):
    """The file keeps its `--replace` items: apply makes the same plan again with them."""
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    plan, desired = ctx.plan(refresh=True, replace_items=["demo:r2"], keep_requests=True)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    assert refused(ctx, plan_file=path, wait=True) == (  # who applies it names what it sends again
        f"{path}: the plan sends demo:r2 again on purpose (plan --replace); apply it with the "
        "same --replace to confirm"
    )
    assert refused(ctx, plan_file=path, replace_items=["demo:r1"]) == (
        f"{path}: --replace demo:r1 is not what the plan was made with (demo:r2)"
    )
    report = apply(ctx, plan_file=path, wait=True, replace_items=["demo:r2"])
    assert report.submitted == 1
    assert (submissions(emulator_admin, "r1"), submissions(emulator_admin, "r2")) == (1, 2)
