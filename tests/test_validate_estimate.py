"""`validate` estimates a job that fits one batch without the planner (`one_batch_estimate`):
the same figures the planner's split gives (`job_estimate`), prompt-cache prefixes included,
and none for a job of more than one batch."""

from __future__ import annotations

import pytest

from batchops.commands.context import job_estimate, one_batch_estimate
from batchops.plan.diff import BatchLimits
from tests.projects import context
from tests.test_cost import write_auto_project


@pytest.mark.parametrize("cache", ['cache = "auto"\n', ""])
def test_one_batch_is_estimated_as_the_planner_does(tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    write_auto_project(tmp_path, 40, cache=cache)
    desired = context(tmp_path, None).desired(priors=False)
    (job,) = desired.jobs
    limits = BatchLimits(100_000, 250_000_000)
    alone = one_batch_estimate(job.items, limits.max_requests, limits.max_bytes)
    assert alone is not None and alone == pytest.approx(job_estimate(job, limits), rel=1e-12)
    if cache:  # the prefix is written once, read by the rest: below the items' sum
        assert alone[0] < sum(i.estimate.expected for i in job.items)
    assert one_batch_estimate(job.items, 39, limits.max_bytes) is None  # two batches
    assert one_batch_estimate(job.items, 40, 1024 + 100) is None  # past the bytes
