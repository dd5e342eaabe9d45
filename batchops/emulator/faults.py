"""Fault injection: what should go wrong, decided reproducibly.

Two kinds of fault exist. *Result faults* turn one request's result into `errored`, `expired` or
`canceled`; they come from a marker in the request text or from configured rates, and depend only on
(seed, custom_id, how many times that custom_id was submitted before), so a retry of a faulted
request can succeed. *HTTP faults* are queued through `POST /_emulator/faults`, and each one spoils
exactly one API response.

Marker grammar (anywhere in a request's params, normally in system or message text)::

    [[emulator:fail=<error_type>]]           every submission errors with <error_type>
    [[emulator:fail=<error_type>:times=<n>]]  the first n submissions of this custom_id error
    [[emulator:expired]]  [[emulator:canceled]]   (also with :times=<n>, or as fail=expired)

<error_type> is any word, e.g. invalid_request_error, api_error, overloaded_error, timeout_error.
The first marker found wins. Without `times` the fault is persistent.

HTTP faults are a JSON list posted to `/_emulator/faults`, each consumed by the first response
whose endpoint (create, retrieve, list, results, cancel, delete; omitted = any) matches::

    {"kind": "status", "status": 529, "retry_after_ms": 20, "endpoint": "create"}
    {"kind": "status", "status": 500, "should_retry": false}
    {"kind": "status", "status": 529, "endpoint": "create", "after_work": true}   committed, then 529
    {"kind": "lost_response", "endpoint": "create"}     committed, then the socket is closed
    {"kind": "truncate", "endpoint": "results", "after_bytes": 3000}
    {"kind": "slow", "delay_seconds": 2.5}
    {"kind": "duplicate_line" | "drop_line", "endpoint": "results"}
    {"kind": "status", "status": 404, "endpoint": "retrieve", "batch_id": "msgbatch_…", "times": 2}
    {"kind": "hidden", "endpoint": "create", "hidden_seconds": 30}   or "hidden_lists": 2

See HttpFault for every field and its default.
"""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from batchops.emulator.config import RATE_OUTCOMES

MARKER = re.compile(
    r"\[\[emulator:(?:fail=(?P<fail>[a-z_]+)|(?P<kind>expired|canceled))(?::times=(?P<times>\d+))?\]\]"
)

# (result type, error type or None), e.g. ("errored", "api_error") or ("expired", None).
Outcome = tuple[str, str | None]


def _as_outcome(name: str) -> Outcome:
    return (name, None) if name in ("expired", "canceled") else ("errored", name)


def marker_outcome(text: str, attempt: int) -> Outcome | None:
    """The outcome a marker in `text` asks for on the `attempt`-th submission (0-based)."""
    if "[[emulator:" not in text:
        return None
    m = MARKER.search(text)
    if m is None:
        return None
    times = m.group("times")
    if times is not None and attempt >= int(times):
        return None
    return _as_outcome(m.group("fail") or m.group("kind"))


def rate_outcome(
    seed: int, custom_id: str, attempt: int, rates: dict[str, float]
) -> Outcome | None:
    """The outcome configured rates give this submission, or None for a normal result."""
    if not rates:
        return None
    digest = hashlib.sha256(f"{seed}\x00{custom_id}\x00{attempt}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in RATE_OUTCOMES:  # fixed order, so the same seed means the same faults
        edge += rates.get(name, 0.0)
        if u < edge:
            return _as_outcome(name)
    return None


Endpoint = Literal["create", "retrieve", "list", "results", "cancel", "delete"]


class HttpFault(BaseModel):
    """One spoiled response; `endpoint` None matches any API endpoint.

    kind `status`: answer `status` with an error envelope (and retry-after-ms / x-should-retry
    when given) without doing the work; with `after_work`, once the work is done (a create is
    committed), as a gateway may answer after the API took the request. `lost_response`: do
    the work, then close the connection without answering. `truncate`: send headers and the
    first `after_bytes` of the body, then close. `slow`: wait `delay_seconds`, then answer normally. `duplicate_line` / `drop_line`
    (results only): a well-framed result file with one line repeated, or one line missing.
    `hidden` (create only): the batch is committed and answered, but the list endpoint leaves it
    out for `hidden_seconds` of emulator time or for the next `hidden_lists` list calls.

    `batch_id` restricts the fault to requests for that batch (retrieve, results, cancel,
    delete); `times` is how many matching responses it spoils before it is used up.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal[
        "status", "lost_response", "truncate", "slow", "duplicate_line", "drop_line", "hidden"
    ] = "status"
    endpoint: Endpoint | None = None
    status: int = Field(default=500, ge=400, le=599)
    error_type: str | None = None
    message: str | None = None
    retry_after_ms: int | None = Field(default=None, ge=0)
    should_retry: bool | None = None
    after_bytes: int = Field(default=100, ge=0)
    delay_seconds: float = Field(default=1.0, ge=0)
    batch_id: str | None = None
    times: int = Field(default=1, ge=1)
    hidden_seconds: float | None = Field(default=None, ge=0)
    hidden_lists: int | None = Field(default=None, ge=1)
    lose_response: bool = False  # with `hidden`: the create's answer is lost as well
    after_work: bool = False  # with `status`: the work is done first

    @model_validator(mode="after")
    def _hidden_shape(self) -> HttpFault:
        if self.kind == "hidden":
            if self.endpoint != "create":
                raise ValueError("a hidden fault needs endpoint create")
            if (self.hidden_seconds is None) == (self.hidden_lists is None):
                raise ValueError("a hidden fault needs one of hidden_seconds or hidden_lists")
        return self


STATUS_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FaultQueue:
    """Pending HTTP faults, each consumed by the first response it matches."""

    def __init__(self) -> None:
        self._faults: list[HttpFault] = []
        self._lock = threading.Lock()

    def add(self, faults: list[HttpFault]) -> int:
        with self._lock:
            self._faults.extend(faults)
            return len(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[HttpFault]:
        with self._lock:
            return list(self._faults)

    def take(self, endpoint: str, batch_id: str | None = None) -> HttpFault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.endpoint not in (None, endpoint):
                    continue
                if fault.batch_id is not None and fault.batch_id != batch_id:
                    continue
                if fault.times > 1:
                    self._faults[i] = fault.model_copy(update={"times": fault.times - 1})
                    return fault
                return self._faults.pop(i)
        return None


class ListLag:
    """Batches that exist but that the list endpoint does not show yet (the `hidden` fault).

    Retrieve, cancel and results see such a batch at once; only listing lags, as an eventually
    consistent index would. A batch shows again once the emulator clock reaches `until`, or after
    `lists` list calls have left it out.
    """

    def __init__(self) -> None:
        self._hidden: dict[str, list] = {}
        self._lock = threading.Lock()

    def hide(self, batch_id: str, until: float | None, lists: int | None) -> None:
        with self._lock:
            self._hidden[batch_id] = [until, lists]

    def hidden(self, now: float) -> set[str]:
        """The ids to leave out of a list call made now; counts that call against them."""
        with self._lock:
            out = set()
            for batch_id, (until, lists) in list(self._hidden.items()):
                if (until is not None and now >= until) or (lists is not None and lists <= 0):
                    del self._hidden[batch_id]
                    continue
                out.add(batch_id)
                if lists is not None:
                    self._hidden[batch_id][1] = lists - 1
            return out
