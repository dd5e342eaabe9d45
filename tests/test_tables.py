"""The tables `validate` and `plan` print are written without tabulate when every cell is
plain (`views.tables.simple_table`): the text must be exactly tabulate's."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from tabulate import tabulate

from batchops.views import tables

# Mostly cells tabulate prints as they are, so that whole tables of them are common; the rest
# are cells whose text depends on the column's type (numbers, booleans, spaces, empty, ANSI).
PLAIN = st.text(alphabet="bcdxz019$.,-_/ ()", min_size=1, max_size=6)
TRICKY = st.one_of(
    st.sampled_from(
        ["1", "-2", "1e5", "inf", "NaN", "1,000", "1_0", "True", "False", "", " a", "a ", "b c ",
         " b", "é", "a\nb", "\x1b[31mx\x1b[0m", "1.5", "$1,000.00", "-", ".", "nan-x", "a"]
    ),
    st.text(alphabet="abz019$.,-_ eEin", max_size=6),
)  # fmt: skip
TEXTS = st.one_of(PLAIN, PLAIN, TRICKY)
CELLS = st.one_of(
    PLAIN, PLAIN, PLAIN, PLAIN, st.integers(-(10**12), 10**12), TRICKY, st.booleans(), st.none(),
    st.floats(),
)  # fmt: skip


@st.composite
def table_args(draw):
    n = draw(st.integers(1, 5))
    headers = draw(st.lists(TEXTS, min_size=n, max_size=n))
    rows = draw(st.lists(st.lists(CELLS, min_size=n, max_size=n), max_size=5))
    colalign = draw(
        st.lists(
            st.sampled_from(["left", "right"] * 4 + ["center", "decimal"]), min_size=n, max_size=n
        )
    )
    return rows, headers, colalign


@settings(max_examples=3000, deadline=None)
@given(table_args())
# a column whose every cell reads as a number or a boolean is printed tabulate's way
@example(([["1,000.5", "b"], [5, "c"]], ["n", "m"], ["left", "left"]))
@example(([["1e5"], [7]], ["n"], ["left"]))
@example(([["-inf"], [7]], ["n"], ["left"]))
@example(([["1_0.5"], [-7]], ["n"], ["right"]))
@example(([["True"], [True]], ["n"], ["right"]))
@example(([["-", 1], ["$1.00", 2]], ["budget", "n"], ["right", "right"]))
@example(([["-"], [3]], ["n"], ["right"]))
def test_plain_tables_are_tabulates(args):
    rows, headers, colalign = args
    expected = tabulate(rows, headers=headers, colalign=colalign, intfmt=",")
    assert tables.simple_table(rows, headers, colalign) == expected
    plain = tables._plain_table(rows, headers, colalign)
    assert plain is None or plain == expected


def test_the_tables_of_validate_and_plan_are_plain():
    rows = [
        ["answer-quality-judge", "jobs/evals.toml", "requests", 12, "(per request)", "$0.0496"],
        ["ticket-sentiment", "jobs/support.toml", "input", 16, "claude-haiku-4-5", "$0.0010"],
        ["alpha", "jobs/x.json", "items", 1_000_000, "claude-sonnet-4-6", "$1,234.5678"],
    ]
    headers = ["job", "spec", "source", "items", "model", "est. cost"]
    align = ("left", "left", "left", "right", "left", "right")
    plain = tables._plain_table(rows, headers, align)
    assert plain is not None
    assert plain.splitlines()[-1].split()[3] == "1,000,000"  # thousands separated
    assert plain == tabulate(rows, headers=headers, colalign=align, intfmt=",")
    assert tables._plain_table([], headers, align) == tabulate([], headers=headers, colalign=align)


class _Job:
    def __init__(self, name: str, counts: dict[str, int]) -> None:
        self.name, self.counts = name, counts


class _Plan:
    def __init__(self, jobs: list[_Job]) -> None:
        self.jobs = jobs


COUNTS = ("succeeded", "pending", "todo", "changed", "retry", "failed")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(PLAIN, TRICKY, st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)),
            st.lists(st.integers(0, 10**7), min_size=len(COUNTS), max_size=len(COUNTS)),
        ),
        max_size=4,
    )
)
def test_apply_summary_is_tabulates_default_table(jobs):
    """apply's closing table (`job_counts_table`) is the table tabulate makes of it with its
    own default alignment, whether or not it is written without tabulate."""
    plan = _Plan([_Job(name, dict(zip(COUNTS, counts, strict=True))) for name, counts in jobs])
    rows = [
        [j.name, j.counts["succeeded"], j.counts["pending"],
         j.counts["todo"] + j.counts["changed"] + j.counts["retry"], j.counts["failed"]]
        for j in plan.jobs
    ]  # fmt: skip
    headers = ["job", "succeeded", "pending", "to send", "failed"]
    assert tables.job_counts_table(plan) == tabulate(rows, headers=headers, intfmt=",")
