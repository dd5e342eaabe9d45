"""Rendering of plans for people (a table, Markdown for PR comments) and for scripts (JSON).

Everything renders the very same `Plan` object that apply walks. Keys, reasons and error messages
come from specs, data files and the API, so every one of them passes through `batchops.safetext`:
on a terminal no control character is printed (a key cannot forge a plan line or clear the
screen), and in Markdown they sit inside code blocks whose fence no key can close.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from batchops.plan.actions import (
    ACTIONS,
    ITEM_STATES,
    JobPlan,
    Move,
    Plan,
    ReuseItem,
    SubmitItem,
)
from batchops.plan.serialize import plan_json_chunks, plan_to_dict
from batchops.pricing import money
from batchops.safetext import markdown_block, markdown_code, markdown_text, terminal
from batchops.views.tables import simple_table, tabulate
from batchops.views.text import plural, shorten

MAX_LISTED = 20  # item actions listed per job in the human formats (--json lists all)
# GitHub refuses a comment over 65,536 characters; stay under it with room for the summary line.
MARKDOWN_CAP = 65_536
_MARKDOWN_BUDGET = MARKDOWN_CAP - 1_000
_WRITE_ID_SHOWN = 12  # of a write id's 32 hex digits: as git shows a commit
_FIELD_CAP = 300  # a key or message longer than this is cut in Markdown (the text plan has all)
_NOTE_CAP = 1_000  # likewise a note (one can quote a model name of any length)


def plan_json(plan: Plan, prices_source: str | None = None) -> str:
    return orjson.dumps(plan_to_dict(plan, prices_source), option=orjson.OPT_INDENT_2).decode()


def plan_json_lines(
    plan: Plan, prices_source: str | None = None, size: int = 1 << 20
) -> Iterator[bytes]:
    """`plan_json` and a newline as UTF-8, in pieces of about `size` bytes (a million-item plan
    is written as it is encoded, never held as one string)."""
    pending: list[bytes] = []
    held = 0
    for chunk in plan_json_chunks(plan, prices_source):
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    pending.append(b"\n")
    yield b"".join(pending)


def _job_rows(plan: Plan) -> list[list[Any]]:
    rows = []
    for job in plan.jobs:
        rows.append(
            [
                job.name,
                *(job.counts[s] for s in ITEM_STATES),
                len(job.submits),
                len(job.reuses),
                money(job.expected_usd),
                money(job.estimated_cost_usd),
                money(job.budget_usd),
            ]
        )
    return rows


HEADERS = ["job", *ITEM_STATES, "to send", "reuse", "est. cost", "up to", "budget"]


def _sentence(plan: Plan) -> str:
    summary = plan.summary()
    deferred = sum(j.deferred for j in plan.jobs)
    later = (
        f" {plural(deferred, 'item')} changed while in flight: sent once their batch ends, up "
        f"to {money(sum(j.deferred_usd for j in plan.jobs))} (counted against budget_usd)."
        if deferred
        else ""
    )
    if not plan.changes:
        if later:
            return f"No changes now.{later}"
        return "No changes. State matches the specs."
    parts = [f"{summary[a]:,} to {a}" for a in ACTIONS if summary[a]]
    expected, ceiling = money(plan.expected_cost_usd), money(plan.estimated_cost_usd)
    cost = f"Estimated cost {expected}"
    if ceiling != expected:  # as shown: $0.0000 and <$0.0001 differ, two amounts under it do not
        cost += f" (up to {ceiling})"
    if plan.saved_usd:
        cost += f"; reuse saves {money(plan.saved_usd)}"
    if plan.cache_saving_usd:
        cost += f"; prompt caching (cache = auto) saves {money(plan.cache_saving_usd)}"
    return f"Plan: {', '.join(parts)}. {cost}.{later}"


def _action_lines(
    plan: Plan, limit: int = MAX_LISTED, indent: str = "  ", batch_mark: str = "~", cap: int = 0
) -> list[str]:
    """One line per action; `+`/`-`/`batch_mark` after `indent` (none for a GitHub diff block)."""

    def safe(value: object) -> str:
        shown = terminal(value)
        return shorten(shown, cap) if cap else shown

    lines: list[str] = []
    for job in plan.jobs:
        for action in job.actions[:limit]:
            key, reason = safe(action.key), safe(action.reason)
            if isinstance(action, SubmitItem):
                extra = f" (attempt {action.attempt})" if action.reason == "retry" else ""
                lines.append(f"{indent}+ submit  {job.name}  {key}  [{reason}]{extra}")
            elif isinstance(action, ReuseItem):
                lines.append(f"{indent}= reuse   {job.name}  {key}  [{reason}]")
            else:
                lines.append(f"{indent}- forget  {job.name}  {key}  [{reason}]")
        if len(job.actions) > limit:
            more = plural(len(job.actions) - limit, "more action")
            lines.append(f"  … and {more} for {job.name}")
    for b in plan.batches:
        target = getattr(b, "batch_id", None) or f"intent {getattr(b, 'intent_id', '')}"
        if isinstance(b, Move):
            target = f"from {b.from_job}"
        lines.append(
            f"{indent}{batch_mark} {b.kind:<7} {safe(b.job)}  {safe(target)}  [{safe(b.reason)}]"
        )
    return lines


def _failed_lines(plan: Plan, limit: int = MAX_LISTED, cap: int = 0) -> list[str]:
    def safe(value: object) -> str:
        shown = terminal(value)
        return shorten(shown, cap) if cap else shown

    lines = []
    for job in plan.jobs:
        for failed in job.failed[:limit]:
            lines.append(f"  ! failed  {job.name}  {safe(failed.key)}  {safe(failed.message)}")
        if len(job.failed) > limit:
            more = plural(len(job.failed) - limit, "more failed item")
            lines.append(f"  … and {more} in {job.name}")
    return lines


def _notes(plan: Plan) -> list[str]:
    notes = [f"{j.name}: {j.cost_note}" for j in plan.jobs if j.cost_note]
    notes += [f"{j.name}: expected output {j.output_basis}" for j in plan.jobs if _basis(j)]
    if plan.offline_note:
        notes.append(plan.offline_note)
    return [terminal(n) for n in notes]


def _basis(job: JobPlan) -> bool:
    """The expected output's basis is worth a note where the job sends something."""
    return bool(job.output_basis and job.submits)


