"""A shared workspace: a teammate's batches, a list that lags, lost and refused creates, one-shot
404s, a skewed clock, and list pagination faithful enough to anchor on a batch id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator


def request(custom_id: str, text: str = "Say hello.") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
        },
    }


def listed(client: anthropic.Anthropic, **query: Any) -> list[str]:
    return [b.id for b in client.messages.batches.list(**query)]


def no_retry(client: anthropic.Anthropic) -> anthropic.Anthropic:
    return client.with_options(max_retries=0)


# ---------------------------------------------------------------- teammate
def test_teammate_batch_is_in_the_workspace_but_not_our_submissions(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    ours = sdk_client.messages.batches.create(requests=[request("a")])
    theirs = emulator_admin.teammate_create([request("a"), request("b")])
    assert theirs["processing_status"] == "in_progress" and theirs["id"].startswith("msgbatch_")
    assert listed(sdk_client) == [theirs["id"], ours.id]
    got = {r.custom_id: r.result.type for r in sdk_client.messages.batches.results(theirs["id"])}
    assert got == {"a": "succeeded", "b": "succeeded"}
    assert emulator_admin.stats() == {"batches_created": 2, "submissions": {"a": 1}}


def test_teammate_create_checks_the_envelope(emulator_admin: EmulatorAdmin) -> None:
    with pytest.raises(httpx2.HTTPStatusError) as info:
        emulator_admin.teammate_create([request("a"), request("a")])
    assert info.value.response.status_code == 400
    assert emulator_admin.stats()["batches_created"] == 0


# ---------------------------------------------------------------- a list that lags
def test_hidden_create_lists_only_after_emulator_time_passes(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    before = sdk_client.messages.batches.create(requests=[request("a")])
    emulator_admin.hide_next_create(seconds=60)
    late = sdk_client.messages.batches.create(requests=[request("b")])
    assert sdk_client.messages.batches.retrieve(late.id).id == late.id  # committed
    assert listed(sdk_client) == [before.id]
    assert listed(sdk_client, before_id=before.id) == []
    emulator_admin.advance_clock(61)
    assert listed(sdk_client) == [late.id, before.id]
    assert listed(sdk_client, before_id=before.id) == [late.id]


def test_hidden_create_lists_after_n_list_calls(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.hide_next_create(lists=2)
    late = sdk_client.messages.batches.create(requests=[request("b")])
    assert listed(sdk_client) == []
    assert listed(sdk_client) == []
    assert listed(sdk_client) == [late.id]


def test_hidden_teammate_batch(sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin):
    theirs = emulator_admin.teammate_create([request("x")], hidden_lists=1)
    assert listed(sdk_client) == []
    assert listed(sdk_client) == [theirs["id"]]


def test_a_hidden_fault_needs_one_delay(emulator_admin: EmulatorAdmin) -> None:
    for fault in (
        {"kind": "hidden", "endpoint": "create"},
        {"kind": "hidden", "endpoint": "create", "hidden_seconds": 1, "hidden_lists": 1},
        {"kind": "hidden", "endpoint": "list", "hidden_seconds": 1},
    ):
        with pytest.raises(httpx2.HTTPStatusError):
            emulator_admin.add_faults([fault])


# ---------------------------------------------------------------- refused vs lost creates
def test_refused_create_makes_no_batch_and_lost_one_does(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.refuse_next_create(529, retry_after_ms=5)
    with pytest.raises(anthropic.OverloadedError):
        no_retry(sdk_client).messages.batches.create(requests=[request("a")])
    assert listed(sdk_client) == [] and emulator_admin.stats()["batches_created"] == 0

    emulator_admin.lose_next_create_response()
    with pytest.raises(anthropic.APIConnectionError):
        no_retry(sdk_client).messages.batches.create(requests=[request("a")])
    assert len(listed(sdk_client)) == 1
    assert emulator_admin.stats() == {"batches_created": 1, "submissions": {"a": 1}}


# ---------------------------------------------------------------- one-shot 404s
def test_retrieve_404s_n_times_for_one_batch_only(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    target = sdk_client.messages.batches.create(requests=[request("a")])
    other = sdk_client.messages.batches.create(requests=[request("b")])
    emulator_admin.not_found(target.id, times=2)
    assert sdk_client.messages.batches.retrieve(other.id).id == other.id
    for _ in range(2):
        with pytest.raises(anthropic.NotFoundError) as info:
            sdk_client.messages.batches.retrieve(target.id)
        assert info.value.body["error"] == {
            "type": "not_found_error",
            "message": "The requested resource could not be found.",
        }
    assert sdk_client.messages.batches.retrieve(target.id).id == target.id
    assert emulator_admin.add_faults([]) == []  # used up


def test_results_download_404s_once(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    emulator_admin.not_found(batch.id, endpoint="results")
    assert sdk_client.messages.batches.retrieve(batch.id).processing_status == "ended"
    with pytest.raises(anthropic.NotFoundError):
        list(sdk_client.messages.batches.results(batch.id))  # retrieve passes, download 404s
    assert [r.custom_id for r in sdk_client.messages.batches.results(batch.id)] == ["a"]


# ---------------------------------------------------------------- skewed clock
@pytest.mark.parametrize("skew", [3600, -3600])
def test_clock_skew_shifts_every_reported_timestamp(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, skew: int
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    plain = sdk_client.messages.batches.retrieve(batch.id)
    assert emulator_admin.set_clock_skew(skew) == {"offset_seconds": 0.0, "skew_seconds": skew}
    skewed = sdk_client.messages.batches.retrieve(batch.id)
    assert (skewed.created_at - plain.created_at).total_seconds() == skew
    assert (skewed.ended_at - plain.ended_at).total_seconds() == skew
    assert (skewed.expires_at - plain.expires_at).total_seconds() == skew
    fresh = sdk_client.messages.batches.create(requests=[request("b")])
    drift = (fresh.created_at - datetime.now(UTC)).total_seconds()
    assert abs(drift - skew) < 5
    assert skewed.processing_status == "ended"  # lifecycle timing is unchanged
    emulator_admin.set_clock_skew(0)
    assert sdk_client.messages.batches.retrieve(batch.id).created_at == plain.created_at


def test_clock_skew_must_be_a_number(emulator_admin: EmulatorAdmin) -> None:
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.set_clock_skew("soon")  # type: ignore[arg-type]
    assert emulator_admin.clock() == {"offset_seconds": 0.0, "skew_seconds": 0.0}


# ---------------------------------------------------------------- pagination as an anchor
def test_batches_created_after_an_anchor_page_newest_first(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    old = [sdk_client.messages.batches.create(requests=[request("a")]).id for _ in range(3)]
    anchor = listed(sdk_client, limit=1)[0]
    assert anchor == old[-1]
    new = [sdk_client.messages.batches.create(requests=[request("a")]).id for _ in range(5)]
    new.append(emulator_admin.teammate_create([request("t")])["id"])
    page = sdk_client.messages.batches.list(before_id=anchor, limit=2)
    assert [b.id for b in page.data] == [new[1], new[0]]  # the oldest two after the anchor
    assert page.has_more is True and page.first_id == new[1] and page.last_id == new[0]
    assert listed(sdk_client, before_id=anchor, limit=2) == [
        new[1], new[0], new[3], new[2], new[5], new[4]
    ]  # fmt: skip
    assert listed(sdk_client, before_id=new[-1]) == []
    everything = sdk_client.messages.batches.list(limit=1000)
    assert [b.id for b in everything.data] == (old + new)[::-1] and everything.has_more is False
    after = sdk_client.messages.batches.list(after_id=new[0], limit=2)
    assert [b.id for b in after.data] == [old[2], old[1]] and after.has_more is True
    # A deleted anchor still works as a cursor.
    sdk_client.messages.batches.delete(anchor)
    assert listed(sdk_client, before_id=anchor) == new[::-1]


# ---------------------------------------------------------------- faults off
def test_faults_none_turns_every_fault_off() -> None:
    config = EmulatorConfig(processing_seconds=0, faults_enabled=False)
    with running_emulator(config) as url, EmulatorAdmin(url) as admin:
        with anthropic.Anthropic(base_url=url, api_key="k") as client:
            batch = client.messages.batches.create(
                requests=[request("x", "[[emulator:fail=api_error]] hi")]
            )
            (line,) = list(client.messages.batches.results(batch.id))
            assert line.result.type == "succeeded"  # the marker is plain text
        for call in (
            lambda: admin.add_faults([{"status": 500}]),
            lambda: admin.set_config(fault_rates={"api_error": 0.5}),
            lambda: admin.set_clock_skew(10),
            lambda: admin.teammate_create([request("t")], hidden_lists=1),
        ):
            with pytest.raises(httpx2.HTTPStatusError) as info:
                call()
            assert "faults are off" in info.value.response.json()["error"]["message"]
        assert admin.advance_clock(10) == 10  # moving the clock is not a fault
        assert admin.teammate_create([request("t")])["processing_status"] == "in_progress"


def test_faults_none_refuses_rates_at_start() -> None:
    with pytest.raises(ValueError, match="faults are off"):
        EmulatorConfig(faults_enabled=False, fault_rates={"api_error": 0.1})
