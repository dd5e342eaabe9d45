"""The plan's stable, versioned JSON shape (DESIGN §5): what `plan --json` prints and what a saved
plan's header holds (there without the submit actions, which its request lines list)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from batchops.clock import iso
from batchops.plan.actions import (
    FailedItem,
    ForgetItem,
    JobActions,
    Plan,
    Reuse,
    ReuseItem,
    Step,
    SubmitBatch,
    SubmitItem,
)


def plan_to_dict(plan: Plan, prices_source: str | None = None) -> dict[str, Any]:
    return _shape(plan, prices_source, lambda make, items: [make(i) for i in items])


class _Many:
    """A list written element by element (a job's million actions), never built whole."""

    __slots__ = ("make", "source")

    def __init__(self, make: Callable[[Any], dict[str, Any]], source: Iterable[Any]):
        self.make = make
        self.source = source

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return map(self.make, self.source)


def plan_json_chunks(
    plan: Plan, prices_source: str | None = None, *, indent: bool = True, submits: bool = True
) -> Iterator[bytes]:
    """`orjson.dumps(plan_to_dict(plan, prices_source))` (indented by 2, or compact), byte for
    byte, in pieces: per-item actions are written a group at a time, so a million-item plan is
    never one string in memory. Without `submits`, each job's actions omit its submits (a saved
    plan's header: its request lines list them)."""
    shape = _shape(plan, prices_source, _Many, submits)
    yield from _chunks(shape, 0, indent)


_GROUP = 2048  # elements of a streamed list encoded per orjson call


def _chunks(value: Any, depth: int, indent: bool) -> Iterator[bytes]:
    option = orjson.OPT_INDENT_2 if indent else 0
    if not _streams(value):
        data = orjson.dumps(value, option=option)
        yield data.replace(b"\n", b"\n" + b"  " * depth) if indent and depth else data
        return
    inner = b"\n" + b"  " * (depth + 1) if indent else b""
    close = b"\n" + b"  " * depth if indent else b""
    if isinstance(value, dict):
        sep = b": " if indent else b":"
        yield b"{"
        for n, (key, item) in enumerate(value.items()):
            yield (b"," if n else b"") + inner + orjson.dumps(key) + sep
            yield from _chunks(item, depth + 1, indent)
        yield close + b"}"
        return
    if not isinstance(value, _Many):  # a short list holding streamed values
        yield b"["
        for n, item in enumerate(value):
            yield (b"," if n else b"") + inner
            yield from _chunks(item, depth + 1, indent)
        yield close + b"]"
        return
    if isinstance(value.source, _Actions) and not value.source.actions.others:
        yield from _submit_members(value.source.actions, depth, indent)
        yield close + b"]" if value.source.actions else b"[]"
        return
    # a streamed list: each group is encoded as one list, its brackets cut off
    group: list[Any] = []
    started = False
    for element in value:
        group.append(element)
        if len(group) == _GROUP:
            yield (b"," if started else b"[") + _members(group, depth, indent)
            started, group = True, []
    if group:
        yield (b"," if started else b"[") + _members(group, depth, indent)
        started = True
    yield close + b"]" if started else b"[]"


# what orjson escapes in a string: a key or custom_id without these is written as it is
_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def _escaped(text: str) -> str:
    return orjson.dumps(text)[1:-1].decode()


def _submit_members(actions: JobActions, depth: int, indent: bool) -> Iterator[bytes]:
    """The elements of a list of a job's submit actions, each `action_dict` as `_members`
    writes it, made from the columns of their keys and custom_ids: the text of one written
    with marks in place of its values, cut at the marks, is joined around each one's values."""
    submits = actions.submits
    marks = ("\x01", "\x02", "\x03", "\x04")
    sample = {"action": "submit", "key": marks[0], "reason": marks[1],
              "custom_id": marks[2], "attempt": marks[3]}  # fmt: skip
    text = _members([sample], depth, indent).decode()
    head, text = text.split(_escaped(marks[0]), 1)
    before_reason, text = text.split(_escaped(marks[1]), 1)
    before_cid, text = text.split(_escaped(marks[2]), 1)
    before_attempt, tail = text.split(f'"{_escaped(marks[3])}"', 1)
    # per kind: what stands between an element's key and its custom_id, and after that
    middles = [before_reason + _escaped(r) + before_cid for r, _ in submits.kinds]
    ends = [before_attempt + orjson.dumps(a).decode() + tail for _, a in submits.kinds]
    opened = False
    for keys, cids, tags in submits.id_lists():
        n = len(keys)
        if _ESCAPED.search("".join(keys)):
            keys = list(map(_escaped, keys))
        if _ESCAPED.search("".join(cids)):
            cids = list(map(_escaped, cids))
        parts: list[str] = [""] * (5 * n)
        parts[0::5] = ["," + head] * n
        parts[1::5] = keys
        parts[2::5] = [middles[0]] * n if tags is None else list(map(middles.__getitem__, tags))
        parts[3::5] = cids
        parts[4::5] = [ends[0]] * n if tags is None else list(map(ends.__getitem__, tags))
        if not opened:
            parts[0] = "[" + head
            opened = True
        try:
            yield "".join(parts).encode()
        except UnicodeEncodeError:
            orjson.dumps([keys, cids])  # a lone surrogate: orjson's error, as for the dicts
            raise


def _members(group: list[Any], depth: int, indent: bool) -> bytes:
    """The elements of `group` as they stand inside a list at `depth` (no brackets)."""
    if not indent:
        return orjson.dumps(group)[1:-1]
    data = orjson.dumps(group, option=orjson.OPT_INDENT_2)[1:-2]  # "\n  a,\n  b": no "[", "\n]"
    return data.replace(b"\n", b"\n" + b"  " * depth) if depth else data


def _streams(value: Any) -> bool:
    if isinstance(value, _Many):
        return True
    if isinstance(value, dict):
        return any(_streams(v) for v in value.values())
    if isinstance(value, list):
        return any(_streams(v) for v in value)
    return False


def _shape(
    plan: Plan,
    prices_source: str | None,
    listed: Callable[[Callable[[Any], dict[str, Any]], Iterable[Any]], Any],
    submits: bool = True,
) -> dict[str, Any]:
    """The JSON shape; `listed(make, items)` builds the per-item lists (or stands in for them);
    without `submits`, the submit actions are left out of them."""
    summary: dict[str, Any] = dict(plan.summary())
    summary["estimated_cost_usd"] = round(plan.estimated_cost_usd, 6)
    summary["expected_cost_usd"] = round(plan.expected_cost_usd, 6)
    summary["saved_usd"] = round(plan.saved_usd, 6)
    summary["cache_saving_usd"] = round(plan.cache_saving_usd, 6)
    summary["deferred_cost_usd"] = round(sum(j.deferred_usd for j in plan.jobs), 6)
    summary["batches_to_create"] = len(plan.submits)
    return {
        "format_version": plan.format_version,
        "created_at": iso(plan.created_at),
        "lineage": plan.lineage,
        "serial": plan.serial,
        "write_id": plan.write_id,
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
                "actions": listed(
                    _identity,
                    _action_dicts(job.actions) if submits else _other_action_dicts(job.actions),
                ),
                "failed": listed(failed_dict, job.failed),
                "estimated_cost_usd": job.estimated_cost_usd,
                "expected_cost_usd": job.expected_usd,
                "saved_usd": job.saved_usd,
                "cache_saving_usd": job.cache_saving_usd,
                "deferred_items": job.deferred,
                "deferred_cost_usd": job.deferred_usd,
                "budget_usd": job.budget_usd,
                "cost_note": job.cost_note,
                "expected_output": job.output_basis if job.submits else None,
            }
            for job in plan.jobs
        ],
        "batches": [step_dict(s) for s in plan.batches],
        "submit_batches": [step_dict(s) for s in plan.submits],
    }


