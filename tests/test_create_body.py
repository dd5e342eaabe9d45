"""A batch create streams its body: the same JSON the SDK would send, a slice at a time, with its
length known up front (so a 200 MB batch is never held twice in memory)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from batchops.remote import BatchesClient
from batchops.remote.client import CreateBody

BATCH = {
    "id": "msgbatch_01",
    "type": "message_batch",
    "processing_status": "in_progress",
    "request_counts": {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
    "ended_at": None,
    "created_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-02T00:00:00Z",
    "archived_at": None,
    "cancel_initiated_at": None,
    "results_url": None,
}


def requests(n: int) -> list[dict]:
    return [
        {
            "custom_id": f"job-r{i}-abc",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 8,
                "temperature": 1e-05,  # written differently by orjson and json, equal as JSON
                "messages": [{"role": "user", "content": f"Say {i} ✓"}],
            },
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, 499, 500, 501, 1234])
def test_the_body_is_the_request_list_as_json_and_its_length_is_exact(n):
    body = CreateBody(requests(n))
    data = b"".join(body)
    assert len(body) == len(data)
    assert json.loads(data) == {"requests": requests(n)}


@pytest.fixture
def capture():
    """A loopback server answering every create with a batch, keeping what it was sent."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers["content-length"])
            seen.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": self.rfile.read(length),
                }
            )
            data = json.dumps(BATCH).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("betas", [(), ("message-batches-2024-09-24", "other-beta")])
def test_a_create_sends_the_requests_with_their_length_and_betas(capture, betas):
    url, seen = capture
    client = BatchesClient(url, "test-key")
    try:
        batch = client.create(requests(3), betas)
    finally:
        client.close()
    assert batch.id == "msgbatch_01"
    (sent,) = seen
    assert sent["path"] == "/v1/messages/batches"
    assert json.loads(sent["body"]) == {"requests": requests(3)}
    assert sent["headers"]["content-length"] == str(len(sent["body"]))
    assert "transfer-encoding" not in sent["headers"]
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"].get("anthropic-beta") == (",".join(betas) if betas else None)
    # the same headers as the SDK's own create sends (authentication, version, user agent …)
    import anthropic

    with anthropic.Anthropic(base_url=url, api_key="test-key", max_retries=0) as sdk:
        if betas:
            sdk.beta.messages.batches.create(requests=requests(3), betas=list(betas))
        else:
            sdk.messages.batches.create(requests=requests(3))
    own = seen[1]
    assert json.loads(own["body"]) == json.loads(sent["body"])
    varying = {"content-length", "x-stainless-retry-count", "x-stainless-read-timeout",
               "x-stainless-timeout"}  # fmt: skip
    assert {k: v for k, v in sent["headers"].items() if k not in varying} == {
        k: v for k, v in own["headers"].items() if k not in varying
    }
