"""The sandbox's `wordwrap` (which ticks the time budget as it breaks long runs) writes exactly
what Jinja's does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Environment
from jinja2.filters import do_wordwrap

from batchops.spec import sandbox
from batchops.spec.sandbox import ENV, _wordwrap

PLAIN = Environment()
PIECES = st.sampled_from(["a", "b", " ", "  ", "-", "\t", "\n", "\r", "xyz", "—", "a-b"])


@settings(max_examples=400, deadline=None)
@given(
    text=st.lists(PIECES, max_size=40).map("".join),
    width=st.integers(min_value=1, max_value=12),
    break_long_words=st.booleans(),
    break_on_hyphens=st.booleans(),
    wrapstring=st.sampled_from([None, "\n", "<br>"]),
)
def test_the_sandboxed_wordwrap_is_jinjas(
    text, width, break_long_words, break_on_hyphens, wrapstring
):
    kwargs = {
        "width": width,
        "break_long_words": break_long_words,
        "wrapstring": wrapstring,
        "break_on_hyphens": break_on_hyphens,
    }
    token = sandbox.start(sandbox.Budget())
    try:
        assert _wordwrap(ENV, text, **kwargs) == do_wordwrap(PLAIN, text, **kwargs)
    finally:
        sandbox.stop(token)


def test_the_sandbox_uses_it():
    assert ENV.filters["wordwrap"].__wrapped__ is _wordwrap
