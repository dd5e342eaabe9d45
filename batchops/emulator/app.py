"""The HTTP face of the emulator: Message Batches endpoints plus `/_emulator/` admin calls.

Handlers check only what the real API checks at that point (auth, `anthropic-version`, the create
envelope) and leave everything else to the store and the lifecycle. An outer ASGI layer stamps a
`request-id` on every response and applies queued HTTP faults, including the two no framework
handler can express: a response that never arrives, and a body cut off mid-stream.

Admin calls (`/_emulator/clock`, `config`, `faults`, `stats`, `teammate/batches`) check the same
key as the API when one is configured, and read at most ADMIN_MAX_BODY_BYTES. No body is read
without a bound: a declared length over the cap is refused before reading, an undeclared one as
soon as it passes the cap, and the connection is closed rather than drained.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio.to_thread
import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchops.emulator.clock import Clock, derived_id, random_id
from batchops.emulator.config import EmulatorConfig, RuntimeSettings
from batchops.emulator.faults import STATUS_ERROR_TYPES, FaultQueue, HttpFault, ListLag
from batchops.emulator.responses import build_message, errored
from batchops.emulator.store import BatchRow, Lifecycle, ResultRow, Store, lifecycle

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")
MAX_REQUESTS = 100_000
API_PREFIX = "/v1/messages/batches"
NOT_FOUND = "The requested resource could not be found."
RESULTS_CHUNK_BYTES = 64 * 1024


class Emulator:
    """The state one server process holds: settings, clock, store and pending HTTP faults."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.settings: RuntimeSettings = config.runtime()
        self.clock = Clock()
        self.store = Store(config.db_path, self.clock, markers=config.faults_enabled)
        self.faults = FaultQueue()
        self.list_lag = ListLag()


# ---------------------------------------------------------------------------- responses
def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def error_response(
    request: Request, status: int, error_type: str, message: str, headers: dict | None = None
) -> Response:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request.state.request_id,
    }
    return json_response(body, status, headers)


def batch_json(emu: Emulator, request: Request, row: BatchRow, life: Lifecycle) -> dict[str, Any]:
    """A MessageBatch with every key present, instants shifted back by the clock offset."""
    report = emu.clock.report
    results_url = None
    if life.status == "ended":
        base = str(request.base_url).rstrip("/")
        results_url = f"{base}{API_PREFIX}/{row.id}/results"
    return {
        "id": row.id,
        "type": "message_batch",
        "processing_status": life.status,
        "request_counts": emu.store.counts(row, life),
        "created_at": report(row.created_at),
        "expires_at": report(life.expires_at),
        "ended_at": report(life.ended_at) if life.ended_at is not None else None,
        "cancel_initiated_at": report(row.cancel_at) if row.cancel_at is not None else None,
        "archived_at": report(life.archived_at) if life.archived_at is not None else None,
        "results_url": results_url,
    }


# ---------------------------------------------------------------------------- API handlers
Handler = Callable[[Request, Emulator], Awaitable[Response]]


def auth_problem(request: Request, emu: Emulator) -> Response | None:
    """A 401 if the request carries no key, or not the configured one (either header form)."""
    key = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    if not key:
        return error_response(request, 401, "authentication_error", "x-api-key header is required")
    if emu.config.api_key is not None and key != emu.config.api_key:
        return error_response(request, 401, "authentication_error", "invalid x-api-key")
    return None


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Check auth and `anthropic-version` the way the API does before any handler runs."""

    async def endpoint(request: Request) -> Response:
        emu: Emulator = request.app.state.emulator
        refused = auth_problem(request, emu)
        if refused is not None:
            return refused
        if not request.headers.get("anthropic-version"):
            return error_response(
                request, 400, "invalid_request_error", "anthropic-version: header is required"
            )
        return await handler(request, emu)

    return endpoint


def envelope_problem(body: Any) -> str | None:
    """What is wrong with a create body's envelope; `params` contents are not looked at."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    reqs = body.get("requests")
    if not isinstance(reqs, list):
        return "requests: Field required"
    if not reqs:
        return "requests: List should have at least 1 item after validation, not 0"
    if len(reqs) > MAX_REQUESTS:
        return f"requests: List should have at most {MAX_REQUESTS} items, not {len(reqs)}"
    seen: set[str] = set()
    for i, req in enumerate(reqs):
        if not isinstance(req, dict):
            return f"requests.{i}: Input should be a valid dictionary"
        cid = req.get("custom_id")
        if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
            return f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if cid in seen:
            return f"requests.{i}.custom_id: Duplicate custom_id '{cid}' in batch"
        seen.add(cid)
        if not isinstance(req.get("params"), dict):
            return f"requests.{i}.params: Input should be a valid dictionary"
    return None


