"""Review 22 (second reader): the recovery and surgery commands a team reaches for after an
accident (`state recover`, `import JOB BATCH_ID`, `state rm BATCH_ID`), driven as the README
tells a user to, against the emulator. Each test pays for a request twice, or drops results the
API still holds, on the code as reviewed; each fails now and passes once fixed."""

from __future__ import annotations

import json
from pathlib import Path

from batchops.emulator.admin import EmulatorAdmin
from tests.projects import apply, context, rows, run_cli, write_project, write_rows


def _rename_with_moved(root: Path) -> None:
    """Rename job demo to sentiment in its spec, with the `moved` entry the README asks for."""
    spec = root / "jobs" / "demo.toml"
    text = spec.read_text().replace("[jobs.demo]", "[jobs.sentiment]")
    moved = 'moved = [{ from = "demo", to = "sentiment" }]\n'
    spec.write_text(text.replace("version = 1\n", "version = 1\n" + moved))


def _to_submit(root: Path, emulator: str) -> int:
    planned = run_cli(root, emulator, "plan", "--json")
    assert planned.returncode == 0, planned.stderr
    return json.loads(planned.stdout)["summary"]["submit"]


def test_recover_finds_the_batches_of_a_job_renamed_by_a_moved_entry(
    tmp_path: Path, emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """Job demo is answered (one batch, 3 results), then renamed to `sentiment` with
    `moved = [{ from = "demo", to = "sentiment" }]` and applied (the state follows). The state
    file is then lost; the README's remedy is `state recover --yes`. The user sees
    "Skipped 1 batch whose custom_ids match no item of the specs (not ours)." and
    "Recovered 0 of 1 batch on the API (0 results)", and the next plan submits all 3 items
    again: paid twice although every answer is still on the API. Expected: the batch recovered
    (its custom_ids are those of demo's items, which the specs' `moved` entry says are
    sentiment's now), and nothing to submit. Why: recover matches custom_ids only against the
    current job names; custom_ids carry the job name the request was sent under, and a
    `moved` entry is the specs' own record of that older name."""
    write_project(tmp_path, rows(3))
    apply(context(tmp_path, emulator), wait=True)
    _rename_with_moved(tmp_path)
    moved = run_cli(tmp_path, emulator, "apply", "--yes")
    assert moved.returncode == 0, moved.stderr
    assert _to_submit(tmp_path, emulator) == 0  # the rename alone sends nothing
    (tmp_path / "state" / "batchops.db").unlink()  # the state is lost
    made = emulator_admin.stats()["batches_created"]

    recovered = run_cli(tmp_path, emulator, "state", "recover", "--yes")

    assert recovered.returncode == 0, recovered.stderr
    lines = recovered.stdout.splitlines()
    assert "Skipped 1 batch whose custom_ids match no item of the specs (not ours)." not in lines
    assert lines[-1] == (
        "Recovered 1 of 1 batch on the API (3 results) into state/batchops.db; "
        "`batchops plan` shows what is left."
    )
    assert _to_submit(tmp_path, emulator) == 0
    applied = run_cli(tmp_path, emulator, "apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert emulator_admin.stats()["batches_created"] == made  # nothing paid for again


def test_import_takes_a_batch_of_a_job_renamed_by_a_moved_entry(
    tmp_path: Path, emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """Job demo's batch is in flight when the state is lost; meanwhile the job is renamed to
    `sentiment` with a `moved` entry. `state recover` says of the batch "run `batchops import
    JOB <id>` once it ends, before the next apply sends its items again". Once it ended, the
    user sees `import sentiment <id>` fail with "Error: batch <id>: 3 of its 3 results are not
    items of job sentiment (first: 'demo-r1-…')", and `import demo <id>` fail with "unknown
    job 'demo'": no command takes the batch, and the next apply pays for all 3 again. Expected:
    `import sentiment <id>` stores the 3 results (the specs say demo is sentiment now), as for
    any batch of the job. Why: import matches custom_ids against the job's current name only."""
    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=5)
    (batch_id,) = apply(context(tmp_path, emulator)).batches_created
    (tmp_path / "state" / "batchops.db").unlink()  # lost while the batch runs
    _rename_with_moved(tmp_path)
    emulator_admin.advance_clock(10)  # it ends

    imported = run_cli(tmp_path, emulator, "import", "sentiment", batch_id)

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-1] == (
        f"Imported batch {batch_id} into sentiment: 3 results stored."
    )
    assert _to_submit(tmp_path, emulator) == 0


def test_import_keeps_the_matching_results_of_a_batch_recover_sends_it_to(
    tmp_path: Path, emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """Job demo's batch (r1..r3) is in flight when the state is lost. `state recover --yes`
    reports it "still in flight ... run `batchops import JOB <id>` once it ends, before the
    next apply sends its items again". Meanwhile a teammate edits row r2. Once the batch ended,
    `batchops import demo <id>` fails with "Error: batch <id>: 1 of its 3 results are not items
    of job demo (first: 'demo-r2-…')" and stores nothing, so the next apply sends r1 and r3
    again (paid twice) though their answers are on the API. Expected: r1's and r3's results
    stored, r2 left to send (1 to submit). Why: `state recover` itself keeps the matching
    lines of exactly such a batch ("1 result not stored: it answers an older version of an
    item"), and the README sends the user from recover to import for it; import refuses
    the batch whole (batchops/apply/run.py:import_batch, `unknown`)."""
    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=5)
    (batch_id,) = apply(context(tmp_path, emulator)).batches_created
    (tmp_path / "state" / "batchops.db").unlink()  # lost while the batch runs
    recovered = run_cli(tmp_path, emulator, "state", "recover", "--yes")
    assert recovered.returncode == 0, recovered.stderr
    assert f"run `batchops import JOB {batch_id}` once it ends" in recovered.stdout
    write_rows(tmp_path, rows(3, r2="edited by a teammate"))
    emulator_admin.advance_clock(10)  # it ends

    imported = run_cli(tmp_path, emulator, "import", "demo", batch_id)

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-2:] == [
        f"1 result of batch {batch_id} not stored: it answers no current item of job demo"
        " (an older version of one).",
        f"Imported batch {batch_id} into demo: 2 results stored.",
    ]
    assert _to_submit(tmp_path, emulator) == 1  # r2 alone


