"""Review of e9ca5fb / aa48ca5: a create answered, then a connection refused on the redirect the
SDK follows; a single results 404 in the last day of retention. Each test fails on those commits."""

from __future__ import annotations

import json
import socket

import anthropic
import httpx2

from tests import statedb
from tests.projects import apply, context, rows, write_project
from tests.test_apply import submissions

DAY = 24 * 3600
HOUR = 3600
KEYS = ("r1", "r2")


def _dead_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _SeeOtherAfterCreate(httpx2.HTTPTransport):
    """The SDK's own transport behind a gateway that, once the API has taken the first create,
    answers `303 See Other` pointing at the new batch on a host that refuses the connection.
    The SDK follows redirects, so the create fails with a ConnectError, raised after every byte
    of the create was sent and the batch made."""

    def __init__(self) -> None:
        super().__init__()
        self.creates = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/messages/batches":
            self.creates += 1
            if self.creates == 1 and response.status_code == 200:
                batch_id = json.loads(response.read())["id"]
                response.close()
                where = f"http://127.0.0.1:{_dead_port()}/v1/messages/batches/{batch_id}"
                return httpx2.Response(303, headers={"location": where}, request=request)
        return response


def test_a_create_made_then_redirected_to_a_refused_host_is_not_sent_again(
    tmp_path, emulator, emulator_admin, monkeypatch
):
    real = anthropic.DefaultHttpxClient
    monkeypatch.setattr(
        anthropic,
        "DefaultHttpxClient",
        lambda **kwargs: real(transport=_SeeOtherAfterCreate(), **kwargs),
    )
    write_project(tmp_path, rows(2))
    apply(context(tmp_path, emulator))
    # the first create made a batch: the ConnectError came on the redirect that followed it
    assert emulator_admin.stats()["batches_created"] == 1
    assert {submissions(emulator_admin, k) for k in KEYS} == {1}


# -- a single results 404 in the last day of retention, with a clock that is right


def test_one_results_404_a_day_before_expiry_does_not_throw_away_served_results(
    tmp_path, emulator, emulator_admin, ended_unharvested
):
    # Day 28 and 2 hours, by the server's clock and ours alike: the results are served, the
    # batch is not archived (the retrieve right after the 404 says so). One 404 from the
    # results URL (the code's own rule: a 404 is a question) is taken as the end of retention.
    emulator_admin.advance_clock(28 * DAY + 2 * HOUR)
    emulator_admin.not_found(ended_unharvested, endpoint="results", times=1)
    report = apply(context(tmp_path, emulator), wait=True)
    assert report.requeued == [], (report.requeued, report.drift)
    assert {submissions(emulator_admin, k) for k in KEYS} == {1}  # paid once
    assert statedb.rows(
        tmp_path / "state" / "batchops.db", "select drift from batches where id = ?",
        (ended_unharvested,),
    ) == [(None,)]  # fmt: skip
