"""`batchops results`: a job's current results joined to its input rows, streamed to a file.

Users come for the answers, not for a database. Every input key appears exactly once, in source
order: with its answer when the item has a current result (a stored success whose fingerprint is
the spec's current one), otherwise with its state (`pending`, `todo`, `failed` …) and no text.

The export streams, a chunk of keys at a time: who each item is (key, custom_id, fingerprint) and
its input row come from `spec.inputs` (the rows cache and the data file read directly when the
cache serves the job, else a render), and each chunk's state is read with one narrow query in key
order (`succeeded_results`; the items not succeeded are then looked up whole with `results_of`),
so a million results never sit in memory and no template runs twice. Files are
written atomically (a temporary file in the same folder, then `os.replace`), so a reader never
sees half a file and a failed export leaves the previous one in place; a temporary file left by a killed export is removed
by the next write of the same file once it is a minute old. An output is checked like a spec's
`output` before anything is written: never the state, a spec, a data file or anything in `.git`.

What an answer holds is read from the stored Message, never re-rendered: `text` (its text blocks),
`tool_calls` (each tool_use block's name and input), `thinking` (opt-in), the stop reason and the
usage. With `columns` (`--columns`, or a spec's `output.columns`) each answer's JSON object — the
input of its first tool call, else its text parsed as JSON — is split into those columns; an answer
that does not parse gets a `parse_error` and is counted. `input_columns` picks which input fields
are echoed (none, for rows holding large documents).

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
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from batchops.commands.context import Context
from batchops.errors import BatchopsError
from batchops.heap import paused_gc
from batchops.plan.actions import Plan
from batchops.plan.build import plan_from
from batchops.plan.diff import classify
from batchops.safetext import FORMULA_FIRST
from batchops.spec.desired import DesiredItem, select_jobs
from batchops.spec.inputs import ExportItem, export_inputs, export_items
from batchops.spec.model import Job, OutputSpec, Project, check_outputs, display_path
from batchops.state.api import StateReader

FORMATS = ("jsonl", "csv", "json")
# Columns of every row, in order; `thinking` (opt-in) follows `text`; `output.*` and
# `parse_error` (with columns), `input` (the input row) and `message` (jsonl/json only) follow.
COLUMNS = (
    "key",
    "custom_id",
    "state",
    "text",
    "tool_calls",
    "detail",
    "error_type",
    "error_message",
    "stop_reason",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "batch_id",
)
_USAGE = ("cache_creation_input_tokens", "cache_read_input_tokens")
UNFINISHED_STATES = ("todo", "changed", "pending", "retry")
CSV_CHUNK_ROWS = 1_000  # CSV rows encoded and written at once
CHUNK_KEYS = 5_000  # keys looked up in state at once: a query per chunk, memory flat
WRITE_BUFFER = 1 << 20  # bytes gathered before each write to a file: a write call per MB
STALE_TEMP_SECONDS = 60  # a temporary file this old is left over from a killed export


@dataclass(frozen=True)
class ExportSummary:
    job: str
    format: str
    rows: int
    path: Path | None  # None: written to a stream
    parse_errors: int = 0  # succeeded answers whose JSON did not give the asked columns


@dataclass(frozen=True)
class ExportOptions:
    """What an export carries beyond the fixed columns."""

    columns: tuple[str, ...] = ()  # fields of each JSON answer, as `output.<name>` columns
    input_columns: tuple[str, ...] | None = None  # input fields echoed (None: every field)
    thinking: bool = False  # a `thinking` column with the answer's thinking blocks


def parse_column_list(text: str | None) -> tuple[str, ...] | None:
    """`a,b` → ("a", "b"); "" → () (none); None stays None (the default)."""
    if text is None:
        return None
    return tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def export_options(
    context: Context,
    job_name: str,
    columns: str | None = None,
    input_columns: str | None = None,
    *,
    thinking: bool = False,
) -> ExportOptions:
    """Options from `--columns`, `--input-columns` and `--thinking`; columns default to the
    spec's `output.columns`."""
    job, _ = _job_and_project(context, job_name)
    chosen = parse_column_list(columns)
    if chosen is None:
        chosen = job.output.columns if job.output is not None else ()
    return ExportOptions(chosen, parse_column_list(input_columns), thinking)


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


