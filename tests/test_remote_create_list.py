"""A create that never left this machine, and a lost create whose list anchor is gone: neither
may hold items for long, and neither may pay twice. Each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx2
import pytest
from click.testing import CliRunner

from batchops.apply.evaluator import CREATE_GRACE_ENV
from batchops.cli import cli
from tests import statedb
from tests.projects import API_KEY, apply, context, rows, write_project
from tests.test_apply import submissions

STATE = Path("state") / "batchops.db"


class _RefuseCreates(httpx2.HTTPTransport):
    """The SDK's own transport, but the first `refusals` creates fail to connect, as when the
    API's address refuses the connection: the request's bytes never leave this machine."""

    def __init__(self, refusals: int, error: type[Exception] = httpx2.ConnectError) -> None:
        super().__init__()
        self.refusals, self.error, self.creates = refusals, error, 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path == "/v1/messages/batches":
            self.creates += 1
            if self.creates <= self.refusals:
                raise self.error("[Errno 111] Connection refused", request=request)
        return super().handle_request(request)


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch):
    """Make every SDK client batchops builds send through a `_RefuseCreates`; yields a function
    that sets how many creates are refused, and returns the transport (to count its creates)."""
    made: list[_RefuseCreates] = []
    real = anthropic.DefaultHttpxClient

    def refuse(count: int, error: type[Exception] = httpx2.ConnectError) -> list[_RefuseCreates]:
        def client(**kwargs):
            transport = _RefuseCreates(count, error)
            made.append(transport)
            return real(transport=transport, **kwargs)

        monkeypatch.setattr(anthropic, "DefaultHttpxClient", client)
        return made

    return refuse


@pytest.mark.parametrize("error", [httpx2.ConnectError, httpx2.ConnectTimeout])
def test_a_create_refused_before_it_was_sent_is_sent_again_at_once(
    tmp_path, emulator, emulator_admin, refusing, monkeypatch, error
):
    """A connection refused (or not made in time) is proof that nothing reached the API: the
    items are sent again in the same apply, not held for the 15 minutes a create whose response
    was lost is held (the grace is left at its default here: a held item times the wait out)."""
    monkeypatch.delenv(CREATE_GRACE_ENV, raising=False)
    write_project(tmp_path, rows(3))
    transports = refusing(1, error)
    report = apply(context(tmp_path, emulator), wait=True, timeout=30)
    assert not report.timed_out and not report.problems, report
    assert report.results_stored == 3
    assert sum(t.creates for t in transports) == 2  # refused once, then sent
    assert emulator_admin.stats()["batches_created"] == 1
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {1}
    assert statedb.rows(tmp_path / STATE, "select status from intents order by created_at") == [
        ("unsent",),
        ("created",),
    ]


def test_a_create_refused_every_time_fails_in_one_line_and_holds_nothing(
    tmp_path, emulator, emulator_admin, refusing, monkeypatch
):
    """Refused on every try: apply stops with one line naming the refusal, and the items are
    free to be sent by the next apply, at once (no intent is left waiting out a grace)."""
    monkeypatch.delenv(CREATE_GRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    write_project(tmp_path, rows(2))
    refusing(100)
    failed = CliRunner().invoke(cli, ["apply", "--yes"])
    assert failed.exit_code != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: create batch failed: connection error ([Errno 111] Connection refused)"
    ], failed.stderr
    assert emulator_admin.stats()["batches_created"] == 0
    assert {s for (s,) in statedb.rows(tmp_path / STATE, "select status from intents")} == {
        "unsent"
    }
    refusing(0)
    again = CliRunner().invoke(cli, ["apply", "--yes", "--wait", "--poll-interval", "0.1"])
    assert again.exit_code == 0, again.output
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}


def test_a_lost_create_is_adopted_after_its_list_anchor_was_deleted(
    tmp_path, emulator, emulator_admin, sdk_client
):
    """The batch list's newest batch at the time of a create (its anchor) is deleted before the
    lost create is looked for: by a teammate, or by a prune. Whether the API then refuses the
    anchor as a cursor (as here) or pages from it as if nothing were newer, the batch the create
    made must still be found and adopted, its items neither held for ever nor sent twice."""
    emulator_admin.set_config(processing_seconds=5, deleted_cursors="refused")
    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator)
    first = apply(ctx, wait=True, timeout=60)  # batch A: the newest when r2's create is sent
    assert first.results_stored == 1 and not first.problems, first
    (anchor,) = first.batches_created
    write_project(tmp_path, rows(2))
    emulator_admin.lose_next_create_response()
    held = apply(ctx)  # batch B is made; its create's response is lost: r2 is held
    assert not held.batches_created and not held.problems, held
    sdk_client.messages.batches.delete(anchor)  # someone else deletes A (harvested, ended)
    emulator_admin.advance_clock(10)  # B ends
    done = apply(ctx, wait=True, timeout=60)
    assert len(done.adopted) == 1 and not done.problems, done
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}
    assert emulator_admin.stats()["batches_created"] == 2


@pytest.mark.parametrize("setting", ["accepted", "refused"])
def test_the_emulator_answers_a_deleted_cursor_as_set(
    emulator, emulator_admin, sdk_client, setting
):
    emulator_admin.set_config(processing_seconds=0, deleted_cursors=setting)
    request = {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 8,
               "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    older = sdk_client.messages.batches.create(requests=[request])
    newer = sdk_client.messages.batches.create(requests=[request])
    emulator_admin.advance_clock(5)
    sdk_client.messages.batches.delete(older.id)
    if setting == "accepted":
        page = sdk_client.messages.batches.list(before_id=older.id, limit=10)
        assert [b.id for b in page.data] == [newer.id]
    else:
        with pytest.raises(anthropic.BadRequestError, match="Unknown pagination cursor"):
            sdk_client.messages.batches.list(before_id=older.id, limit=10)


@pytest.mark.parametrize("status", [500, 529])
def test_a_create_answered_5xx_after_it_was_committed_is_not_sent_twice(
    tmp_path, emulator, emulator_admin, status
):
    """A 529 (overloaded) may come from any layer, after the API took the request, as a 500 may
    (ANTHROPIC_BATCHES_API.md §7: "a timeout or a 5xx after the server has accepted the batch
    can create a duplicate batch"): the batch it made is looked for and adopted, never made
    again by a retried create."""
    emulator_admin.set_config(processing_seconds=1)
    write_project(tmp_path, rows(2))
    emulator_admin.add_faults(
        [{"kind": "status", "status": status, "endpoint": "create", "after_work": True}]
    )
    report = apply(context(tmp_path, emulator), wait=True, timeout=60)
    assert not report.timed_out and not report.problems, report
    assert emulator_admin.stats()["batches_created"] == 1
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}
    assert len(report.adopted) == 1 and report.results_stored == 2


def test_a_create_answered_429_is_sent_again_at_once(tmp_path, emulator, emulator_admin):
    """A 429 sheds load before a request is processed (rate and queue limits): nothing was made,
    and the create is tried again in the same apply."""
    write_project(tmp_path, rows(2))
    emulator_admin.add_faults([{"kind": "status", "status": 429, "endpoint": "create"}])
    report = apply(context(tmp_path, emulator), wait=True, timeout=30)
    assert not report.timed_out and not report.problems, report
    assert emulator_admin.stats()["batches_created"] == 1
    assert not report.adopted and report.results_stored == 2
