"""`confirm_gone`: a batch the API answers 404 for reads as deleted only once the list, which
shows a new batch late, has caught up with its making: it lists a batch made after it, or the
batch is older than the list's lag allowance. Before, an absence from a list that had not caught
up (even an empty list) was taken as proof, and a batch just made was sent again."""

from __future__ import annotations

from datetime import timedelta

import pytest

from batchops.remote.client import LIST_LAG_ENV, BatchesClient, list_lag
from tests.conftest import DUMMY_API_KEY

PARAMS = {
    "model": "claude-haiku-4-5",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


def _made(sdk_client, custom_id: str):
    return sdk_client.messages.batches.create(requests=[{"custom_id": custom_id, "params": PARAMS}])


def test_a_deleted_batch_is_gone_once_the_list_has_caught_up(
    emulator, sdk_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LIST_LAG_ENV, raising=False)
    assert list_lag() == timedelta(minutes=15)
    ours = _made(sdk_client, "ours")  # processing_seconds=0: ended, so it may be deleted
    sdk_client.messages.batches.delete(ours.id)
    client = BatchesClient(base_url=emulator, api_key=DUMMY_API_KEY)
    try:
        made = ours.created_at
        # the newest batch, just made: its absence proves nothing yet
        assert not client.confirm_gone(ours.id, made, made + timedelta(minutes=1))
        assert not client.confirm_gone(ours.id, made, None)
        # past the lag allowance, by the clock given
        assert client.confirm_gone(ours.id, made, made + timedelta(minutes=15))
        # a batch made after it is listed: the list has caught up, whatever the clock
        _made(sdk_client, "theirs")
        assert client.confirm_gone(ours.id, made, made + timedelta(minutes=1))
        # a batch the list still shows is not gone, however old
        kept = _made(sdk_client, "kept")
        assert not client.confirm_gone(kept.id, kept.created_at, made + timedelta(days=1))
    finally:
        client.close()


def test_a_new_batch_deleted_before_its_harvest_is_not_said_to_exist(
    tmp_path, emulator, emulator_admin, ended_unharvested, sdk_client, monkeypatch
) -> None:
    """A batch deleted outside batchops minutes after it was made, before its harvest: the
    batch and its results answer 404 and the list lacks it, but the list may not have caught
    up yet. The harvest's problem said "its results answered 404 although it exists", which
    is false, and gave no hint of when it would be judged."""
    monkeypatch.delenv(LIST_LAG_ENV, raising=False)
    from tests.projects import apply, context

    ctx = context(tmp_path, emulator)
    emulator_admin.not_found(ended_unharvested, endpoint="results", times=1)
    first = apply(ctx)  # its harvest met a passing 404: the batch is ended, not harvested
    assert first.problems == [
        f"harvest of batch {ended_unharvested} (demo): its results answered 404 although it exists"
    ]
    sdk_client.messages.batches.delete(ended_unharvested)
    second = apply(ctx)
    assert second.problems == [
        f"harvest of batch {ended_unharvested} (demo): the batch and its results answer 404 and"
        " the list of batches lacks it, but the list may not show a batch this new yet: it is"
        " taken as deleted once the list shows a newer batch or it is 15 minutes old"
    ]
    assert second.submitted == 0


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e30", "soon"])
def test_a_list_lag_that_is_no_duration_is_the_default(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """`BATCHOPS_LIST_LAG_SECONDS=inf` made `timedelta` raise OverflowError once a batch
    answered 404: 'unexpected OverflowError (a bug in batchops)'."""
    monkeypatch.setenv(LIST_LAG_ENV, value)
    assert list_lag() == timedelta(minutes=15)