def iter_results(
    context: Context,
    job_name: str,
    *,
    failed_only: bool = False,
    options: ExportOptions = ExportOptions(),  # noqa: B008 (frozen)
) -> Iterator[dict[str, Any]]:
    """One row per item of the job, in source order (only `failed` items with `failed_only`).

    `message` holds the full stored Message as an `orjson.Fragment` (pre-serialised JSON).
    """
    for rows in _row_chunks(context, job_name, failed_only, options):
        yield from rows


def _row_chunks(
    context: Context, job_name: str, failed_only: bool, options: ExportOptions
) -> Iterator[list[dict[str, Any]]]:
    """`iter_results`' rows, a chunk of keys at a time (what the writers take)."""
    job, root = _job(context, job_name)
    items = export_items(job, root, context.prices, context.clock().date())
    reader = context.reader()
    try:
        # Every row is new dicts and lists, none in a cycle, freed as soon as written.
        with paused_gc():
            yield from _rows(job, items, reader, failed_only, options)
    finally:
        reader.close()


_NO_ANSWER: dict[str, Any] = {}


def _rows(
    job: Job,
    items: Iterator[ExportItem],
    reader: StateReader,
    failed_only: bool,
    options: ExportOptions = ExportOptions(),  # noqa: B008 (frozen)
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each chunk of `CHUNK_KEYS` items, as a list.

    Each chunk's keys are read with `succeeded_results` (one narrow query, rows in key order):
    an item whose own succeeded result has the spec's fingerprint is `succeeded` with that answer,
    and only the others are looked up whole (`results_of`) and classified.
    """
    name, max_attempts = job.name, job.max_attempts
    thinking, columns, chosen = options.thinking, options.columns, options.input_columns
    plain = not columns and not thinking  # then a message is parsed only when it may show
    fixed = plain and chosen is None  # the row's keys are the fixed ones (`COLUMNS`), then input
    no_output = dict.fromkeys(columns)
    fragment = orjson.Fragment
    new = tuple.__new__  # a NamedTuple from its fields in one C call (this runs per item)
    while chunk := list(islice(items, CHUNK_KEYS)):
        answers = reader.succeeded_results(name, [item[0] for item in chunk])
        others = [
            item[0] for item, found in zip(chunk, answers, strict=True) if found[0] != item[2]
        ]
        found_of = reader.results_of(name, others) if others else {}
        rows = []
        for (key, custom_id, fingerprint, source), found in zip(chunk, answers, strict=True):
            if found[0] == fingerprint:  # its own succeeded result, for the spec's request
                if failed_only:
                    continue
                state = "succeeded"
                detail = error_type = error_message = None
                _, text, message, stop_reason, model, input_tokens, output_tokens, batch_id = found
                if not message:
                    answer = _NO_ANSWER
                elif (
                    plain
                    and "tool_use" not in message
                    and "cache_" not in message
                    and "\\u" not in message
                ):
                    answer = _NO_ANSWER  # `_may_show`, inline: nothing shown can be in it
                else:
                    answer = _answer(message, options)
            else:
                lookup = found_of.get(key)
                record = lookup.record if lookup is not None else None
                desired = new(DesiredItem, (key, custom_id, fingerprint, 0.0, 0, None))
                state, detail = classify(desired, record, max_attempts)
                if failed_only and state != "failed":
                    continue
                error_type = error_message = None
                if record is not None and (state == "failed" or state == "retry"):
                    error_type = record.error_type or record.outcome
                    error_message = record.error_message
                text = stop_reason = model = input_tokens = output_tokens = None
                batch_id = message = None
                answer = _NO_ANSWER
            if answer is _NO_ANSWER:
                tool_calls = cache_creation = cache_read = None
            else:
                tool_calls = answer.get("tool_calls")
                cache_creation = answer.get("cache_creation_input_tokens")
                cache_read = answer.get("cache_read_input_tokens")
            if fixed:  # the default columns, every input field: one dict display (per item)
                rows.append(
                    {
                        "key": key,
                        "custom_id": custom_id,
                        "state": state,
                        "text": text,
                        "tool_calls": tool_calls,
                        "detail": detail,
                        "error_type": error_type,
                        "error_message": error_message,
                        "stop_reason": stop_reason,
                        "model": model,
                        "input_tokens": input_tokens,
                        "output_tokens": output_tokens,
                        "cache_creation_input_tokens": cache_creation,
                        "cache_read_input_tokens": cache_read,
                        "batch_id": batch_id,
                        "input": source,
                        "message": fragment(message) if message else None,
                    }
                )
                continue
            row = {
                "key": key,
                "custom_id": custom_id,
                "state": state,
                "text": text,
                **({"thinking": answer.get("thinking")} if thinking else _NO_ANSWER),
                "tool_calls": tool_calls,
                "detail": detail,
                "error_type": error_type,
                "error_message": error_message,
                "stop_reason": stop_reason,
                "model": model,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache_creation,
                "cache_read_input_tokens": cache_read,
                "batch_id": batch_id,
            }
            if columns:
                row["output"] = answer.get("output", no_output)
                row["parse_error"] = answer.get("parse_error")
            if chosen is None:
                row["input"] = source
            elif chosen:
                row["input"] = {f: source.get(f) for f in chosen}
            row["message"] = fragment(message) if message else None
            rows.append(row)
        if rows:
            yield rows


def _answer(message: str | None, options: ExportOptions) -> dict[str, Any]:
    """What the export shows of a stored Message: tool calls, thinking, cache usage, columns."""
    if not message:
        return {}
    if not options.columns and not _may_show(message, options.thinking):
        return {}  # none of what is shown can be in it: every value shown is None
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return {"parse_error": "the stored message is not JSON"} if options.columns else {}
    blocks = [b for b in parsed.get("content") or () if isinstance(b, dict)]
    calls = [
        {"name": b.get("name"), "input": b.get("input")}
        for b in blocks
        if b.get("type") in ("tool_use", "server_tool_use")
    ]
    usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else {}
    out: dict[str, Any] = {"tool_calls": calls or None}
    for name in _USAGE:
        out[name] = usage.get(name)
    if options.thinking:
        thoughts = [
            b.get("thinking") if b.get("type") == "thinking" else "[redacted]"
            for b in blocks
            if b.get("type") in ("thinking", "redacted_thinking")
        ]
        out["thinking"] = "\n\n".join(t or "" for t in thoughts) if thoughts else None
    if options.columns:
        value, error = _structured(blocks, calls)
        if error is not None:
            out["parse_error"] = error
            out["output"] = dict.fromkeys(options.columns)
        else:
            out["output"] = {c: value.get(c) for c in options.columns}
    return out


def _may_show(message: str, thinking: bool) -> bool:
    """False when `message` cannot hold a tool call, cache usage or (with `thinking`) a thought:
    it has none of their words and no \\u escape that could spell one. Then it is not parsed."""
    return (
        "tool_use" in message
        or "cache_" in message
        or "\\u" in message
        or (thinking and "thinking" in message)
    )


def _structured(
    blocks: list[dict[str, Any]], calls: list[dict[str, Any]]
) -> tuple[dict[str, Any], str | None]:
    """The answer's JSON object (its first tool call's input, else its text as JSON), or why not."""
    if calls:
        value = calls[0]["input"]
        if isinstance(value, dict):
            return value, None
        return {}, "the tool call's input is not an object"
    text = "".join(b.get("text") or "" for b in blocks if b.get("type") == "text").strip()
    if text.startswith("```"):  # a fenced answer: ```json … ```
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rstrip().removesuffix("```")
    if not text:
        return {}, "no JSON in the answer (no text, no tool call)"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return {}, f"not JSON (error at character {e.pos + 1})"
    if not isinstance(value, dict):
        return {}, f"not a JSON object ({type(value).__name__})"
    return value, None


# ---------------------------------------------------------------------------- writers


def write_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    out: IO[bytes],
    input_fields=(),
    *,
    raw_csv: bool = False,
    options: ExportOptions = ExportOptions(),  # noqa: B008 (frozen)
) -> int:
    """Write rows to a binary stream in `fmt`; returns the number of rows.

    CSV cells that would run as a spreadsheet formula are neutralised unless `raw_csv`.
    """
    rows = iter(rows)
    chunks = iter(lambda: list(islice(rows, CSV_CHUNK_ROWS)), [])
    return write_chunks(chunks, fmt, out, input_fields, raw_csv=raw_csv, options=options)


def write_chunks(
    chunks: Iterable[list[dict[str, Any]]],
    fmt: str,
    out: IO[bytes],
    input_fields=(),
    *,
    raw_csv: bool = False,
    options: ExportOptions = ExportOptions(),  # noqa: B008 (frozen)
) -> int:
    """`write_rows` of rows that come in lists. CSV `input_fields` None: the first row's, and
    `_FieldsGrew` raised at a row with another (the caller writes again with them all)."""
    check_format(fmt)
    count = 0
    # Row by row: each row's bytes are freed as soon as written, so the same memory serves the
    # next one (a chunk's rows joined first would touch fresh memory for every row).
    dumps, write = orjson.dumps, out.write
    if fmt == "jsonl":
        newline = orjson.OPT_APPEND_NEWLINE
        for rows in chunks:
            for row in rows:
                write(dumps(row, option=newline))
            count += len(rows)
    elif fmt == "json":
        write(b"[")
        for rows in chunks:
            for row in rows:
                write(b"\n" if count == 0 else b",\n")
                write(dumps(row))
                count += 1
        write(b"\n]\n" if count else b"]\n")
    else:
        fields = None if input_fields is None else list(input_fields)
        count = _write_csv(chunks, out, fields, options, safe=not raw_csv)
    out.flush()
    return count


class _FieldsGrew(Exception):
    """A row has an input field that the CSV header, learnt from the first row, lacks."""


def _write_csv(
    chunks: Iterable[list[dict[str, Any]]],
    out: IO[bytes],
    fields: list[str] | None,
    options: ExportOptions,
    *,
    safe: bool,
) -> int:
    """Rows as CSV. With `fields` None, the input fields are the first row's, and `_FieldsGrew`
    is raised at the first row holding another (every row must be written, none filtered)."""
    chunks = iter(chunks)
    known: set[str] | None = None
    if fields is None:
        first = next(chunks, None)
        fields = list(first[0]["input"]) if first else []
        known = set(fields)
        if first:
            chunks = chain([first], chunks)
    columns = list(COLUMNS)
    if options.thinking:
        columns.insert(columns.index("text") + 1, "thinking")
    outputs = list(options.columns)
    tail = ["parse_error"] if outputs else []
    header = [*columns, *(f"output.{c}" for c in outputs), *tail, *(f"input.{f}" for f in fields)]
    fixed = itemgetter(*columns, *tail)
    # A row's cells joined by commas are its CSV line, unless a cell holds a comma, a quote or a
    # line break: only such a row is written by the csv module (which quotes exactly those).
    commas = len(header) - 1
    quoted = io.StringIO()
    writer = csv.writer(quoted, lineterminator="\n")
    writer.writerow(header)
    out.write(quoted.getvalue().encode())
    starts, count = FORMULA_FIRST, 0
    for rows in chunks:
        lines = []
        for row in rows:
            values = list(fixed(row))
            if outputs:
                parsed = row.get("output") or {}
                values[len(columns) : len(columns)] = [parsed.get(c) for c in outputs]
            source = row.get("input") or {}
            if known is not None and not source.keys() <= known:
                raise _FieldsGrew
            if fields:
                values += [source.get(f) for f in fields]
            # Each value as the text of its cell, inline (this runs per cell): None is an empty
            # cell, a string that would start a formula gets a leading ' unless raw
            # (`safetext.csv_cell`), a number is written as the csv module writes it, a list or
            # dict is JSON (`_text_cell`).
            cells = [
                ""
                if v is None
                else (("'" + v if v[:1] in starts else v) if safe else v)
                if type(v) is str
                else str(v)
                if type(v) is int
                else _text_cell(v)
                for v in values
            ]
            line = ",".join(cells)
            if '"' in line or "\n" in line or "\r" in line or line.count(",") != commas:
                quoted.seek(0)
                quoted.truncate()
                writer.writerow(cells)
                line = quoted.getvalue()[:-1]
            lines.append(line)
        if lines:
            out.write(("\n".join(lines) + "\n").encode())
        count += len(rows)
    return count


def _text_cell(value: Any) -> str:
    """The text the csv module writes for a value that is not None, a string or an int."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)  # a float as its repr, a bool as True / False