FAILED_HEADING = (
    "Failed (not sent again until the item changes, or, once its attempts are used up,"
    " max_attempts is raised):"
)


def plan_text(plan: Plan, prices_source: str | None = None) -> str:
    out = [
        simple_table(
            _job_rows(plan),
            headers=HEADERS,
            colalign=("left",) + ("right",) * (len(HEADERS) - 1),
        )
    ]
    actions = _action_lines(plan)
    if actions:
        out += ["", "Actions:", *actions]
    failed = _failed_lines(plan)
    if failed:
        out += ["", FAILED_HEADING, *failed]
    notes = _notes(plan)
    if notes:
        out += ["", *(f"Note: {n}" for n in notes)]
    out += ["", _sentence(plan)]
    if prices_source:
        out.append(f"Prices: {terminal(prices_source)}.")
    return "\n".join(out)


def _fit(lines: list[str], budget: int) -> tuple[list[str], int]:
    """The first lines of `lines` that fit in `budget` characters, and how many were left out."""
    kept: list[str] = []
    used = 0
    for line in lines:
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    return kept, len(lines) - len(kept)


def _markdown_note(note: str) -> str:
    """One note as escaped Markdown prose, cut to _NOTE_CAP characters with a marker saying so."""
    if len(note) <= _NOTE_CAP:
        return markdown_text(note, entities=True)
    return (
        markdown_text(shorten(note, _NOTE_CAP), entities=True)
        + f" _(cut to {_NOTE_CAP:,} characters: `batchops plan` shows the whole note)_"
    )


