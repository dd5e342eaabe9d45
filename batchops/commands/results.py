"""`batchops results`: a job's current results joined to its input rows, streamed to a file.

Users come for the answers, not for a database. Every input key appears exactly once, in source
order: with its answer when the item has a current result (a stored success whose fingerprint is
the spec's current one), otherwise with its state as `plan` and `status` tell it (`pending`,
`todo`, `failed` …; `pending` too while it waits for the answer on its way to the very same
request of another item, as the planner's fan-out rule has it) and no text.

The export streams, a chunk of keys at a time: who each item is (key, custom_id, fingerprint) and
its input row come from `spec.inputs` (the rows cache and the data file read directly when the
cache serves the job, else a render), and each chunk's state is read with one narrow query in key
order (`succeeded_results`; the items not succeeded are then looked up whole with `results_of`),
so a million results never sit in memory and no template runs twice. A plain answer (nothing of
it shown but its text) is written from its fields, as jsonl into the bytes `orjson.dumps` gives
its row and as CSV cells, without building the row; in jsonl, a run of plain answers is made
column by column, in C calls (`_plain_run`). A large job whose rows are kept is exported
on as many processes as there are idle cores (at most MAX_PROCESSES): of n, a forked child makes
every n-th chunk at the same time and sends its bytes through a pipe (`_parts`); the bytes are
those of one process. Files are
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

A job renamed by a spec's `moved` entry is read under its old name until an apply moves its
rows, as `plan` and `status` read it.

CSV cells a spreadsheet would run as a formula (`=`, `+`, `-`, `@` …) are written with a leading
`'` (`batchops.safetext.csv_cell`) unless the export is asked for raw: keys and input columns come
from whoever wrote the data.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import chain, count, islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NoReturn, TypeVar

import orjson

from batchops.commands.context import Context
from batchops.errors import BatchopsError
from batchops.heap import paused_gc
from batchops.lazyclass import dataclass
from batchops.plan.actions import Plan
from batchops.plan.build import moves_to_apply, plan_from
from batchops.plan.diff import (
    SENDING_STATES,
    classify,
    lost_batches,
    requests_in_flight,
    waiting_for,
    waits,
)
from batchops.safetext import FORMULA_FIRST
from batchops.spec.cache import CHUNK_ROWS
from batchops.spec.desired import DesiredItem, select_jobs
from batchops.spec.files import new_temp, temp_stem
from batchops.spec.inputs import (
    ExportItem,
    changed_while_read,
    export_chunks,
    export_inputs,
    export_items,
    rows_kept,
)
from batchops.spec.items import iter_inputs
from batchops.spec.model import (
    Job,
    OutputSpec,
    Project,
    check_outputs,
    display_path,
    resolve_quietly,
)
from batchops.state.api import StateReader, SucceededRow
from batchops.state.records import ItemRecord, ResultLookup

T = TypeVar("T")
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
# Keys looked up in state at once: a query per chunk, memory flat. A line of the rows cache, so
# that a process taking every other chunk reads the other lines past unparsed.
CHUNK_KEYS = CHUNK_ROWS
PLAIN_RUN = 256  # plain jsonl lines made together (`_plain_run`): few enough to stay in cache
WRITE_BUFFER = 1 << 20  # bytes gathered before each write to a file: a write call per MB
PARALLEL_MIN_BYTES = 8 * 1024 * 1024  # a source this large repays more processes
PIPE_BYTES = 1 << 20  # each pipe from another process, and its buffers
MAX_PROCESSES = 4  # an export's processes at most (each holds about 60 MB at a million rows)
WRITE_BACK_BYTES = 32 << 20  # written to a file between two starts of its writing to disk

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


def _job_and_project(context: Context, job_name: str) -> tuple[Job, Project]:
    project = context.project()
    (job,) = select_jobs(project, [job_name])
    return job, project


def check_output_path(context: Context, project: Project, job: Job, path: Path) -> None:
    """Refuse to export `job` to `path` when a spec's `output` could not be `path` either."""
    resolved = resolve_quietly(Path(os.path.abspath(path)))
    if not resolved.is_relative_to(project.root):
        written = [Path(os.path.abspath(f"{p}{s}")) for p in context.protected_paths()
                   for s in ("", "-wal", "-shm", "-journal")]  # fmt: skip
        # as written and resolved (through a symlinked folder: a volume linked in, macOS's /tmp)
        protected = {*written, *map(resolve_quietly, written)}
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
    return _streamed(context, job_name, lambda *a: _rows(*a, failed_only, options))


# The state of an item whose own succeeded result is not current, as the planner tells it
# (`_Recorded.states_of`): (state, detail, its record in state if any).
Unsettled = tuple[str, str | None, ItemRecord | None]


