"""A job's `budget_usd` holds for a whole apply, not for each of its cycles: `apply --wait` (and
the follow-up cycles after a harvest) plan again and send again, and each cycle's plan alone could
stay under the budget while together they pass it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchops.errors import BudgetExceeded
from batchops.pricing import money
from tests.projects import apply, context, rows, write_project

LONG = "a long prompt, " * 3000  # a ceiling of cents, not of a hundredth of a cent


def _ceiling_of_one_item(root: Path, emulator: str) -> float:
    write_project(root, rows(1, r1=LONG))
    plan, _ = context(root, emulator).plan()
    (job,) = plan.jobs
    return job.estimated_cost_usd


def test_apply_wait_keeps_the_whole_apply_within_the_budget(
    tmp_path: Path, emulator: str, emulator_admin
) -> None:
    """r1 is sent; then r1 is edited while its batch runs, and r2 added. The plan sends r2 now
    (one item, under a budget of one and a half items) and r1 again once its batch ends: two
    items, over the budget. Each cycle's plan alone could stay under it (r2 now, r1 later): the
    resend of r1 is counted from the first plan, which is refused before it sends anything."""
    one = _ceiling_of_one_item(tmp_path, emulator)
    budget = f"budget_usd = {one * 1.5!r}\n"
    emulator_admin.set_config(processing_seconds=2)
    write_project(tmp_path, rows(1, r1=LONG), extra=budget)
    assert apply(context(tmp_path, emulator)).submitted == 1
    write_project(tmp_path, rows(2, r1=LONG + "edited", r2=LONG + "added"), extra=budget)
    with pytest.raises(BudgetExceeded) as caught:
        apply(context(tmp_path, emulator), wait=True, timeout=60)
    (problem,) = caught.value.problems
    price = money(one)
    assert problem == (
        f"job demo: estimated cost up to {price}, with {price} for 1 item changed while in flight "
        f"(sent once their batch ends), exceeds its budget_usd {money(one * 1.5)}"
    )
    assert emulator_admin.stats()["batches_created"] == 1  # r1 first; neither r2 nor r1 again


def test_a_retry_in_a_later_cycle_counts_what_the_earlier_cycles_sent(
    tmp_path: Path, emulator: str, emulator_admin
) -> None:
    """r1 errors once (overloaded) and is retried by a later cycle of the same `apply --wait`:
    that cycle's plan alone (one item) is under a budget of one and a half items, but with what
    the first cycle sent it is over, and it is refused before it sends anything."""
    one = _ceiling_of_one_item(tmp_path, emulator)
    budget = f"budget_usd = {one * 1.5!r}\n"
    emulator_admin.set_config(processing_seconds=1)
    flaky = LONG + "[[emulator:fail=overloaded_error:times=1]]"
    write_project(tmp_path, rows(1, r1=flaky), extra=budget)
    ceiling = context(tmp_path, emulator).plan()[0].jobs[0].estimated_cost_usd
    with pytest.raises(BudgetExceeded) as caught:
        apply(context(tmp_path, emulator), wait=True, timeout=60)
    (problem,) = caught.value.problems
    price = money(ceiling)
    assert problem == (
        f"job demo: estimated cost up to {price}, with this apply's earlier cycles' {price}, exceeds "
        f"its budget_usd {money(one * 1.5)}"
    )
    assert emulator_admin.stats()["batches_created"] == 1  # the retry was not sent
