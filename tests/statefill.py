"""A small project and a hand-filled state for the status, results and state-surgery tests.

The state is written row by row with fixed timestamps (no emulator), so outputs are exact:

    key    in state                                   planner state
    r1     succeeded (current); an older success       succeeded
    r2     in flight in msgbatch_live                  pending
    r3     api_error, 1 of 3 attempts                  retry
    r4     invalid_request_error                       failed
    r5     -                                           todo
    r6     succeeded for an older fingerprint          changed
    gone   succeeded, no longer in the spec            removed
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchops.commands.context import Context, Settings
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from batchops.state.sqlite import SqliteWriter as StateStore

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
OLD_FP = "sha256:" + "0" * 64
ROWS = [{"id": f"r{i}", "text": f"text number {i}"} for i in range(1, 7)]


def write_project(root: Path, *, output: str | None = "out/demo.jsonl") -> Path:
    jobs = root / "jobs"
    (jobs / "data").mkdir(parents=True, exist_ok=True)
    (jobs / "data" / "rows.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8"
    )
    spec = (
        "version = 1\n\n[jobs.demo]\n"
        'model = "claude-haiku-4-5"\nmax_tokens = 16\nmax_attempts = 3\n'
        'prompt = "Classify: {{ text }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
    )
    if output:
        spec += f'output = {{ path = "{output}" }}\n'
    (jobs / "demo.toml").write_text(spec, encoding="utf-8")
    return jobs


def context(root: Path, base_url: str | None = None) -> Context:
    return Context(
        Settings(
            jobs_path=root / "jobs",
            state_path=root / "state" / "batchops.db",
            root=root,
            base_url=base_url,
            api_key="test-key" if base_url else None,
        ),
        clock=lambda: NOW,
    )


def items_of(root: Path) -> dict[str, tuple[str, str]]:
    """key → (custom_id, current fingerprint) of the demo job."""
    project = load_project(root / "jobs", root)
    (job,) = project.jobs
    return {i.key: (i.custom_id, i.fingerprint) for i in iter_items(job, project.root)}


def message(text: str, usage: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": f"msg_{text[:6]}",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        },
        separators=(",", ":"),
    )


class Filler:
    def __init__(self, path: Path):
        self.store = StateStore.open(path)
        self.db = self.store.db
        self.next_attempt = 1

    def close(self) -> None:
        self.store.close()

    def batch(self, batch_id: str, status: str, created: str, **fields: Any) -> None:
        row = {
            "id": batch_id,
            "job": "demo",
            "intent_id": f"intent_{batch_id}",
            "request_count": fields.pop("request_count", 1),
            "processing_status": status,
            "request_counts": fields.pop("request_counts", None),
            "created_at": created,
            "expires_at": fields.pop("expires_at", None),
            "ended_at": fields.pop("ended_at", None),
            "results_expire_at": fields.pop("results_expire_at", None),
            "harvested_at": fields.pop("harvested_at", None),
            **fields,
        }
        self.db["batches"].insert(row)
        self.db["intents"].insert(
            {
                "id": f"intent_{batch_id}",
                "job": "demo",
                "created_at": created,
                "request_count": row["request_count"],
                "status": "created",
                "batch_id": batch_id,
            }
        )

    def attempt(
        self, key: str, custom_id: str, fp: str, batch_id: str, status: str, outcome: str | None
    ) -> int:
        attempt_id = self.next_attempt
        self.next_attempt += 1
        self.db["attempts"].insert(
            {
                "id": attempt_id,
                "job": "demo",
                "key": key,
                "custom_id": custom_id,
                "fingerprint": fp,
                "number": 1,
                "intent_id": f"intent_{batch_id}",
                "batch_id": batch_id,
                "status": status,
                "outcome": outcome,
                "created_at": "2026-03-01T00:00:00Z",
            }
        )
        return attempt_id

    def result(
        self,
        key: str,
        custom_id: str,
        fp: str,
        batch_id: str,
        attempt_id: int,
        kind: str,
        text: str | None = None,
        usage: dict[str, int] | None = None,
        error: tuple[str, str] | None = None,
    ) -> int:
        usage = usage or {}
        creation = usage.get("cache_creation_input_tokens", 0)
        write_1h = usage.pop("write_1h", 0)
        full_usage = {**usage, "cache_creation": {"ephemeral_1h_input_tokens": write_1h}}
        cursor = self.db["results"].insert(
            {
                "job": "demo",
                "key": key,
                "custom_id": custom_id,
                "fingerprint": fp,
                "batch_id": batch_id,
                "attempt_id": attempt_id,
                "type": kind,
                "text": text,
                "message": message(text, full_usage) if kind == "succeeded" else None,
                "stop_reason": "end_turn" if kind == "succeeded" else None,
                "error_type": error[0] if error else None,
                "error_message": error[1] if error else None,
                "model": "claude-haiku-4-5" if kind == "succeeded" else None,
                "input_tokens": usage.get("input_tokens"),
                "output_tokens": usage.get("output_tokens"),
                "cache_creation_input_tokens": creation,
                "cache_creation_1h_input_tokens": write_1h,
                "cache_read_input_tokens": usage.get("cache_read_input_tokens", 0),
                "received_at": "2026-03-06T00:00:00Z",
            }
        )
        return cursor.last_pk

    def item(self, key: str, custom_id: str, fp: str, **fields: Any) -> None:
        self.db["items"].insert(
            {
                "job": "demo",
                "key": key,
                "custom_id": custom_id,
                "fingerprint": fp,
                "attempts": fields.pop("attempts", 1),
                "updated_at": "2026-03-06T00:00:00Z",
                **fields,
            }
        )


def fill_demo_state(root: Path) -> Path:
    """Write the state described in the module docstring; returns the state path."""
    ids = items_of(root)
    path = root / "state" / "batchops.db"
    f = Filler(path)
    cid = {k: v[0] for k, v in ids.items()}
    fp = {k: v[1] for k, v in ids.items()}
    gone_cid = "demo-gone-aaaaaaaaaaaa"
    with f.store._transaction():
        f.batch(
            "msgbatch_old",
            "ended",
            "2026-03-01T00:00:00Z",
            request_count=5,
            request_counts='{"canceled":0,"errored":2,"expired":0,"processing":0,"succeeded":3}',
            expires_at="2026-03-02T00:00:00Z",
            ended_at="2026-03-01T01:00:00Z",
            results_expire_at="2026-03-30T00:00:00Z",
            harvested_at="2026-03-01T02:00:00Z",
        )
        f.batch(
            "msgbatch_new",
            "ended",
            "2026-03-05T00:00:00Z",
            request_counts='{"canceled":0,"errored":0,"expired":0,"processing":0,"succeeded":1}',
            expires_at="2026-03-06T00:00:00Z",
            ended_at="2026-03-05T01:00:00Z",
            results_expire_at="2026-04-03T00:00:00Z",
            harvested_at="2026-03-05T02:00:00Z",
        )
        f.batch(
            "msgbatch_live",
            "in_progress",
            "2026-03-10T09:00:00Z",
            request_counts='{"canceled":0,"errored":0,"expired":0,"processing":1,"succeeded":0}',
            expires_at="2026-03-11T09:00:00Z",
            results_expire_at="2026-04-08T09:00:00Z",
        )
        # r1: an old success (history), then the current one.
        a = f.attempt("r1", cid["r1"], OLD_FP, "msgbatch_old", "done", "succeeded")
        f.result(
            "r1",
            cid["r1"],
            OLD_FP,
            "msgbatch_old",
            a,
            "succeeded",
            "old answer",
            {"input_tokens": 100, "output_tokens": 10},
        )
        a = f.attempt("r1", cid["r1"], fp["r1"], "msgbatch_new", "done", "succeeded")
        usage = {
            "input_tokens": 1000,
            "output_tokens": 20,
            "cache_creation_input_tokens": 404,
            "write_1h": 100,
            "cache_read_input_tokens": 2000,
        }
        current = f.result(
            "r1", cid["r1"], fp["r1"], "msgbatch_new", a, "succeeded", "positive", usage
        )
        f.item("r1", cid["r1"], fp["r1"], outcome="succeeded", result_id=current)
        # r2: in flight.
        a = f.attempt("r2", cid["r2"], fp["r2"], "msgbatch_live", "sent", None)
        f.item("r2", cid["r2"], fp["r2"], inflight_attempt=a)
        # r3: retryable error; r4: final error.
        a = f.attempt("r3", cid["r3"], fp["r3"], "msgbatch_old", "done", "errored")
        f.result(
            "r3",
            cid["r3"],
            fp["r3"],
            "msgbatch_old",
            a,
            "errored",
            error=("api_error", "Internal server error"),
        )
        f.item(
            "r3",
            cid["r3"],
            fp["r3"],
            outcome="errored",
            error_type="api_error",
            error_message="Internal server error",
        )
        a = f.attempt("r4", cid["r4"], fp["r4"], "msgbatch_old", "done", "errored")
        f.result(
            "r4",
            cid["r4"],
            fp["r4"],
            "msgbatch_old",
            a,
            "errored",
            error=("invalid_request_error", "max_tokens: too large"),
        )
        f.item(
            "r4",
            cid["r4"],
            fp["r4"],
            outcome="errored",
            error_type="invalid_request_error",
            error_message="max_tokens: too large",
        )
        # r6: succeeded, but for an older version of its prompt.
        a = f.attempt("r6", cid["r6"], OLD_FP, "msgbatch_old", "done", "succeeded")
        old = f.result(
            "r6",
            cid["r6"],
            OLD_FP,
            "msgbatch_old",
            a,
            "succeeded",
            "stale",
            {"input_tokens": 200, "output_tokens": 8},
        )
        f.item("r6", cid["r6"], OLD_FP, outcome="succeeded", result_id=old)
        # gone: no longer in the spec.
        a = f.attempt("gone", gone_cid, OLD_FP, "msgbatch_old", "done", "succeeded")
        res = f.result(
            "gone",
            gone_cid,
            OLD_FP,
            "msgbatch_old",
            a,
            "succeeded",
            "bye",
            {"input_tokens": 42, "output_tokens": 4},
        )
        f.item("gone", gone_cid, OLD_FP, outcome="succeeded", result_id=res)
        f.db["jobs"].insert({"name": "demo", "first_seen_at": "2026-03-01T00:00:00Z"})
    f.close()
    return path


def copy_state(path: Path, location: Path | str) -> None:
    """Copy the SQLite state file at `path` into the empty state at `location` through the state
    API (`dump_tables` / `load_tables`, as `state push` does)."""
    from batchops.state import open_reader, open_writer

    source, target = open_reader(path), open_writer(location, "test fill")
    try:
        target.load_tables(source.dump_tables(), expected=source.table_counts())
    finally:
        target.close()
        source.close()


def fill_demo_state_at(root: Path, location: Path | str) -> None:
    """`fill_demo_state`, at `location`: a PostgreSQL state gets a copy of the filled file through
    the state API (`dump_tables` / `load_tables`, as `state push` does), and the file goes."""
    from batchops.state import is_postgres

    path = fill_demo_state(root)
    if not is_postgres(location):
        return
    copy_state(path, location)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
