"""Review 20 (second reader): what the reports say of one item, compared across commands. An
item that failed without an API error object (its attempts expired, or it was cancelled outside
batchops) is reported by `results` with `error_type` "expired" / "canceled" (as the results
golden file pins), but by `plan --json` and `apply --json` with `"error_type": null`, the value
every report gives an item that has no error at all. Each test fails on the code as reviewed and
passes once fixed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tests.projects import rows, run_cli, write_project


def _failed_entries(document: dict, job: str) -> dict[str, dict]:
    """key → failed entry of `job` in a plan --json / apply --json document."""
    (entry,) = [j for j in document["jobs"] if j["name"] == job]
    return {f["key"]: f for f in entry["failed"]}


def test_an_item_failed_by_expiry_has_one_error_type_in_plan_json_and_results(
    tmp_path: Path, emulator: str, clock_running: Any
) -> None:
    """r2's every attempt expires (max_attempts 2). `batchops results demo --failed` (jsonl and
    csv) says `"error_type": "expired"` beside the detail "max_attempts (2) used up; last:
    expired"; `batchops plan --json` lists the same item under `failed` with `"error_type":
    null`. A CI step that reads the plan JSON to tell expiries (worth a re-run later, e.g. with
    a higher max_attempts) from request errors sees "no error type" for a failed item, and the
    two machine-readable reports of one item disagree. Expected: the plan's failed entry says
    "expired", as `results` does (DESIGN §5: the plan carries the failed items with their
    error; `results --failed` is "only failed items, with their errors")."""
    write_project(tmp_path, rows(2, r2="y [[emulator:expired]]"), max_attempts=2)
    with clock_running():  # each batch with r2 ends at its expiry, a day on
        applied = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "  ! failed  demo  r2  max_attempts (2) used up; last: expired" in (
        applied.stdout.splitlines()
    ), applied.stdout

    exported = run_cli(tmp_path, emulator, "results", "demo", "--failed")
    assert exported.returncode == 0, exported.stderr
    (row,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert (row["key"], row["state"], row["error_type"]) == ("r2", "failed", "expired")
    as_csv = run_cli(tmp_path, emulator, "results", "demo", "--failed", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    (csv_row,) = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert (csv_row["key"], csv_row["error_type"]) == ("r2", "expired")

    planned = run_cli(tmp_path, emulator, "plan", "--json")
    assert planned.returncode == 0, planned.stderr
    failed = _failed_entries(json.loads(planned.stdout), "demo")
    assert failed["r2"]["message"] == "max_attempts (2) used up; last: expired"
    assert failed["r2"]["error_type"] == row["error_type"] == "expired", failed["r2"]


def test_an_item_cancelled_outside_batchops_has_one_error_type_in_apply_json_and_results(
    tmp_path: Path, emulator: str
) -> None:
    """r1's request comes back `canceled` (not by batchops: it is failed at once, "canceled
    outside batchops"). `batchops apply --json` reports it under `jobs[].failed` with
    `"error_type": null`, and so does `plan --json`; `batchops results demo --failed` says
    `"error_type": "canceled"`. Expected: "canceled" in all three, the type of the item's
    outcome, so a script reading the apply report can tell a cancellation from an item with no
    error (`failed_dict` takes `FailedItem.error_type`, which `plan/diff.py` fills from
    `record.error_type` alone, None for every outcome but `errored`)."""
    write_project(tmp_path, rows(2, r1="x [[emulator:canceled]]"))
    applied = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--json", "--poll-interval", "0.05"
    )
    assert applied.returncode == 1, applied.stdout + applied.stderr
    report = json.loads(applied.stdout)

    exported = run_cli(tmp_path, emulator, "results", "demo", "--failed")
    assert exported.returncode == 0, exported.stderr
    (row,) = [json.loads(line) for line in exported.stdout.splitlines()]
    assert (row["key"], row["detail"], row["error_type"]) == (
        "r1",
        "canceled outside batchops",
        "canceled",
    )

    planned = run_cli(tmp_path, emulator, "plan", "--json")
    assert planned.returncode == 0, planned.stderr
    in_plan = _failed_entries(json.loads(planned.stdout), "demo")["r1"]
    in_apply = _failed_entries(report, "demo")["r1"]
    assert in_apply["message"] == in_plan["message"] == "canceled outside batchops"
    assert (in_apply["error_type"], in_plan["error_type"]) == ("canceled", "canceled")


def test_the_failed_heading_says_what_sends_a_failed_item_again(
    tmp_path: Path, emulator: str, clock_running: Any
) -> None:
    """The plan's heading over failed items said "not sent again until the item changes", yet
    an item whose attempts were used up is sent again once max_attempts is raised, as the next
    plan shows. Expected: the heading says both, and raising max_attempts sends r2 again."""
    write_project(tmp_path, rows(2, r2="y [[emulator:expired]]"), max_attempts=2)
    with clock_running():  # each batch with r2 ends at its expiry, a day on
        applied = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    planned = run_cli(tmp_path, emulator, "plan")
    assert (
        "Failed (not sent again until the item changes, or, once its attempts are used up,"
        " max_attempts is raised):"
    ) in planned.stdout.splitlines(), planned.stdout
    write_project(tmp_path, rows(2, r2="y [[emulator:expired]]"), max_attempts=3)
    raised = run_cli(tmp_path, emulator, "plan", "--json")
    (job,) = json.loads(raised.stdout)["jobs"]
    assert job["counts"]["retry"] == 1 and job["failed"] == [], job