# The rest of a refused body is never read: closing the connection spares draining it.
CLOSE = {"connection": "close"}


DRAIN_BYTES = 16 << 20  # how far over its cap a body is still read before a 413


async def read_capped(request: Request, cap: int) -> bytearray | None:
    """The body, or None if it is larger than `cap` bytes. A body at most DRAIN_BYTES over
    the cap is read to its end first (and dropped), so that the client, still sending it, gets
    the 413 instead of a connection reset; a larger one is refused from its declared length."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap + DRAIN_BYTES:
        return None
    body = bytearray()
    stream = request.stream()
    async for chunk in stream:
        body += chunk
        if len(body) > cap:
            read = len(body)
            del body
            async for rest in stream:
                read += len(rest)
                if read > cap + DRAIN_BYTES:
                    break
            return None
    return body


@api
async def create(request: Request, emu: Emulator) -> Response:
    raw = await read_capped(request, emu.config.max_body_bytes)
    if raw is None:
        # Cloudflare answers before the API: no top-level type and no request_id.
        body = {
            "error": {"type": "request_too_large", "message": "Request exceeds the maximum size"}
        }
        return json_response(body, 413, CLOSE)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_response(
            request, 400, "invalid_request_error", "Request body is not valid JSON"
        )
    del raw
    problem = envelope_problem(parsed)
    if problem is not None:
        return error_response(request, 400, "invalid_request_error", problem)
    limit = emu.settings.max_queued_requests
    queued = await anyio.to_thread.run_sync(emu.store.queued)
    if queued + len(parsed["requests"]) > limit:
        return error_response(
            request,
            429,
            "rate_limit_error",
            f"Number of batch requests in the processing queue would exceed the limit of {limit:,}",
        )
    hidden: HttpFault | None = getattr(request.state, "hidden", None)
    return await _create(request, emu, parsed["requests"], hidden)


async def _create(
    request: Request,
    emu: Emulator,
    requests: list[Any],
    hidden: HttpFault | None = None,
    count_submissions: bool = True,
) -> Response:
    row = await anyio.to_thread.run_sync(
        emu.store.create, requests, emu.settings, count_submissions
    )
    if hidden is not None:
        until = None
        if hidden.hidden_seconds is not None:
            until = row.created_at + hidden.hidden_seconds
        emu.list_lag.hide(row.id, until, hidden.hidden_lists)
    life = lifecycle(row, row.created_at)
    # The create answer always shows the batch as accepted, even with processing_seconds=0.
    life = Lifecycle("in_progress", None, 0, None, None, life.expires_at)
    return json_response(batch_json(emu, request, row, life))


def _found(request: Request, emu: Emulator) -> tuple[BatchRow, Lifecycle] | None:
    row = emu.store.get(request.path_params["batch_id"])
    if row is None:
        return None
    return row, lifecycle(row, emu.clock.now())


@api
async def retrieve(request: Request, emu: Emulator) -> Response:
    found = _found(request, emu)
    if found is None:
        return error_response(request, 404, "not_found_error", NOT_FOUND)
    return json_response(batch_json(emu, request, *found))


@api
async def list_batches(request: Request, emu: Emulator) -> Response:
    q = request.query_params
    raw_limit = q.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        return error_response(
            request, 400, "invalid_request_error", "limit: must be an integer between 1 and 1000"
        )
    after_id, before_id = q.get("after_id"), q.get("before_id")
    if after_id and before_id:
        return error_response(
            request, 400, "invalid_request_error", "Cannot specify both after_id and before_id"
        )
    hidden = emu.list_lag.hidden(emu.clock.now())
    accepted = emu.settings.deleted_cursors == "accepted"
    page = emu.store.page(int(raw_limit), after_id or None, before_id or None, hidden, accepted)
    if page is None:
        return error_response(request, 400, "invalid_request_error", "Unknown pagination cursor")
    rows, has_more = page
    now = emu.clock.now()
    data = [batch_json(emu, request, row, lifecycle(row, now)) for row in rows]
    return json_response(
        {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@api
async def cancel(request: Request, emu: Emulator) -> Response:
    found = _found(request, emu)  # the body is empty by design: never parse it
    if found is None:
        return error_response(request, 404, "not_found_error", NOT_FOUND)
    row, life = found
    if life.status == "ended":
        return error_response(
            request,
            400,
            "invalid_request_error",
            f"Batch {row.id} has ended and cannot be canceled",
        )
    if life.status == "in_progress":
        row = emu.store.cancel(row)
        life = lifecycle(row, emu.clock.now())
    return json_response(batch_json(emu, request, row, life))


@api
async def delete(request: Request, emu: Emulator) -> Response:
    found = _found(request, emu)
    if found is None:
        return error_response(request, 404, "not_found_error", NOT_FOUND)
    row, life = found
    if life.status != "ended":
        return error_response(
            request,
            400,
            "invalid_request_error",
            f"Batch {row.id} cannot be deleted while processing; cancel it first",
        )
    await anyio.to_thread.run_sync(emu.store.delete, row)
    return json_response({"id": row.id, "type": "message_batch_deleted"})


def result_line(row: BatchRow, life: Lifecycle, rr: ResultRow) -> dict[str, Any]:
    if rr.idx >= life.processed:
        result: dict[str, Any] = {"type": life.cut}
    elif rr.outcome == "succeeded":
        digest = hashlib.sha256(f"{row.id}\x00{rr.custom_id}".encode()).digest()
        message = build_message(orjson.loads(rr.params), derived_id("msg_", digest), rr.cache_state)
        result = {"type": "succeeded", "message": message}
    elif rr.outcome == "errored":
        result = errored(rr.error_type or "api_error", rr.error_message or "")
    else:
        result = {"type": rr.outcome}
    return {"custom_id": rr.custom_id, "result": result}


def result_stream(
    emu: Emulator, row: BatchRow, life: Lifecycle, spoil: str | None = None
) -> Iterator[bytes]:
    """JSONL, LF only, one line per request, generated a page at a time from the store.

    `spoil` ("duplicate_line" or "drop_line") repeats or leaves out the first line.
    """
    buf = bytearray()
    for n, rr in enumerate(emu.store.result_rows(row)):
        line = orjson.dumps(result_line(row, life, rr)) + b"\n"
        if n == 0 and spoil == "drop_line":
            continue
        buf += line * 2 if n == 0 and spoil == "duplicate_line" else line
        if len(buf) >= RESULTS_CHUNK_BYTES:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


@api
async def results(request: Request, emu: Emulator) -> Response:
    found = _found(request, emu)
    if found is None:
        return error_response(request, 404, "not_found_error", NOT_FOUND)
    row, life = found
    if life.status != "ended":
        return error_response(
            request, 400, "invalid_request_error", f"Batch {row.id} has not finished processing"
        )
    if life.archived_at is not None:
        return error_response(
            request, 404, "not_found_error", f"Results for batch {row.id} are no longer available"
        )
    spoil = getattr(request.state, "spoil_results", None)
    return StreamingResponse(result_stream(emu, row, life, spoil), media_type="application/x-jsonl")


# ---------------------------------------------------------------------------- admin handlers
ADMIN_MAX_BODY_BYTES = 1_000_000


def admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Admin calls: the API's key check when a key is configured, and a small JSON body.

    The parsed body (or `{}` for none) is left in `request.state.body`.
    """

    async def endpoint(request: Request) -> Response:
        emu: Emulator = request.app.state.emulator
        if emu.config.api_key is not None:
            refused = auth_problem(request, emu)
            if refused is not None:
                return refused
        request.state.body = {}
        if request.method in ("POST", "PUT", "PATCH"):
            raw = await read_capped(request, ADMIN_MAX_BODY_BYTES)
            if raw is None:
                return error_response(
                    request,
                    413,
                    "request_too_large",
                    f"Admin request bodies are limited to {ADMIN_MAX_BODY_BYTES} bytes",
                    CLOSE,
                )
            try:
                request.state.body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                return error_response(
                    request, 400, "invalid_request_error", "Request body is not valid JSON"
                )
        return await handler(request, emu)

    return endpoint