class _Recorded:
    """Where the state holds an export's job (a reader of it, and the job's name there), and
    the state of each of its items whose own result is not current, as `plan` and `status` tell
    it (`states_of`). Beside the item's own record, the planner reads the batches whose results
    are lost (an item in flight in one is sent again) and the requests in flight (an item that
    would send one of them waits for its answer: `waits`): read from the state once an export,
    when a chunk first has an item they may change (never, when every item holds its current
    result). At once, not a chunk at a time: nothing indexes the requests in flight by
    fingerprint, so each look-up would read every item in flight."""

    __slots__ = ("reader", "name", "job", "_keys", "_moves", "_lost", "_sending", "_removed")

    def __init__(
        self,
        reader: StateReader,
        name: str,
        job: Job,
        keys: Callable[[], Iterable[str]],
        moves: Callable[[], dict[str, str]],
    ) -> None:
        self.reader = reader
        # the job's own, or the old name of a `moved` entry still to apply (`_state_name`)
        self.name = name
        self.job = job
        self._keys = keys  # every key of the job in its specs, read when first needed
        self._moves = moves  # old → new of every `moved` entry still to apply, when needed
        self._lost: Collection[str] | None = None
        self._sending: dict[str, tuple[str, str]] | None = None
        self._removed: set[str] | None = None

    def states_of(
        self, items: Iterable[ExportItem], found_of: dict[str, ResultLookup]
    ) -> dict[str, Unsettled]:
        """key → (state, detail, record) of items whose own succeeded result is not current,
        given their records (`found_of`, by key; none for an item never sent), as the planner
        decides: from its record (`classify`), and pending when it waits for another item's
        answer to its very request (`waits`)."""
        name, max_attempts, reuse = self.job.name, self.job.max_attempts, self.job.reuse
        new = tuple.__new__  # the DesiredItem from its fields in a C call (this runs per item)
        sending = None  # the answers on their way, once an item may wait for one
        states: dict[str, Unsettled] = {}
        for key, custom_id, fingerprint, _ in items:
            lookup = found_of.get(key)
            record = lookup.record if lookup is not None else None
            lost = self.lost() if record is not None and record.inflight else ()
            desired = new(DesiredItem, (key, custom_id, fingerprint, 0.0, 0, None))
            state, detail = classify(desired, record, max_attempts, lost)
            if reuse and state in SENDING_STATES:
                if sending is None:
                    sending = self.sending()
                source = sending.get(fingerprint)
                if source is not None and waits(name, state, source, self.removed):
                    state, detail = "pending", waiting_for(source)
            states[key] = (state, detail, record)
        return states

    def lost(self) -> Collection[str]:
        """The batches whose results are lost before harvest (`lost_batches`)."""
        if self._lost is None:
            self._lost = lost_batches(self.reader.batches()).keys()
        return self._lost

    def sending(self) -> dict[str, tuple[str, str]]:
        """fingerprint → (job, key) of an item in flight with that request (`requests_in_flight`),
        every job's under its name in the specs (its `moved` entries applied), as the planner
        names them."""
        if self._sending is None:
            records: Iterable[ItemRecord] = self.reader.inflight_records()
            moves = self._moves()
            if moves:
                records = (r._replace(job=moves[r.job]) if r.job in moves else r for r in records)
            self._sending = requests_in_flight(records, self.lost())
        return self._sending

    def removed(self, key: str) -> bool:
        """Whether `key`, of this job and in flight, is no longer in its specs (`waits`)."""
        if self._removed is None:
            name = self.job.name
            own = {k for job, k in self.sending().values() if job == name}
            if own:
                for spec_key in self._keys():
                    own.discard(spec_key)
                    if not own:
                        break
            self._removed = own
        return key in self._removed


def _streamed(
    context: Context,
    job_name: str,
    produce: Callable[..., Iterator[T]],
    part: tuple[int, int] = (0, 1),
) -> Iterator[T]:
    """What `produce(job, chunks, recorded)` yields of the job's items in chunks of `CHUNK_KEYS`
    (None for each chunk `part` does not take, as `export_chunks`) and where the state holds
    them (`_Recorded`), whose reader is closed when it is done."""
    job, project = _job_and_project(context, job_name)
    today = context.clock().date()
    chunks = export_chunks(job, project.root, context.prices, today, CHUNK_KEYS, part)
    reader = context.reader()
    try:

        def keys() -> Iterator[str]:
            return map(_KEY, export_items(job, project.root, context.prices, today))

        def moves() -> dict[str, str]:  # every `moved` entry still to apply, as `plan` sees
            return moves_to_apply(reader, project.moves, {j.name for j in project.jobs})

        recorded = _Recorded(reader, _state_name(project, job, reader), job, keys, moves)
        # Every row is new dicts and lists, none in a cycle, freed as soon as written.
        with paused_gc():
            yield from produce(job, chunks, recorded)
    finally:
        reader.close()


def _state_name(project: Project, job: Job, reader: StateReader) -> str:
    """The name under which the state holds `job`'s rows: the old name of a spec's `moved`
    entry to it while that move is still to be applied (the rows move at the next apply; `plan`
    and `status` see them under the new name already: `pending_moves`), else its own."""
    moves = moves_to_apply(reader, project.moves, {job.name})
    return next(iter(moves), job.name)


_NO_ANSWER: dict[str, Any] = {}


def _looked_up(
    chunks: Iterator[list[ExportItem] | None], recorded: _Recorded
) -> Iterator[tuple[list[ExportItem], list[SucceededRow], dict[str, Unsettled]]]:
    """Each chunk of items (None ones passed over) with what state holds of them: every key's
    own succeeded result (`succeeded_results`, one narrow query, rows in key order) and, for the
    items whose result is not a success of the spec's fingerprint, their state as the planner
    tells it, from their whole record (`results_of`, one query) and what it reads beside
    (`_Recorded.states_of`)."""
    reader, name = recorded.reader, recorded.name
    for chunk in chunks:
        if chunk is None:
            continue
        answers = reader.succeeded_results(name, list(map(_KEY, chunk)))
        if list(map(_FIRST, answers)) == list(map(_FINGERPRINT, chunk)):  # all, in C calls
            yield chunk, answers, {}
            continue
        others = [item for item, found in zip(chunk, answers, strict=True) if found[0] != item[2]]
        found_of = reader.results_of(name, list(map(_KEY, others)))
        yield chunk, answers, recorded.states_of(others, found_of)


