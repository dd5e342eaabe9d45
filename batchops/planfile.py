"""Saved plans (`plan -o FILE`, `apply FILE`).

A plan file is JSON Lines: the first line is the header (the plan in its JSON shape, with a plan id,
the state lineage and serial and the spec digest it was made from); each further line is one exact
request to send: `{"job", "key", "custom_id", "fingerprint", "reason", "attempt", "params"}`.
Streaming keeps a million-request plan out of memory. The API key is never written.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from batchops.errors import PlanError
from batchops.planner import Plan
from batchops.report import plan_to_dict
from batchops.spec.desired import Desired, items_for

MAGIC = "batchops-plan"


@dataclass(frozen=True)
class SavedPlan:
    path: Path
    plan_id: str
    lineage: str | None
    serial: int
    spec_digest: str
    header: dict[str, Any]

    def requests(self) -> Iterator[dict[str, Any]]:
        with self.path.open("rb") as fh:
            next(fh)
            for line in fh:
                if line.strip():
                    yield orjson.loads(line)


def save(plan: Plan, desired: Desired, path: Path, prices_source: str | None) -> str:
    """Write the plan and every request it would send; atomically (temporary file, then rename)."""
    plan_id = str(uuid.uuid4())
    header = {
        "kind": MAGIC,
        "plan_id": plan_id,
        "job_names": None if desired.all_jobs_in_scope else [j.name for j in desired.jobs],
        "plan": plan_to_dict(plan, prices_source),
    }
    path = Path(path)
    if not path.parent.is_dir():
        raise PlanError(f"{path}: directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(header) + b"\n")
            for job in plan.jobs:
                submits = {a.key: a for a in job.submits}
                if not submits:
                    continue
                for item in items_for(desired.project, job.name, set(submits)):
                    action = submits[item.key]
                    fh.write(
                        orjson.dumps(
                            {
                                "job": job.name,
                                "key": item.key,
                                "custom_id": item.custom_id,
                                "fingerprint": item.fingerprint,
                                "reason": action.reason,
                                "attempt": action.attempt,
                                "params": item.params,
                            }
                        )
                        + b"\n"
                    )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return plan_id


def load(path: Path) -> SavedPlan:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            header = orjson.loads(fh.readline())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file") from None
    except (orjson.JSONDecodeError, OSError) as exc:
        raise PlanError(f"{path}: not a batchops plan file ({exc})") from None
    if not isinstance(header, dict) or header.get("kind") != MAGIC:
        raise PlanError(f"{path}: not a batchops plan file")
    plan = header["plan"]
    return SavedPlan(
        path,
        header["plan_id"],
        plan.get("lineage"),
        int(plan.get("serial", 0)),
        plan.get("spec_digest", ""),
        header,
    )