@admin
async def admin_clock(request: Request, emu: Emulator) -> Response:
    if request.method == "POST":
        body = request.state.body if isinstance(request.state.body, dict) else {}
        seconds, skew = body.get("advance_seconds"), body.get("skew_seconds")
        if seconds is None and skew is None:
            return error_response(
                request, 400, "invalid_request_error", "advance_seconds or skew_seconds is required"
            )
        if seconds is not None and (not _finite(seconds) or seconds < 0):
            return error_response(
                request, 400, "invalid_request_error", "advance_seconds: a number >= 0 is required"
            )
        if skew is not None:
            if not _finite(skew):
                return error_response(
                    request, 400, "invalid_request_error", "skew_seconds: a number is required"
                )
            if not emu.config.faults_enabled:
                return _faults_off(request)
            emu.clock.skew = float(skew)
        if seconds is not None:
            emu.store.advance_clock(float(seconds))
    return json_response({"offset_seconds": emu.clock.offset, "skew_seconds": emu.clock.skew})


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _faults_off(request: Request) -> Response:
    return error_response(
        request, 400, "invalid_request_error", "faults are off in this emulator (faults none)"
    )


@admin
async def admin_config(request: Request, emu: Emulator) -> Response:
    if request.method == "POST":
        body = request.state.body
        if not emu.config.faults_enabled and isinstance(body, dict) and body.get("fault_rates"):
            return _faults_off(request)
        try:
            emu.settings = RuntimeSettings(**{**emu.settings.model_dump(), **body})
        except (ValidationError, TypeError) as exc:
            return error_response(request, 400, "invalid_request_error", str(exc))
    return json_response(emu.settings.model_dump())


