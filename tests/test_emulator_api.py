"""The emulator's endpoints, objects and errors, as the real `anthropic` SDK sees them."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
BATCH_ID = re.compile(r"^msgbatch_01[1-9A-HJ-NP-Za-km-z]{22}$")
REQUEST_ID = re.compile(r"^req_01[1-9A-HJ-NP-Za-km-z]{22}$")
BATCH_KEYS = {
    "id", "type", "processing_status", "request_counts", "created_at", "expires_at",
    "ended_at", "cancel_initiated_at", "archived_at", "results_url",
}  # fmt: skip
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def request(custom_id: str, text: str = "Say hello.", **params: Any) -> dict[str, Any]:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
    body.update(params)
    return {"custom_id": custom_id, "params": body}


def raw(base_url: str) -> httpx2.Client:
    return httpx2.Client(base_url=base_url, trust_env=False, timeout=30)


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended" or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


# ---------------------------------------------------------------- create / retrieve
def test_create_returns_in_progress_batch_with_every_key(emulator: str) -> None:
    with raw(emulator) as http:
        resp = http.post(
            "/v1/messages/batches", headers=HEADERS, json={"requests": [request("a"), request("b")]}
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert REQUEST_ID.match(resp.headers["request-id"])
    body = resp.json()
    assert set(body) == BATCH_KEYS
    assert BATCH_ID.match(body["id"])
    assert body["type"] == "message_batch"
    assert body["processing_status"] == "in_progress"
    assert body["request_counts"] == {
        "processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0
    }  # fmt: skip
    assert body["ended_at"] is None and body["cancel_initiated_at"] is None
    assert body["archived_at"] is None and body["results_url"] is None
    assert TIMESTAMP.match(body["created_at"]) and TIMESTAMP.match(body["expires_at"])
    created = datetime.fromisoformat(body["created_at"])
    expires = datetime.fromisoformat(body["expires_at"])
    assert (expires - created).total_seconds() == 86_400
    assert abs((datetime.now(UTC) - created).total_seconds()) < 5


def test_retrieve_after_processing_reports_final_counts_and_results_url(
    sdk_client: anthropic.Anthropic, emulator: str
) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a"), request("b")])
    assert REQUEST_ID.match(batch._request_id or "")
    done = sdk_client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended"
    assert done.request_counts.succeeded == 2 and done.request_counts.processing == 0
    assert done.results_url == f"{emulator}/v1/messages/batches/{batch.id}/results"
    assert done.ended_at is not None and done.created_at <= done.ended_at
    assert done.ended_at <= datetime.now(UTC)


def test_results_url_follows_the_host_the_client_used(emulator: str) -> None:
    port = emulator.rsplit(":", 1)[1]
    with anthropic.Anthropic(base_url=f"http://localhost:{port}", api_key="k") as client:
        batch = client.messages.batches.create(requests=[request("a")])
        done = client.messages.batches.retrieve(batch.id)
    assert done.results_url == f"http://localhost:{port}/v1/messages/batches/{batch.id}/results"


def test_processing_holds_batch_in_progress_until_time_passes(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    emulator_admin.set_config(processing_seconds=0.4)
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    mid = sdk_client.messages.batches.retrieve(batch.id)
    assert mid.processing_status == "in_progress"
    assert mid.request_counts.processing == 1 and mid.results_url is None
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        sdk_client.messages.batches.results(batch.id)
    assert wait_ended(sdk_client, batch.id).processing_status == "ended"


# ---------------------------------------------------------------- create envelope
@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "requests"),
        ({"requests": []}, "at least 1"),
        ({"requests": [request("bad id")]}, "custom_id"),
        ({"requests": [request("x" * 65)]}, "custom_id"),
        ({"requests": [request("")]}, "custom_id"),
        ({"requests": [request("a"), request("b"), request("a")]}, "Duplicate"),
        ({"requests": [{"custom_id": "a"}]}, "params"),
    ],
)
def test_create_refuses_a_bad_envelope(
    emulator: str, emulator_admin: EmulatorAdmin, body: dict, fragment: str
) -> None:
    with raw(emulator) as http:
        resp = http.post("/v1/messages/batches", headers=HEADERS, json=body)
    assert resp.status_code == 400
    err = resp.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert fragment in err["error"]["message"]
    assert err["request_id"] == resp.headers["request-id"]
    assert emulator_admin.stats() == {"batches_created": 0, "submissions": {}}


def test_duplicate_custom_id_refuses_whole_create_through_sdk(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk_client.messages.batches.create(requests=[request("a"), request("a")])
    assert info.value.status_code == 400
    assert emulator_admin.stats()["batches_created"] == 0


def test_create_accepts_100000_and_refuses_100001_requests(emulator: str) -> None:
    item = {"custom_id": "x", "params": {}}
    too_many = [{**item, "custom_id": f"r{i}"} for i in range(100_001)]
    with raw(emulator) as http:
        resp = http.post(
            "/v1/messages/batches", headers=HEADERS, content=orjson.dumps({"requests": too_many})
        )
        assert resp.status_code == 400
        assert "at most 100000" in resp.json()["error"]["message"]


def test_body_over_the_cap_gets_cloudflare_413() -> None:
    with running_emulator(EmulatorConfig(max_body_bytes=2_000)) as url:
        with raw(url) as http:
            body = {"requests": [request(f"r{i}", "x" * 100) for i in range(30)]}
            resp = http.post("/v1/messages/batches", headers=HEADERS, json=body)
            assert resp.status_code == 413
            assert resp.json() == {
                "error": {
                    "type": "request_too_large",
                    "message": "Request exceeds the maximum size",
                }
            }
            assert REQUEST_ID.match(resp.headers["request-id"])
        with anthropic.Anthropic(base_url=url, api_key="k", max_retries=0) as client:
            with pytest.raises(anthropic.APIStatusError) as info:
                client.messages.batches.create(requests=body["requests"])
            assert info.value.status_code == 413
            assert EmulatorAdmin(url).stats()["batches_created"] == 0


def test_bad_params_are_accepted_at_create_and_error_later(
    sdk_client: anthropic.Anthropic,
) -> None:
    good = request("good")
    bad = {
        "no_model": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        "no_max_tokens": {
            "model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": "hi"}],
        },
        "no_messages": {"model": "claude-haiku-4-5", "max_tokens": 5},
        "zero_tokens": {
            "model": "claude-haiku-4-5",
            "max_tokens": 0,
            "messages": [{"role": "user", "content": "x"}],
        },
        "streaming": {**good["params"], "stream": True},
        "speed": {**good["params"], "speed": "fast"},
    }
    reqs = [good] + [{"custom_id": k, "params": v} for k, v in bad.items()]
    batch = sdk_client.messages.batches.create(requests=reqs)
    assert batch.processing_status == "in_progress"
    done = sdk_client.messages.batches.retrieve(batch.id)
    assert done.request_counts.errored == len(bad) and done.request_counts.succeeded == 1
    results = {r.custom_id: r.result for r in sdk_client.messages.batches.results(batch.id)}
    assert results["good"].type == "succeeded"
    for key in bad:
        assert results[key].type == "errored"
        assert results[key].error.type == "error"
        assert results[key].error.error.type == "invalid_request_error"
    assert "max_tokens" in results["zero_tokens"].error.error.message


# ---------------------------------------------------------------- auth and headers
def test_both_auth_header_forms_are_accepted(emulator: str) -> None:
    with raw(emulator) as http:
        a = http.get("/v1/messages/batches", headers=HEADERS)
        b = http.get(
            "/v1/messages/batches",
            headers={"authorization": "Bearer k", "anthropic-version": "2026-10-21"},
        )
    assert a.status_code == b.status_code == 200


def test_missing_key_is_401_envelope(emulator: str) -> None:
    with raw(emulator) as http:
        resp = http.get("/v1/messages/batches", headers={"anthropic-version": "2023-06-01"})
    assert resp.status_code == 401
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert body["request_id"] == resp.headers["request-id"]


def test_wrong_key_is_401_when_a_key_is_configured() -> None:
    with running_emulator(EmulatorConfig(api_key="right")) as url:
        with anthropic.Anthropic(base_url=url, api_key="wrong") as client:
            with pytest.raises(anthropic.AuthenticationError):
                client.messages.batches.list()
        with anthropic.Anthropic(base_url=url, api_key="right") as client:
            assert client.messages.batches.list().data == []


def test_missing_anthropic_version_is_400(emulator: str) -> None:
    with raw(emulator) as http:
        resp = http.get("/v1/messages/batches", headers={"x-api-key": "k"})
    assert resp.status_code == 400
    assert resp.json()["error"] == {
        "type": "invalid_request_error", "message": "anthropic-version: header is required"
    }  # fmt: skip


def test_every_response_has_a_request_id(emulator: str) -> None:
    with raw(emulator) as http:
        for resp in (
            http.get("/nowhere"),
            http.get("/v1/messages/batches/msgbatch_01nope", headers=HEADERS),
            http.put("/v1/messages/batches", headers=HEADERS),
            http.get("/_emulator/stats"),
            http.post("/_emulator/clock", json={"advance_seconds": 0}),
        ):
            assert REQUEST_ID.match(resp.headers["request-id"]), resp.request.url
        unknown = http.get("/nowhere")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert unknown.json()["request_id"] == unknown.headers["request-id"]


def test_unknown_batch_is_404_not_found(sdk_client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk_client.messages.batches.retrieve("msgbatch_01AAAAAAAAAAAAAAAAAAAAAA")
    assert info.value.request_id and info.value.request_id.startswith("req_")
    assert info.value.body["error"]["type"] == "not_found_error"


# ---------------------------------------------------------------- list
def _make(client: anthropic.Anthropic, n: int) -> list[str]:
    return [client.messages.batches.create(requests=[request("a")]).id for _ in range(n)]


def test_list_is_newest_first_with_full_envelope(
    sdk_client: anthropic.Anthropic, emulator: str
) -> None:
    with raw(emulator) as http:
        empty = http.get("/v1/messages/batches", headers=HEADERS).json()
    assert empty == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    ids = _make(sdk_client, 5)
    page = sdk_client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == [ids[4], ids[3]]
    assert page.has_more is True and page.first_id == ids[4] and page.last_id == ids[3]
    assert [b.id for b in sdk_client.messages.batches.list(limit=2)] == ids[::-1]
    assert [b.id for b in sdk_client.messages.batches.list()] == ids[::-1]
    last = sdk_client.messages.batches.list(limit=2, after_id=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False


def test_list_before_id_pages_toward_newer_batches(sdk_client: anthropic.Anthropic) -> None:
    ids = _make(sdk_client, 6)
    first = sdk_client.messages.batches.list(limit=2, before_id=ids[0])
    assert [b.id for b in first.data] == [ids[2], ids[1]] and first.has_more is True
    pages = list(sdk_client.messages.batches.list(limit=2, before_id=ids[0]).iter_pages())
    assert [[b.id for b in p.data] for p in pages] == [[ids[2], ids[1]], [ids[4], ids[3]], [ids[5]]]
    assert pages[-1].has_more is False


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "after_id=msgbatch_01zz"])
def test_list_refuses_bad_queries(emulator: str, query: str) -> None:
    with raw(emulator) as http:
        resp = http.get(f"/v1/messages/batches?{query}", headers=HEADERS)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_list_accepts_limit_1000(emulator: str) -> None:
    with raw(emulator) as http:
        assert http.get("/v1/messages/batches?limit=1000", headers=HEADERS).status_code == 200


# ---------------------------------------------------------------- cancel and delete
def test_cancel_in_progress_then_ended(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, emulator: str
) -> None:
    emulator_admin.set_config(processing_seconds=3600, cancel_seconds=0.3)
    batch = sdk_client.messages.batches.create(requests=[request("a"), request("b")])
    with raw(emulator) as http:  # the SDK's cancel: empty body, JSON content type
        resp = http.post(
            f"/v1/messages/batches/{batch.id}/cancel",
            headers={**HEADERS, "content-type": "application/json"},
        )
    assert resp.status_code == 200
    canceling = resp.json()
    assert canceling["processing_status"] == "canceling"
    assert TIMESTAMP.match(canceling["cancel_initiated_at"])
    assert canceling["request_counts"]["processing"] == 2
    again = sdk_client.messages.batches.cancel(batch.id)
    assert again.processing_status == "canceling"
    assert again.cancel_initiated_at == datetime.fromisoformat(canceling["cancel_initiated_at"])
    done = wait_ended(sdk_client, batch.id)
    assert done.processing_status == "ended"
    assert done.request_counts.canceled == 2 and done.request_counts.processing == 0
    results = list(sdk_client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == ["a", "b"]
    assert {r.result.type for r in results} == {"canceled"}
    with pytest.raises(anthropic.BadRequestError):
        sdk_client.messages.batches.cancel(batch.id)


def test_delete_only_once_ended_then_everything_404s(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin, emulator: str
) -> None:
    emulator_admin.set_config(processing_seconds=3600)
    batch = sdk_client.messages.batches.create(requests=[request("a")])
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk_client.messages.batches.delete(batch.id)
    assert info.value.status_code == 400  # never 409, which the SDK would retry
    sdk_client.messages.batches.cancel(batch.id)
    wait_ended(sdk_client, batch.id)
    deleted = sdk_client.messages.batches.delete(batch.id)
    assert deleted.id == batch.id and deleted.type == "message_batch_deleted"
    for call in (
        sdk_client.messages.batches.retrieve,
        sdk_client.messages.batches.cancel,
        sdk_client.messages.batches.delete,
        sdk_client.messages.batches.results,
    ):
        with pytest.raises(anthropic.NotFoundError):
            call(batch.id)
    with raw(emulator) as http:
        resp = http.get(f"/v1/messages/batches/{batch.id}/results", headers=HEADERS)
    assert resp.status_code == 404
    assert sdk_client.messages.batches.list().data == []


# ---------------------------------------------------------------- results
def test_results_are_lf_jsonl_shuffled_and_complete(
    sdk_client: anthropic.Anthropic,
) -> None:
    ids = [f"item-{i:03d}" for i in range(60)]
    batch = sdk_client.messages.batches.create(requests=[request(i, f"Text {i}") for i in ids])
    with sdk_client.messages.batches.with_streaming_response.results(batch.id) as resp:
        assert resp.headers["content-type"] == "application/x-jsonl"
        assert REQUEST_ID.match(resp.headers["request-id"])
        assert resp.http_request.headers["accept"] == "application/binary"
        data = resp.read()
    assert b"\r" not in data
    lines = data.decode().split("\n")
    assert lines[-1] == ""  # a final newline, and no blank line anywhere else
    lines = lines[:-1]
    assert all(lines)
    got = [orjson.loads(line)["custom_id"] for line in lines]
    assert sorted(got) == ids and got != ids
    parsed = list(sdk_client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in parsed) == ids


def test_succeeded_result_is_a_full_message(sdk_client: anthropic.Anthropic) -> None:
    batch = sdk_client.messages.batches.create(requests=[request("a", "Write a haiku.")])
    (line,) = list(sdk_client.messages.batches.results(batch.id))
    assert line.result.type == "succeeded"
    msg = line.result.message
    assert msg.id.startswith("msg_01") and len(msg.id) == len("msg_01") + 22
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "claude-haiku-4-5"
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.service_tier == "batch"
    assert msg.usage.input_tokens > 0 and 0 < msg.usage.output_tokens <= 64
    assert msg.usage.cache_creation_input_tokens == 0 and msg.usage.cache_read_input_tokens == 0