def _identity(value: Any) -> Any:
    return value


def _action_dicts(actions: Sequence[SubmitItem | ReuseItem | ForgetItem]) -> Iterable[dict]:
    """`action_dict` of each action, in order (a JobActions' submits read straight from their
    columns: a million SubmitItems are never made to be listed)."""
    if not isinstance(actions, JobActions):
        return map(action_dict, actions)
    return _Actions(actions)


class _Actions:
    """A JobActions' `action_dict`s, in order; `_chunks` writes its submits from their columns."""

    __slots__ = ("actions",)

    def __init__(self, actions: JobActions):
        self.actions = actions

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return _job_action_dicts(self.actions)


def _other_action_dicts(actions: Sequence[SubmitItem | ReuseItem | ForgetItem]) -> Iterable[dict]:
    """`action_dict` of each action but the submits, in order (a JobActions holds them apart)."""
    if isinstance(actions, JobActions):
        return map(action_dict, actions.others)
    return (action_dict(a) for a in actions if not isinstance(a, SubmitItem))


def _job_action_dicts(actions: JobActions) -> Iterator[dict[str, Any]]:
    submits = (
        {"action": "submit", "key": key, "reason": reason, "custom_id": cid, "attempt": attempt}
        for key, cid, reason, attempt in actions.submits.ids()
    )
    n = 0
    for position, other in zip(actions.where, actions.others, strict=True):
        while n < position:
            yield next(submits)
            n += 1
        yield action_dict(other)
        n += 1
    yield from submits


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
