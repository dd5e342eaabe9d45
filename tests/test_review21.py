"""Review 21 (second reader): the emulator compared with shared/ANTHROPIC_BATCHES_API.md. Three
places where it answers what the real API (or the document's ASSUME contract for the emulator)
never would: no limit on requests waiting in the processing queue, an injected 413 in the API's
error-envelope shape instead of Cloudflare's, and `expired` / `canceled` results in a batch that
never reached `expires_at` or had no cancel requested. Each test fails on the code as reviewed."""

from __future__ import annotations

import anthropic
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig

PARAMS = {
    "model": "claude-haiku-4-5",
    "max_tokens": 1,
    "messages": [{"role": "user", "content": "x"}],
}
HEADERS = {
    "x-api-key": "test-dummy-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
HIGHEST_QUEUE_LIMIT = 500_000  # the Scale tier's limit, the highest in both copies of DOC-rl
MAX_REQUESTS = 100_000


def test_requests_past_the_processing_queue_limit_are_refused_at_create(
    emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """ANTHROPIC_BATCHES_API.md §5: "Batch requests in the processing queue | 200,000 / 300,000 /
    500,000 for the same tiers; older copy: 100k / 200k / 300k / 500k. A request counts 'when it
    has yet to be successfully processed'. | `ASSUME` 429 `rate_limit_error` at create", and §9
    lists "the response to exceeding the queue limit" among the ASSUME choices the emulator
    follows. Five in-progress batches of 100,000 requests fill even the highest tier's queue;
    the real API refuses one more request. The emulator has no queue limit at all
    (app.py:create / store.py:Store.create): the create succeeds with 500,001 requests queued,
    so a batchops run that queues more than its tier allows passes here and meets 429s live."""
    emulator_admin.set_config(processing_seconds=3600)  # nothing finishes during the test
    assert EmulatorConfig().max_queued_requests == HIGHEST_QUEUE_LIMIT
    # the same rule at a size a test affords: a queue of 5, filled by two batches
    emulator_admin.set_config(max_queued_requests=5)
    with anthropic.Anthropic(base_url=emulator, api_key="test-dummy-key", max_retries=0) as sdk:
        for n in (3, 2):
            sdk.messages.batches.create(
                requests=[{"custom_id": f"b{n}_{i}", "params": PARAMS} for i in range(n)]
            )
        with pytest.raises(anthropic.RateLimitError) as info:
            sdk.messages.batches.create(requests=[{"custom_id": "one_more", "params": PARAMS}])
        assert info.value.response.json()["error"] == {
            "type": "rate_limit_error",
            "message": "Number of batch requests in the processing queue would exceed the"
            " limit of 5",
        }
        emulator_admin.advance_clock(3601)  # they end: the queue is empty again
        sdk.messages.batches.create(requests=[{"custom_id": "after", "params": PARAMS}])


def test_an_injected_413_has_the_cloudflare_body_the_api_sends(
    emulator: str, emulator_admin: EmulatorAdmin
) -> None:
    """ANTHROPIC_BATCHES_API.md §5: 413 `request_too_large`, "On the direct Claude API,
    Cloudflare returns this error before the request reaches the API servers". Observed body:
    `{"error":{"type":"request_too_large","message":"Request exceeds the maximum size"}}`, with
    **no top-level `type` and no `request_id`**; §9 asks for "a 413 body in the Cloudflare
    shape" among the fault switches. The emulator's `status` fault with status 413
    (app.py:RequestIdAndFaults._status) answers the API's envelope instead, with `"type":
    "error"` and a `request_id`, a 413 the real API never sends: error handling proven on it
    (reading the top-level type or the request id) is not proven for the real one."""
    emulator_admin.add_faults([{"kind": "status", "status": 413, "endpoint": "create"}])
    with anthropic.Anthropic(base_url=emulator, api_key="test-dummy-key", max_retries=0) as sdk:
        with pytest.raises(anthropic.APIStatusError) as info:
            sdk.messages.batches.create(requests=[{"custom_id": "a", "params": PARAMS}])
    assert info.value.status_code == 413
    body = info.value.response.json()
    assert body["error"]["type"] == "request_too_large"
    assert "type" not in body, body
    assert "request_id" not in body, body


@pytest.mark.parametrize("outcome", ["expired", "canceled"])
def test_expired_and_canceled_results_only_come_from_expiry_and_cancel(
    outcome: str, sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    """ANTHROPIC_BATCHES_API.md §3 Transitions: "`in_progress` → `ended`: every request
    finished, or `expires_at` was reached. Requests that were never sent become `expired`." and
    "`in_progress` → `canceling` → `ended`: requests that had not yet been sent become
    `canceled`"; `cancel_initiated_at` is "Set only if a cancel was requested"; §5 "Processing
    window | 24 h, then remaining requests become `expired`". So a batch with an expired request
    ended at `expires_at`, and one with a canceled request has `cancel_initiated_at`. The
    emulator's rate faults (store.py:Store._plan, faults.py:rate_outcome; the README's demo
    mode sets `expired` to 0.03) give a batch that ended at once, 24 h before `expires_at`,
    `expired` results, and an uncancelled batch (`cancel_initiated_at` null) `canceled` ones:
    states the real API never shows, which batchops' handling of expiry and of cancels made
    outside batchops (refresh.py keys that on `cancel_initiated_at`) is then tested against."""
    emulator_admin.set_config(fault_rates={outcome: 1.0})
    created = sdk_client.messages.batches.create(requests=[{"custom_id": "a", "params": PARAMS}])
    if outcome == "expired":  # it runs until its requests expire, a day after it was made
        emulator_admin.advance_clock(23 * 3600)
        running = sdk_client.messages.batches.retrieve(created.id)
        assert (running.processing_status, running.ended_at) == ("in_progress", None)
        emulator_admin.advance_clock(3600)
    batch = sdk_client.messages.batches.retrieve(created.id)
    assert batch.processing_status == "ended"
    assert getattr(batch.request_counts, outcome) == 1  # the fault took effect
    if outcome == "expired":
        assert batch.ended_at == batch.expires_at, (batch.ended_at, batch.expires_at)
    else:
        assert batch.cancel_initiated_at is not None
