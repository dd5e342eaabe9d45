"""Batch lifecycle against the emulator's clock: processing, cancel, 24 h expiry, 29-day archive."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator

DAY = 86_400
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def request(custom_id: str, text: str = "Say hello.") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
        },
    }


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def reported_instants(batch: Any) -> list[datetime]:
    fields = (batch.created_at, batch.ended_at, batch.cancel_initiated_at, batch.archived_at)
    return [t for t in fields if t is not None]


def test_clock_jump_expires_unprocessed_requests_then_archives(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, emulator: str
) -> None:
    emulator_admin.set_config(processing_seconds=10 * DAY)
    batch = sdk_client.messages.batches.create(requests=[request(f"r{i}") for i in range(4)])
    emulator_admin.advance_clock(DAY - 60)
    early = sdk_client.messages.batches.retrieve(batch.id)
    assert early.processing_status == "in_progress"
    assert early.created_at == batch.created_at - timedelta(seconds=DAY - 60)

    emulator_admin.advance_clock(120)
    expired = sdk_client.messages.batches.retrieve(batch.id)
    assert expired.processing_status == "ended"
    assert expired.ended_at == expired.expires_at
    assert expired.request_counts.expired == 4 and expired.request_counts.processing == 0
    assert expired.archived_at is None
    now = datetime.now(UTC)
    assert all(t <= now for t in reported_instants(expired))
    assert {r.result.type for r in sdk_client.messages.batches.results(batch.id)} == {"expired"}

    emulator_admin.advance_clock(28 * DAY)
    archived = sdk_client.messages.batches.retrieve(batch.id)
    assert archived.archived_at == archived.created_at + timedelta(days=29)
    assert all(t <= datetime.now(UTC) for t in reported_instants(archived))
    assert archived.results_url is not None
    with pytest.raises(anthropic.NotFoundError):
        list(sdk_client.messages.batches.results(batch.id))
    with httpx2.Client(trust_env=False) as http:
        resp = http.get(archived.results_url, headers=HEADERS)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"
    # An archived batch can still be viewed and deleted.
    assert sdk_client.messages.batches.delete(batch.id).type == "message_batch_deleted"


def test_jump_moves_finished_batch_timestamps_into_the_past(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    before = sdk_client.messages.batches.retrieve(batch.id)
    emulator_admin.advance_clock(3600)
    after = sdk_client.messages.batches.retrieve(batch.id)
    assert after.created_at == before.created_at - timedelta(hours=1)
    assert after.ended_at == before.ended_at - timedelta(hours=1)
    assert after.expires_at == before.expires_at - timedelta(hours=1)


def test_clock_jump_finishes_processing(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(processing_seconds=600)
    batch = sdk_client.messages.batches.create(requests=[request("a"), request("b")])
    assert sdk_client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
    emulator_admin.advance_clock(601)
    done = sdk_client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended" and done.request_counts.succeeded == 2
    assert done.ended_at is not None and done.ended_at <= datetime.now(UTC)


def test_speed_shortens_processing_not_the_calendar(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(processing_seconds=1000, speed=10_000)
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    done = wait_ended(sdk_client, batch.id, timeout=5)
    assert done.processing_status == "ended"
    assert done.expires_at - done.created_at == timedelta(days=1)


def test_processing_setting_applies_to_batches_created_afterwards(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(processing_seconds=3600)
    held = sdk_client.messages.batches.create(requests=[request("a")])
    emulator_admin.set_config(processing_seconds=0)
    quick = sdk_client.messages.batches.create(requests=[request("b")])
    assert sdk_client.messages.batches.retrieve(held.id).processing_status == "in_progress"
    assert sdk_client.messages.batches.retrieve(quick.id).processing_status == "ended"


def test_cancel_keeps_processed_results_and_cancels_the_rest(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(processing_seconds=1000, cancel_seconds=0.2)
    batch = sdk_client.messages.batches.create(requests=[request(f"r{i}") for i in range(10)])
    emulator_admin.advance_clock(505)  # about half of the requests are done
    canceling = sdk_client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.request_counts.processing == 10
    done = wait_ended(sdk_client, batch.id)
    assert done.processing_status == "ended"
    counts = done.request_counts
    assert (counts.succeeded, counts.canceled, counts.processing) == (5, 5, 0)
    types = [r.result.type for r in sdk_client.messages.batches.results(batch.id)]
    assert sorted(types) == ["canceled"] * 5 + ["succeeded"] * 5
    assert done.cancel_initiated_at is not None and done.ended_at is not None
    assert done.cancel_initiated_at <= done.ended_at <= datetime.now(UTC)


def test_admin_refuses_bad_settings(emulator_admin: EmulatorAdmin) -> None:
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.set_config(processing_seconds=-1)
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.set_config(fault_rates={"nonsense": 0.1})
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.advance_clock(-5)
    assert emulator_admin.set_config(seed=7)["seed"] == 7


def test_batches_and_clock_survive_a_restart(tmp_path: Path) -> None:
    config = EmulatorConfig(processing_seconds=0, db_path=tmp_path / "emu.db")
    with running_emulator(config) as url:
        with anthropic.Anthropic(base_url=url, api_key="k") as client:
            batch = client.messages.batches.create(requests=[request("a")])
        EmulatorAdmin(url).advance_clock(3600)
    with running_emulator(config) as url:
        with anthropic.Anthropic(base_url=url, api_key="k") as client:
            again = client.messages.batches.retrieve(batch.id)
            assert again.created_at == batch.created_at - timedelta(hours=1)
            assert again.processing_status == "ended"
            assert [r.custom_id for r in client.messages.batches.results(batch.id)] == ["a"]
        assert EmulatorAdmin(url).stats() == {"batches_created": 1, "submissions": {"a": 1}}
