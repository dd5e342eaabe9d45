"""Job specs: find, parse and validate the TOML/JSON files that declare jobs (DESIGN §3).

A spec is a reviewed artefact that arrives by pull request, so loading is strict: unknown fields
anywhere (except inside `params`, which passes through to the API) are errors, every path must
stay inside the project root, and every problem in every file is reported, one line each, before
anything else runs. The result is a `Project` of merged, validated `Job`s with absolute paths;
turning a job into requests is `batchops.spec.items`' work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batchops.errors import SpecError, location
from batchops.lazyclass import dataclass
from batchops.safetext import terminal
from batchops.spec.files import MAX_SPEC_BYTES, FileRefused, read_bounded

if TYPE_CHECKING:
    from batchops.spec.raw import _RawDefaults, _RawJob

SPEC_VERSION = 1
JOB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # also a JSON Schema pattern: fullmatch it
SPEC_SUFFIXES = (".toml", ".json")
DataFormat = Literal["jsonl", "csv", "json"]
FORMAT_BY_SUFFIX: dict[str, DataFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".json": "json",
}

# Request params the Message Batches API refuses (ANTHROPIC_BATCHES_API.md §2.1): the one refused
# value, or _ABSENT when any value is refused.
_ABSENT = object()
BATCH_FORBIDDEN_PARAMS: dict[str, object] = {
    "stream": True,
    "speed": _ABSENT,
    "store": _ABSENT,
    "previous_thread_event_id": _ABSENT,
    "cache_hint": _ABSENT,
    "context_hint": _ABSENT,
    "research_preview_2026_02": "active",
}
# Request params a template job sets through its own fields, never through `params`.
JOB_FIELD_PARAMS = ("model", "max_tokens", "system", "messages")

# Rendering budgets (DESIGN §6.11), settable in [defaults] or a job within these caps; see
# batchops.spec.items for what they bound.
RENDER_SECONDS_DEFAULT = 2.0
RENDER_SECONDS_CAP = 30.0
RENDER_MAX_SIZE_DEFAULT = 10_000_000
RENDER_MAX_SIZE_CAP = 32_000_000  # the Messages API refuses a request over 32 MB
RENDER_MAX_SIZE_MIN = 1_000
MAX_TOKENS_CAP = 1_000_000  # far above any model's output limit, far below an overflow
MAX_ATTEMPTS_CAP = 100
MAX_ATTACHMENTS = 100  # images and documents in one request (the API's limit)
MAX_DEPTH = 64  # nesting of objects and arrays in a spec, a row or a request
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what every JSON parser on the way reads exactly


def json_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """(dotted place, reason) of the first thing in `value` the API could not receive, or None.

    Refused: nesting past `max_depth`, non-string keys, lone surrogates in keys or strings
    (not UTF-8), integers beyond 64 bits, NaN and infinities (not JSON).
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        obj, place, depth = stack.pop()
        t = type(obj)
        if t is str or isinstance(obj, str):
            if not obj.isascii() and has_surrogate(obj):
                return place, f"lone surrogate {_first_surrogate(obj)} in a string (not UTF-8)"
        elif t is bool or obj is None:
            continue
        elif t is int or isinstance(obj, int):
            if not INT_MIN <= obj <= INT_MAX:
                return place, "integer out of range (64 bits at most)"
        elif t is float or isinstance(obj, float):
            if not math.isfinite(obj):
                return place, f"{obj} is not a JSON number"
        elif isinstance(obj, dict | list | tuple):
            if depth >= max_depth:
                return place, f"nested more than {max_depth} levels deep"
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if not isinstance(k, str):
                        return place, f"key {k!r} is not a string"
                    sub = f"{place}.{k}" if place else k
                    if not k.isascii() and has_surrogate(k):
                        return sub, f"lone surrogate {_first_surrogate(k)} in a key (not UTF-8)"
                    stack.append((v, sub, depth + 1))
            else:
                for i, v in enumerate(obj):
                    stack.append((v, f"{place}.{i}" if place else str(i), depth + 1))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """True when `text` holds a lone surrogate, which UTF-8 (and so the API) cannot carry."""
    return _SURROGATE.search(text) is not None


def _first_surrogate(text: str) -> str:
    match = _SURROGATE.search(text)
    return f"\\u{ord(match.group()):04x}" if match else ""