_KEY, _FIRST, _FINGERPRINT = itemgetter(0), itemgetter(0), itemgetter(2)


def _rows(
    job: Job,
    chunks: Iterator[list[ExportItem] | None],
    recorded: _Recorded,
    failed_only: bool,
    options: ExportOptions = ExportOptions(),  # noqa: B008 (frozen)
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each chunk of items that has any, as a list (`_chunk_rows`)."""
    return filter(None, _chunk_rows(job, chunks, recorded, failed_only, options))


def _chunk_rows(
    job: Job,
    chunks: Iterator[list[ExportItem] | None],
    recorded: _Recorded,
    failed_only: bool,
    options: ExportOptions,
) -> Iterator[list[dict[str, Any]]]:
    """The rows of each chunk of items (None ones passed over), as a list (`_looked_up`): an
    item whose own succeeded result has the spec's fingerprint is `succeeded` with that answer,
    the others take the state the planner gives them (`_Recorded.states_of`)."""
    for chunk, answers, found_of in _looked_up(chunks, recorded):
        yield [
            row
            for item, found in zip(chunk, answers, strict=True)
            if (row := _row(job, item, found, found_of, failed_only, options)) is not None
        ]


def _row(
    job: Job,
    item: ExportItem,
    found: SucceededRow,
    found_of: dict[str, Unsettled],
    failed_only: bool,
    options: ExportOptions,
) -> dict[str, Any] | None:
    """The row of one item (None when `failed_only` leaves it out), from its succeeded result
    `found` or, when that is not a success of its fingerprint, its state in `found_of`."""
    key, custom_id, fingerprint, source = item
    thinking, columns, chosen = options.thinking, options.columns, options.input_columns
    plain = not columns and not thinking  # then a message is parsed only when it may show
    if found[0] == fingerprint:  # its own succeeded result, for the spec's request
        if failed_only:
            return None
        state = "succeeded"
        detail = error_type = error_message = None
        _, text, message, stop_reason, model, input_tokens, output_tokens, batch_id = found
        if not message:
            answer = _NO_ANSWER
        elif (
            plain and "tool_use" not in message and "cache_" not in message and "\\u" not in message
        ):
            answer = _NO_ANSWER  # `_may_show`, inline: nothing shown can be in it
        else:
            answer = _answer(message, options)
    else:
        state, detail, record = found_of[key]
        if failed_only and state != "failed":
            return None
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
        row["output"] = answer.get("output", dict.fromkeys(columns))
        row["parse_error"] = answer.get("parse_error")
    if chosen is None:
        row["input"] = source
    elif chosen:
        row["input"] = {f: source.get(f) for f in chosen}
    row["message"] = orjson.Fragment(message) if message else None
    return row


# A plain succeeded row as `orjson.dumps` writes its dict (`_row`) with one input column set:
# every input field, none, or the chosen ones. Its %b are the JSON of key, custom_id, text,
# stop_reason, model, input_tokens, output_tokens, batch_id, (input) and the stored message.
_PLAIN_LINE = (
    b'{"key":%b,"custom_id":%b,"state":"succeeded","text":%b,"tool_calls":null,"detail":null,'
    b'"error_type":null,"error_message":null,"stop_reason":%b,"model":%b,"input_tokens":%b,'
    b'"output_tokens":%b,"cache_creation_input_tokens":null,"cache_read_input_tokens":null,'
    b'"batch_id":%b'
)
_PLAIN_INPUT = _PLAIN_LINE + b',"input":%b,"message":%b}\n'
_PLAIN_NO_INPUT = _PLAIN_LINE + b',"message":%b}\n'
_FEW = 256  # distinct stop reasons, models and batch ids whose JSON is kept while exporting


def _jsonl_blocks(
    job: Job,
    chunks: Iterator[list[ExportItem] | None],
    recorded: _Recorded,
    options: ExportOptions,
) -> Iterator[tuple[list[bytes], int]]:
    """The jsonl lines of every row (no `columns`, no `thinking`), a chunk at a time (None
    chunks passed over), with their number. A plain succeeded answer is written from its
    fields into `_PLAIN_LINE`, the bytes `orjson.dumps` gives its row, without building the row:
    a run of `PLAIN_RUN` of them at once (`_plain_run`), else one at a time; any other row is
    `_row` dumped."""
    dumps, newline, chosen = orjson.dumps, orjson.OPT_APPEND_NEWLINE, options.input_columns
    few: dict[Any, bytes] = {}  # JSON of the few values a column repeats on every row

    def json_of(value: Any) -> bytes:
        if len(few) >= _FEW:
            few.clear()
        made = few[value] = dumps(value)
        return made

    for chunk, answers, found_of in _looked_up(chunks, recorded):
        lines: list[bytes] = []  # a line per row, or the lines of a run in one
        for start in range(0, len(chunk), PLAIN_RUN):
            run = chunk[start : start + PLAIN_RUN]
            run_answers = answers[start : start + PLAIN_RUN]
            made = _plain_run(run, run_answers, chosen)
            if made is not None:
                lines.append(made)
                continue
            for item, found in zip(run, run_answers, strict=True):
                message = found[2]
                if (
                    found[0] == item[2]  # its own succeeded result, for the spec's request
                    and message
                    and "tool_use" not in message  # `_may_show`, inline: nothing shown is in it
                    and "cache_" not in message
                    and "\\u" not in message
                    and type(found[5]) is int
                    and type(found[6]) is int
                ):
                    _, text, _, stop_reason, model, input_tokens, output_tokens, batch_id = found
                    values = (
                        dumps(item[0]),
                        dumps(item[1]),
                        dumps(text),
                        few.get(stop_reason) or json_of(stop_reason),
                        few.get(model) or json_of(model),
                        b"%d" % input_tokens,
                        b"%d" % output_tokens,
                        few.get(batch_id) or json_of(batch_id),
                    )
                    if chosen is None:
                        lines.append(_PLAIN_INPUT % (*values, dumps(item[3]), message.encode()))
                    elif chosen:
                        source = item[3]
                        shown = dumps({f: source.get(f) for f in chosen})
                        lines.append(_PLAIN_INPUT % (*values, shown, message.encode()))
                    else:
                        lines.append(_PLAIN_NO_INPUT % (*values, message.encode()))
                    continue
                row = _row(job, item, found, found_of, False, options)
                lines.append(dumps(row, option=newline))
        yield lines, len(chunk)


# `_PLAIN_LINE` with the token counts as numbers: what `_plain_run` formats.
_RUN_LINE = _PLAIN_LINE.replace(b'"input_tokens":%b', b'"input_tokens":%d').replace(
    b'"output_tokens":%b', b'"output_tokens":%d'
)
_RUN_INPUT = _RUN_LINE + b',"input":%b,"message":%b}\n'
_RUN_NO_INPUT = _RUN_LINE + b',"message":%b}\n'
_TEXT_OR_NONE = frozenset((str, type(None)))


def _plain_run(
    items: list[ExportItem], answers: list[SucceededRow], chosen: tuple[str, ...] | None
) -> bytes | None:
    """The jsonl lines of a run of items, joined, when every one is a plain succeeded answer
    (the test of `_jsonl_blocks`, for all of them at once), else None. Made column by column,
    each column's JSON by one C call over the run (`map`), the lines by one more: none of the
    per-row Python of `_jsonl_blocks`. A run is short (`PLAIN_RUN`), so what it makes stays in
    the CPU's cache, and its lines are one write."""
    keys, custom_ids, fingerprints, sources = zip(*items, strict=True)
    current, texts, messages, stops, models, inputs, outputs, batches = zip(*answers, strict=True)
    if current != fingerprints or not all(messages):  # not each its own success, or no message
        return None
    every = "\n".join(messages)  # a word found in it is in one of them: no newline in the words
    if "tool_use" in every or "cache_" in every or ("\\" in every and "\\u" in every):
        return None  # `_may_show` (a backslash is found by memchr, "\\u" by a slower search)
    if {*map(type, inputs), *map(type, outputs)} != {int}:  # an int's %d is its JSON; not a bool's
        return None
    if not {*map(type, stops), *map(type, models), *map(type, batches)} <= _TEXT_OR_NONE:
        return None  # keyed by value below: a string or None equals only itself
    dumps = orjson.dumps
    columns = [
        map(dumps, keys),
        map(dumps, custom_ids),
        map(dumps, texts),
        _few_json(stops),
        _few_json(models),
        inputs,
        outputs,
        _few_json(batches),
    ]
    if chosen is None:
        columns.append(map(dumps, sources))
    elif chosen:
        columns.append(map(dumps, [{f: source.get(f) for f in chosen} for source in sources]))
    columns.append(map(str.encode, messages))
    line = _RUN_INPUT if chosen != () else _RUN_NO_INPUT
    return b"".join(map(line.__mod__, zip(*columns, strict=True)))


def _few_json(values: tuple[str | None, ...]) -> Iterator[bytes]:
    """The JSON of each of `values`, a column that repeats a few values: each dumped once."""
    table = {value: orjson.dumps(value) for value in dict.fromkeys(values)}
    return map(table.__getitem__, values)


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
    # a row holds a call's name and input four levels down (`[{"tool_calls": [{"input": …}]}]`)
    shown = [{k: _writable(v, 4) for k, v in c.items()} for c in calls]
    out: dict[str, Any] = {"tool_calls": shown or None}
    for name in _USAGE:
        out[name] = usage.get(name)
    if options.thinking:
        thoughts = [
            b.get("thinking") if b.get("type") == "thinking" else "[redacted]"
            for b in blocks
            if b.get("type") in ("thinking", "redacted_thinking")
        ]
        out["thinking"] = "\n\n".join(map(_thought, thoughts)) if thoughts else None
    if options.columns:
        value, error = _structured(blocks, calls)
        if error is not None:
            out["parse_error"] = error
            out["output"] = dict.fromkeys(options.columns)
        else:  # a column's value sits three levels down in a row (`[{"output": {c: …}}]`)
            out["output"] = {c: _writable(value.get(c), 3) for c in options.columns}
    return out


def _thought(value: Any) -> str:
    """A thinking block's text (the JSON of a value the API never sends there)."""
    if value is None or type(value) is str:
        return value or ""
    return _json_text(_writable(value, 0))


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


# The deepest a parsed answer can be (orjson reads 1024 levels): the stdlib's encoder needs a
# frame a level, on top of the frames below it.
_DEEPEST_READ = 1024


def _writable(value: Any, levels: int) -> Any:
    """`value` as a row holds it `levels` levels down: itself, or, when orjson would refuse to
    write it there (it writes 254 levels; an answer may nest up to 1024), the same JSON written
    by the stdlib's encoder, as an `orjson.Fragment` that orjson writes as it is. A model's
    answer nested so deep then never stops the export of a whole job."""
    if type(value) is not dict and type(value) is not list:
        return value
    wrapped = value
    for _ in range(levels):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
        return value
    except orjson.JSONEncodeError:
        pass
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, _DEEPEST_READ + 1000))
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    finally:
        sys.setrecursionlimit(limit)
    return orjson.Fragment(text)


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