def _markdown_footer(plan: Plan, prices_source: str | None) -> str:
    """The closing `<sub>` line. It names the write that made the state as well as its lineage and
    serial: two copies of one state (after `state push`) share those two. A prices file's path
    and `as_of` come from a pull request: they are cut to _FIELD_CAP and escaped with entities,
    so no `<` of theirs closes the `<sub>`."""
    lineage = markdown_code(shorten(terminal(plan.lineage or "new"), _FIELD_CAP))
    footer = f"State lineage {lineage}, serial {plan.serial}"
    if plan.write_id:
        footer += f", write {markdown_code(terminal(plan.write_id)[:_WRITE_ID_SHOWN])}"
    if prices_source:
        shown = markdown_text(shorten(terminal(prices_source), _FIELD_CAP), entities=True)
        footer += f"; prices: {shown}"
    return f"<sub>{footer}.</sub>"


def _details(title: str, block: str) -> list[str]:
    return ["", f"<details><summary>{title}</summary>", "", block, "", "</details>"]


def _size(lines: list[str]) -> int:
    """Characters `lines` take joined by newlines (one more than they do: a newline at the end)."""
    return sum(len(line) + 1 for line in lines)


def plan_markdown(plan: Plan, prices_source: str | None = None) -> str:
    """The plan as a GitHub pull-request comment, always under GitHub's 65,536 characters.

    Actions are a ```diff block (GitHub colours `+` submit, `-` forget and `!` batch actions);
    every key and message is inside a code block no key can close. Every part is bounded: keys,
    messages and the footer are cut at _FIELD_CAP, notes at _NOTE_CAP and to half the budget in
    all. What does not fit is left out, and a closing line says how much.
    """
    head = ["### batchops plan", "", f"**{_sentence(plan)}**"]
    tail = ["", _markdown_footer(plan, prices_source)]
    budget = _MARKDOWN_BUDGET - _size(head + tail) - 1  # the blank line after the notes

    left_out: list[str] = []
    drift = [f"\n> Drift: {_markdown_note(terminal(n))}" for n in plan.notes]
    notes = drift + [f"\n> Note: {_markdown_note(n)}" for n in _notes(plan)]
    notes, notes_out = _fit(notes, budget // 2)
    if notes_out:
        left_out.append(plural(notes_out, "note"))
    out = [*head, *notes, ""]
    budget -= _size(notes)

    table = tabulate(_job_rows(plan), headers=HEADERS, tablefmt="github").splitlines()
    rows, rows_out = _fit(table[2:], budget - _size(table[:2]))
    if rows_out:
        left_out.append(plural(rows_out, "job row"))
    out += table[:2] + rows
    budget -= _size(table[:2] + rows)

    for title, lines, info, what in (
        ("Actions", _action_lines(plan, indent="", batch_mark="!", cap=_FIELD_CAP), "diff", "action line"),
        ("Failed items", _failed_lines(plan, cap=_FIELD_CAP), "", "failed-item line"),
    ):  # fmt: skip
        if not lines:
            continue
        kept, dropped = _fit(lines, budget - _size(_details(title, "```" + info + "\n\n```")))
        section: list[str] = []
        while kept and not section:  # a backtick run in a key lengthens the fence
            candidate = _details(title, markdown_block("\n".join(kept), info))
            if _size(candidate) <= budget:
                section = candidate
            else:
                kept.pop()
                dropped += 1
        if dropped:
            left_out.append(plural(dropped, what))
        out += section
        budget -= _size(section)
    if left_out:
        out += [
            "",
            f"**Left out to stay under GitHub's {MARKDOWN_CAP:,}-character comment limit: "
            f"{', '.join(left_out)}. Run `batchops plan` for the whole plan.**",
        ]
    return "\n".join(out + tail)
