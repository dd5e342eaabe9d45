"""Items: turn a validated job into the exact requests it sends, each with a fingerprint.

An item is one request of a job, named by its key (a data row's key field, an inline item's
`key`, or a raw request's custom_id). Rendering is streamed — a million-row data file is read
line by line — and templates run in Jinja2's immutable sandbox with strict undefined variables,
because specs arrive by pull request: a template may read its row, nothing else.

Fingerprints hash the canonical JSON of the rendered params, so they change exactly when what
would be sent changes: not when a spec is reformatted or re-described.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from batchops.errors import SpecError
from batchops.spec.model import Job, display_path, forbidden_param_problems, utf8_problem

FINGERPRINT_PREFIX = "sha256:"
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_PROBLEM_LINES = 50
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_]")
_UNSAFE_JOB_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercased
_B32_PAIRS = [a + b for a in _B32 for b in _B32]
_TEMPLATE_MARKERS = ("{{", "{%", "{#")


@dataclass(frozen=True, slots=True)
class Item:
    """One request of a job. `params` is shared structure: treat it as read-only."""

    job: str
    key: str
    custom_id: str
    params: dict[str, Any]
    fingerprint: str
    row: dict[str, Any] | None


# --- identity -----------------------------------------------------------------------------------


def custom_id_for(job: str, key: str) -> str:
    """The custom_id of item `key` of `job`: deterministic, and valid for any key.

    Shape: `<job[:16]>-<key[:32], [^A-Za-z0-9_] as '_'>-<h>`, where h is the first 12
    characters of the lowercase base32 sha256 of `job + "\\x1f" + key` (at most 62 characters).
    To trace a custom_id back without state: the prefix names the job and, for short ASCII keys,
    the key; otherwise recompute `custom_id_for(job, key)` over the spec's keys and match.
    """
    return _custom_id_maker(job)(key)


def _custom_id_maker(job: str) -> Callable[[str], str]:
    """`custom_id_for` with the job's part computed once (it runs for every item)."""
    prefix = _UNSAFE_JOB_CHARS.sub("_", job[:16]) + "-"
    salt = f"{job}\x1f"
    sha256, sub, pairs = hashlib.sha256, _UNSAFE_KEY_CHARS.sub, _B32_PAIRS

    def custom_id(key: str) -> str:
        n = int.from_bytes(sha256((salt + key).encode("utf-8", "surrogatepass")).digest()[:8]) >> 4
        return (
            prefix
            + sub("_", key[:32])
            + "-"
            + pairs[n >> 50]
            + pairs[(n >> 40) & 1023]
            + pairs[(n >> 30) & 1023]
            + pairs[(n >> 20) & 1023]
            + pairs[(n >> 10) & 1023]
            + pairs[n & 1023]
        )

    return custom_id


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False), byte for byte (orjson where it writes the same bytes)."""
    if _orjson_exact(obj):
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            pass
    return _json_canonical(obj)


def fingerprint(params: dict[str, Any], betas: Sequence[str] = ()) -> str:
    """`sha256:<hex>` of the canonical request: the params alone, or with the betas if any."""
    if betas:
        return _digest(canonical_json({"betas": sorted(betas), "params": params}))
    return _digest(canonical_json(params))


def _digest(data: bytes) -> str:
    return FINGERPRINT_PREFIX + hashlib.sha256(data).hexdigest()


def _json_canonical(obj: Any) -> bytes:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


def _orjson_exact(obj: Any) -> bool:
    """True when orjson would write `obj` exactly as json.dumps does.

    They differ on floats below 1e-4 (`1e-05` vs `0.00001`), non-finite floats, integers
    beyond 64 bits and non-string keys; everything else is byte-identical.
    """
    if isinstance(obj, str) or obj is None or isinstance(obj, bool):
        return True
    if isinstance(obj, int):
        return -(2**63) <= obj < 2**64
    if isinstance(obj, float):
        return math.isfinite(obj) and (obj == 0 or abs(obj) >= 1e-4)
    if isinstance(obj, dict):
        return all(type(k) is str and _orjson_exact(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return all(_orjson_exact(v) for v in obj)
    return False


# --- templates ----------------------------------------------------------------------------------

MAX_TEMPLATE_VALUE = 1_000_000  # characters or elements a template may build with `*`
MAX_EXPONENT = 1_000


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, also refusing `'x' * 10**9` and `9 ** 9 ** 9` (a CI-killing PR)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is over the limit of {MAX_EXPONENT}")
            return left**right
        sizes = [len(v) for v in (left, right) if isinstance(v, str | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int)]
        if sizes and counts and sizes[0] * counts[0] > MAX_TEMPLATE_VALUE:
            raise SecurityError(f"a value over {MAX_TEMPLATE_VALUE:,} long is over the limit")
        return left * right


_ENV = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_GLOBALS = dict(_ENV.globals)  # what Template.render merges into every context
_FILE_NODES = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


class _Template:
    """A compiled template string inside the request structure, with the name errors give it."""

    __slots__ = ("name", "render")

    def __init__(self, name: str, render: Callable[..., str]):
        self.name = name
        self.render = render


def _compile(source: str, name: str, problems: list[str], where: str) -> str | _Template:
    if not any(marker in source for marker in _TEMPLATE_MARKERS):
        return source  # plain text: nothing to render, sent as written
    try:
        tree = _ENV.parse(source)
        for node in tree.find_all(_FILE_NODES):
            tag = type(node).__name__.lower().replace("fromimport", "from-import")
            problems.append(
                f"{where}: template {name!r}: {{% {tag} %}} is not allowed "
                "(a template sees only its item)"
            )
            return source
        template = _ENV.from_string(source)
        simple = _simple_format(tree)
    except TemplateSyntaxError as e:
        problems.append(f"{where}: template {name!r}: syntax error at line {e.lineno}: {e.message}")
        return source
    except SecurityError as e:
        problems.append(f"{where}: template {name!r}: {e}")
        return source
    if simple is not None:
        return _Template(name, simple)
    return _Template(name, _fast_render(template))


def _simple_format(tree: nodes.Template) -> Callable[[dict[str, Any]], str] | None:
    """A str.format_map renderer for templates that only substitute names (`{{ body }}`).

    Such a template renders each name as `str(value)`, which `format(value, "")` equals for
    every JSON value; a missing name raises the same error StrictUndefined would. Anything else
    (filters, attributes, tags) returns None and goes through Jinja.
    """
    pieces = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append(child.data.replace("{", "{{").replace("}", "}}"))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                pieces.append("{" + child.name + "}")
            else:
                return None
    format_map = "".join(pieces).format_map

    def render(context: dict[str, Any]) -> str:
        try:
            return format_map(context)
        except KeyError as e:
            raise UndefinedError(f"{e.args[0]!r} is undefined") from None

    return render


def _fast_render(template: Template) -> Callable[[dict[str, Any]], str]:
    """`template.render`, minus its per-call merge of the globals (4x faster).

    The caller passes the whole context, `_GLOBALS` included (see `_Renderer.render`).
    """
    root, name, blocks, concat = template.root_render_func, template.name, template.blocks, "".join

    def render(context: dict[str, Any]) -> str:
        return concat(root(Context(_ENV, context, name, blocks)))

    return render


_Part = Any  # a literal JSON value, a _Template, or a _Struct containing templates


class _Struct:
    """A dict or list of which some leaves are templates."""

    __slots__ = ("kind", "parts")

    def __init__(self, kind: type, parts: list[tuple[Any, _Part]]):
        self.kind = kind
        self.parts = parts


def _plan_content(value: Any, name: str, problems: list[str], where: str) -> _Part:
    """Compile every string `text`/`content` value inside messages or system blocks."""
    if isinstance(value, dict):
        parts, templated = [], False
        for k, v in value.items():
            sub = f"{name}.{k}"
            if k in ("text", "content") and isinstance(v, str):
                part = _compile(v, sub, problems, where)
            else:
                part = _plan_content(v, sub, problems, where)
            templated = templated or not _is_literal(part)
            parts.append((k, part))
        return _Struct(dict, parts) if templated else value
    if isinstance(value, list):
        parts = [
            (None, _plan_content(v, f"{name}[{i}]", problems, where)) for i, v in enumerate(value)
        ]
        if all(_is_literal(p) for _, p in parts):
            return value
        return _Struct(list, parts)
    return value


def _is_literal(part: _Part) -> bool:
    return not isinstance(part, _Template | _Struct)


def _render(part: _Part, context: dict[str, Any]) -> Any:
    if isinstance(part, _Template):
        return part.render(context)
    if isinstance(part, _Struct):
        if part.kind is dict:
            return {k: _render(p, context) for k, p in part.parts}
        return [_render(p, context) for _, p in part.parts]
    return part


class _RenderError(Exception):
    def __init__(self, template: str, message: str):
        self.template = template
        self.message = message


def _failing_template(part: _Part, context: dict[str, Any]) -> str:
    if isinstance(part, _Template):
        try:
            part.render(context)
        except Exception:
            return part.name
    if isinstance(part, _Struct):
        for _, p in part.parts:
            name = _failing_template(p, context)
            if name:
                return name
    return ""


class _Renderer:
    """A job's request, compiled once: render(row, key) -> params."""

    def __init__(self, job: Job, problems: list[str], where: str):
        self.model = job.model
        self.max_tokens = job.max_tokens
        if isinstance(job.system, str):
            self.system: _Part = _compile(job.system, "system", problems, where)
        elif job.system is not None:
            self.system = _plan_content(job.system, "system", problems, where)
        else:
            self.system = None
        self.prompt: _Part = None
        self.messages: _Part = None
        if job.prompt is not None:
            self.prompt = _compile(job.prompt, "prompt", problems, where)
        else:
            self.messages = _plan_content(job.messages, "messages", problems, where)
        self.params = job.params
        # Floats below 1e-4 etc. can only come from the literal parts; rows enter as strings.
        literal = {"p": job.params, "m": job.messages, "s": job.system}
        self.exact = _orjson_exact(literal)

    def render(self, row: dict[str, Any], key: str) -> dict[str, Any]:
        context = {**_GLOBALS, **row, "row": row, "key": key}
        params: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        try:
            if self.system is not None:
                params["system"] = _render(self.system, context)
            if self.messages is None:
                content = _render(self.prompt, context)
                params["messages"] = [{"role": "user", "content": content}]
            else:
                params["messages"] = _render(self.messages, context)
        except Exception as e:  # any template failure is a problem line, not a crash
            raise self._error(e, context) from None
        params.update(self.params)
        return params

    def _error(self, e: Exception, context: dict[str, Any]) -> _RenderError:
        parts = (self.system, self.prompt, self.messages)
        name = next(filter(None, (_failing_template(p, context) for p in parts)), "")
        if isinstance(e, TemplateError):
            message = e.message or str(e)
        else:
            message = f"{type(e).__name__}: {e}"
        return _RenderError(name, message)