def _write_blocks(blocks: Iterable[tuple[list[bytes], int]], out: IO[bytes]) -> int:
    """Write (pieces, rows) blocks to a binary stream; returns the number of rows. A file's
    pages are sent to its disk as it grows (`_write_back`), not all by the fsync at its end."""
    written = 0
    back = _write_back(out)
    for pieces, rows in blocks:
        out.writelines(pieces)  # each into the stream's buffer: no chunk-sized bytes made
        written += rows
        if back is not None:
            back()
    out.flush()
    return written


def _write_back(out: IO[bytes]) -> Callable[[], None] | None:
    """For a regular file where POSIX_FADV_DONTNEED starts the writing of dirty pages without
    waiting for it (Linux), what starts it for every WRITE_BACK_BYTES written since the last
    call; None for anything else. The disk then writes while the export computes, and the fsync
    that makes the file durable has little left to wait for (about a quarter of a second at a
    million rows here). Pages being written are not dropped from the page cache."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None or not hasattr(out, "fileno"):
        return None
    try:
        fd = out.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (OSError, ValueError):  # io.BytesIO and the like have no file
        return None
    done = out.tell()

    def back() -> None:
        nonlocal done
        if out.tell() - done < WRITE_BACK_BYTES:
            return
        out.flush()
        end = out.tell()
        with contextlib.suppress(OSError):
            advise(fd, done, end - done, os.POSIX_FADV_DONTNEED)
        done = end

    return back


# ------------------------------------------------------------------ several processes


def _block_maker(
    context: Context, job: Job, root: Path, make: Callable[..., Any], processes: int
) -> Callable[[], Iterator[tuple[list[bytes], int]]]:
    """What makes the (pieces, rows) blocks of an export by `make(job, chunks, recorded,
    first)`: on `processes` processes (`_parts`), each given every n-th chunk, else on this
    one. Only the one given the first chunk has `first` true."""

    def part(mine: int, of: int) -> Iterator[tuple[list[bytes], int]]:
        produce = lambda j, chunks, recorded: make(j, chunks, recorded, mine == 0)  # noqa: E731
        return _streamed(context, job.name, produce, (mine, of))

    if processes > 1:
        return lambda: _parts(part, processes, lambda: changed_while_read(job, root))
    return lambda: part(0, 1)


def _first_fields(job: Job, root: Path) -> list[str]:
    """The fields of the first row of the job's source (its first item's input, when every row
    is an item)."""
    for _, row in iter_inputs(job, root):
        return list(row) if type(row) is dict else []
    return []


def _processes_for(job: Job, root: Path) -> int:
    """How many processes an export of `job` runs on (`_parts`): one, unless its rows are kept
    by the rows cache (else each process would render every item), its source holds
    PARALLEL_MIN_BYTES or more, there is `fork` and no other thread (a fork copies no thread
    but this one); then as many as there are idle cores (`_idle_cores`)."""
    source = job.source_file()
    if source is None or not hasattr(os, "fork") or not rows_kept(job, root):
        return 1
    if threading.active_count() > 1:
        return 1
    try:
        if source.stat().st_size < PARALLEL_MIN_BYTES:
            return 1
    except OSError:
        return 1  # one process reports the unreadable file
    return _idle_cores()


def _idle_cores() -> int:
    """The processes an export may run on: this one, and one more for each core this process
    may run on (`taskset -c 0` means none) that the machine leaves idle (`_running_elsewhere`),
    at most MAX_PROCESSES. A process more costs CPU time (each reads past the others' chunks),
    which pays only on a core that would wait otherwise."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    free = (os.cpu_count() or cores) - _running_elsewhere()  # this process's core among them
    return max(1, min(MAX_PROCESSES, cores, free))


LOADAVG = Path("/proc/loadavg")


def _running_elsewhere() -> int:
    """How many other processes use a core now: the runnable count of /proc/loadavg ("1/85":
    this process alone), less this one. Not the load average, which still counts for a minute
    a step that has just ended (a CI job's plan, a bench's baseline) and left an idle core
    unused all export long. Where there is no /proc, the one-minute load average, rounded down."""
    try:
        running = int(LOADAVG.read_bytes().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        try:
            return int(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0
    return max(0, running - 1)


def _parts(
    part: Callable[[int, int], Iterator[tuple[list[bytes], int]]],
    processes: int,
    changed: Callable[[], Exception],
) -> Iterator[tuple[list[bytes], int]]:
    """The (pieces, rows) blocks `part(mine, processes)` makes of the chunks for each `mine`
    below `processes`, in order: chunk n is made by part n % processes, part 0 here, each
    other part by a forked child at the same time, which sends each block as `rows bytes` and
    its bytes through a pipe of its own. Every part reads the job's items, and asks the state
    for its own chunks only; `changed` is raised when they did not read the same number of
    chunks. A fork refused (a limit on processes, memory) leaves no child and no pipe behind,
    and the blocks are then made here alone (`part(0, 1)`)."""
    import fcntl  # only here: POSIX, as `fork` is

    pids: list[int] = []  # the children, part 1, 2 …
    pipes: list[IO[bytes]] = []  # the pipe each writes
    ended = refused = False
    try:
        for mine in range(1, processes):
            read_end, write_end = os.pipe()
            try:
                with contextlib.suppress(OSError, AttributeError):  # a larger pipe (Linux)
                    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
                child = os.fork()
            except OSError:
                os.close(read_end)
                os.close(write_end)
                refused = True
                break
            if child == 0:  # the child: never returns, never runs the parent's cleanup
                os.close(read_end)
                for pipe in pipes:  # its elder siblings' pipes are not its to read
                    os.close(pipe.fileno())
                _serve_part(part(mine, processes), write_end)
            pids.append(child)
            os.close(write_end)
            pipes.append(os.fdopen(read_end, "rb", buffering=PIPE_BYTES))
        if not refused:
            yield from _merged(part(0, processes), pipes, changed)
            statuses = [os.waitpid(pid, 0)[1] for pid in pids]
            ended = True
            if any(statuses):
                raise _abnormal()
    finally:
        for pipe in pipes:
            pipe.close()
        if not ended:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)
    if refused:
        yield from part(0, 1)


def _merged(
    own: Iterator[tuple[list[bytes], int]],
    pipes: list[IO[bytes]],
    changed: Callable[[], Exception],
) -> Iterator[tuple[list[bytes], int]]:
    """The blocks of `own` (part 0) and of the children writing `pipes` (parts 1, 2 …), taken
    by turns, until one part has no more: then none may have more (`changed`)."""
    processes = len(pipes) + 1

    def taken(owner: int) -> tuple[list[bytes], int] | None:
        if owner == 0:
            return next(own, None)
        theirs = _received(pipes[owner - 1])
        return None if theirs is None else ([theirs[1]], theirs[0])

    try:
        for number in count():
            owner = number % processes
            block = taken(owner)
            if block is None:  # the chunks end here: the other parts' must end too
                if any(taken(other) is not None for other in range(processes) if other != owner):
                    raise changed()
                return
            yield block
    finally:
        close = getattr(own, "close", None)
        if close is not None:
            close()


def _serve_part(blocks: Iterator[tuple[list[bytes], int]], fd: int) -> NoReturn:
    """In the child: send each block through `fd` as `rows bytes\n` and its lines, then
    `end\n`; an error as `error bytes\n` and the pickled exception. Ends the process."""
    status = 1
    try:
        with os.fdopen(fd, "wb", buffering=PIPE_BYTES) as pipe:
            try:
                for pieces, rows in blocks:
                    pipe.write(b"%d %d\n" % (rows, sum(map(len, pieces))))
                    pipe.writelines(pieces)
                    pipe.flush()  # the whole block now: the parent may be waiting for it
                pipe.write(b"end\n")
                status = 0
            except Exception as e:  # sent to the parent, which raises it
                import pickle

                try:
                    sent = pickle.dumps(e)
                except Exception:
                    sent = pickle.dumps(BatchopsError(str(e)))
                pipe.write(b"error %d\n" % len(sent) + sent)
                status = 0
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _received(pipe: IO[bytes]) -> tuple[int, bytes] | None:
    """The child's next block (rows, bytes), None after its last; raises what it raised."""
    head = pipe.readline()
    if head == b"end\n":
        return None
    kind, _, size = head.partition(b" ")
    if kind == b"error":
        import pickle

        raise pickle.loads(pipe.read(int(size)))
    if not head.endswith(b"\n") or not kind.isdigit():
        raise _abnormal()
    data = pipe.read(int(size))
    if len(data) != int(size):
        raise _abnormal()
    return int(kind), data


def _abnormal() -> BatchopsError:
    return BatchopsError("another process of the export ended abnormally; export again")


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
    learnt = fields is None
    if fields is None:
        first = next(chunks, None)
        fields = list(first[0]["input"]) if first else []
        if first:
            chunks = chain([first], chunks)
    lines = _CsvLines(fields, options, safe=safe, learnt=learnt)
    out.write(lines.header)
    count = 0
    for rows in chunks:
        out.write(lines(rows))
        count += len(rows)
    return count


class _CsvLines:
    """The CSV header of an export, and the lines of each chunk of its rows."""

    def __init__(
        self, fields: list[str], options: ExportOptions, *, safe: bool, learnt: bool = False
    ):
        self.fields = fields
        # With fields `learnt` from the first row, `_FieldsGrew` at a row holding another.
        self.known = set(fields) if learnt else None
        self.columns = columns = list(COLUMNS)
        if options.thinking:
            columns.insert(columns.index("text") + 1, "thinking")
        self.outputs = outputs = list(options.columns)
        tail = ["parse_error"] if outputs else []
        header = [
            *columns,
            *(f"output.{c}" for c in outputs),
            *tail,
            *(f"input.{f}" for f in fields),
        ]
        self.fixed = itemgetter(*columns, *tail)
        # A row's cells joined by commas are its CSV line, unless a cell holds a comma, a quote
        # or a line break: only such a row is written by the csv module (which quotes exactly
        # those). Its line ends in "\r\n", which this export writes as "\n": a writer whose
        # line ends in "\n" alone leaves a cell holding a bare "\r" unquoted before CPython
        # 3.11.9 (gh-67044), and every reader then ends the row there.
        self.commas = len(header) - 1
        self.quoted = io.StringIO()
        self.writer = csv.writer(self.quoted, lineterminator="\r\n")
        self.writer.writerow(header)
        self.header = self.quoted.getvalue()[:-2].encode() + b"\n"
        self.safe = safe
        self.few: dict[Any, str] = {}  # `few_cell`

    def __call__(self, rows: list[dict[str, Any]]) -> bytes:
        """The lines of `rows`."""
        line, values = self.line, self.values
        return "".join([line(values(row)) for row in rows]).encode()

    def values(self, row: dict[str, Any]) -> list[Any]:
        """The values of a row's cells, in the header's order."""
        values = list(self.fixed(row))
        if self.outputs:
            parsed = row.get("output") or {}
            at = len(self.columns)
            values[at:at] = [parsed.get(c) for c in self.outputs]
        source = row.get("input") or {}
        if self.known is not None and not source.keys() <= self.known:
            raise _FieldsGrew
        if self.fields:
            values += [source.get(f) for f in self.fields]
        return values

    def line(self, values: list[Any]) -> str:
        """The CSV line of a row's values, its line break included."""
        return self.joined(self.cells(values))

    def cells(self, values: Iterable[Any]) -> list[str]:
        """The text of each value's cell."""
        safe, starts = self.safe, FORMULA_FIRST
        # Each value as the text of its cell, inline (this runs per cell): None is an empty
        # cell, a string that would start a formula gets a leading ' unless raw
        # (`safetext.csv_cell`), a number is written as the csv module writes it, a list or
        # dict is JSON (`_text_cell`).
        return [
            ""
            if v is None
            else (("'" + v if v[:1] in starts else v) if safe else v)
            if type(v) is str
            else str(v)
            if type(v) is int
            else _text_cell(v)
            for v in values
        ]

    def joined(self, cells: list[str]) -> str:
        """The CSV line of a row's cells, its line break included."""
        line = ",".join(cells)
        if '"' in line or "\n" in line or "\r" in line or line.count(",") != self.commas:
            quoted = self.quoted
            quoted.seek(0)
            quoted.truncate()
            self.writer.writerow(cells)
            return quoted.getvalue()[:-2] + "\n"
        return line + "\n"

    def plain(self, item: ExportItem, found: SucceededRow) -> str:
        """The line of a plain succeeded answer (`_row`'s row, every shown part of the answer
        None, no `thinking` column), made from its fields; its text a string or None."""
        key, custom_id, _, source = item
        _, text, _, stop_reason, model, input_tokens, output_tokens, batch_id = found
        if self.known is not None and not source.keys() <= self.known:
            raise _FieldsGrew
        if self.safe:
            starts = FORMULA_FIRST
            key = "'" + key if key[:1] in starts else key
            custom_id = "'" + custom_id if custom_id[:1] in starts else custom_id
            text = "'" + text if text and text[:1] in starts else text
        few, cell = self.few, self.few_cell
        cells = [
            key,
            custom_id,
            "succeeded",
            text or "",
            "",
            "",
            "",
            "",
            few.get(stop_reason) or cell(stop_reason),
            few.get(model) or cell(model),
            str(input_tokens) if type(input_tokens) is int else cell(input_tokens),
            str(output_tokens) if type(output_tokens) is int else cell(output_tokens),
            "",
            "",
            few.get(batch_id) or cell(batch_id),
        ]
        if self.fields:
            cells += self.cells([source.get(f) for f in self.fields])
        return self.joined(cells)

    def few_cell(self, value: Any) -> str:
        """The cell of a value a column repeats (a stop reason, model, batch id), kept."""
        (made,) = self.cells([value])
        if type(value) is str or value is None:  # equal only to itself: kept by value
            if len(self.few) >= _FEW:
                self.few.clear()
            self.few[value] = made
        return made


def _csv_blocks(
    job: Job,
    chunks: Iterator[list[ExportItem] | None],
    recorded: _Recorded,
    options: ExportOptions,
    fields: list[str] | None,
    safe: bool,
    failed_only: bool,
    *,
    learnt: bool = False,
    header: bool = True,
) -> Iterator[tuple[list[bytes], int]]:
    """The CSV of every row (no `columns`), a block a chunk (None chunks passed over; one with
    no row is an empty block), the header in the first block. With `fields` None, the input
    fields are the first item's; with them None or `learnt` (from the first row, by the
    caller), `_FieldsGrew` is raised at a row holding another."""
    if fields is None:
        learnt = True
        first = next(chunks, None)
        fields = list(first[0][3]) if first else []
        if first is not None:
            chunks = chain([first], chunks)
    csv_lines = _CsvLines(fields, options, safe=safe, learnt=learnt)
    line, values_of, plain = csv_lines.line, csv_lines.values, csv_lines.plain
    head = [csv_lines.header] if header else []
    thinking = options.thinking
    for chunk, answers, found_of in _looked_up(chunks, recorded):
        lines = []
        for item, found in zip(chunk, answers, strict=True):
            message = found[2]
            if (
                found[0] == item[2]  # its own succeeded result, for the spec's request
                and not failed_only
                and not thinking
                and (found[1] is None or type(found[1]) is str)
                and (
                    not message  # `_may_show`, inline: nothing shown can be in it
                    or ("tool_use" not in message and "cache_" not in message)
                    and "\\u" not in message
                )
            ):
                lines.append(plain(item, found))
                continue
            row = _row(job, item, found, found_of, failed_only, options)
            if row is not None:
                lines.append(line(values_of(row)))
        yield [*head, "".join(lines).encode()], len(lines)
        head = []
    if head:
        yield head, 0


def _text_cell(value: Any) -> str:
    """The text the csv module writes for a value that is not None, a string or an int: JSON
    for a list, an object or a `_writable` fragment (orjson writes a fragment as it is)."""
    if isinstance(value, dict | list | orjson.Fragment):
        return _json_text(_writable(value, 0))
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

    blocks, safe, root = None, not raw_csv, project.root
    processes = _processes_for(job, root)
    if fmt == "jsonl" and not (failed_only or options.columns or options.thinking):
        # Lines made a chunk at a time, a plain answer's without its row (`_jsonl_blocks`).
        blocks = _block_maker(
            context, job, root, lambda j, c, r, _: _jsonl_blocks(j, c, r, options), processes
        )
    elif fmt == "csv" and not options.columns:  # no parse errors to count

        def csv_blocks(fields: list[str] | None, learnt: bool) -> Any:
            def make(j: Job, c: Any, r: _Recorded, first: bool) -> Any:
                return _csv_blocks(
                    j, c, r, options, fields, safe, failed_only, learnt=learnt, header=first
                )

            return _block_maker(context, job, root, make, processes)

        # on several processes, all learn the first row's fields, not the first item's
        if fields is None and processes > 1:
            blocks = csv_blocks(_first_fields(job, root), True)
        else:
            blocks = csv_blocks(fields, False)
    if blocks is not None:
        if isinstance(out, Path):
            check_output_path(context, project, job, out)
            with atomic_write(out, create_dirs=create_dirs) as f:
                try:
                    rows = _write_blocks(blocks(), f)
                except _FieldsGrew:  # learnt from the first row: all of them, and again
                    f.seek(0)
                    f.truncate()
                    rows = _write_blocks(csv_blocks(_input_fields(context, job, root), False)(), f)
            return ExportSummary(job_name, fmt, rows, out)
        if out is None:
            raise BatchopsError("export needs an output stream or file")
        return ExportSummary(job_name, fmt, _write_blocks(blocks(), out), None)
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
    """Write `path` through a temporary file in its folder, renamed over it on success only (a
    symlink's regular file: that file, the link kept). A pipe or a device (`-o /dev/stdout`, a
    named pipe a script reads) is written through instead (`_written_through`), never replaced
    by a file."""
    path = Path(path)
    parent = path.parent
    if create_dirs:
        with _cannot_write(path):
            parent.mkdir(parents=True, exist_ok=True)
    if not parent.is_dir():
        raise BatchopsError(f"{path}: cannot write: directory {parent} does not exist")
    if path.is_dir():
        raise BatchopsError(f"{path}: cannot write: it is a directory")
    try:
        through = not stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        through = False
    except OSError as e:
        raise BatchopsError(f"{path}: cannot write: {e.strerror}") from None
    if through and os.path.islink(path):  # a link to a regular file: that file, replaced whole
        real = Path(os.path.realpath(path))
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(real).st_mode) and os.path.samefile(real, path):
                path, parent, through = real, real.parent, False
    if through:
        with _written_through(path) as f:
            yield f
        return
    remove_stale_temps(path)
    with _cannot_write(path):
        fd, tmp = new_temp(parent, path.name)  # its mode as `open` gives: the umask is the user's
    try:
        with _cannot_write(path, only=_WRITE_ERRNOS):
            with os.fdopen(fd, "wb", buffering=WRITE_BUFFER) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        with _cannot_write(path):
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# What only a write can fail with: an OSError with one of these, raised while an export writes,
# is about its output, not about a file it reads.
_WRITE_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EPIPE") if hasattr(errno, name)
)


