"""A create whose answer was lost may have made a batch that runs, and is billed: `status` says
so (text and JSON), where it used to say "No batches in flight"."""

from __future__ import annotations

import json
import re

from tests.projects import apply, context, rows, run_cli, write_project


def test_status_names_a_create_with_no_known_outcome(tmp_path, emulator, emulator_admin):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(3))
    emulator_admin.lose_next_create_response()
    report = apply(context(tmp_path, emulator))
    assert report.batches_created == [] and emulator_admin.stats()["batches_created"] == 1
    text = run_cli(tmp_path, emulator, "status")
    assert text.returncode == 0, text.stderr
    assert "No batches in flight" not in text.stdout
    assert re.search(
        r"\nCreate for demo \(3 requests, begun \d{4}-\d\d-\d\d \d\d:\d\d UTC\) has no known "
        r"outcome: a batch it made may be in flight, and billed\. Run `batchops apply` again: it "
        r"finds that batch \(its custom_ids prove it ours\) and sends nothing twice\.\n",
        text.stdout,
    ), text.stdout
    data = json.loads(run_cli(tmp_path, emulator, "status", "--json").stdout)
    [create] = data["unknown_creates"]
    assert (create["job"], create["request_count"]) == ("demo", 3)
    assert create["begun_at"].endswith("Z")
    # once it ends, the batch is found (adopted), harvested, and nothing was sent twice
    emulator_admin.advance_clock(7200)
    assert apply(context(tmp_path, emulator), wait=True).adopted != []
    data = json.loads(run_cli(tmp_path, emulator, "status", "--json").stdout)
    assert data["unknown_creates"] == [] and data["jobs"][0]["succeeded"] == 3
    assert emulator_admin.stats()["batches_created"] == 1
