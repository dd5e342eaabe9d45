"""`batchops results`: a job's current results joined to its input rows, streamed to a file.

Users come for the answers, not for a database. Every input key appears exactly once, in source
order: with its answer when the item has a current result (a stored success whose fingerprint is
the spec's current one), otherwise with its state (`pending`, `todo`, `failed` …) and no text.

The export streams: items are rendered one at a time (`iter_items`) and each key is looked up in
state by primary key, so a million results never sit in memory. Files are written atomically (a
temporary file in the same folder, then `os.replace`), so a reader never sees half a file and a
failed export leaves the previous one in place; a temporary file left by a killed export is removed
by the next write of the same file once it is a minute old. An output is checked like a spec's
`output` before anything is written: never the state, a spec, a data file or anything in `.git`.

CSV cells a spreadsheet would run as a formula (`=`, `+`, `-`, `@` …) are written with a leading
`'` (`batchops.safetext.csv_cell`) unless the export is asked for raw: keys and input columns come
from whoever wrote the data.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from batchops.commands.context import Context
from batchops.errors import BatchopsError
from batchops.plan.actions import Plan
from batchops.plan.build import plan_from
from batchops.plan.diff import classify
from batchops.safetext import csv_cell
from batchops.spec.desired import DesiredItem, select_jobs
from batchops.spec.items import Item, iter_items
from batchops.spec.model import Job, OutputSpec, Project, check_outputs, display_path
from batchops.state.api import StateReader

FORMATS = ("jsonl", "csv", "json")
# Columns of every row, in order; `input` (the input row) and `message` (jsonl/json only) follow.
COLUMNS = (
    "key",
    "custom_id",
    "state",
    "text",
    "detail",
    "error_type",
    "error_message",
    "stop_reason",
    "model",
    "input_tokens",
    "output_tokens",
    "batch_id",
)
UNFINISHED_STATES = ("todo", "changed", "pending", "retry")
STALE_TEMP_SECONDS = 60  # a temporary file this old is left over from a killed export


@dataclass(frozen=True)
class ExportSummary:
    job: str
    format: str
    rows: int
    path: Path | None  # None: written to a stream


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BatchopsError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    return fmt


def _job(context: Context, job_name: str) -> tuple[Job, Path]:
    job, project = _job_and_project(context, job_name)
    return job, project.root


def _job_and_project(context: Context, job_name: str) -> tuple[Job, Project]:
    project = context.project()
    (job,) = select_jobs(project, [job_name])
    return job, project


def check_output_path(context: Context, project: Project, job: Job, path: Path) -> None:
    """Refuse to export `job` to `path` when a spec's `output` could not be `path` either."""
    resolved = Path(os.path.abspath(path))
    try:
        resolved = resolved.resolve()
    except (OSError, RuntimeError):
        pass
    if not resolved.is_relative_to(project.root):
        protected = {Path(os.path.abspath(f"{p}{s}")) for p in context.protected_paths()
                     for s in ("", "-wal", "-shm", "-journal")}  # fmt: skip
        if resolved in protected or ".git" in resolved.parts:
            raise BatchopsError(f"{path}: refusing to write over the state or into .git")
        return
    probe = job.model_copy(update={"output": OutputSpec(path=resolved, format="jsonl")})
    others = tuple(j for j in project.jobs if j.name != job.name)
    where = (
        f"{display_path(job.spec_file, project.root)}: jobs.{job.name}.output.path: "
        f"{display_path(resolved, project.root)} "
    )
    problems = [
        p.removeprefix(where)
        for p in check_outputs(
            Project(project.root, project.spec_files, (probe, *others)), context.protected_paths()
        )
        if p.startswith(where)
    ]
    if problems:
        raise BatchopsError(*(f"{path}: cannot write results there: it {p}" for p in problems))


def _input_of(item: Item) -> dict[str, Any]:
    """The input row an item came from (a raw request's line for a `requests` job)."""
    if item.row is not None:
        return item.row
    return {"custom_id": item.key, "params": item.params}


def iter_results(
    context: Context, job_name: str, *, failed_only: bool = False
) -> Iterator[dict[str, Any]]:
    """One row per item of the job, in source order (only `failed` items with `failed_only`).

    `message` holds the full stored Message as an `orjson.Fragment` (pre-serialised JSON).
    """
    job, root = _job(context, job_name)
    reader = context.reader()
    try:
        yield from _rows(job, root, reader, failed_only)
    finally:
        reader.close()


def _rows(job: Job, root: Path, reader: StateReader, failed_only: bool) -> Iterator[dict[str, Any]]:
    name, max_attempts = job.name, job.max_attempts
    lookup = reader.result_lookups(name)
    for item in iter_items(job, root):
        found = lookup(item.key)
        record = found.record if found is not None else None
        state, detail = classify(
            DesiredItem(item.key, item.custom_id, item.fingerprint, 0.0), record, max_attempts
        )
        if failed_only and state != "failed":
            continue
        current = (
            found is not None
            and state == "succeeded"
            and found.result_type == "succeeded"
            and found.result_fingerprint == item.fingerprint
        )
        errored = record is not None and state in ("failed", "retry")
        yield {
            "key": item.key,
            "custom_id": item.custom_id,
            "state": state,
            "text": found.text if current and found else None,
            "detail": detail,
            "error_type": (record.error_type or record.outcome) if errored and record else None,
            "error_message": record.error_message if errored and record else None,
            "stop_reason": found.stop_reason if current and found else None,
            "model": found.model if current and found else None,
            "input_tokens": found.input_tokens if current and found else None,
            "output_tokens": found.output_tokens if current and found else None,
            "batch_id": found.batch_id if current and found else None,
            "input": _input_of(item),
            "message": orjson.Fragment(found.message)
            if current and found and found.message
            else None,
        }