def forbidden_param_problems(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(param name, reason) for each param the batch API refuses; shared with raw requests."""
    problems = []
    for name, refused in BATCH_FORBIDDEN_PARAMS.items():
        if name not in params:
            continue
        value = params[name]
        if refused is _ABSENT:
            problems.append((name, "not allowed in a Message Batch"))
        elif value is refused or (not isinstance(value, bool) and value == refused):
            problems.append((name, f"{json.dumps(value)} is not allowed in a Message Batch"))
    if "max_tokens" in params and params["max_tokens"] == 0:
        problems.append(("max_tokens", "0 is not allowed in a Message Batch"))
    return problems


# --- the public, merged model -------------------------------------------------------------------
# Plain frozen dataclasses, not pydantic models: what they hold was checked by the spec file's
# models (`batchops.spec.raw`) and merged here, and a project loaded from its cache
# (`batchops.spec.projectcache`) is built without importing pydantic at all. `model_dump` and
# `model_copy` keep the pydantic spelling their callers use (and the very same output).


class _Spec:
    """What the spec dataclasses share: their JSON form and a changed copy."""

    def model_dump(self, *, mode: str = "json") -> dict[str, Any]:
        """Every field as JSON values (paths as strings, tuples as lists, nested specs as
        dicts), as pydantic's `model_dump(mode="json")` gave them; only mode "json" exists."""
        if mode != "json":
            raise ValueError(f"model_dump: only mode='json' is supported, not {mode!r}")
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Any:
        """A copy with the fields of `update` replaced."""
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]


def _jsonable(value: Any) -> Any:
    t = type(value)
    if value is None or t is str or t is int or t is float or t is bool:
        return value
    if isinstance(value, _Spec):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if t is list or t is tuple:
        return [_jsonable(v) for v in value]
    if t is dict:
        return {k: _jsonable(v) for k, v in value.items()}
    # A TOML date or time inside params or items: pydantic's own JSON form of it.
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


@dataclass(frozen=True, kw_only=True)
class InputSpec(_Spec):
    """A data file: one item per row, identified by the row's `key` field."""

    path: Path
    key: str
    format: DataFormat


@dataclass(frozen=True, kw_only=True)
class RequestsSpec(_Spec):
    """A JSONL file of ready-made requests in the Anthropic batch format."""

    path: Path


@dataclass(frozen=True, kw_only=True)
class OutputSpec(_Spec):
    """Where a job's joined results are written."""

    path: Path
    format: DataFormat
    columns: tuple[str, ...] = ()  # structured-output fields parsed into columns of the export


@dataclass(frozen=True, kw_only=True)
class Job(_Spec):
    """One job, defaults applied and paths resolved to absolute paths inside the project root."""

    name: str
    spec_file: Path
    description: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    system: str | list[dict[str, Any]] | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    betas: list[str] = dataclasses.field(default_factory=list)
    budget_usd: float | None = None
    reuse: bool = True
    cache: Literal["auto", "off"] = "off"
    expected_output_tokens: int | None = None  # a reply's usual length, for the central estimate
    max_attempts: int = 3
    render_seconds: float = RENDER_SECONDS_DEFAULT
    render_max_size: int = RENDER_MAX_SIZE_DEFAULT
    output: OutputSpec | None = None
    input: InputSpec | None = None
    items: list[dict[str, Any]] | None = None
    requests: RequestsSpec | None = None
    attachments: tuple[str, ...] = ()  # templates of file paths, relative to the spec file

    @property
    def kind(self) -> Literal["input", "items", "requests"]:
        """Which item source the job uses."""
        if self.input is not None:
            return "input"
        if self.requests is not None:
            return "requests"
        return "items"

    def source_file(self) -> Path | None:
        """The data file the items come from (None for inline items)."""
        if self.input is not None:
            return self.input.path
        if self.requests is not None:
            return self.requests.path
        return None


@dataclass(frozen=True)
class Moved:
    """A spec's `moved` entry: job `old` is now called `new` (its state rows follow it)."""

    old: str
    new: str
    spec_file: Path


def former_names(moves: Iterable[Moved], name: str) -> list[str]:
    """The names job `name` had before, by the specs' `moved` entries (a chain of them too):
    its requests sent under one carry it in their custom_ids."""
    moves = list(moves)
    found: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop()
        for move in moves:
            if move.new == current and move.old != name and move.old not in found:
                found.append(move.old)
                todo.append(move.old)
    return found