FAULT_LIST = TypeAdapter(list[HttpFault])


@admin
async def admin_faults(request: Request, emu: Emulator) -> Response:
    if request.method == "POST":
        if not emu.config.faults_enabled:
            return _faults_off(request)
        try:
            faults = FAULT_LIST.validate_python(request.state.body)
        except ValidationError as exc:
            return error_response(request, 400, "invalid_request_error", str(exc))
        emu.faults.add(faults)
    elif request.method == "DELETE":
        emu.faults.clear()
    return json_response({"pending": [f.model_dump() for f in emu.faults.pending()]})


@admin
async def admin_teammate_create(request: Request, emu: Emulator) -> Response:
    """A batch created in the same workspace by another client: it lists, retrieves and ends like
    any other, but does not count in `stats()["submissions"]`. Same body as a create, plus
    optional `hidden_seconds` / `hidden_lists` (see HttpFault kind `hidden`)."""
    body = request.state.body
    problem = envelope_problem(body)
    if problem is not None:
        return error_response(request, 400, "invalid_request_error", problem)
    hidden = None
    lag = {k: body[k] for k in ("hidden_seconds", "hidden_lists") if body.get(k) is not None}
    if lag:
        if not emu.config.faults_enabled:
            return _faults_off(request)
        try:
            hidden = HttpFault(kind="hidden", endpoint="create", **lag)
        except ValidationError as exc:
            return error_response(request, 400, "invalid_request_error", str(exc))
    return await _create(request, emu, body["requests"], hidden, count_submissions=False)


@admin
async def admin_stats(request: Request, emu: Emulator) -> Response:
    return json_response(emu.store.stats())


# ---------------------------------------------------------------------------- errors
async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return error_response(request, 404, "not_found_error", NOT_FOUND)
    if status == 405:
        return error_response(request, 405, "invalid_request_error", "Method not allowed")
    return error_response(request, status, STATUS_ERROR_TYPES.get(status, "api_error"), str(exc))


async def server_error(request: Request, exc: Exception) -> Response:
    return error_response(request, 500, "api_error", "Internal server error")


# ---------------------------------------------------------------------------- outer ASGI layer
def path_batch_id(path: str) -> str | None:
    """The batch id in an API path, if it names one."""
    if not path.startswith(API_PREFIX + "/"):
        return None
    return path[len(API_PREFIX) + 1 :].split("/")[0] or None