def _input_fields(
    context: Context, job: Job, root: Path, chosen: tuple[str, ...] | None = None
) -> list[str]:
    """CSV header fields for the input rows: the first row's for fixed-shape sources, else all."""
    if chosen is not None:
        return list(chosen)
    if job.requests is not None:
        return ["custom_id", "params"]
    fields: dict[str, None] = {}
    last: Any = None  # the field names of the row before, as a set-like view
    for row in export_inputs(job, root, context.prices, context.clock().date()):
        names = row.keys()
        if names != last:  # the same names as the row before add none
            fields.update(dict.fromkeys(row))
            last = names
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
    options: ExportOptions | None = None,
) -> ExportSummary:
    """Export a job's results to a binary stream, or atomically to a file path.

    CSV cells are neutralised against formula injection unless `raw_csv`. Without `options`,
    the columns are the spec's `output.columns`.
    """
    check_format(fmt)
    if raw_csv and fmt != "csv":
        raise BatchopsError(f"--raw-csv applies to --format csv only, not {fmt}")
    job, project = _job_and_project(context, job_name)
    if options is None:
        options = ExportOptions(columns=job.output.columns if job.output is not None else ())
    # A CSV file's header names the input fields of every row: learnt from the first row as the
    # rows are written, and only when a later row holds another field, read from the whole
    # source first and written again. A stream cannot be written again: read first.
    learn = (
        fmt == "csv"
        and isinstance(out, Path)
        and not failed_only
        and options.input_columns is None
        and job.requests is None
        and (job.input is None or job.input.format != "csv")
    )
    fields: list[str] | None = []
    if learn:
        fields = None  # learnt as the rows are written
    elif fmt == "csv":
        fields = _input_fields(context, job, project.root, options.input_columns)
    parse_errors = 0

    def counted(chunks: Iterable[list[dict[str, Any]]]) -> Iterator[list[dict[str, Any]]]:
        nonlocal parse_errors
        for rows in chunks:
            parse_errors += sum(row["parse_error"] is not None for row in rows)
            yield rows

    def chunks_of() -> Iterator[list[dict[str, Any]]]:
        chunks = _row_chunks(context, job_name, failed_only, options)
        return counted(chunks) if options.columns else chunks

    written = dict(raw_csv=raw_csv, options=options)
    chunks = chunks_of()
    if isinstance(out, Path):
        check_output_path(context, project, job, out)
        with atomic_write(out, create_dirs=create_dirs) as f:
            try:
                rows = write_chunks(chunks, fmt, f, fields, **written)
            except _FieldsGrew:
                chunks.close()  # its state reader with it
                f.seek(0)
                f.truncate()
                parse_errors = 0
                fields = _input_fields(context, job, project.root)
                rows = write_chunks(chunks_of(), fmt, f, fields, **written)
        return ExportSummary(job_name, fmt, rows, out, parse_errors)
    if out is None:
        raise BatchopsError("export needs an output stream or file")
    rows = write_chunks(chunks, fmt, out, fields, **written)
    return ExportSummary(job_name, fmt, rows, None, parse_errors)


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
        with os.fdopen(fd, "wb", buffering=WRITE_BUFFER) as f:
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