# --- reading data files -------------------------------------------------------------------------


class _Fatal(Exception):
    """A problem after which the file cannot be read on."""


def _binary_lines(path: Path, shown: str) -> Iterator[tuple[int, bytes]]:
    try:
        f = path.open("rb")
    except OSError as e:
        raise _Fatal(f"{shown}: cannot read: {e.strerror}") from None
    with f:
        for number, line in enumerate(f, 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            yield number, line


def _decode(line: bytes, number: int, shown: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Fatal(f"{shown}: {utf8_problem(line, e, offset=number - 1)}") from None


def _json_line(line: bytes, number: int, shown: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as e:
        _decode(line, number, shown)  # a UTF-8 problem is the better message
        try:  # stdlib json accepts lone surrogate escapes that orjson refuses
            return json.loads(line)
        except json.JSONDecodeError:
            pass
        raise _Fatal(f"{shown}: line {number}: invalid JSON: {e.msg} (column {e.colno})") from None


def _jsonl_rows(path: Path, shown: str) -> Iterator[tuple[int, Any]]:
    for number, line in _binary_lines(path, shown):
        if not line.strip():
            continue
        yield number, _json_line(line, number, shown)


def _csv_rows(path: Path, shown: str) -> Iterator[tuple[int, Any]]:
    position = {"line": 0}

    def text_lines() -> Iterator[str]:
        for number, line in _binary_lines(path, shown):
            position["line"] = number
            yield _decode(line, number, shown)

    reader = csv.reader(text_lines())
    try:
        header = next(reader, None)
        if header is None:
            return
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise _Fatal(f"{shown}: line 1: duplicate column {duplicates[0]!r} in the header")
        start = reader.line_num + 1
        for record in reader:
            number, start = start, reader.line_num + 1
            if not record:
                continue
            if len(record) != len(header):
                yield number, _Ragged(len(record), len(header))
                continue
            yield number, dict(zip(header, record, strict=True))
    except csv.Error as e:
        raise _Fatal(f"{shown}: line {position['line']}: invalid CSV: {e}") from None


class _Ragged:
    __slots__ = ("fields", "expected")

    def __init__(self, fields: int, expected: int):
        self.fields = fields
        self.expected = expected


def _json_array_rows(path: Path, shown: str) -> Iterator[tuple[int, Any]]:
    # A JSON array is parsed whole: use jsonl or csv for very large inputs.
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Fatal(f"{shown}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Fatal(f"{shown}: {utf8_problem(data, e)}") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise _Fatal(
            f"{shown}: invalid JSON: {e.msg} (at line {e.lineno}, column {e.colno})"
        ) from None
    if not isinstance(rows, list):
        raise _Fatal(f"{shown}: expected a JSON array of objects")
    yield from enumerate(rows, 1)


_READERS = {"jsonl": _jsonl_rows, "csv": _csv_rows, "json": _json_array_rows}


def _key_of(row: dict[str, Any], field: str) -> str | tuple[str]:
    """The row's key as a string, or a 1-tuple holding the reason there is none."""
    value = row.get(field)
    if field not in row:
        return (f"no {field!r} field",)
    if value is None or value == "":
        return (f"empty {field!r}",)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return (f"{field!r} must be a string or an integer, not {type(value).__name__}",)
    return value if isinstance(value, str) else str(value)


# --- the items of a job -------------------------------------------------------------------------


class _Problems:
    """Problem lines of one job, capped so a million bad rows make a readable error."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_PROBLEM_LINES:
            self.lines.append(line)

    def error(self, *extra: str) -> SpecError:
        lines = [*self.lines, *extra]
        hidden = self.count - len(self.lines)
        if hidden:
            lines.append(f"... and {hidden} more problems")
        return SpecError(*lines)


def iter_items(job: Job, root: Path) -> Iterator[Item]:
    """Every item of `job` in source order, streamed; SpecError lists the problems at the end.

    Problems with single items (duplicate key, missing key, a template failing on one row, a
    ragged CSV row) are collected, up to 50 lines; a file that cannot be read on (unreadable,
    not UTF-8, a line that is not JSON) ends iteration at once.
    """
    problems = _Problems()
    spec_shown = display_path(job.spec_file, root)
    try:
        if job.requests is not None:
            yield from _raw_items(job, job.requests.path, root, problems)
        else:
            yield from _template_items(job, root, spec_shown, problems)
    except _Fatal as e:
        raise problems.error(e.args[0]) from None
    if problems.count:
        raise problems.error()


def _template_items(job: Job, root: Path, spec_shown: str, problems: _Problems) -> Iterator[Item]:
    compile_problems: list[str] = []
    renderer = _Renderer(job, compile_problems, f"{spec_shown}: job {job.name}")
    if compile_problems:
        raise SpecError(*compile_problems)
    encode = _encoder(renderer.exact, job.betas)
    name = job.name
    custom_id = _custom_id_maker(name)
    rows: Iterator[tuple[int, Any]]
    if job.input is not None:
        shown = display_path(job.input.path, root)
        rows = _READERS[job.input.format](job.input.path, shown)
        key_field = job.input.key
        unit = "row" if job.input.format == "json" else "line"
        short = f"{unit} {{}}".format
        where_of = f"{shown}: {unit} {{}}".format
    else:
        rows = enumerate(job.items or [])
        key_field = "key"
        short = f"jobs.{name}.items.{{}}".format
        where_of = f"{spec_shown}: jobs.{name}.items.{{}}".format

    seen: dict[str, int] = {}  # key -> where it first appeared, to report duplicates
    for number, row in rows:
        # The hot path: a well-formed row with a new key. Anything else falls through to the
        # checks below, which say what is wrong with it.
        if type(row) is dict:
            key = row.get(key_field)
            if type(key) is not str or not key:
                key = _key_of(row, key_field)
            if type(key) is str and key not in seen:
                seen[key] = number
                try:
                    params = renderer.render(row, key)
                except _RenderError as e:
                    problems.add(
                        f"{where_of(number)}: job {name}: item {key}: "
                        f"template {e.template!r}: {e.message}"
                    )
                    continue
                yield Item(name, key, custom_id(key), params, encode(params), row)
                continue
        where = where_of(number)
        if isinstance(row, _Ragged):
            problems.add(
                f"{where}: job {name}: row has {row.fields} fields, the header has {row.expected}"
            )
            continue
        if not isinstance(row, dict):
            problems.add(f"{where}: job {name}: expected an object, not {type(row).__name__}")
            continue
        key = _key_of(row, key_field)
        if isinstance(key, tuple):
            problems.add(f"{where}: job {name}: {key[0]}")
            continue
        first = short(seen[key])
        problems.add(f"{where}: job {name}: item {key}: duplicate key (first at {first})")


def _encoder(exact: bool, betas: Sequence[str]) -> Callable[[dict[str, Any]], str]:
    """The fingerprint function for a job: fast when orjson writes what json.dumps would."""
    sorted_betas = sorted(betas)
    dumps, option = orjson.dumps, orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256

    if not exact:
        return lambda params: fingerprint(params, sorted_betas)

    def encode(params: dict[str, Any]) -> str:
        obj = {"betas": sorted_betas, "params": params} if sorted_betas else params
        try:
            data = dumps(obj, option=option)
        except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate from a row
            data = _json_canonical(obj)
        return FINGERPRINT_PREFIX + sha256(data).hexdigest()

    return encode


# What a cost estimate needs from a raw request; the API checks the rest when it processes it.
_RAW_REQUIRED = (
    ("model", str, "a string"),
    ("max_tokens", int, "an integer"),
    ("messages", list, "a list"),
)


def _raw_items(job: Job, path: Path, root: Path, problems: _Problems) -> Iterator[Item]:
    shown = display_path(path, root)
    name = job.name
    seen: dict[str, int] = {}
    for number, request in _jsonl_rows(path, shown):
        where = f"{shown}: line {number}"
        if not isinstance(request, dict):
            problems.add(f"{where}: job {name}: expected an object, not {type(request).__name__}")
            continue
        custom_id = request.get("custom_id")
        label = f"item {custom_id}" if isinstance(custom_id, str) and custom_id else None
        prefix = f"{where}: job {name}" + (f": {label}" if label else "")
        line_problems = []
        extra = sorted(set(request) - {"custom_id", "params"})
        if extra:
            line_problems.append(f"unknown field {extra[0]!r} (a request has custom_id and params)")
        if "custom_id" not in request:
            line_problems.append("required field 'custom_id' missing")
        elif not isinstance(custom_id, str) or not CUSTOM_ID_RE.match(custom_id):
            line_problems.append(
                f"invalid custom_id {json.dumps(custom_id)} (1-64 characters from "
                "A-Z, a-z, 0-9, '-' and '_')"
            )
        elif custom_id in seen:
            line_problems.append(f"duplicate custom_id (first at line {seen[custom_id]})")
        params = request.get("params")
        if "params" not in request:
            line_problems.append("required field 'params' missing")
        elif not isinstance(params, dict):
            line_problems.append("params must be an object")
        else:
            for field, kind, what in _RAW_REQUIRED:
                value = params.get(field)
                if not isinstance(value, kind) or isinstance(value, bool):
                    line_problems.append(f"params.{field}: required, {what}")
            for param, reason in forbidden_param_problems(params):
                line_problems.append(f"params.{param}: {reason}")
        for p in line_problems:
            problems.add(f"{prefix}: {p}")
        if line_problems:
            if isinstance(custom_id, str) and custom_id not in seen:
                seen[custom_id] = number
            continue
        seen[custom_id] = number
        yield Item(
            name,
            custom_id,
            custom_id_for(name, custom_id),
            params,
            fingerprint(params, job.betas),
            None,
        )