def endpoint_name(method: str, path: str) -> str | None:
    """Which API endpoint a request is for, in the names HTTP faults use."""
    if not path.startswith(API_PREFIX):
        return None
    rest = path[len(API_PREFIX) :].strip("/").split("/") if path != API_PREFIX else []
    if not rest or rest == [""]:
        return {"POST": "create", "GET": "list"}.get(method)
    if len(rest) == 1:
        return {"GET": "retrieve", "DELETE": "delete"}.get(method)
    if len(rest) == 2:
        return {("POST", "cancel"): "cancel", ("GET", "results"): "results"}.get((method, rest[1]))
    return None


DROP_CONNECTION = "drop-connection"  # uvicorn closes the socket when an app returns non-None


class RequestIdAndFaults:
    """Stamp `request-id` on every response and apply the first matching queued HTTP fault."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = random_id("req_")
        scope = {**scope, "state": {**scope.get("state", {}), "request_id": request_id}}

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"request-id"]
                headers.append((b"request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        name = endpoint_name(scope["method"], scope["path"])
        fault = self.emulator.faults.take(name, path_batch_id(scope["path"])) if name else None
        if fault is None:
            return await self.app(scope, receive, stamped)
        if fault.kind in ("duplicate_line", "drop_line"):
            scope["state"]["spoil_results"] = fault.kind
            return await self.app(scope, receive, stamped)
        if fault.kind == "hidden":
            scope["state"]["hidden"] = fault
            if fault.lose_response:
                await self.app(scope, receive, _discard)
                return DROP_CONNECTION
            return await self.app(scope, receive, stamped)
        if fault.kind == "slow":
            await asyncio.sleep(fault.delay_seconds)
            return await self.app(scope, receive, stamped)
        if fault.kind == "status":
            if fault.after_work:
                await self.app(scope, receive, _discard)
            return await self._status(fault, request_id, stamped)
        if fault.kind == "lost_response":
            await self.app(scope, receive, _discard)
            return DROP_CONNECTION
        return await self._truncated(fault, scope, receive, stamped)

    async def _status(self, fault: HttpFault, request_id: str, send: Send) -> None:
        error_type = fault.error_type or STATUS_ERROR_TYPES.get(fault.status, "api_error")
        if fault.status == 413:  # Cloudflare's, before the API: no top-level type, no request_id
            message = fault.message or "Request exceeds the maximum size"
            body = orjson.dumps({"error": {"type": error_type, "message": message}})
        else:
            message = fault.message or (NOT_FOUND if fault.status == 404 else "Injected fault")
            body = orjson.dumps(
                {
                    "type": "error",
                    "error": {"type": error_type, "message": message},
                    "request_id": request_id,
                }
            )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if fault.retry_after_ms is not None:
            headers.append((b"retry-after-ms", str(fault.retry_after_ms).encode()))
        if fault.should_retry is not None:
            headers.append((b"x-should-retry", b"true" if fault.should_retry else b"false"))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _truncated(self, fault: HttpFault, scope: Scope, receive: Receive, send: Send) -> str:
        budget = fault.after_bytes

        async def cut(message: Message) -> None:
            nonlocal budget
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body" and budget > 0:
                part = message.get("body", b"")[:budget]
                budget -= len(part)
                await send({"type": "http.response.body", "body": part, "more_body": True})

        await self.app(scope, receive, cut)
        return DROP_CONNECTION


async def _discard(message: Message) -> None:
    """Swallow a response whose delivery a fault has cancelled."""


def build_app(config: EmulatorConfig) -> tuple[ASGIApp, Emulator]:
    """The ASGI app to serve, and the state behind it."""
    emu = Emulator(config)
    routes = [
        Route(API_PREFIX, create, methods=["POST"]),
        Route(API_PREFIX, list_batches, methods=["GET"]),
        Route(API_PREFIX + "/{batch_id}", retrieve, methods=["GET"]),
        Route(API_PREFIX + "/{batch_id}", delete, methods=["DELETE"]),
        Route(API_PREFIX + "/{batch_id}/cancel", cancel, methods=["POST"]),
        Route(API_PREFIX + "/{batch_id}/results", results, methods=["GET"]),
        Route("/_emulator/clock", admin_clock, methods=["GET", "POST"]),
        Route("/_emulator/config", admin_config, methods=["GET", "POST"]),
        Route("/_emulator/faults", admin_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_emulator/stats", admin_stats, methods=["GET"]),
        Route("/_emulator/teammate/batches", admin_teammate_create, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error}
    )
    app.state.emulator = emu
    return RequestIdAndFaults(app, emu), emu
