"""`apply --wait` whose lease is found taken over while it waits (its renewal thread saw the lease
gone): it stops at the top of its next cycle, before it polls or writes anything, with the line
a step would give, instead of going on polling the API with no lease until a write is refused."""

from __future__ import annotations

import pytest

import batchops.apply.run as run_module
from batchops.errors import LockHeld
from batchops.remote import BatchesClient
from tests.projects import apply, context, rows, write_project


def test_a_wait_whose_lease_was_lost_stops_before_its_next_cycle(
    tmp_path, emulator, emulator_admin, monkeypatch
):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator)
    writers = []
    real_sleep = run_module.time.sleep

    def sleep_then_lose_the_lease(seconds: float) -> None:
        (state,) = writers
        state.keeper.lost = True  # as the keeper's beat finds the lease taken over
        real_sleep(0)

    real_cycles = run_module.run_cycles

    def cycles(state, *args, **kwargs):
        writers.append(state)
        return real_cycles(state, *args, **kwargs)

    polled_after: list[str] = []  # batches polled once the lease was lost
    real_retrieve = BatchesClient.retrieve

    def retrieve(self, batch_id):
        if writers and writers[0].lease_lost:
            polled_after.append(batch_id)
        return real_retrieve(self, batch_id)

    monkeypatch.setattr(BatchesClient, "retrieve", retrieve)
    monkeypatch.setattr(run_module.time, "sleep", sleep_then_lose_the_lease)
    monkeypatch.setattr(run_module, "run_cycles", cycles)
    with pytest.raises(LockHeld) as stopped:
        apply(ctx, wait=True, timeout=30)
    assert str(stopped.value) == (
        "the state's lease was taken over while this apply ran (it stalled past the lease's "
        "expiry): stopped before the next step; run apply again"
    )
    assert emulator_admin.stats()["batches_created"] == 1
    assert polled_after == []
