"""Review 11: never pay twice, never lose a result, whatever crashes when (second read).

Each test reproduces one defect: it fails on the code as reviewed and passes once fixed.
"""

from __future__ import annotations

import signal
import time

from tests.projects import rows, write_project
from tests.test_shared_workspace import _lease_rows, _start, _wait_for, apply, ok, state_rows


def test_sigterm_while_a_lost_create_is_looked_for_names_the_batch_it_made(
    tmp_path, emulator, emulator_admin
):
    """DESIGN §6.12: a signal ends apply cleanly, "the batches in flight named". A create whose
    answer was lost made a batch that is running remotely (and will be paid for); the state
    holds it as an open intent. Stopped while apply looks for it, apply must not say that
    nothing is in flight: the user (or the CI log) is told the create may have made a batch."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(3))
    emulator_admin.lose_next_create_response()
    proc = _start(tmp_path, emulator)
    # the create reached the API (its batch is committed); its answer never came back, and
    # apply is looking for the batch remotely before sending again (pauses of 0.5 s and 2 s)
    _wait_for(lambda: emulator_admin.stats()["batches_created"] == 1)
    # its next list call (the search) is slow, so the signal lands while apply looks
    emulator_admin.add_faults([{"kind": "slow", "endpoint": "list", "delay_seconds": 5}])
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, out + err
    assert state_rows(tmp_path, "select count(*) from intents where status = 'open'") == [(1,)]
    assert _lease_rows(tmp_path) == []
    assert "No batches in flight" not in err, err
    # what is in flight is said: the create whose outcome is unknown (its batch, by the count
    # of its requests and its job, as the state knows it)
    assert "in flight" in err and "demo" in err, err
    # and nothing is lost or paid twice: the next apply adopts the batch once it ends
    emulator_admin.advance_clock(7200)
    done = ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    assert emulator_admin.stats()["batches_created"] == 1, done.stdout
    assert set(emulator_admin.stats()["submissions"].values()) == {1}


def test_a_batch_just_made_that_the_list_shows_late_is_not_taken_for_deleted(
    tmp_path, emulator, emulator_admin
):
    """DESIGN §6.4: a batch puts its items back to submit only when "deleted outside batchops
    (confirmed, not a single 404)". A batch batchops itself created moments ago, whose create
    was answered (so it certainly exists), is absent from the list while the list shows it late;
    two 404s in a row from a lagging read then "confirm" it gone (`confirm_gone` trusts an
    absence from a list known to lag, and even an empty list), and every item is paid twice.
    Expected: nothing is sent again; the batch stays in flight and is harvested once it ends."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(3))
    emulator_admin.hide_next_create(lists=5)  # the list shows the new batch late
    ok(apply(tmp_path, emulator))
    [(batch_id,)] = state_rows(tmp_path, "select id from batches")
    emulator_admin.not_found(batch_id, endpoint="retrieve", times=2)
    second = apply(tmp_path, emulator)
    assert emulator_admin.stats()["batches_created"] == 1, second.stdout
    assert set(emulator_admin.stats()["submissions"].values()) == {1}
    assert state_rows(tmp_path, "select id, drift from batches") == [(batch_id, None)]
    emulator_admin.advance_clock(7200)
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60"))
    assert emulator_admin.stats()["batches_created"] == 1
    assert set(emulator_admin.stats()["submissions"].values()) == {1}
    succeeded = "select count(*) from items where outcome = 'succeeded'"
    assert state_rows(tmp_path, succeeded) == [(3,)]
