"""The plan's stable, versioned JSON shape (DESIGN §5): what `plan --json` prints and what a saved
plan's header holds."""

from __future__ import annotations

from typing import Any

from batchops.clock import iso
from batchops.plan.actions import (
    FailedItem,
    ForgetItem,
    Plan,
    Reuse,
    ReuseItem,
    Step,
    SubmitBatch,
    SubmitItem,
)


def plan_to_dict(plan: Plan, prices_source: str | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = dict(plan.summary())
    summary["estimated_cost_usd"] = round(plan.estimated_cost_usd, 6)
    summary["expected_cost_usd"] = round(plan.expected_cost_usd, 6)
    summary["saved_usd"] = round(plan.saved_usd, 6)
    summary["cache_saving_usd"] = round(plan.cache_saving_usd, 6)
    summary["batches_to_create"] = len(plan.submits)
    return {
        "format_version": plan.format_version,
        "created_at": iso(plan.created_at),
        "lineage": plan.lineage,
        "serial": plan.serial,
        "spec_digest": plan.spec_digest,
        "job_names": list(plan.job_names) if plan.job_names is not None else None,
        "changes": plan.changes,
        "refreshed": plan.offline_note is None,
        "offline_note": plan.offline_note,
        "notes": list(plan.notes),
        "summary": summary,
        "prices": prices_source,
        "jobs": [
            {
                "name": job.name,
                "counts": job.counts,
                "actions": [action_dict(a) for a in job.actions],
                "failed": [failed_dict(f) for f in job.failed],
                "estimated_cost_usd": job.estimated_cost_usd,
                "expected_cost_usd": job.expected_usd,
                "saved_usd": job.saved_usd,
                "cache_saving_usd": job.cache_saving_usd,
                "budget_usd": job.budget_usd,
                "cost_note": job.cost_note,
                "expected_output": job.output_basis if job.submits else None,
            }
            for job in plan.jobs
        ],
        "batches": [step_dict(s) for s in plan.batches],
        "submit_batches": [step_dict(s) for s in plan.submits],
    }


def failed_dict(failed: FailedItem) -> dict[str, Any]:
    return {"key": failed.key, "error_type": failed.error_type, "message": failed.message}


def action_dict(action: SubmitItem | ReuseItem | ForgetItem) -> dict[str, Any]:
    if isinstance(action, SubmitItem):
        return {
            "action": "submit",
            "key": action.key,
            "reason": action.reason,
            "custom_id": action.custom_id,
            "attempt": action.attempt,
        }
    if isinstance(action, ReuseItem):
        return {
            "action": "reuse",
            "key": action.key,
            "reason": action.reason,
            "custom_id": action.custom_id,
            "fingerprint": action.fingerprint,
            "result_id": action.result_id,
            "saved_usd": round(action.saved_usd, 6),
        }
    return {"action": "forget", "key": action.key, "reason": action.reason}


def step_dict(step: Step) -> dict[str, Any]:
    """A step without its items (a SubmitBatch's requests are listed apart)."""
    if isinstance(step, SubmitBatch):
        expected, high = step.costs()
        return {
            "action": "submit",
            "job": step.job,
            "betas": list(step.betas),
            "requests": len(step.items),
            "request_bytes": step.request_bytes,
            "estimated_cost_usd": round(high, 6),
            "expected_cost_usd": round(expected, 6),
        }
    if isinstance(step, Reuse):
        return {
            "action": "reuse",
            "job": step.job,
            "items": [
                {
                    "key": i.key,
                    "custom_id": i.custom_id,
                    "fingerprint": i.fingerprint,
                    "result_id": i.result_id,
                }
                for i in step.items
            ],
            "saved_usd": round(step.saved_usd, 6),
        }
    out: dict[str, Any] = {"action": step.kind, "job": step.job}
    for name in ("from_job", "batch_id", "intent_id", "request_count", "items", "drift", "reason"):
        if hasattr(step, name):
            out[name] = getattr(step, name)
    if step.kind == "forget":
        out["keys"] = list(step.keys)  # type: ignore[union-attr]
        out["remembered"] = list(step.remembered)  # type: ignore[union-attr]
    return out
