"""Admin calls sit behind the API's key check, and no request body is read without a bound."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator
from batchops.emulator.app import ADMIN_MAX_BODY_BYTES

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
MB = 1_000_000


@pytest.fixture
def keyed() -> Iterator[str]:
    with running_emulator(EmulatorConfig(processing_seconds=0, api_key="secret")) as url:
        yield url


ADMIN_CALLS = [
    ("GET", "/_emulator/config", None),
    ("POST", "/_emulator/config", {"seed": 3}),
    ("GET", "/_emulator/clock", None),
    ("POST", "/_emulator/clock", {"advance_seconds": 10}),
    ("GET", "/_emulator/faults", None),
    ("POST", "/_emulator/faults", [{"status": 500}]),
    ("DELETE", "/_emulator/faults", None),
    ("GET", "/_emulator/stats", None),
]


@pytest.mark.parametrize("method, path, body", ADMIN_CALLS)
def test_admin_calls_need_the_key_when_one_is_set(keyed: str, method, path, body) -> None:
    with httpx2.Client(base_url=keyed, trust_env=False) as http:
        for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
            resp = http.request(method, path, json=body, headers=headers)
            assert resp.status_code == 401, headers
            assert resp.json()["error"]["type"] == "authentication_error"
        for headers in ({"x-api-key": "secret"}, {"authorization": "Bearer secret"}):
            assert http.request(method, path, json=body, headers=headers).status_code == 200
    with httpx2.Client(base_url=keyed, trust_env=False) as http:
        assert http.get("/_emulator/clock").json().get("offset_seconds") is None  # refused


def test_admin_helper_sends_the_key(keyed: str) -> None:
    with EmulatorAdmin(keyed, api_key="secret") as admin:
        assert admin.stats()["batches_created"] == 0
        assert admin.advance_clock(5) == 5
    with EmulatorAdmin(keyed) as admin, pytest.raises(httpx2.HTTPStatusError) as info:
        admin.stats()
    assert info.value.response.status_code == 401


def test_admin_calls_need_no_key_when_none_is_set(emulator: str) -> None:
    with httpx2.Client(base_url=emulator, trust_env=False) as http:
        assert http.get("/_emulator/stats").status_code == 200


def test_admin_body_over_the_limit_is_413(emulator_admin: EmulatorAdmin, emulator: str) -> None:
    big = {"seed": 1, "pad": "x" * (ADMIN_MAX_BODY_BYTES + 10)}
    with httpx2.Client(base_url=emulator, trust_env=False) as http:
        resp = http.post("/_emulator/config", json=big)
        assert resp.status_code == 413
        assert resp.json()["error"]["type"] == "request_too_large"
        bad = http.post("/_emulator/faults", content=b"{not json")
        assert bad.status_code == 400
    assert emulator_admin.set_config(seed=2)["seed"] == 2


# ---------------------------------------------------------------- bounded reads over a raw socket
def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _status(sock: socket.socket) -> int:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("path", ["/v1/messages/batches", "/_emulator/config"])
def test_a_declared_600_mb_body_is_refused_before_it_is_sent(emulator: str, path: str) -> None:
    headers = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    with _connect(emulator) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\n{headers}content-type: application/json\r\n"
            f"content-length: {600 * MB}\r\n\r\n".encode()
            + b'{"requests": ['
        )
        start = time.monotonic()
        assert _status(sock) == 413  # answered without waiting for the 600 MB
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("path", ["/v1/messages/batches", "/_emulator/config"])
def test_an_undeclared_huge_body_is_cut_off_at_the_cap(path: str) -> None:
    """Chunked, no Content-Length: the server stops reading a little after its cap."""
    cap = 2 * MB
    with running_emulator(EmulatorConfig(max_body_bytes=cap)) as url, _connect(url) as sock:
        headers = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\n{headers}content-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        piece = b"x" * 65536
        chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
        sent = 0
        sock.settimeout(0.2)
        status = None
        while sent < 600 * MB:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        sock.settimeout(10)
        try:
            status = _status(sock)
        except ConnectionResetError:
            status = None
        # The server answered (or hung up) after reading about `cap` bytes, not 600 MB; what
        # the kernel buffered on loopback is the only slack.
        assert sent < cap + 64 * MB
        assert status in (413, None)
