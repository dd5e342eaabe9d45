"""A SIGTERM whose `Interrupted` is raised inside a weakref callback (or a `__del__`) is printed
as "Exception ignored" and lost, and the process went on waiting with the signal ignored: a
cancelled CI job's apply ran on until it was killed. The stop is kept, and the next pause of the
wait loop (or of a create's retry) raises it again."""

from __future__ import annotations

import gc
import signal
import weakref

import pytest

from batchops import errors
from batchops.cli import _stop
from batchops.errors import Interrupted, pause


@pytest.fixture
def handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])
    errors.STOP_REQUESTED.clear()


class _Thing:
    pass


def test_a_stop_lost_in_a_weakref_callback_is_raised_at_the_next_pause(handlers):
    thing = _Thing()

    def callback(_ref):
        _stop(signal.SIGTERM, None)  # the handler, run where the signal landed

    ref = weakref.ref(thing, callback)
    del thing  # the callback runs; its Interrupted is "ignored"
    gc.collect()
    assert ref() is None
    with pytest.raises(Interrupted) as caught:
        pause(0)
    assert caught.value.exit_code == 143


def test_a_pause_without_a_stop_only_sleeps(handlers):
    pause(0)
    assert errors.STOP_REQUESTED == []