@contextlib.contextmanager
def _cannot_write(path: Path, only: Collection[int] | None = None) -> Iterator[None]:
    """An OSError (with an errno among `only`, when given) as the one line `PATH: cannot write:
    why`."""
    try:
        yield
    except OSError as e:
        if only is not None and e.errno not in only:
            raise
        raise BatchopsError(f"{path}: cannot write: {e.strerror or e}") from None


@contextlib.contextmanager
def _written_through(path: Path) -> Iterator[IO[bytes]]:
    """Write a symlink's target, a pipe or a device at `path`: the export is made in a
    temporary file first (a CSV export may start again, and nothing reaches the reader of a
    failed one), then copied into `path` as it is opened for writing."""
    import shutil
    import tempfile

    with tempfile.TemporaryFile() as made:
        with _cannot_write(path, only=_WRITE_ERRNOS):
            yield made
            made.flush()
        made.seek(0)
        with _cannot_write(path):
            with open(path, "wb") as out:
                shutil.copyfileobj(made, out, WRITE_BUFFER)


def remove_stale_temps(path: Path, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove `.{name}.*.tmp` files beside `path` older than `older_than` seconds (left by an
    export that was killed); a younger one may belong to an export still running. The `*` is a
    random part (`new_temp`), which holds no dot: `.{name}.bak.*.tmp` is another file's."""
    cutoff = time.time() - older_than
    removed = []
    prefix, suffix = f".{temp_stem(path.name)}.", ".tmp"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        middle = name[len(prefix) : len(name) - len(suffix)]
        if not middle or "." in middle:
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
