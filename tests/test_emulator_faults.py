"""Fault injection: result faults by marker and by rate, and one-shot HTTP faults."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import httpx2
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator

DAY = 86_400.0


def request(custom_id: str, text: str = "Say hello.") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
        },
    }


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in client.messages.batches.results(batch_id)}


def no_retry(client: anthropic.Anthropic) -> anthropic.Anthropic:
    return client.with_options(max_retries=0)


# ---------------------------------------------------------------- markers
def test_marker_fails_first_submissions_then_succeeds(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    flaky = request("x", "Summarise this. [[emulator:fail=overloaded_error:times=1]]")
    first = sdk_client.messages.batches.create(requests=[flaky, request("y")])
    got = results(sdk_client, first.id)
    assert got["x"].type == "errored" and got["x"].error.error.type == "overloaded_error"
    assert got["x"].error.type == "error" and got["x"].error.request_id is None
    assert got["y"].type == "succeeded"
    counts = sdk_client.messages.batches.retrieve(first.id).request_counts
    assert (counts.errored, counts.succeeded) == (1, 1)

    second = sdk_client.messages.batches.create(requests=[flaky])
    assert results(sdk_client, second.id)["x"].type == "succeeded"
    assert emulator_admin.stats()["submissions"] == {"x": 2, "y": 1}


@pytest.mark.parametrize("error_type", ["api_error", "timeout_error", "invalid_request_error"])
def test_marker_without_times_is_persistent(
    sdk_client: anthropic.Anthropic, error_type: str
) -> None:
    item = request("x", f"[[emulator:fail={error_type}]] hello")
    for _ in range(2):
        batch = sdk_client.messages.batches.create(requests=[item])
        got = results(sdk_client, batch.id)["x"]
        assert got.type == "errored" and got.error.error.type == error_type


def test_marker_in_system_blocks_counts(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    item = request("x")
    item["params"]["system"] = [{"type": "text", "text": "Be brief. [[emulator:expired]]"}]
    batch = sdk_client.messages.batches.create(requests=[item])
    emulator_admin.advance_clock(DAY)  # an expired request ends its batch at its expiry
    assert results(sdk_client, batch.id)["x"].type == "expired"


@pytest.mark.parametrize("kind", ["expired", "canceled"])
def test_expired_and_canceled_markers(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, kind: str
) -> None:
    batch = sdk_client.messages.batches.create(
        requests=[request("x", f"[[emulator:{kind}:times=1]]"), request("y")]
    )
    ended = sdk_client.messages.batches.retrieve(batch.id)
    if kind == "expired":  # it ends when its day is up, as the API's batch does
        assert (ended.processing_status, ended.cancel_initiated_at) == ("in_progress", None)
        emulator_admin.advance_clock(DAY)
        ended = sdk_client.messages.batches.retrieve(batch.id)
        assert ended.ended_at == ended.expires_at
    else:  # stopped by a cancel (someone else's), made as late as leaves y its answer
        assert ended.cancel_initiated_at is not None
    got = results(sdk_client, batch.id)
    assert got["x"].type == kind and got["y"].type == "succeeded"
    counts = sdk_client.messages.batches.retrieve(batch.id).request_counts
    assert getattr(counts, kind) == 1 and counts.succeeded == 1
    again = sdk_client.messages.batches.create(
        requests=[request("x", f"[[emulator:{kind}:times=1]]")]
    )
    assert results(sdk_client, again.id)["x"].type == "succeeded"


# ---------------------------------------------------------------- rates
def _outcomes(config: EmulatorConfig, n: int) -> dict[str, str]:
    with running_emulator(config) as url, anthropic.Anthropic(base_url=url, api_key="k") as c:
        batch = c.messages.batches.create(requests=[request(f"r{i}") for i in range(n)])
        with EmulatorAdmin(url) as admin:
            admin.advance_clock(DAY)  # a batch with expired requests ends at its expiry
        got = results(c, batch.id)
        counts = c.messages.batches.retrieve(batch.id).request_counts
        assert counts.succeeded + counts.errored + counts.expired + counts.canceled == n
        return {k: v.error.error.type if v.type == "errored" else v.type for k, v in got.items()}


def test_fault_rates_are_seeded_and_reproducible() -> None:
    rates = {"api_error": 0.15, "overloaded_error": 0.15, "expired": 0.1, "canceled": 0.1}
    config = EmulatorConfig(processing_seconds=0, seed=42, fault_rates=rates)
    first = _outcomes(config, 300)
    assert _outcomes(config, 300) == first
    kinds = set(first.values())
    assert kinds == {"succeeded", "api_error", "overloaded_error", "expired", "canceled"}
    assert 90 < sum(v != "succeeded" for v in first.values()) < 210
    other = _outcomes(config.model_copy(update={"seed": 43}), 300)
    assert other != first


def test_rate_faults_depend_on_the_submission_count(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(fault_rates={"api_error": 0.5}, seed=1)
    ids = [f"r{i}" for i in range(40)]
    first = results(
        sdk_client, sdk_client.messages.batches.create(requests=[request(i) for i in ids]).id
    )
    failed = [k for k, v in first.items() if v.type == "errored"]
    assert failed
    retry = sdk_client.messages.batches.create(requests=[request(i) for i in failed])
    second = results(sdk_client, retry.id)
    assert any(v.type == "succeeded" for v in second.values())


# ---------------------------------------------------------------- HTTP faults
@pytest.mark.parametrize(
    "status, exc", [(429, anthropic.RateLimitError), (500, anthropic.InternalServerError),
                    (529, anthropic.OverloadedError)]
)  # fmt: skip
def test_status_fault_is_retried_by_the_sdk(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, status: int, exc: type
) -> None:
    emulator_admin.add_faults([{"status": status, "retry_after_ms": 10, "endpoint": "create"}])
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    assert batch.processing_status == "in_progress"
    assert emulator_admin.stats()["batches_created"] == 1

    emulator_admin.add_faults([{"status": status, "retry_after_ms": 10, "endpoint": "create"}])
    with pytest.raises(exc) as info:
        no_retry(sdk_client).messages.batches.create(requests=[request("b")])
    assert info.value.status_code == status
    assert info.value.response.headers["retry-after-ms"] == "10"
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert emulator_admin.stats()["batches_created"] == 1  # the refused create did nothing


def test_should_retry_false_stops_sdk_retries(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    emulator_admin.add_faults([{"status": 500, "should_retry": False}])
    with pytest.raises(anthropic.InternalServerError) as info:
        sdk_client.messages.batches.retrieve(batch.id)  # one fault only: a retry would succeed
    assert info.value.response.headers["x-should-retry"] == "false"
    assert sdk_client.messages.batches.retrieve(batch.id).id == batch.id


def test_fault_matches_only_its_endpoint(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    pending = emulator_admin.add_faults([{"status": 529, "endpoint": "delete"}])
    assert len(pending) == 1 and pending[0]["endpoint"] == "delete"
    no_retry(sdk_client).messages.batches.retrieve(batch.id)
    no_retry(sdk_client).messages.batches.list()
    with pytest.raises(anthropic.OverloadedError):
        no_retry(sdk_client).messages.batches.delete(batch.id)
    assert no_retry(sdk_client).messages.batches.delete(batch.id).id == batch.id


def test_clear_faults(sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin) -> None:
    emulator_admin.add_faults([{"status": 500}, {"status": 529}])
    emulator_admin.clear_faults()
    assert no_retry(sdk_client).messages.batches.list().data == []


def test_lost_create_response_is_still_committed(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.add_faults([{"kind": "lost_response", "endpoint": "create"}])
    with pytest.raises(anthropic.APIConnectionError):
        no_retry(sdk_client).messages.batches.create(requests=[request("a"), request("b")])
    listed = sdk_client.messages.batches.list().data
    assert (
        len(listed) == 1
        and listed[0].request_counts.processing + listed[0].request_counts.succeeded == 2
    )
    assert emulator_admin.stats() == {"batches_created": 1, "submissions": {"a": 1, "b": 1}}


def test_lost_create_response_with_sdk_retries_makes_a_duplicate(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    # Why batchops creates with max_retries=0: the SDK resends a create without idempotency.
    emulator_admin.add_faults([{"kind": "lost_response", "endpoint": "create"}])
    sdk_client.messages.batches.create(requests=[request("a")])
    assert emulator_admin.stats() == {"batches_created": 2, "submissions": {"a": 2}}


def test_truncated_results_stream_raises_protocol_error(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request(f"r{i}") for i in range(50)])
    emulator_admin.add_faults([{"kind": "truncate", "endpoint": "results", "after_bytes": 3000}])
    seen = []
    # anthropic 2.17 wraps the transport's error in its own (the cause is kept); earlier, bare
    with pytest.raises((httpx2.RemoteProtocolError, anthropic.APIConnectionError)) as raised:
        for line in sdk_client.messages.batches.results(batch.id):
            seen.append(line.custom_id)
    error = raised.value
    assert isinstance(error, httpx2.RemoteProtocolError) or isinstance(
        error.__cause__, httpx2.RemoteProtocolError
    ), repr(error.__cause__)
    assert 0 < len(seen) < 50
    assert len(list(sdk_client.messages.batches.results(batch.id))) == 50


def test_slow_response(sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin) -> None:
    emulator_admin.add_faults([{"kind": "slow", "delay_seconds": 0.5, "endpoint": "list"}])
    start = time.monotonic()
    sdk_client.messages.batches.list()
    assert time.monotonic() - start >= 0.5
    emulator_admin.add_faults([{"kind": "slow", "delay_seconds": 1.0, "endpoint": "list"}])
    with pytest.raises(anthropic.APITimeoutError):
        no_retry(sdk_client).with_options(timeout=0.2).messages.batches.list()


def test_bad_fault_is_refused(emulator_admin: EmulatorAdmin) -> None:
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.add_faults([{"kind": "explode"}])
    with pytest.raises(httpx2.HTTPStatusError):
        emulator_admin.add_faults([{"status": 500, "endpoint": "nowhere"}])


@pytest.mark.parametrize("kind, expected", [("duplicate_line", 11), ("drop_line", 9)])
def test_result_file_with_a_duplicated_or_missing_line(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, kind: str, expected: int
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request(f"r{i}") for i in range(10)])
    emulator_admin.add_faults([{"kind": kind, "endpoint": "results"}])
    spoiled = [line.custom_id for line in sdk_client.messages.batches.results(batch.id)]
    assert len(spoiled) == expected
    assert len(set(spoiled)) == (10 if kind == "duplicate_line" else 9)
    assert len(list(sdk_client.messages.batches.results(batch.id))) == 10