# ---------------------------------------------------------------------------- writers


def write_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    out: IO[bytes],
    input_fields=(),
    *,
    raw_csv: bool = False,
) -> int:
    """Write rows to a binary stream in `fmt`; returns the number of rows.

    CSV cells that would run as a spreadsheet formula are neutralised unless `raw_csv`.
    """
    cell = _cell if raw_csv else _safe_cell
    check_format(fmt)
    count = 0
    if fmt == "jsonl":
        for row in rows:
            out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    elif fmt == "json":
        out.write(b"[")
        for row in rows:
            out.write(b"\n" if count == 0 else b",\n")
            out.write(orjson.dumps(row))
            count += 1
        out.write(b"\n]\n" if count else b"]\n")
    else:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
        try:
            writer = csv.writer(text, lineterminator="\n")
            fields = list(input_fields)
            writer.writerow([*COLUMNS, *(f"input.{f}" for f in fields)])
            for row in rows:
                source = row["input"]
                writer.writerow(
                    [
                        *(cell(row[c]) for c in COLUMNS),
                        *(cell(source.get(f)) for f in fields),
                    ]
                )
                count += 1
        finally:
            text.detach()
    out.flush()
    return count


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


def _safe_cell(value: Any) -> Any:
    return csv_cell(_cell(value))


def _input_fields(job: Job, root: Path) -> list[str]:
    """CSV header fields for the input rows: the first row's for fixed-shape sources, else all."""
    if job.requests is not None:
        return ["custom_id", "params"]
    fields: dict[str, None] = {}
    for item in iter_items(job, root):
        fields.update(dict.fromkeys(_input_of(item)))
        if job.input is not None and job.input.format == "csv":
            break  # every CSV row has the header's fields
    return list(fields)


def export(
    context: Context,
    job_name: str,
    fmt: str = "jsonl",
    out: IO[bytes] | Path | None = None,
    *,
    failed_only: bool = False,
    create_dirs: bool = False,
    raw_csv: bool = False,
) -> ExportSummary:
    """Export a job's results to a binary stream, or atomically to a file path.

    CSV cells are neutralised against formula injection unless `raw_csv`.
    """
    check_format(fmt)
    if raw_csv and fmt != "csv":
        raise BatchopsError(f"--raw-csv applies to --format csv only, not {fmt}")
    job, project = _job_and_project(context, job_name)
    fields = _input_fields(job, project.root) if fmt == "csv" else []
    rows_of = iter_results(context, job_name, failed_only=failed_only)
    if isinstance(out, Path):
        check_output_path(context, project, job, out)
        with atomic_write(out, create_dirs=create_dirs) as f:
            rows = write_rows(rows_of, fmt, f, fields, raw_csv=raw_csv)
        return ExportSummary(job_name, fmt, rows, out)
    if out is None:
        raise BatchopsError("export needs an output stream or file")
    rows = write_rows(rows_of, fmt, out, fields, raw_csv=raw_csv)
    return ExportSummary(job_name, fmt, rows, None)


@contextlib.contextmanager
def atomic_write(path: Path, *, create_dirs: bool = False) -> Iterator[IO[bytes]]:
    """Write `path` through a temporary file in its folder, renamed over it on success only."""
    path = Path(path)
    parent = path.parent
    if create_dirs:
        parent.mkdir(parents=True, exist_ok=True)
    if not parent.is_dir():
        raise BatchopsError(f"{path}: cannot write: directory {parent} does not exist")
    if path.is_dir():
        raise BatchopsError(f"{path}: cannot write: it is a directory")
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; results are not secrets
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(path: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove `.{name}.*.tmp` files beside `path` older than `older_than` seconds (left by an
    export that was killed); a younger one may belong to an export still running."""
    cutoff = time.time() - older_than
    removed = []
    prefix, suffix = f".{path.name}.", ".tmp"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        if len(name) <= len(prefix) + len(suffix):
            continue
        old = path.parent / name
        try:
            st = old.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                old.unlink()
                removed.append(old)
        except OSError:
            continue
    return removed


def write_outputs(
    context: Context, job_names: Iterable[str] | None = None, plan: Plan | None = None
) -> list[Path]:
    """Write the `output` file of every selected job that has one and no work left to do.

    A job with items pending, to do or to retry is skipped: its file would be incomplete. Called
    by `apply` at the end of its run, with the plan its last cycle made of the state as it left
    it (else the state is planned again here); returns the paths written.
    """
    project = context.project()
    jobs = [j for j in select_jobs(project, job_names) if j.output is not None]
    if not jobs:
        return []
    problems = check_outputs(project, context.protected_paths())
    if problems:  # checked when the specs loaded; checked again right before writing
        raise BatchopsError(*problems)
    if plan is None or any(plan.job(j.name) is None for j in jobs):
        desired = context.desired([j.name for j in jobs])
        reader = context.reader()
        try:
            plan = plan_from(reader, desired, context.clock())
        finally:
            reader.close()
    written = []
    for job in jobs:
        job_plan = plan.job(job.name)
        output = job.output
        if output is None or job_plan is None:
            continue
        if any(job_plan.counts[s] for s in UNFINISHED_STATES):
            continue
        export(context, job.name, output.format, output.path, create_dirs=True)
        written.append(output.path)
    return written
