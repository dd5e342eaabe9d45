"""Review 23: a978c36 (the attempts of a harvested batch stay `sent`, done because their batch is
harvested). Where that leans on the batch row, what `state rm` of a harvested batch leaves
behind reads wrongly once the same batch id is in the state again (`batchops import`), and an
attempt of a harvested batch that no stored result answers can no longer be given up."""

from __future__ import annotations

import json
from pathlib import Path

from batchops.emulator.admin import EmulatorAdmin
from batchops.state import open_writer
from tests.projects import apply, context, rows, run_cli, write_project
from tests.test_harvest_store import NOW, rows_of, send


def test_a_removed_harvested_batch_recorded_again_keeps_its_outcomes_and_results(
    state_location,
) -> None:
    """Batch X harvested (a succeeded, b errored, c expired), `state rm X`, then recorded again
    for a and b (an import whose harvest has not run or failed). Before a978c36, `state show X`
    said attempts {errored 1, expired 1, sent 2, succeeded 1} and 3 results (X's three stored
    results are still in the state). Now it says {done 3, sent 2} and 0 results: `remove` sets
    the answered attempts `done` without their outcome (shared.py `remove`), and `batch_detail`
    counts results only for a harvested batch row (shared.py `batch_detail`)."""
    w = open_writer(str(state_location), "test")
    try:
        send(w, "msgbatch_1", ["a", "b", "c"])
        kinds = {"a": "succeeded", "b": "errored", "c": "expired"}
        rows = rows_of(w, "msgbatch_1", kinds)
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 3
        assert w.remove("msgbatch_1")[0] == "batch"
        send(w, "msgbatch_1", ["a", "b"], intent="intent-again")
        detail = w.batch_detail("msgbatch_1")[1:]
    finally:
        w.close()
    assert detail == ({"errored": 1, "expired": 1, "sent": 2, "succeeded": 1}, 3)


def test_state_show_of_a_batch_imported_again_after_rm(
    tmp_path: Path, emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """The same through the CLI: apply (3 succeeded), `state rm X --yes`, `import demo X` whose
    harvest fails (the results answer 404 after import read its custom_ids): `state show X
    --json` reports attempts {"done": 3, "sent": 3} and results 0, where before a978c36 it
    reported {"sent": 3, "succeeded": 3} and 3."""
    write_project(tmp_path, rows(3))
    (batch_id,) = apply(context(tmp_path, emulator), wait=True).batches_created
    removed = run_cli(tmp_path, emulator, "state", "rm", batch_id, "--yes")
    assert removed.returncode == 0, removed.stderr
    emulator_admin.add_faults(
        [
            {"kind": "slow", "delay_seconds": 0, "endpoint": "results", "batch_id": batch_id},
            {"status": 404, "endpoint": "results", "batch_id": batch_id, "times": 20},
        ]
    )
    imported = run_cli(tmp_path, emulator, "import", "demo", batch_id)
    assert imported.returncode != 0  # recorded, not harvested
    emulator_admin.clear_faults()
    shown = run_cli(tmp_path, emulator, "state", "show", batch_id, "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert (detail["status"], detail["attempts"], detail["results"]) == (
        "ended",
        {"sent": 3, "succeeded": 3},
        3,
    )


def test_rm_of_a_harvested_batch_gives_up_an_attempt_no_result_answered(state_location) -> None:
    """A harvested batch whose attempt for c has no stored result (the state `test_settle`'s
    last test builds, which `state show` reports as "sent": 1): its item is in flight. Before
    a978c36 `state rm` gave it up (1 item, 1 attempt; c sent again by the next apply). Now
    UNFINISHED leaves every attempt of a harvested batch out: rm reports 0 and 0, marks c's
    attempt done, and c stays in flight in a batch the state no longer has, for good.
    (Latent: a harvest refuses lines missing for sent custom_ids, so only such a state.)"""
    w = open_writer(str(state_location), "test")
    try:
        send(w, "msgbatch_1", ["a", "b", "c"])
        rows = rows_of(w, "msgbatch_1", dict.fromkeys("abc", "succeeded"))[:2]
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 2
        assert w.batch_detail("msgbatch_1")[1:] == ({"sent": 1, "succeeded": 2}, 2)
        counted = w.removal_counts("msgbatch_1")
        removed = w.remove("msgbatch_1")
        inflight = w.inflight_by_batch()
    finally:
        w.close()
    expected = ("batch", {"batches": 1, "items": 1, "attempts": 1})
    assert (counted, removed, inflight) == (expected, expected, {})
