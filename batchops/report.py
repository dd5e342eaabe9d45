"""Rendering of plans for people (a table, Markdown for PR comments) and for scripts (JSON).

Everything renders the very same `Plan` object that apply walks.
"""

from __future__ import annotations

from typing import Any

import orjson
from tabulate import tabulate

from batchops.planner import ACTIONS, ITEM_STATES, FailedItem, ForgetItem, Plan, SubmitItem
from batchops.state import iso

MAX_LISTED = 20  # item actions listed per job in the human formats (--json lists all)


def money(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1 or round(value, 2) == value:
        return f"${value:,.2f}"
    return f"${value:,.4f}"


def plan_to_dict(plan: Plan, prices_source: str | None = None) -> dict[str, Any]:
    """The stable, versioned JSON shape of DESIGN §5."""
    summary: dict[str, Any] = dict(plan.summary())
    summary["estimated_cost_usd"] = round(plan.estimated_cost_usd, 6)
    return {
        "format_version": plan.format_version,
        "created_at": iso(plan.created_at),
        "lineage": plan.lineage,
        "serial": plan.serial,
        "spec_digest": plan.spec_digest,
        "changes": plan.changes,
        "refreshed": plan.offline_note is None,
        "offline_note": plan.offline_note,
        "summary": summary,
        "prices": prices_source,
        "jobs": [
            {
                "name": job.name,
                "counts": job.counts,
                "actions": [_action_dict(a) for a in job.actions],
                "failed": [failed_dict(f) for f in job.failed],
                "estimated_cost_usd": job.estimated_cost_usd,
                "budget_usd": job.budget_usd,
                "cost_note": job.cost_note,
            }
            for job in plan.jobs
        ],
        "batches": [
            {
                "action": b.action,
                "batch_id": b.batch_id,
                "job": b.job,
                "reason": b.reason,
                "intent_id": b.intent_id,
            }
            for b in plan.batches
        ],
    }


def failed_dict(failed: FailedItem) -> dict[str, Any]:
    return {"key": failed.key, "error_type": failed.error_type, "message": failed.message}


def _action_dict(action: SubmitItem | ForgetItem) -> dict[str, Any]:
    if isinstance(action, SubmitItem):
        return {
            "action": "submit",
            "key": action.key,
            "reason": action.reason,
            "custom_id": action.custom_id,
            "attempt": action.attempt,
        }
    return {"action": "forget", "key": action.key, "reason": action.reason}


def plan_json(plan: Plan, prices_source: str | None = None) -> str:
    return orjson.dumps(plan_to_dict(plan, prices_source), option=orjson.OPT_INDENT_2).decode()


def _job_rows(plan: Plan) -> list[list[Any]]:
    rows = []
    for job in plan.jobs:
        rows.append(
            [
                job.name,
                *(job.counts[s] for s in ITEM_STATES),
                len(job.submits),
                money(job.estimated_cost_usd),
                money(job.budget_usd),
            ]
        )
    return rows


HEADERS = ["job", *ITEM_STATES, "to send", "est. cost", "budget"]


def _sentence(plan: Plan) -> str:
    summary = plan.summary()
    if not plan.changes:
        return "No changes. State matches the specs."
    parts = [f"{summary[a]} to {a}" for a in ACTIONS if summary[a]]
    return f"Plan: {', '.join(parts)}. Estimated cost {money(plan.estimated_cost_usd)}."


def _action_lines(plan: Plan, limit: int = MAX_LISTED) -> list[str]:
    lines: list[str] = []
    for job in plan.jobs:
        for action in job.actions[:limit]:
            if isinstance(action, SubmitItem):
                extra = f" (attempt {action.attempt})" if action.reason == "retry" else ""
                lines.append(f"  + submit  {job.name}  {action.key}  [{action.reason}]{extra}")
            else:
                lines.append(f"  - forget  {job.name}  {action.key}  [{action.reason}]")
        if len(job.actions) > limit:
            lines.append(f"  … and {len(job.actions) - limit} more actions for {job.name}")
    for b in plan.batches:
        target = b.batch_id or f"intent {b.intent_id}"
        lines.append(f"  ~ {b.action:<7} {b.job}  {target}  [{b.reason}]")
    return lines


def _failed_lines(plan: Plan, limit: int = MAX_LISTED) -> list[str]:
    lines = []
    for job in plan.jobs:
        for failed in job.failed[:limit]:
            lines.append(f"  ! failed  {job.name}  {failed.key}  {failed.message}")
        if len(job.failed) > limit:
            lines.append(f"  … and {len(job.failed) - limit} more failed items in {job.name}")
    return lines


def plan_text(plan: Plan, prices_source: str | None = None) -> str:
    out = [
        tabulate(
            _job_rows(plan),
            headers=HEADERS,
            tablefmt="simple",
            colalign=("left",) + ("right",) * (len(HEADERS) - 1),
        )
    ]
    actions = _action_lines(plan)
    if actions:
        out += ["", "Actions:", *actions]
    failed = _failed_lines(plan)
    if failed:
        out += ["", "Failed (not sent again until the item changes):", *failed]
    notes = [j.cost_note for j in plan.jobs if j.cost_note]
    if plan.offline_note:
        notes.append(plan.offline_note)
    if notes:
        out += ["", *(f"Note: {n}" for n in notes)]
    out += ["", _sentence(plan)]
    if prices_source:
        out.append(f"Prices: {prices_source}.")
    return "\n".join(out)


def plan_markdown(plan: Plan, prices_source: str | None = None) -> str:
    out = [
        "### batchops plan",
        "",
        f"**{_sentence(plan)}**",
        *(["", f"> Note: {plan.offline_note}."] if plan.offline_note else []),
        "",
        tabulate(_job_rows(plan), headers=HEADERS, tablefmt="github"),
    ]
    actions = _action_lines(plan)
    if actions:
        out += [
            "",
            "<details><summary>Actions</summary>",
            "",
            "```diff",
            *actions,
            "```",
            "",
            "</details>",
        ]
    failed = _failed_lines(plan)
    if failed:
        out += [
            "",
            "<details><summary>Failed items</summary>",
            "",
            "```",
            *failed,
            "```",
            "",
            "</details>",
        ]
    footer = f"State lineage `{plan.lineage or 'new'}`, serial {plan.serial}"
    if prices_source:
        footer += f"; prices: {prices_source}"
    out += ["", f"<sub>{footer}.</sub>"]
    return "\n".join(out)
