"""The SQLite state's migrations, registered with sqlite-utils (imported by writers only: a
read-only command never imports sqlite-utils, ~50 ms of start-up; `batchops.state.sqlite` lists
their names in KNOWN_MIGRATIONS, which a test keeps equal to this module's)."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from batchops.state.sqlite import MIGRATION_SET

migrations = Migrations(MIGRATION_SET)


@migrations()
def m0001_initial(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["jobs"].create(
        {"name": str, "spec_file": str, "first_seen_at": str, "last_applied_at": str}, pk="name"
    )
    db["items"].create(
        {
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,  # fingerprint of the newest attempt
            "attempts": int,  # attempts sent for that fingerprint
            "inflight_attempt": int,  # attempts.id of the unfinished attempt, or null
            "outcome": str,  # of the last finished attempt: succeeded|errored|expired|canceled|lost
            "error_type": str,
            "error_message": str,
            "canceled_by_us": int,
            "result_id": int,  # results.id of the current successful result
            "updated_at": str,
        },
        pk=("job", "key"),
        not_null={"job", "key", "custom_id"},
        defaults={"attempts": 0, "canceled_by_us": 0},
    )
    db["attempts"].create(
        {
            "id": int,
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,
            "number": int,  # 1-based attempt number for this fingerprint
            "intent_id": str,
            "batch_id": str,  # null until the create is confirmed or adopted
            "status": str,  # open|sent|unsent|done|lost
            "outcome": str,
            "created_at": str,
        },
        pk="id",
    )
    db["attempts"].create_index(["intent_id"])
    db["attempts"].create_index(["batch_id", "custom_id"])
    db["intents"].create(
        {
            "id": str,
            "job": str,
            "created_at": str,
            "request_count": int,
            "body_bytes": int,
            "status": str,  # open|created|adopted|unsent
            "batch_id": str,
            "plan_id": str,
        },
        pk="id",
    )
    db["batches"].create(
        {
            "id": str,
            "job": str,
            "intent_id": str,
            "request_count": int,
            "processing_status": str,
            "request_counts": str,  # JSON of the remote request_counts
            "created_at": str,
            "expires_at": str,
            "ended_at": str,
            "cancel_initiated_at": str,
            "archived_at": str,
            "results_expire_at": str,
            "harvested_at": str,
            "canceled_by_us_at": str,
            "pruned_at": str,
            "drift": str,  # what happened outside batchops, if anything
            "refreshed_at": str,
        },
        pk="id",
    )
    db["results"].create(
        {
            "id": int,
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,
            "batch_id": str,
            "attempt_id": int,
            "type": str,  # succeeded|errored|expired|canceled
            "text": str,
            "message": str,  # the full Message JSON (succeeded only)
            "stop_reason": str,
            "error_type": str,
            "error_message": str,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "cache_creation_input_tokens": int,
            "cache_creation_1h_input_tokens": int,
            "cache_read_input_tokens": int,
            "received_at": str,
        },
        pk="id",
    )
    db["results"].create_index(["job", "key"])
    db["results"].create_index(["batch_id"])
    db["lock"].create(
        {"id": int, "lock_id": str, "pid": int, "host": str, "since": str, "command": str},
        pk="id",
    )
    db["applied_plans"].create({"plan_id": str, "applied_at": str}, pk="plan_id")


@migrations()
def m0002_items_forgotten_at(db: Database) -> None:
    """Forgotten items keep their row (and so their result): re-adding one sends nothing."""
    db["items"].add_column("forgotten_at", str)


@migrations()
def m0003_harvest_indexes(db: Database) -> None:
    """A harvest updates items and attempts from its results in one statement each."""
    db["items"].create_index(["inflight_attempt"])
    db["results"].create_index(["attempt_id"])


@migrations()
def m0004_intent_list_anchor(db: Database) -> None:
    """Where the remote batch list stood before a create: adoption looks only after it."""
    db["intents"].add_column("list_anchor", str)


@migrations()
def m0005_leases(db: Database) -> None:
    """Leases per job (or `*` for the whole state) with an expiry, instead of one lock row."""
    db["leases"].create(
        {
            "name": str,
            "lock_id": str,
            "pid": int,
            "host": str,
            "since": str,
            "command": str,
            "expires_at": str,
            "pid_ns": str,
            "started": str,
        },
        pk="name",
    )
    db["leases"].create_index(["lock_id"])
    # set just before the create call: an intent without it never reached the API
    db["intents"].add_column("create_sent_at", str)


@migrations()
def m0006_lean_result_indexes(db: Database) -> None:
    """A harvest inserts a batch's results without the indexes no read needs: `results` is read
    by id (from items), by batch and by job, never by (job, key) or by attempt."""
    db.execute("drop index if exists idx_results_attempt_id")
    db.execute("drop index if exists idx_results_job_key")
    db["results"].create_index(["job"])


@migrations()
def m0007_results_without_batch_index(db: Database) -> None:
    """A harvest appends a batch's results at the end of `results`, and the index by batch grew
    at its end with them. SQLite writes pages to the WAL in the middle of a large transaction
    once its cache is full; the index's pages along that end were written and then changed
    again, and a page changed after it was written makes the commit read back and checksum the
    WAL from that page on: 245 MB of the 263 MB a harvest of 100,000 long replies wrote. The
    index served one read, a batch's count of results in `state show`, which a batch's done
    attempts now answer (one each result stored)."""
    db.execute("drop index if exists idx_results_batch_id")


@migrations()
def m0008_attempts_room_to_settle(db: Database) -> None:
    """PostgreSQL's attempts leave room on each page, so that a harvest's settle stays on the
    page (see `batchops.state.postgres`). SQLite rewrites a changed row in place on its
    page: nothing changes here, the name keeps the two backends' migrations in step."""


@migrations()
def m0009_attempts_done_with_their_batch(db: Database) -> None:
    """A harvest no longer sets each attempt it answered done: the attempts of a harvested
    batch are done, their status left `sent` (see `batchops.state.shared`). Nothing changes in
    the tables; the name makes a batchops from before refuse this state, which it would read as
    attempts still in flight (and `state rm` would give them up as lost)."""
