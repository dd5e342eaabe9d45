"""Rendering of plans for people (a table, Markdown for PR comments) and for scripts (JSON).

Everything renders the very same `Plan` object that apply walks.
"""

from __future__ import annotations

from typing import Any

import orjson
from tabulate import tabulate

from batchops.plan.actions import ACTIONS, ITEM_STATES, Plan, SubmitItem
from batchops.plan.serialize import plan_to_dict
from batchops.pricing import money

MAX_LISTED = 20  # item actions listed per job in the human formats (--json lists all)


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
        target = getattr(b, "batch_id", None) or f"intent {getattr(b, 'intent_id', '')}"
        lines.append(f"  ~ {b.kind:<7} {b.job}  {target}  [{b.reason}]")
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