def test_rm_of_an_ended_batch_whose_results_are_not_stored_needs_force(
    tmp_path: Path,
    emulator: str,
    emulator_admin: EmulatorAdmin,
    ended_unharvested: str,
) -> None:
    """A batch has ended and its harvest failed once (apply said "its results answered 404
    although it exists"): the state holds it as ended, its 2 results not stored. `batchops
    state rm <id> --yes` removes it without `--force`, and the next `apply --wait` sends both
    requests again (paid twice) while their answers are still on the API, never harvested.
    Expected: refused without `--force`, one `Error:` line, the batch kept, and the next apply
    harvests it and sends nothing. Why: the guard (`--force`: "its items are sent again, paid
    twice") covers only batches not ended (batchops/commands/surgery.py:_refuse_live), but an
    ended batch whose results are not stored loses exactly the same: its results are never
    harvested and its items are sent again (DESIGN: never pay twice, never lose a result)."""
    emulator_admin.not_found(ended_unharvested, endpoint="results", times=1)
    first = apply(context(tmp_path, emulator))
    assert first.problems == [
        f"harvest of batch {ended_unharvested} (demo): its results answered 404 although it exists"
    ]
    made = emulator_admin.stats()["batches_created"]

    removed = run_cli(tmp_path, emulator, "state", "rm", ended_unharvested, "--yes")

    assert removed.returncode == 1, removed.stdout
    assert removed.stderr.startswith("Error: ") and removed.stderr.count("\n") == 1
    applied = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05")
    assert applied.returncode == 0, applied.stderr
    assert emulator_admin.stats()["batches_created"] == made  # nothing sent again