@dataclass(frozen=True)
class Project:
    """Every job found under the jobs path; `root` confines all paths."""

    root: Path
    spec_files: tuple[Path, ...]
    jobs: tuple[Job, ...]
    moves: tuple[Moved, ...] = ()

    def job(self, name: str) -> Job | None:
        return next((j for j in self.jobs if j.name == name), None)


# --- loading ------------------------------------------------------------------------------------


def display_path(path: Path, root: Path) -> str:
    """`path` relative to `root` when it is inside it, for error lines."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_project(
    jobs_path: Path, root: Path | None = None, protected: Iterable[Path] = ()
) -> Project:
    """Load every spec under `jobs_path` (a directory or one file); SpecError lists all problems.

    `root` confines every path (spec files, data files, outputs; symlinks resolved); by default
    it is the working directory when `jobs_path` is written inside it, else the jobs directory
    itself (or the spec file's folder). No output may be a spec or data file, lie inside `.git`,
    or be one of the `protected` paths (pass the state file: its -wal, -shm and -journal
    companions are protected with it); see `check_outputs`.
    """
    jobs_path = Path(jobs_path)
    if not jobs_path.exists():
        raise SpecError(terminal(f"{jobs_path}: no such file or directory"))
    lexical = Path(os.path.abspath(jobs_path))
    resolved = jobs_path.resolve()
    if root is None:
        cwd = Path.cwd().resolve()
        if lexical.is_relative_to(Path(os.path.abspath(Path.cwd()))) or resolved.is_relative_to(
            cwd
        ):
            root = cwd
        else:
            root = resolved if resolved.is_dir() else resolved.parent
    root = Path(root).resolve()
    if not resolved.is_relative_to(root):
        why = "outside the project root"
        if resolved != lexical:
            why += f" (a symlink to {resolved})"
        raise SpecError(terminal(f"{jobs_path}: {why} {root}"))

    if resolved.is_dir():
        candidates = _discover(resolved)
    elif resolved.suffix in SPEC_SUFFIXES:
        candidates = [resolved]
    else:
        raise SpecError(terminal(f"{display_path(resolved, root)}: not a .toml or .json spec file"))

    # An unchanged project loads from its cache, without pydantic (batchops.spec.projectcache).
    from batchops.spec import projectcache

    key = projectcache.key_of(resolved, root, candidates, protected)
    if key is not None:
        cached = projectcache.load(key, resolved, root, candidates, protected)
        if cached is not None:
            return cached
    record = projectcache.Resolutions()

    problems: list[str] = []
    parsed: dict[Path, dict[str, Any]] = {}
    parse_problems: dict[Path, str] = {}
    for file in candidates:
        shown = display_path(file, root)
        try:
            parsed[file] = _parse_file(file, shown, root)
        except SpecError as e:
            parse_problems[file] = e.problems[0]

    # A data file (a .json array of rows, a .json output) is not a spec, even under jobs/.
    referenced: set[Path] = set()
    for file, raw in parsed.items():
        for written, path in _referenced_paths(file, raw):
            record.referenced.append((str(file), written, None if path is None else str(path)))
            if path is not None:
                referenced.add(path)
    spec_files = [f for f in candidates if f not in referenced]
    if not spec_files and resolved.is_dir():
        raise SpecError(
            terminal(f"{display_path(resolved, root)}: no .toml or .json spec files found")
        )

    jobs: dict[str, Job] = {}
    moves: list[Moved] = []
    for file in spec_files:
        if file in parse_problems:
            problems.append(parse_problems[file])
            continue
        moves.extend(Moved(m["from"], m["to"], file) for m in _raw_moves(parsed[file]))
        for job_or_problem in _jobs_of(file, parsed[file], root, record.confined):
            if isinstance(job_or_problem, str):
                problems.append(job_or_problem)
                continue
            job = job_or_problem
            if job.name in jobs:
                first = display_path(jobs[job.name].spec_file, root)
                problems.append(
                    f"{display_path(file, root)}: jobs.{job.name}: job '{job.name}' is already "
                    f"defined in {first}"
                )
                continue
            jobs[job.name] = job

    problems.extend(_move_problems(moves, jobs, root))
    project = Project(
        root=root,
        spec_files=tuple(spec_files),
        jobs=tuple(jobs[name] for name in sorted(jobs)),
        moves=tuple(moves),
    )
    problems.extend(check_outputs(project, protected, candidates))
    if problems:
        raise SpecError(*dict.fromkeys(terminal(p) for p in problems))
    if key is not None:
        projectcache.save(key, resolved, root, candidates, protected, project, record)
    return project


def _raw_moves(raw: dict[str, Any]) -> list[dict[str, str]]:
    """The `moved` entries of a parsed spec (validated with the rest of the file)."""
    moved = raw.get("moved")
    if not isinstance(moved, list):
        return []
    return [
        m
        for m in moved
        if isinstance(m, dict) and isinstance(m.get("from"), str) and isinstance(m.get("to"), str)
    ]


def _move_problems(moves: list[Moved], jobs: Mapping[str, Job], root: Path) -> list[str]:
    """A problem line for each `moved` entry that cannot be done: bad names, a `to` that is no
    job, a `from` that still is one, a name moved twice, or a chain (a → b, b → c)."""
    problems = []
    olds: dict[str, Moved] = {}
    news: dict[str, Moved] = {}
    for i, m in enumerate(moves):
        where = f"{display_path(m.spec_file, root)}: moved.{i}"
        if not JOB_NAME_RE.fullmatch(m.old) or not JOB_NAME_RE.fullmatch(m.new):
            problems.append(f"{where}: invalid job name in {_quoted(m.old)} → {_quoted(m.new)}")
        elif m.old == m.new:
            problems.append(f"{where}: from and to are the same job {json.dumps(m.old)}")
        elif m.new not in jobs:
            problems.append(f"{where}: to: no job {json.dumps(m.new)} is defined")
        elif m.old in jobs:
            problems.append(
                f"{where}: from: job {json.dumps(m.old)} is still defined (remove it, or the move)"
            )
        elif m.old in olds or m.new in news:
            problems.append(
                f"{where}: job {json.dumps(m.old if m.old in olds else m.new)} is moved twice"
            )
        elif m.old in news or m.new in olds:
            problems.append(
                f"{where}: moves chain through {json.dumps(m.old if m.old in news else m.new)}: move straight to the last name"
            )
        olds.setdefault(m.old, m)
        news.setdefault(m.new, m)
    return problems


_STATE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def check_outputs(
    project: Project, protected: Iterable[Path] = (), other_files: Iterable[Path] = ()
) -> list[str]:
    """A problem line for each output path a job may not, or cannot, write.

    Refused: the output of another job, a spec file (or any of `other_files`), a job's data file,
    anything inside a `.git` folder, the project's `batchops.toml`, each of the `protected`
    paths with its SQLite companions (-wal, -shm, -journal), a folder, anything that is not a
    regular file, and a path whose folder cannot be made (a file is in the way).
    """
    root = project.root
    claimed: dict[Path, str] = {}
    for path in protected:
        for suffix in _STATE_COMPANIONS:
            companion = Path(os.path.abspath(f"{path}{suffix}"))
            for form in {companion, resolve_quietly(companion)}:
                claimed.setdefault(form, f"a protected file ({display_path(form, root)})")
    claimed.setdefault(root / "batchops.toml", "the project settings")
    for f in (*project.spec_files, *other_files):
        claimed.setdefault(f, "a spec file")
    for job in project.jobs:
        source = job.source_file()
        if source is not None:
            claimed.setdefault(source, f"the input of job {job.name}")
    problems = []
    for job in project.jobs:
        if job.output is None:
            continue
        path = job.output.path
        shown = display_path(path, root)
        where = f"{display_path(job.spec_file, root)}: jobs.{job.name}.output.path: {shown}"
        why = _output_problem(path, root)
        if why is None and path in claimed:
            why = f"is also {claimed[path]}"
        if why is not None:
            problems.append(f"{where} {why}")
            continue
        claimed[path] = f"the output of job {job.name}"
    return problems


def resolve_quietly(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def _output_problem(path: Path, root: Path) -> str | None:
    """Why `path` (resolved, inside `root`) cannot be an output file, or None."""
    relative = path.relative_to(root)
    if any(part.lower() == ".git" for part in relative.parts):
        return "is inside .git"
    if path == root:
        return "is the project root"
    try:
        mode = path.lstat().st_mode if path.exists() or path.is_symlink() else None
    except OSError as e:
        return f"cannot be checked: {e.strerror}"
    if mode is not None:
        if stat.S_ISDIR(mode):
            return "is a folder"
        if not stat.S_ISREG(mode):
            return "is not a regular file"
        return None
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():
            return f"is under {display_path(parent, root)}, a broken symlink"
        parent = parent.parent
    if not parent.is_dir():
        return f"is under {display_path(parent, root)}, which is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {display_path(parent, root)} is not writable"
    return None


def _discover(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.endswith(SPEC_SUFFIXES) and not name.startswith("."):
                found.append(Path(dirpath, name))
    return sorted(found)


def reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads: a key twice in one object is an error, not last-wins."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


class DuplicateKey(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise NotJson(f"{name} is not valid JSON")


class NotJson(ValueError):
    pass


def strict_json(text: str | bytes) -> Any:
    """json.loads refusing duplicate keys and NaN/Infinity; ValueError says why."""
    return json.loads(text, object_pairs_hook=reject_duplicate_keys, parse_constant=_no_constants)


def json_error(e: BaseException) -> str:
    """The reason a `strict_json` call failed, for an error line."""
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e.msg} (at line {e.lineno}, column {e.colno})"
    if isinstance(e, DuplicateKey):
        return f"invalid JSON: duplicate key {terminal(json.dumps(e.args[0]))}"
    if isinstance(e, RecursionError):
        return "invalid JSON: nested too deeply"
    if isinstance(e, NotJson):
        return f"invalid JSON: {e.args[0]}"
    if "integer string conversion" in str(e):
        return "invalid JSON: a number with too many digits"
    return f"invalid JSON: {e}"


def _parse_file(file: Path, shown: str, root: Path) -> dict[str, Any]:
    try:
        data = read_bounded(file, root, MAX_SPEC_BYTES, "a spec file")
    except FileRefused as e:
        raise SpecError(f"{shown}: {e.args[0]}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{shown}: {utf8_problem(data, e)}") from None
    if file.suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{shown}: invalid TOML: {e}") from None
        except RecursionError:
            raise SpecError(f"{shown}: invalid TOML: nested too deeply") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise SpecError(f"{shown}: invalid TOML: {e}") from None
    else:
        try:
            raw = strict_json(text)
        except (ValueError, RecursionError) as e:
            raise SpecError(f"{shown}: {json_error(e)}") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{shown}: a spec must be a JSON object, not {_type_name(raw)}")
    problem = json_problem(raw)
    if problem is not None:
        place, why = problem
        raise SpecError(location(shown, place, why))
    return raw


def utf8_problem(data: bytes, e: UnicodeDecodeError, offset: int = 0) -> str:
    """`not valid UTF-8 (byte 0xff at line 3, column 7)` for a decode error in `data`."""
    start = e.start
    line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return f"not valid UTF-8 (byte 0x{data[start]:02x} at line {line + offset}, column {column})"


def _type_name(value: Any) -> str:
    return {
        list: "an array",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _referenced_paths(file: Path, raw: dict[str, Any]) -> Iterable[tuple[str, Path | None]]:
    """Paths a parsed (not yet validated) spec points at, so discovery can skip them: each as
    written, with where it leads (None: nowhere)."""

    def path_of(value: Any) -> tuple[str, Path | None] | None:
        if isinstance(value, dict):
            value = value.get("path")
        if isinstance(value, str):
            return value, referenced_path(file, value)
        return None

    tables = []
    if isinstance(raw.get("defaults"), dict):
        tables.append(raw["defaults"])
    if isinstance(raw.get("jobs"), dict):
        tables.extend(t for t in raw["jobs"].values() if isinstance(t, dict))
    for table in tables:
        for field in ("input", "requests", "output"):
            path = path_of(table.get(field))
            if path is not None:
                yield path


def referenced_path(file: Path, value: str) -> Path | None:
    """Where path `value`, written in spec `file`, leads (None: it cannot be resolved)."""
    try:
        return (file.parent / value).resolve()
    except (OSError, ValueError):
        return None


def _loc(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts)


def _jobs_of(
    file: Path, raw: dict[str, Any], root: Path, record: list[tuple[str, str, bool, str]]
) -> list[Job | str]:
    """The jobs of one parsed spec file, or a problem line for each thing wrong with it."""
    shown = display_path(file, root)
    version = raw.get("version")
    if "version" not in raw:
        return [f"{shown}: version: required field missing (this batchops reads version = 1)"]
    if type(version) is not int or version != SPEC_VERSION:
        return [
            f"{shown}: version: unsupported spec version {json.dumps(version)} "
            f"(this batchops reads version = {SPEC_VERSION})"
        ]
    from batchops.spec import rawplain

    spec: Any = rawplain.spec_of(raw)
    if spec is None:  # not plainly right: pydantic checks it, and says what is wrong
        from batchops.spec.raw import spec_of

        spec = spec_of(shown, raw)
        if isinstance(spec, list):
            return list(spec)

    out: list[Job | str] = []
    if spec.defaults is not None and spec.defaults.params is not None:
        out.extend(_params_problems(shown, ("defaults", "params"), spec.defaults.params))
    for field in ("system", "messages"):
        if spec.defaults is not None and getattr(spec.defaults, field) is not None:
            out.extend(_not_json(shown, ("defaults", field), getattr(spec.defaults, field)))
    for name, raw_job in spec.jobs.items():
        if not JOB_NAME_RE.fullmatch(name):
            out.append(
                f"{shown}: jobs.{name}: invalid job name {_quoted(name)} (lowercase letters, "
                "digits, '-' and '_', starting with a letter or digit, at most 64 characters)"
            )
            continue
        defaults = spec.defaults or rawplain.NO_DEFAULTS
        job_or_problems = _merge(file, shown, root, name, defaults, raw_job, record)
        if isinstance(job_or_problems, Job):
            out.append(job_or_problems)
        else:
            out.extend(job_or_problems)
    return out


def _not_json(shown: str, where: tuple[str, ...], value: Any) -> list[str]:
    """A problem line for each value under `value` that is no JSON value: a TOML date, time or
    datetime, which a request's JSON cannot carry (a template renders one as text; params,
    system blocks and messages are sent as written)."""
    t = type(value)
    if value is None or t is str or t is int or t is float or t is bool:
        return []
    if t is dict:
        return [line for k, v in value.items() for line in _not_json(shown, (*where, k), v)]
    if t is list:
        return [line for i, v in enumerate(value) for line in _not_json(shown, (*where, i), v)]
    kind = {"datetime": "date-time", "date": "date", "time": "time"}.get(t.__name__, t.__name__)
    return [
        location(
            shown, _loc(where), f"a TOML {kind} is not a JSON value; write it as a quoted string"
        )
    ]


def _params_problems(shown: str, where: tuple[str, ...], params: Mapping[str, Any]) -> list[str]:
    lines = _not_json(shown, where, dict(params))
    for key in JOB_FIELD_PARAMS:
        if key in params:
            lines.append(
                location(shown, _loc((*where, key)), f"set {key} as a job field, not in params")
            )
    for key, reason in forbidden_param_problems(params):
        if key not in JOB_FIELD_PARAMS:
            lines.append(location(shown, _loc((*where, key)), reason))
    return lines


def _merge(
    file: Path,
    shown: str,
    root: Path,
    name: str,
    defaults: _RawDefaults,
    raw: _RawJob,
    record: list[tuple[str, str, bool, str]],
) -> Job | list[str]:
    where = f"jobs.{name}"
    problems: list[str] = []

    def problem(field: str | None, message: str) -> None:
        problems.append(location(shown, f"{where}.{field}" if field else where, message))

    sources = [s for s in ("input", "items", "requests") if getattr(raw, s) is not None]
    if not sources:
        problem(None, "no item source: set one of input, items or requests")
    elif len(sources) > 1:
        problem(None, f"more than one item source ({', '.join(sources)}): set exactly one")

    def inherited(field: str) -> Any:
        value = getattr(raw, field)
        return getattr(defaults, field) if value is None else value

    fields: dict[str, Any] = {
        "name": name,
        "spec_file": file,
        "description": inherited("description"),
        "max_attempts": inherited("max_attempts") or 3,
        "budget_usd": inherited("budget_usd"),
        "betas": inherited("betas") or [],
    }
    for budget in ("render_seconds", "render_max_size", "reuse", "cache", "expected_output_tokens"):
        if inherited(budget) is not None:
            fields[budget] = inherited(budget)
    output = inherited("output")
    if output is not None:
        out_loc = f"{where}.output.path" if raw.output is not None else "defaults.output.path"
        path = _confined(
            file, root, output.path, problems, shown, out_loc, must_exist=False, record=record
        )
        fmt = output.format or FORMAT_BY_SUFFIX.get(Path(output.path).suffix.lower(), "jsonl")
        if path is not None:
            columns = tuple(output.columns or ())
            fields["output"] = OutputSpec(path=path, format=fmt, columns=columns)

    if raw.requests is not None:
        # Raw requests are sent exactly as written: nothing of the template fields applies.
        template_fields = ("model", "max_tokens", "system", "prompt", "messages", "params")
        for field in (*template_fields, "attachments"):
            if getattr(raw, field) is not None:
                problem(field, "a requests job sends its requests as written; remove this field")
        path = _confined(
            file, root, raw.requests.path, problems, shown, f"{where}.requests.path", record=record
        )
        if path is not None:
            fields["requests"] = RequestsSpec(path=path)
    elif sources:
        for field in ("model", "max_tokens"):
            fields[field] = inherited(field)
            if fields[field] is None:
                problem(None, f"{field} is required (set it in the job or in [defaults])")
        expected, most = fields.get("expected_output_tokens"), fields["max_tokens"]
        if expected is not None and most is not None and expected > most:
            problem(
                "expected_output_tokens",
                f"{expected} is more than max_tokens ({most}): a reply never exceeds max_tokens",
            )
        fields["system"] = inherited("system")
        # prompt and messages are one choice: a job's own choice replaces the default's.
        if raw.prompt is not None or raw.messages is not None:
            prompt, messages = raw.prompt, raw.messages
        else:
            prompt, messages = defaults.prompt, defaults.messages
        if (prompt is None) == (messages is None):
            problem(None, "set exactly one of prompt or messages")
        fields["prompt"], fields["messages"] = prompt, messages
        for field in ("system", "messages"):
            if getattr(raw, field) is not None:
                problems.extend(_not_json(shown, (where, field), getattr(raw, field)))
        params = {**(defaults.params or {}), **(raw.params or {})}
        if raw.params:
            problems.extend(_params_problems(shown, (where, "params"), raw.params))
        fields["params"] = params
        if raw.input is not None:
            fmt = raw.input.format or FORMAT_BY_SUFFIX.get(Path(raw.input.path).suffix.lower())
            if fmt is None:
                problem("input.format", "cannot tell the format from the file name; set format")
            path = _confined(
                file, root, raw.input.path, problems, shown, f"{where}.input.path", record=record
            )
            if path is not None and fmt is not None:
                fields["input"] = InputSpec(path=path, key=raw.input.key, format=fmt)
        elif raw.items is not None:
            fields["items"] = raw.items
        if raw.attachments:
            fields["attachments"] = tuple(raw.attachments)
    if problems:
        return problems
    return Job(**fields)


def _confined(
    file: Path,
    root: Path,
    value: str,
    problems: list[str],
    shown: str,
    field: str,
    must_exist: bool = True,
    record: list[tuple[str, str, bool, str]] | None = None,
) -> Path | None:
    """`value` resolved against the spec's folder, or None after recording why it is refused.
    Each path it accepts is added to `record` as (spec file, value, must_exist, resolved)."""
    written = Path(value)
    lexical = Path(os.path.normpath(file.parent / written))
    try:
        resolved = lexical.resolve() if written.is_absolute() else (file.parent / written).resolve()
    except (OSError, RuntimeError) as e:
        problems.append(location(shown, field, f"{json.dumps(value)}: cannot resolve ({e})"))
        return None
    if not resolved.is_relative_to(root):
        if lexical.is_relative_to(root):
            why = f"is outside the project root (a symlink to {resolved})"
        else:
            why = "is outside the project root"
        problems.append(location(shown, field, f"{json.dumps(value)} {why}"))
        return None
    if must_exist:
        try:
            mode = resolved.stat().st_mode
        except OSError:
            problems.append(location(shown, field, f"{json.dumps(value)}: no such file"))
            return None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
            problems.append(location(shown, field, f"{json.dumps(value)}: not a file ({kind})"))
            return None
    if record is not None:
        record.append((str(file), value, must_exist, str(resolved)))
    return resolved


def _quoted(name: str) -> str:
    """A name in quotes as JSON writes it, its letters as they are (`"tâche"`, not
    `"t\\u00e2che"`); control characters stay escaped."""
    return json.dumps(name, ensure_ascii=False)
