"""The Message Batches API, as batchops uses it: every remote call goes through the official SDK.

Creates are sent with the SDK's retries off (the API has no idempotency key, so a retried create
could make a second batch); reads are retried by the SDK. Failures come back as `RemoteError`
with one line that names the call, the status and the request id, never the API key.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from batchops.clock import parse_time
from batchops.errors import CreateOutcomeUnknown, NotFound, RemoteError
from batchops.lazyclass import dataclass


class _SDK:
    """The `anthropic` module, imported at its first use: the SDK takes a second or more to
    import, which `--help`, `validate` and `plan --no-refresh` must not pay."""

    def __getattr__(self, name: str) -> Any:
        import anthropic as sdk

        globals()["anthropic"] = sdk  # later uses go straight to the module
        return getattr(sdk, name)


anthropic: Any = _SDK()

RESULT_RETENTION = timedelta(days=29)
# How long the list may go on lacking a batch just made (`confirm_gone`), clock skew included.
LIST_LAG_SECONDS = 900.0
LIST_LAG_ENV = "BATCHOPS_LIST_LAG_SECONDS"


def list_lag() -> timedelta:
    """BATCHOPS_LIST_LAG_SECONDS as a duration; the default for one that is not a number of
    seconds from 0 to a year (`inf`, `nan`, `-5`)."""
    try:
        seconds = float(os.environ.get(LIST_LAG_ENV, LIST_LAG_SECONDS))
    except ValueError:
        seconds = LIST_LAG_SECONDS
    if not 0 <= seconds <= 366 * 86400:  # false for nan too
        seconds = LIST_LAG_SECONDS
    return timedelta(seconds=seconds)


READ_RETRIES = 5
# The longest `retry-after` a read waits out before trying again. The SDK waits whatever a
# response asks (an hour, a day), silently, up to READ_RETRIES times: past this, the read fails
# at once, its error naming the wait asked for.
LONGEST_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class RemoteBatch:
    id: str
    processing_status: str
    request_counts: dict[str, int]
    created_at: datetime
    expires_at: datetime | None
    ended_at: datetime | None
    cancel_initiated_at: datetime | None
    archived_at: datetime | None

    @property
    def total(self) -> int:
        return sum(self.request_counts.values())

    @classmethod
    def from_sdk(cls, batch: Any) -> RemoteBatch:
        data = batch.model_dump(mode="json") if hasattr(batch, "model_dump") else dict(batch)
        return cls(
            id=data["id"],
            processing_status=data["processing_status"],
            request_counts={k: int(v or 0) for k, v in (data.get("request_counts") or {}).items()},
            created_at=parse_time(data["created_at"]),  # type: ignore[arg-type]
            expires_at=parse_time(data.get("expires_at")),
            ended_at=parse_time(data.get("ended_at")),
            cancel_initiated_at=parse_time(data.get("cancel_initiated_at")),
            archived_at=parse_time(data.get("archived_at")),
        )


def remote_error(exc: BaseException, what: str) -> RemoteError:
    """A RemoteError for an SDK failure, carrying the HTTP status and whether to try again."""
    status = getattr(exc, "status_code", None)
    retryable = status is None or status == 429 or status >= 500 or status in (408, 409)
    return RemoteError(describe(exc, what), status=status, retryable=retryable)


def _never_sent(exc: BaseException) -> bool:
    """Whether an SDK connection failure happened before any byte of the request was written:
    the connection was refused or not made in time, or no pooled connection came free. Any
    other failure (a reset, a read timeout) may come after the API took the request."""
    import httpx2  # the SDK's HTTP client, imported with it

    return isinstance(
        exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)
    )


def describe(exc: BaseException, what: str) -> str:
    """One line about an SDK failure; never includes the key."""
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        kind = err.get("type") or type(exc).__name__
        message = err.get("message") or str(exc)
        rid = f" (request-id {exc.request_id})" if exc.request_id else ""
        wait = retry_after(exc.response.headers)
        asked = (
            f"; the API asks to wait {wait:,.0f} s before trying again"
            if wait is not None and wait > LONGEST_RETRY_AFTER
            else ""
        )
        return f"{what} failed: HTTP {exc.status_code} {kind}: {message}{rid}{asked}"
    if isinstance(exc, anthropic.APITimeoutError):
        return f"{what} failed: timed out"
    if isinstance(exc, anthropic.APIConnectionError):
        return f"{what} failed: connection error ({exc.__cause__ or exc})"
    return f"{what} failed: {type(exc).__name__}: {exc}"


def retry_after(headers: Any) -> float | None:
    """Seconds a response asks to wait before the next try (`retry-after-ms`, or `retry-after` in
    seconds or as an HTTP date), as the SDK reads them; None when it asks nothing."""
    try:
        return float(headers["retry-after-ms"]) / 1000
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    import email.utils  # only for an HTTP date: its import takes 4 ms (socket), paid by apply

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return (when - datetime.now(when.tzinfo)).total_seconds()


def _no_long_waits(response: Any) -> None:
    """A response hook: one asking for a wait past LONGEST_RETRY_AFTER is not retried (the SDK
    obeys `x-should-retry`), so the call fails at once instead of sleeping through it."""
    wait = retry_after(response.headers)
    if wait is not None and wait > LONGEST_RETRY_AFTER:
        response.headers["x-should-retry"] = "false"


class BatchesClient:
    """A thin adapter over `anthropic.Anthropic().messages.batches`."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0
    ):
        kwargs: dict[str, Any] = {"max_retries": READ_RETRIES, "timeout": timeout}
        if base_url:
            kwargs["base_url"] = base_url
        if api_key:
            kwargs["api_key"] = api_key
        self._kwargs = kwargs
        self._client: Any = None

    @property
    def _sdk(self) -> Any:
        """The SDK's client, made at the first call: an apply with nothing in flight and nothing
        to send makes none, and never pays the second it takes to import the SDK."""
        if self._client is None:
            try:
                http = anthropic.DefaultHttpxClient(event_hooks={"response": [_no_long_waits]})
                self._client = anthropic.Anthropic(**self._kwargs, http_client=http)
            except anthropic.AnthropicError as exc:
                raise RemoteError(f"cannot set up the Anthropic client: {exc}") from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def create(
        self, requests: Sequence[dict[str, Any] | bytes], betas: Sequence[str] = ()
    ) -> RemoteBatch:
        """Create one batch, without retries. Raises CreateOutcomeUnknown when it may exist.

        A request is a dict, or already JSON (`encode_request`)."""
        sdk = self._sdk.with_options(max_retries=0)
        # The body is streamed to the SDK's transport a slice at a time, with its length known
        # up front: a 200 MB batch is never held as one JSON string (nor as the SDK's copy of the
        # request list), so memory stays near the size of the rendered requests themselves.
        body = CreateBody(requests)
        headers = {"content-type": "application/json", "content-length": str(len(body))}
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        cast_to = (
            anthropic.types.beta.messages.BetaMessageBatch
            if betas
            else anthropic.types.messages.MessageBatch
        )
        try:
            batch = sdk.post(
                "/v1/messages/batches", cast_to=cast_to, content=iter(body),
                options={"headers": headers, "follow_redirects": False},
            )  # fmt: skip
        except anthropic.APIStatusError as exc:
            # A 429 sheds load before a request is processed (rate and queue limits): nothing
            # was created. A 5xx (529 overloaded too: any layer may send it), 408 or 409 may
            # come after the batch was committed: outcome unknown. So may a redirect, which a
            # create does not follow: a connection refused on its second hop would read as
            # "never sent" (`_never_sent`), after the first hop made the batch.
            if exc.status_code == 429:
                raise remote_error(exc, "create batch") from None
            if exc.status_code >= 500 or exc.status_code in (408, 409) or exc.status_code < 400:
                raise CreateOutcomeUnknown(
                    describe(exc, "create batch"), status=exc.status_code, retryable=True
                ) from exc
            raise remote_error(exc, "create batch") from None
        except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
            if _never_sent(exc):  # nothing was created: sent again now, not held 15 minutes
                raise remote_error(exc, "create batch") from None
            raise CreateOutcomeUnknown(describe(exc, "create batch"), retryable=True) from exc
        return RemoteBatch.from_sdk(batch)

    def retrieve(self, batch_id: str) -> RemoteBatch:
        try:
            return RemoteBatch.from_sdk(self._sdk.messages.batches.retrieve(batch_id))
        except anthropic.NotFoundError:
            raise NotFound(batch_id) from None
        except anthropic.APIError as exc:
            raise remote_error(exc, f"retrieve batch {batch_id}") from None

    def newest_batch_id(self) -> str:
        """Where the workspace's batch list stands now: the newest batch id ("" when empty)."""
        try:
            page = self._sdk.messages.batches.list(limit=1)
        except anthropic.APIError as exc:
            raise remote_error(exc, "list batches") from None
        return page.data[0].id if page.data else ""

    def list_after(self, anchor: str) -> Iterator[RemoteBatch]:
        """Every batch created after the batch `anchor` ("" : every batch), by list position,
        newest first: the list read from its top down to the anchor. Not `before_id=anchor`:
        the anchor may have been deleted since (a prune, a teammate), and the API does not say
        whether a deleted batch still works as a cursor (an error would hold the items for
        ever, an empty page would send them twice). From the top, a deleted anchor only makes
        the read go on to the end of the list, 29 days' worth."""
        try:
            for batch in self._sdk.messages.batches.list(limit=100):
                if batch.id == anchor:
                    return
                yield RemoteBatch.from_sdk(batch)
        except anthropic.APIError as exc:
            raise remote_error(exc, "list batches") from None

    def confirm_gone(
        self, batch_id: str, created_at: datetime | None, now: datetime | None = None
    ) -> bool:
        """A 404 is a question: True only when another retrieve and the list both lack the
        batch, and the list has caught up with the batch's making (`gone_status`)."""
        return self.gone_status(batch_id, created_at, now) == "gone"

    def gone_status(
        self, batch_id: str, created_at: datetime | None, now: datetime | None = None
    ) -> str:
        """After a 404: "exists" when another retrieve or the list has the batch; "gone" when
        both lack it and the list has caught up with its making; else "unconfirmed". The list
        shows a new batch late (as an unanswered create finds), so its lack of a batch proves
        something only once it lists a batch made after it, or once the batch is older than
        `list_lag()` by `now` (without it, a batch that stays the newest would never be
        judged)."""
        try:
            self.retrieve(batch_id)
            return "exists"
        except NotFound:
            pass
        newer = False
        try:
            for batch in self._sdk.messages.batches.list(limit=100):
                if batch.id == batch_id:
                    return "exists"
                if created_at is None:
                    continue
                if batch.created_at > created_at:
                    newer = True
                elif batch.created_at < created_at:
                    break  # the list is newest first: past where it would be
        except anthropic.APIError as exc:
            raise remote_error(exc, "list batches") from None
        if created_at is None or newer or (now is not None and now - created_at >= list_lag()):
            return "gone"
        return "unconfirmed"

    def list_all(self) -> Iterator[RemoteBatch]:
        """Every batch in the workspace (29 days' worth), newest first, page after page."""
        try:
            for batch in self._sdk.messages.batches.list(limit=100):
                yield RemoteBatch.from_sdk(batch)
        except anthropic.APIError as exc:
            raise remote_error(exc, "list batches") from None

    def list_recent(self, since: datetime) -> Iterator[RemoteBatch]:
        """Batches created at or after `since`, newest first (stops paging at older ones)."""
        try:
            for batch in self._sdk.messages.batches.list(limit=100):
                remote = RemoteBatch.from_sdk(batch)
                if remote.created_at < since:
                    return
                yield remote
        except anthropic.APIError as exc:
            raise remote_error(exc, "list batches") from None

    def cancel(self, batch_id: str) -> RemoteBatch:
        try:
            return RemoteBatch.from_sdk(self._sdk.messages.batches.cancel(batch_id))
        except anthropic.NotFoundError:
            raise NotFound(batch_id) from None
        except anthropic.APIError as exc:
            raise remote_error(exc, f"cancel batch {batch_id}") from None

    def delete(self, batch_id: str) -> None:
        try:
            self._sdk.messages.batches.delete(batch_id)
        except anthropic.NotFoundError:
            raise NotFound(batch_id) from None
        except anthropic.APIError as exc:
            raise remote_error(exc, f"delete batch {batch_id}") from None

    @contextlib.contextmanager
    def results(self, batch_id: str) -> Iterator[Iterator[ResultLine]]:
        """Stream a batch's result lines as dicts; the response is closed whatever happens."""
        with self.result_blocks(batch_id) as blocks:
            yield _parse_blocks(blocks, f"read results of batch {batch_id}")

    @contextlib.contextmanager
    def result_blocks(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        """Stream a batch's results file as the byte blocks it arrives in (JSONL, cut anywhere);
        a stream that breaks off raises `RemoteError`."""
        what = f"read results of batch {batch_id}"
        try:
            with self._sdk.messages.batches.with_streaming_response.results(batch_id) as response:
                yield _mapped(response.iter_bytes(), what)
        except anthropic.NotFoundError:
            raise NotFound(batch_id) from None
        except anthropic.AnthropicError as exc:  # includes "No results_url" (not yet ended)
            raise remote_error(exc, what) from None


class CreateBody:
    """`{"requests": [...]}` as JSON bytes, produced a slice at a time (twice: once to learn its
    length, once to send it; encoding is cheap next to holding 200 MB)."""

    SLICE = 500  # requests per piece handed to the transport

    def __init__(self, requests: Sequence[dict[str, Any] | bytes]):
        self.requests = requests
        self._length: int | None = None

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(len(piece) for piece in self)
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"requests":['
        requests = self.requests
        for start in range(0, len(requests), self.SLICE):
            pieces = [
                r if isinstance(r, bytes) else _json(r)
                for r in requests[start : start + self.SLICE]
            ]
            yield (b"," if start else b"") + b",".join(pieces)
        yield b"]}"


def encode_request(custom_id: str, params: dict[str, Any]) -> bytes:
    """One request of a create, as the JSON `create` sends, to be held until it is sent.

    Copied once: the bytes orjson returns keep the larger block they were written in (a list
    of them held five times its size, measured); a copy of the exact size fits where the freed
    dict was."""
    return bytes(memoryview(_json({"custom_id": custom_id, "params": params})))


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # what orjson cannot write, as the SDK would
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


class ResultLine(dict):
    """One parsed result line that keeps the line's own text (`raw`): a harvest stores a
    succeeded result's message as the API wrote it instead of writing it out again."""

    __slots__ = ("raw",)

    raw: str


def _parse_lines(lines: Iterator[str], what: str) -> Iterator[ResultLine]:
    """Parse JSONL lines, one at a time (see `_parse_runs`)."""
    return _parse_runs(([line] for line in lines), what)


def _parse_blocks(blocks: Iterator[bytes], what: str) -> Iterator[ResultLine]:
    """Parse JSONL from the response's byte blocks, cut anywhere (see `_runs_of`)."""
    return _parse_runs(_runs_of(blocks), what)


def _runs_of(blocks: Iterator[bytes]) -> Iterator[list[str]]:
    """The lines of a byte stream, a block's worth at a time, split at "\\n" only.

    Not the SDK's `iter_lines`: that splits where `str.splitlines` does, and JSON allows
    U+2028, U+2029 and U+0085 unescaped inside a string, so a reply holding one was cut in two
    and its batch could never be harvested. Decoding and splitting a block at once is also far
    cheaper than a line at a time. Bytes that are not UTF-8 are replaced, as the SDK's text was;
    a block is decoded up to its last newline, so no UTF-8 sequence is cut."""
    pending: list[bytes] = []  # the line begun by earlier blocks
    for block in blocks:
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        if pending:
            pending.append(block[:cut])
            head = b"".join(pending)
            pending.clear()
        else:
            head = block[:cut]
        pending.append(block[cut + 1 :])
        yield head.decode("utf-8", "replace").split("\n")
    tail = b"".join(pending)
    if tail:
        yield [tail.decode("utf-8", "replace")]


def _mapped(blocks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """The blocks, with a stream cut short (an httpx2 protocol error, not an anthropic one)
    raised as a RemoteError."""
    try:
        yield from blocks
    except anthropic.APIError as exc:
        raise remote_error(exc, what) from None
    except Exception as exc:
        raise RemoteError(
            f"{what} failed: the stream broke off ({type(exc).__name__}: {exc})"
        ) from None


def _parse_runs(runs: Iterator[list[str]], what: str) -> Iterator[ResultLine]:
    """Parse JSONL lines, given as lists of lines (a stream's failures are raised as they come:
    `result_blocks` makes them RemoteErrors)."""
    number = 0
    loads = orjson.loads
    for run in runs:
        for line in run:
            number += 1
            if not line or line.isspace():
                continue
            try:
                value = loads(line)
            except orjson.JSONDecodeError as exc:
                raise RemoteError(f"{what} failed: line {number} is not JSON ({exc})") from None
            if type(value) is not dict:
                raise RemoteError(f"{what} failed: line {number} is not a JSON object")
            parsed = ResultLine(value)
            parsed.raw = line
            yield parsed
