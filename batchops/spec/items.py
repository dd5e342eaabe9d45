"""Items: turn a validated job into the exact requests it sends, each with a fingerprint.

An item is one request of a job, named by its key (a data row's key field, an inline item's
`key`, or a raw request's custom_id). Rendering is streamed — a million-row data file is read
line by line — and templates run in Jinja2's immutable sandbox with strict undefined variables,
because specs arrive by pull request: a template may read its row, nothing else, within a time
and size budget per item (`batchops.spec.sandbox`). Data files are read only inside the project
root, only if they are regular files, a bounded line at a time; whatever they hold, the outcome
is items or SpecError lines naming the file, the place and the job, never another exception.

Fingerprints hash the canonical JSON of the rendered params, so they change exactly when what
would be sent changes: not when a spec is reformatted or re-described.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from itertools import compress, islice, repeat
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from batchops.errors import SpecError
from batchops.lazyclass import dataclass
from batchops.safetext import terminal
from batchops.spec import attachments
from batchops.spec.files import (
    MAX_JSON_DATA_BYTES,
    FileRefused,
    bounded_line_blocks,
    open_regular,
    read_bounded,
)
from batchops.spec.keyhashes import KeyHashes, SuspectKeys
from batchops.spec.model import (
    BATCH_FORBIDDEN_PARAMS,
    MAX_DEPTH,
    MAX_TOKENS_CAP,
    RENDER_MAX_SIZE_DEFAULT,
    Job,
    display_path,
    forbidden_param_problems,
    has_surrogate,
    json_error,
    json_problem,
    strict_json,
    utf8_problem,
)

FINGERPRINT_PREFIX = "sha256:"
_PLAIN_VALUES = frozenset((int, float, bool, type(None)))  # printed the same in every run
CUSTOM_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")  # not "$": it matches before a last "\n"
MAX_PROBLEM_LINES = 50
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_]")
_UNSAFE_JOB_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lowercased
_B32_PAIRS = [a + b for a in _B32 for b in _B32]
# What `_UNSAFE_KEY_CHARS.sub("_", …)` makes of each ASCII character, for str.translate.
_SAFE_ASCII = str.maketrans({c: _UNSAFE_KEY_CHARS.sub("_", c) for c in map(chr, range(128))})
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
    # `request_size_of(custom_id, params)`, when the maker knew it (None: computed when asked)
    size: int | None = field(default=None, compare=False)


# --- identity -----------------------------------------------------------------------------------


def custom_id_for(job: str, key: str, fingerprint: str) -> str:
    """The custom_id of item `key` of `job` as rendered to `fingerprint`: deterministic, valid
    for any key, and proof of which request a result answers (DESIGN §2).

    Shape: `<job[:16]>-<key[:32], [^A-Za-z0-9_] as '_'>-<h>`, where h is the first 12
    characters of the lowercase base32 sha256 of `job + "\x1f" + key + "\x1f" + fingerprint`
    (at most 62 characters). A teammate's request for the same job and key with another prompt or
    model has another custom_id, so its result is never taken for ours. To trace a custom_id back
    without state: the prefix names the job and, for short ASCII keys, the key.
    """
    return _custom_id_maker(job)(key, fingerprint)


def _custom_id_maker(job: str) -> Callable[[str, str], str]:
    """`custom_id_for` with the job's part computed once (it runs for every item)."""
    prefix = _UNSAFE_JOB_CHARS.sub("_", job[:16]) + "-"
    salt = f"{job}\x1f"
    sha256, sub, safe, pairs = hashlib.sha256, _UNSAFE_KEY_CHARS.sub, _SAFE_ASCII, _B32_PAIRS
    from_bytes = int.from_bytes

    def custom_id(key: str, fingerprint: str) -> str:
        data = f"{salt}{key}\x1f{fingerprint}".encode("utf-8", "surrogatepass")
        n = from_bytes(sha256(data).digest()[:8]) >> 4  # the first 60 bits: 12 characters
        shown = key[:32]
        shown = shown.translate(safe) if shown.isascii() else sub("_", shown)
        # Two characters (10 bits) a lookup: a table small enough to stay in the CPU's cache.
        return (
            f"{prefix}{shown}-{pairs[n >> 50]}{pairs[(n >> 40) & 1023]}{pairs[(n >> 30) & 1023]}"
            f"{pairs[(n >> 20) & 1023]}{pairs[(n >> 10) & 1023]}{pairs[n & 1023]}"
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

# jinja2 and the sandbox are imported by the first template Jinja must compile, or the first
# render that needs them (`_load_templating`): a command whose rows the rows cache keeps, or
# whose templates only substitute names (`_plain_pieces`), never pays the ~20 ms of importing them.
sandbox: Any = None
nodes: Any = None
TemplateSyntaxError: Any = None
SecurityError: Any = None
TemplateError: Any = None
UndefinedError: Any = None
_ENV: Any = None
_GLOBALS: dict[str, Any] = {}  # what Template.render merges into every context
_FILE_NODES: tuple[type, ...] = ()


def _load_templating() -> None:
    global sandbox, nodes, TemplateSyntaxError, SecurityError, TemplateError, UndefinedError
    global _ENV, _FILE_NODES
    if _ENV is not None:
        return
    import jinja2.exceptions
    from jinja2 import nodes as jinja_nodes

    from batchops.spec import sandbox as jinja_sandbox

    sandbox, nodes = jinja_sandbox, jinja_nodes
    TemplateSyntaxError = jinja2.exceptions.TemplateSyntaxError
    SecurityError = jinja2.exceptions.SecurityError
    TemplateError = jinja2.exceptions.TemplateError
    UndefinedError = jinja2.exceptions.UndefinedError
    _FILE_NODES = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
    _GLOBALS.update(jinja_sandbox.ENV.globals)
    _ENV = jinja_sandbox.ENV


class _Template:
    """A compiled template string inside the request structure, with the name errors give it.

    `render` takes the full context; `from_row`, set for templates that only substitute names,
    takes (row, key, budget) and renders the same string without building that context.
    """

    __slots__ = ("name", "render", "from_row", "shape")

    def __init__(
        self,
        name: str,
        render: Callable[..., str],
        from_row: Callable[[dict[str, Any], str, Any], str] | None = None,
        shape: Substitution | None = None,
    ):
        self.name = name
        self.render = render
        self.from_row = from_row
        self.shape = shape


class Substitution(NamedTuple):
    """A template that only substitutes names: `format(*values)` renders it from the values of
    `names` (distinct, in order of first use), each used `counts` times, around `literal`
    characters of text."""

    format: Callable[..., str]
    names: tuple[str, ...]
    counts: tuple[int, ...]
    literal: int


def _compile(source: str, name: str, problems: list[str], where: str) -> str | _Template:
    if not any(marker in source for marker in _TEMPLATE_MARKERS):
        return source  # plain text: nothing to render, sent as written
    pieces = _plain_pieces(source)
    if pieces is not None:
        return _Template(name, *_simple_format(pieces))
    _load_templating()
    try:
        tree = _ENV.parse(source)
        for node in tree.find_all(_FILE_NODES):
            tag = type(node).__name__.lower().replace("fromimport", "from-import")
            problems.append(
                f"{where}: template {name!r}: {{% {tag} %}} is not allowed "
                "(a template sees only its item)"
            )
            return source
        pieces = _pieces_of(tree)
        if pieces is not None:
            return _Template(name, *_simple_format(pieces))
        template = sandbox.compile_template(tree)
    except TemplateSyntaxError as e:
        problems.append(f"{where}: template {name!r}: syntax error at line {e.lineno}: {e.message}")
        return source
    except SecurityError as e:
        problems.append(f"{where}: template {name!r}: {e}")
        return source
    except Exception as e:  # a template too deep or too large to compile is a problem line too
        problems.append(f"{where}: template {name!r}: cannot compile: {_exception_message(e)}")
        return source
    return _Template(name, sandbox.output_renderer(template))


# A piece of a template that only substitutes names: (False, text) or (True, name).
_Piece = tuple[bool, str]
# `{{ name }}` as Jinja's lexer reads it (whitespace is `\s+` there too); names outside ASCII,
# and names its parser reads as something else, are left to Jinja.
_PLAIN_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NOT_PLAIN_NAMES = frozenset(
    {"true", "false", "none", "True", "False", "None", "not", "and", "or", "in", "is", "if"}
    | {"else", "for", "recursive", "with", "without", "context", "import", "as", "pass"}
)


def _plain_pieces(source: str) -> list[_Piece] | None:
    """The pieces of a template that only substitutes names (`Dear {{ name }},`), read without
    Jinja: the pieces `_pieces_of` finds in Jinja's tree of it, or None for anything else (then
    Jinja parses it). `tests/test_plain_templates.py` holds the two to the same pieces."""
    if "\r" in source:
        return None  # Jinja turns \r\n and \r into \n
    pieces: list[_Piece] = []
    parts = _PLAIN_NAME.split(source)
    for i, part in enumerate(parts):
        if i % 2:
            if part in _NOT_PLAIN_NAMES:
                return None
            pieces.append((True, part))
        elif part:
            # Text with a marker of its own is Jinja's; so is "{" before a name ("{{{ x }}"
            # starts a tag one character earlier).
            if (
                "{{" in part
                or "{%" in part
                or "{#" in part
                or (part[-1] == "{" and i < len(parts) - 1)
            ):
                return None
            pieces.append((False, part))
    return pieces


def _pieces_of(tree: nodes.Template) -> list[_Piece] | None:
    """The pieces of a parsed template that only substitutes names; None for anything else
    (filters, attributes, tags)."""
    pieces: list[_Piece] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append((False, child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load":
                pieces.append((True, child.name))
            else:
                return None
    return pieces


def _simple_format(
    template: list[_Piece],
) -> tuple[
    Callable[[dict[str, Any]], str], Callable[[dict[str, Any], str, Any], str], Substitution
]:
    """A str.format_map renderer for a template that only substitutes names (`{{ body }}`), and
    the same renderer reading the row itself (see `_Template`).

    Such a template renders each name as `str(value)`, which `format(value, "")` equals for
    every JSON value but lists and dicts, printed as JSON like the sandbox does (`as_text`); a
    missing name raises the same error StrictUndefined would.
    """
    pieces = []
    positional = []  # the same template with "{0}", "{1}"… for the distinct names
    names: list[str] = []
    distinct: list[str] = []
    literal = 0
    for is_name, value in template:
        if not is_name:
            text = value.replace("{", "{{").replace("}", "}}")
            pieces.append(text)
            positional.append(text)
            literal += len(value)
        else:
            pieces.append("{" + value + "}")
            names.append(value)
            if value not in distinct:
                distinct.append(value)
            positional.append("{" + str(distinct.index(value)) + "}")
    format_map = "".join(pieces).format_map
    format_ = "".join(positional).format
    counts = [names.count(n) for n in distinct]
    missing = object()

    def from_row(row: dict[str, Any], key: str, budget: Any) -> str:
        """`render({**_GLOBALS, **row, "row": row, "key": key})`, without that dict."""
        size = literal
        values = []
        for n, times in zip(distinct, counts, strict=True):
            if n == "key":
                value: Any = key
            elif n == "row":
                value = row
            else:
                value = row.get(n, missing)
                if value is missing:
                    _load_templating()  # Jinja's globals
                    value = _GLOBALS.get(n, missing)
            if type(value) is str:
                size += len(value) * times
            elif value is missing:
                pass
            elif type(value) is list or type(value) is dict:
                _load_templating()
                value = sandbox.as_text(value)
                size += len(value) * times
            else:
                if type(value) not in _PLAIN_VALUES:  # `{{ range }}` of an item without it
                    _load_templating()
                    sandbox.refuse_unstable(value)
                size += len(str(value)) * times
            values.append(value)
        if size > budget.max_size:
            budget.refuse(size, "an output")
        if missing in values:
            first = next(n for n in names if values[distinct.index(n)] is missing)
            raise UndefinedError(f"{first!r} is undefined")  # loaded with the globals
        return format_(*values)

    def render(context: dict[str, Any]) -> str:
        # Called inside a render under the sandbox's budget (`_Renderer.render`, which a job
        # takes only when a part compiled through Jinja, or `_attaching`): both loaded it.
        # The output's size, before it is built: a name used 10,000 times must not build GBs.
        size = literal
        as_json = None
        for n in names:
            value = context.get(n, "")
            if type(value) is str:
                size += len(value)
            elif type(value) is list or type(value) is dict:
                text = sandbox.as_text(value)
                as_json = {n: text} if as_json is None else {**as_json, n: text}
                size += len(text)
            else:
                sandbox.refuse_unstable(value)
                size += len(str(value))
        if as_json is not None:
            context = {**context, **as_json}
        budget = sandbox.current()
        if size > budget.max_size:
            budget.refuse(size, "an output")
        try:
            return format_map(context)
        except KeyError as e:
            raise UndefinedError(f"{e.args[0]!r} is undefined") from None

    return render, from_row, Substitution(format_, tuple(distinct), tuple(counts), literal)


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


def _from_row(part: _Part) -> bool:
    """True when every template in `part` can render from the row alone (see `_Template`)."""
    if isinstance(part, _Template):
        return part.from_row is not None
    if isinstance(part, _Struct):
        return all(_from_row(p) for _, p in part.parts)
    return True


def _render_row(part: _Part, row: dict[str, Any], key: str, budget: Any) -> Any:
    """`_render(part, {**_GLOBALS, **row, "row": row, "key": key})` for a part `_from_row`."""
    if isinstance(part, _Template):
        try:
            return part.from_row(row, key, budget)  # type: ignore[misc]
        except Exception as e:  # any template failure is a problem line naming it
            raise _RenderError(part.name, _exception_message(e)) from None
    if isinstance(part, _Struct):
        if part.kind is dict:
            return {k: _render_row(p, row, key, budget) for k, p in part.parts}
        return [_render_row(p, row, key, budget) for _, p in part.parts]
    return part


def _render(part: _Part, context: dict[str, Any]) -> Any:
    if isinstance(part, _Template):
        try:
            return part.render(context)
        except Exception as e:  # any template failure is a problem line naming it
            raise _RenderError(part.name, _exception_message(e)) from None
    if isinstance(part, _Struct):
        if part.kind is dict:
            return {k: _render(p, context) for k, p in part.parts}
        return [_render(p, context) for _, p in part.parts]
    return part


def _exception_message(e: BaseException) -> str:
    if TemplateError is not None and isinstance(e, TemplateError):
        return e.message or str(e)
    if isinstance(e, RecursionError):
        return "nested too deeply (recursion limit)"
    if isinstance(e, MemoryError):
        return "out of memory"
    return f"{type(e).__name__}: {e}"


class _RenderError(Exception):
    """An item that cannot be rendered: in which template (if one) and why."""

    def __init__(self, template: str, message: str):
        self.template = template
        self.message = message

    def describe(self) -> str:
        if self.template:
            return f"template {self.template!r}: {self.message}"
        return self.message


class _OutputBudget:
    """The size budget of templates that render from the row (`_Template.from_row`): all they
    read of `sandbox.Budget`, whose error is built (and the sandbox imported) only when one
    goes over it."""

    __slots__ = ("seconds", "max_size")

    def __init__(self, seconds: float, max_size: int):
        self.seconds = seconds
        self.max_size = max_size

    def refuse(self, size: int, what: str) -> None:
        _load_templating()
        sandbox.Budget(self.seconds, self.max_size).refuse(size, what)


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
        self.seconds = job.render_seconds
        self.max_size = job.render_max_size
        # Floats below 1e-4 etc. can only come from the literal parts; rows enter as strings.
        literal = {"p": job.params, "m": job.messages, "s": job.system}
        self.exact = _orjson_exact(literal)
        # Templates that only substitute names (the common case) render from the row alone:
        # no per-row context of globals, and no time budget (str.format runs no user code).
        if all(_from_row(p) for p in (self.system, self.prompt, self.messages)):
            self.budget = _OutputBudget(self.seconds, self.max_size)
            self.render = self._render_from_row  # type: ignore[method-assign]

    def _render_from_row(self, row: dict[str, Any], key: str) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        budget = self.budget
        try:
            if self.system is not None:
                params["system"] = _render_row(self.system, row, key, budget)
            if self.messages is None:
                content = _render_row(self.prompt, row, key, budget)
                params["messages"] = [{"role": "user", "content": content}]
            else:
                params["messages"] = _render_row(self.messages, row, key, budget)
        except _RenderError:
            raise
        except Exception as e:  # any other failure is a problem line too, not a crash
            raise _RenderError("", _exception_message(e)) from None
        params.update(self.params)
        return params

    def render(self, row: dict[str, Any], key: str) -> dict[str, Any]:
        # Taken only when a part compiled through Jinja (`_compile` loaded the sandbox).
        context = {**_GLOBALS, **row, "row": row, "key": key}
        params: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        token = sandbox.start(sandbox.Budget(self.seconds, self.max_size))
        try:
            if self.system is not None:
                params["system"] = _render(self.system, context)
            if self.messages is None:
                content = _render(self.prompt, context)
                params["messages"] = [{"role": "user", "content": content}]
            else:
                params["messages"] = _render(self.messages, context)
        except _RenderError:
            raise
        except Exception as e:  # any other failure is a problem line too, not a crash
            raise _RenderError("", _exception_message(e)) from None
        finally:
            sandbox.stop(token)
        params.update(self.params)
        return params


# --- reading data files -------------------------------------------------------------------------


class _Fatal(Exception):
    """A problem after which the file cannot be read on: where (file, line) and what."""

    def __init__(self, where: str, detail: str):
        super().__init__(where, detail)
        self.where = where
        self.detail = detail

    def line(self, job: str) -> str:
        """The error line, naming the job that reads the file."""
        return f"{self.where}: job {job}: {self.detail}"


class _BadRow:
    """A row that cannot be an item (the rest of the file is read on)."""

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


def _root_of(path: Path, root: Path | None) -> Path:
    return root if root is not None else Path(path).resolve().parent


def _binary_lines(path: Path, shown: str, root: Path | None = None) -> Iterator[tuple[int, bytes]]:
    """(number, line) of every line of a data file (a BOM dropped); _Fatal if it cannot be read."""
    for first, lines in _line_blocks(path, shown, root):
        yield from enumerate(lines, first)


def _line_blocks(
    path: Path, shown: str, root: Path | None = None
) -> Iterator[tuple[int, list[bytes]]]:
    """The lines of a data file a block at a time: (number of the first line, lines)."""
    try:
        f = open_regular(path, _root_of(path, root))
    except FileRefused as e:
        raise _Fatal(shown, e.args[0]) from None
    with f:
        try:
            for first, lines in bounded_line_blocks(f):
                if first == 1 and lines[0].startswith(b"\xef\xbb\xbf"):
                    lines[0] = lines[0][3:]
                yield first, lines
        except FileRefused as e:
            where = f"{shown}: line {e.args[1]}" if len(e.args) > 1 else shown
            raise _Fatal(where, e.args[0]) from None
        except OSError as e:
            raise _Fatal(shown, f"cannot read: {e.strerror}") from None


def _decode(line: bytes, number: int, shown: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Fatal(shown, utf8_problem(line, e, offset=number - 1)) from None


def _bad_value(value: Any) -> _BadRow | None:
    problem = json_problem(value)
    if problem is None:
        return None
    place, why = problem
    return _BadRow(f"{place}: {why}" if place else why)


# Every digit as "0": a line's text so mapped holds "0e-" or "0E-" wherever it writes a number
# with a negative exponent; one below 1e-4 written without is "0.0000…" (a string that merely
# holds such text is taken for one too). It holds _LONG_NUMBER wherever it writes an integer past
# 64 bits (19 digits or more), which orjson reads as a float, silently.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
# The types of an object's values in which no such float hides (an int orjson read is exact).
_FLAT = frozenset((str, int, bool, type(None)))
# Such a float is 2**63 or more (or -2**63 or less), which orjson writes with an exponent, as
# every float of 1e16 or more: "e+16" ("e16" by older orjson), here with every digit as "0".
_BIG_FLOAT = 2.0**63
_EXPONENT = orjson.dumps(1e16).translate(_DIGITS_AS_ZERO)[1:]


def _big_floats(row: Any) -> bool:
    """Whether orjson's reading of a line may hold an integer past 64 bits (read as a float):
    a float of 2**63 or more, in the row or written out in one of its lists or objects."""
    if type(row) is not dict:
        return _written_big(row)
    for value in row.values():
        kind = type(value)
        if kind is float:
            if not -_BIG_FLOAT < value < _BIG_FLOAT:
                return True
        elif (kind is list or kind is dict) and _written_big(value):
            return True
    return False


def _written_big(value: Any) -> bool:
    try:
        return _EXPONENT in orjson.dumps(value).translate(_DIGITS_AS_ZERO)
    except orjson.JSONEncodeError:
        return True  # nested too deeply: the full reading says so


def _exact(row: Any, line: bytes) -> Any:
    """`row` as orjson read `line`, or a _BadRow when the line writes an integer past 64 bits
    (which orjson read as a float): refused as `json_problem` refuses one read exactly."""
    if type(row) is dict and _FLAT.issuperset(map(type, row.values())):
        return row  # the common row, looked at in C calls alone
    if not _big_floats(row) or _LONG_NUMBER not in line.translate(_DIGITS_AS_ZERO):
        return row
    try:
        exact = strict_json(line)
    except (ValueError, RecursionError) as e:
        return _BadRow(json_error(e))
    problem = json_problem(exact, max_depth=sys.maxsize)  # as deep as orjson read it
    if problem is None:
        return row
    place, why = problem
    return _BadRow(f"{place}: {why}" if place else why)


def _json_line(line: bytes, number: int, shown: str) -> Any:
    """The value on one jsonl line, a _BadRow for a row that cannot be an item, or _Fatal."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        _decode(line, number, shown)  # a UTF-8 problem is the better message
        try:  # stdlib json accepts lone surrogate escapes and big numbers that orjson refuses
            row = strict_json(line)
        except json.JSONDecodeError:
            # past the line's own end (its newline is part of `line`): the column it ends at
            column = (
                e.colno if e.lineno == 1 else len(line.rstrip(b"\r\n").decode(errors="replace")) + 1
            )
            raise _Fatal(
                f"{shown}: line {number}", f"invalid JSON: {e.msg} (column {column})"
            ) from None
        except (ValueError, RecursionError) as e2:
            raise _Fatal(f"{shown}: line {number}", json_error(e2)) from None
        return _bad_value(row) or row
    # orjson keeps the last of duplicate keys silently. Written out again, a row holds exactly
    # as many colons as the line unless a key was dropped (or a colon was escaped as \u003a):
    # only then is the line parsed again, strictly.
    if type(row) is dict or type(row) is list:
        try:
            same = line.count(b":") == _colons(row) and b"\\u003" not in line
        except orjson.JSONEncodeError:
            return _BadRow("nested too deeply")
        if not same:
            try:
                strict_json(line)
            except (ValueError, RecursionError) as e:
                return _BadRow(json_error(e))
    return _exact(row, line)


def _colons(value: Any) -> int:
    """Colons in `value` written as JSON by orjson (keys and string contents). Written two
    levels down, where a `results --format json` export writes a row (`[{"input": row}]`): a
    row nested deeper than orjson writes there (252 levels) raises, and is refused."""
    return orjson.dumps([[value]]).count(b":")


def _jsonl_rows(path: Path, shown: str, root: Path | None = None) -> Iterator[tuple[int, Any]]:
    for number, line in _binary_lines(path, shown, root):
        if not line.strip():
            continue
        yield number, _json_line(line, number, shown)


def _csv_rows(path: Path, shown: str, root: Path | None = None) -> Iterator[tuple[int, Any]]:
    position = {"line": 0, "ended": False}

    def text_lines() -> Iterator[str]:
        for number, line in _binary_lines(path, shown, root):
            position["line"] = number
            yield _decode(line, number, shown)
        position["ended"] = True

    # strict: a quote closed before its field ends (`"a"b`), or never closed, is an error; read
    # leniently, it makes a value the file does not hold (`ab`, or the rest of the file)
    reader = csv.reader(text_lines(), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise _Fatal(f"{shown}: line 1", f"duplicate column {duplicates[0]!r} in the header")
        start = reader.line_num + 1
        for record in reader:
            number, start = start, reader.line_num + 1
            if not record:
                continue
            if len(record) != len(header):
                message = f"row has {_fields(len(record))}, the header has {len(header)}"
                yield number, _BadRow(message)
                continue
            yield number, dict(zip(header, record, strict=True))
    except csv.Error as e:
        if position["ended"]:  # the only error once every line is read: a quote left open
            detail = "a quoted field is never closed (the file ends inside it)"
            raise _Fatal(f"{shown}: line {start}", f"invalid CSV: {detail}") from None
        if position["line"] > start:  # a quoted field over many lines: the row is named
            detail = f"{e} (in the row that begins there and reaches line {position['line']})"
            raise _Fatal(f"{shown}: line {start}", f"invalid CSV: {detail}") from None
        raise _Fatal(f"{shown}: line {position['line']}", f"invalid CSV: {e}") from None


def _json_array_rows(path: Path, shown: str, root: Path | None = None) -> Iterator[tuple[int, Any]]:
    # A JSON array is parsed whole: use jsonl or csv for very large inputs.
    try:
        limit = MAX_JSON_DATA_BYTES
        data = read_bounded(path, _root_of(path, root), limit, "a .json data file (use jsonl)")
    except FileRefused as e:
        raise _Fatal(shown, e.args[0]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Fatal(shown, utf8_problem(data, e)) from None
    try:
        rows = strict_json(text)
    except (ValueError, RecursionError) as e:
        raise _Fatal(shown, json_error(e)) from None
    if not isinstance(rows, list):
        raise _Fatal(shown, "expected a JSON array of objects")
    for number, row in enumerate(rows, 1):
        yield number, _bad_value(row) or row


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
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            return (f"{field!r} is an integer out of range (64 bits at most)",)
        return str(value)
    if not value.isascii() and has_surrogate(value):
        return (f"{field!r} holds a lone surrogate (not UTF-8)",)
    return value


# --- the items of a job -------------------------------------------------------------------------


class _Problems:
    """Problem lines of one job, capped so a million bad rows make a readable error."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_PROBLEM_LINES:
            self.lines.append(terminal(line))  # keys and values are shown, never obeyed

    def clear(self) -> None:
        self.lines.clear()
        self.count = 0

    def error(self, *extra: str) -> SpecError:
        lines = [*self.lines, *map(terminal, extra)]
        hidden = self.count - len(self.lines)
        if hidden:
            lines.append(f"... and {hidden} more problems")
        return SpecError(*lines)


def iter_items(job: Job, root: Path, custom_ids: bool = True) -> Iterator[Item]:
    """Every item of `job` in source order, streamed; SpecError lists the problems at the end.

    Problems with single items (duplicate key, missing key, a template failing on one row, a
    ragged CSV row) are collected, up to 50 lines; a file that cannot be read on (unreadable,
    not UTF-8, a line that is not JSON) ends iteration at once. Without `custom_ids`, a template
    item's custom_id is "" (for callers that take it from a plan).
    """
    problems = _Problems()
    spec_shown = display_path(job.spec_file, root)
    try:
        if job.requests is not None:
            yield from _checked_requests(job, job.requests.path, root, problems)
        else:
            yield from _template_items(job, root, spec_shown, problems, custom_ids)
    except _Fatal as e:
        raise problems.error(e.line(job.name)) from None
    if problems.count:
        raise problems.error()


def input_of(item: Item) -> dict[str, Any]:
    """The input row an item came from (a raw request's line for a `requests` job)."""
    if item.row is not None:
        return item.row
    return {"custom_id": item.key, "params": item.params}


def iter_inputs(job: Job, root: Path) -> Iterator[tuple[str | None, Any]]:
    """(key, input row) of every row of the job's source in order, read and not rendered: what
    `input_of` gives for each item, when who the items are is known already (the rows cache).

    Only a source whose every row is an item (it rendered without a problem) gives one row per
    item; a row that cannot be one has the key None. A file that cannot be read is a SpecError.
    """
    if _jsonl_source(job, root) is not None:
        for chunk in input_chunks(job, root, INPUT_CHUNK_ROWS):
            yield from chunk.rows()
        return
    keyed = _keyed_input(job)
    try:
        if job.input is not None:
            shown = display_path(job.input.path, root)
            rows = _READERS[job.input.format](job.input.path, shown, root)
        else:
            rows = enumerate(job.items or [])
        for _, row in rows:
            yield keyed(row)
    except _Fatal as e:
        raise SpecError(terminal(e.line(job.name))) from None


INPUT_CHUNK_ROWS = 1_024  # rows `iter_inputs` parses at once from a jsonl file


class Chunk:
    """`size` consecutive rows of a stream (a job's source, `input_chunks`; its kept rows,
    `cache.identity_chunks`), made only when asked for: `len()` is known without reading them,
    `rows()` makes them (once)."""

    __slots__ = ("_made", "_make", "_size")

    def __init__(self, size: int, make: Callable[[], list[Any]]) -> None:
        self._size, self._make, self._made = size, make, None

    def __len__(self) -> int:
        return self._size

    def rows(self) -> list[Any]:
        if self._made is None:
            self._made = self._make()
        return self._made


def input_chunks(job: Job, root: Path, size: int) -> Iterator[Chunk]:
    """`iter_inputs` in chunks of `size` rows (the last may be shorter). The lines of a jsonl
    source are only counted until a chunk's `rows()` is called: a reader that takes every
    other chunk (an export on two processes) parses only its own. Errors as `iter_inputs`:
    reading the file as the chunks are made, parsing a line when its chunk's rows are."""
    source = _jsonl_source(job, root)
    if source is None:
        rows = iter_inputs(job, root)
        while chunk := list(islice(rows, size)):
            yield Chunk(len(chunk), lambda chunk=chunk: chunk)
        return
    path, shown = source
    keyed_all = _keyed_inputs(job)

    def parsed(lines: list[bytes], numbers: list[int]) -> list[tuple[str | None, Any]]:
        try:
            try:
                rows = list(map(orjson.loads, lines))  # a good line is taken as orjson reads it
            except orjson.JSONDecodeError:  # each line again, the bad one read as any line is
                rows = [
                    _good_json_line(line, n, shown) for line, n in zip(lines, numbers, strict=True)
                ]
        except _Fatal as e:
            raise SpecError(terminal(e.line(job.name))) from None
        return keyed_all(rows)

    lines: list[bytes] = []  # the non-blank lines not yet in a chunk, and their numbers
    numbers: list[int] = []
    try:
        for first, block in _line_blocks(path, shown, root):
            if not all(block) or any(map(bytes.isspace, block)):  # a blank line, rarely
                kept = list(compress(range(first, first + len(block)), map(_filled, block)))
                lines += [block[n - first] for n in kept]
                numbers += kept
            else:
                lines += block
                numbers += range(first, first + len(block))
            whole = len(lines) - len(lines) % size
            for at in range(0, whole, size):
                taken = lines[at : at + size], numbers[at : at + size]
                yield Chunk(size, lambda taken=taken: parsed(*taken))
            del lines[:whole], numbers[:whole]
    except _Fatal as e:
        raise SpecError(terminal(e.line(job.name))) from None
    if lines:
        yield Chunk(len(lines), lambda: parsed(lines, numbers))


def _filled(line: bytes) -> bool:
    """Whether a line holds more than whitespace (`bytes.strip`'s set; a BOM alone leaves b"")."""
    return bool(line) and not line.isspace()


def _jsonl_source(job: Job, root: Path) -> tuple[Path, str] | None:
    """The jsonl file of a job whose rows come from one (a requests file or a jsonl input), and
    its name as shown; None for any other source."""
    if job.requests is not None:
        return job.requests.path, display_path(job.requests.path, root)
    if job.input is not None and job.input.format == "jsonl":
        return job.input.path, display_path(job.input.path, root)
    return None


def _good_json_line(line: bytes, number: int, shown: str) -> Any:
    """A line of a file known to hold only good rows (every one became an item): taken as
    orjson reads it, without looking for what would make it a bad row (`_json_line`)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return _json_line(line, number, shown)


def _keyed_input(job: Job) -> Callable[[Any], tuple[str | None, Any]]:
    """What makes a source row `iter_inputs`' (key, input row): a request's custom_id and the
    row `input_of` gives, or a row's key field; the key None for a row that cannot be an item."""
    if job.requests is not None:

        def keyed_request(request: Any) -> tuple[str | None, Any]:
            if type(request) is not dict:
                return None, request
            custom_id = request.get("custom_id")
            key = custom_id if type(custom_id) is str else None
            return key, {"custom_id": key, "params": request.get("params")}

        return keyed_request
    key_field = job.input.key if job.input is not None else "key"

    def keyed_row(row: Any) -> tuple[str | None, Any]:
        if type(row) is not dict:
            return None, row
        key = row.get(key_field)
        if type(key) is not str or not key:
            key = _key_of(row, key_field)
        return (key if type(key) is str else None), row

    return keyed_row


def _keyed_inputs(job: Job) -> Callable[[list[Any]], list[tuple[str | None, Any]]]:
    """`_keyed_input` of a list of rows: for a list of dicts whose key fields all hold a
    non-empty string (a good source of a template job), by C calls alone."""
    keyed = _keyed_input(job)
    if job.requests is not None or job.input is None:
        return lambda rows: list(map(keyed, rows))
    get, key_field = dict.get, job.input.key

    def keyed_rows(rows: list[Any]) -> list[tuple[str | None, Any]]:
        if set(map(type, rows)) <= {dict}:
            keys = list(map(get, rows, repeat(key_field)))
            if set(map(type, keys)) <= {str} and "" not in keys:
                return list(zip(keys, rows, strict=True))
        return list(map(keyed, rows))

    return keyed_rows


def _template_items(
    job: Job, root: Path, spec_shown: str, problems: _Problems, custom_ids: bool = True
) -> Iterator[Item]:
    rows = TemplateRows(job, root, spec_shown, problems, custom_ids)
    seen, key_field, made, item_of = rows.seen, rows.key_field, rows.made, rows.item
    for number, row in rows.source():
        if type(row) is dict:  # the hot path: a row with a new key; the rest says what is wrong
            key = row.get(key_field)
            if type(key) is str and key and key not in seen:
                seen[key] = number
                item = made(number, row, key)
                if item is not None:
                    yield item
                continue
        item = item_of(number, row)
        if item is not None:
            yield item


class TemplateRows:
    """A template job's rows made into items one at a time, with the job's problems and the keys
    seen so far: the general path, which a faster one (`batchops.spec.rowmaker`) hands every row
    it does not take itself, so that both report exactly the same."""

    def __init__(
        self, job: Job, root: Path, spec_shown: str, problems: _Problems, custom_ids: bool = True
    ):
        compile_problems: list[str] = []
        renderer = _Renderer(job, compile_problems, f"{spec_shown}: job {job.name}")
        render = renderer.render
        if job.attachments:
            where = f"{spec_shown}: job {job.name}"
            render = _attaching(render, job, root, compile_problems, where)
        if compile_problems:
            raise SpecError(*compile_problems)
        self.job, self.root, self.problems = job, root, problems
        self.renderer = renderer
        self.render = render
        self.size_of: Callable[[], int | None] = lambda: None
        self.encode = _encoder(renderer.exact, job.betas, renderer.max_size)
        if job.attachments:
            self.encode, self.size_of = _attached_encoder(self.encode, renderer, job.betas)
        self.custom_ids = custom_ids
        self.custom_id = _custom_id_maker(job.name)
        name = job.name
        if job.input is not None:
            self.shown = display_path(job.input.path, root)
            self.key_field = job.input.key
            unit = "row" if job.input.format == "json" else "line"
            self.short = f"{unit} {{}}".format
            self.where_of = f"{self.shown}: {unit} {{}}".format
        else:
            self.shown = spec_shown
            self.key_field = "key"
            self.short = f"jobs.{name}.items.{{}}".format
            self.where_of = f"{spec_shown}: jobs.{name}.items.{{}}".format
        self.seen: dict[str, int] = {}  # key -> where it first appeared, to report duplicates
        self.repeats: list[str] = []  # the key of each duplicate reported (`rowmaker._checked`)

    def source(self) -> Iterator[tuple[int, Any]]:
        """(line or index, row) of the job's input, in order."""
        job = self.job
        if job.input is not None:
            return _READERS[job.input.format](job.input.path, self.shown, self.root)
        return enumerate(job.items or [])

    def line(self, number: int, line: bytes) -> Item | None:
        """The item of one line of a jsonl input (None: blank, or a problem, which is noted)."""
        if not line.strip():
            return None
        return self.item(number, _json_line(line, number, self.shown))

    def item(self, number: int, row: Any) -> Item | None:
        """The item of one row (None: a problem, which is noted)."""
        key = self.key(number, row)
        if key is None:
            return None
        seen = self.seen
        if key in seen:
            first = self.short(seen[key])
            self.problem(number, f"item {key}: duplicate key (first at {first})")
            self.repeats.append(key)
            return None
        seen[key] = number
        return self.made(number, row, key)

    def key(self, number: int, row: Any) -> str | None:
        """The key of a row (None: it has none, or is no object; the problem is noted)."""
        if type(row) is dict:
            key = row.get(self.key_field)
            if type(key) is str and key:
                return key
        if isinstance(row, _BadRow):
            self.problem(number, row.message)
            return None
        if not isinstance(row, dict):
            self.problem(number, f"expected an object, not {type(row).__name__}")
            return None
        key = _key_of(row, self.key_field)
        if isinstance(key, tuple):
            self.problem(number, key[0])
            return None
        return key

    def made(self, number: int, row: dict[str, Any], key: str) -> Item | None:
        """The item of a row with a new key (None: it does not render; the problem is noted)."""
        try:
            params = self.render(row, key)
            fp = self.encode(params)
        except _RenderError as e:
            self.problem(number, f"item {key}: {e.describe()}")
            return None
        custom_id = self.custom_id(key, fp) if self.custom_ids else ""
        size = self.size_of()
        if size is not None:  # the request's, known from its fingerprint (`_attached_encoder`)
            size += len(custom_id.encode()) + REQUEST_FRAME
        return Item(self.job.name, key, custom_id, params, fp, row, size)

    def problem(self, number: int, message: str) -> None:
        self.problems.add(f"{self.where_of(number)}: job {self.job.name}: {message}")


def _attaching(
    render: Callable[[dict[str, Any], str], dict[str, Any]],
    job: Job,
    root: Path,
    problems: list[str],
    where: str,
) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """`render` followed by the job's attachments: each path rendered, its file read into a
    content block, the blocks put before the last user message's text (`spec.attachments`)."""
    _load_templating()  # every path renders under a budget
    paths = [
        _compile(t, f"attachments[{i}]", problems, where) for i, t in enumerate(job.attachments)
    ]
    spec_dir = job.spec_file.parent
    fixed: dict[str, dict[str, Any]] = {}  # blocks of paths written in the spec, read once
    named = attachments.Kept(spec_dir, root)  # blocks of paths rendered from rows

    def render_attached(row: dict[str, Any], key: str) -> dict[str, Any]:
        params = render(row, key)
        context = {**_GLOBALS, **row, "row": row, "key": key}
        token = sandbox.start(sandbox.Budget(job.render_seconds, job.render_max_size))
        try:
            written = [(p, _render(p, context)) for p in paths]
        finally:
            sandbox.stop(token)
        blocks = []
        try:
            for part, path in written:
                path = path.strip() if isinstance(path, str) else path
                if not path:
                    continue
                if not isinstance(part, str):
                    blocks.append(named.block(path))
                elif path in fixed:
                    blocks.append(fixed[path])
                else:
                    blocks.append(fixed.setdefault(path, attachments.block(path, spec_dir, root)))
            return attachments.attach(params, blocks)
        except attachments.AttachmentError as e:
            raise _RenderError("", e.args[0]) from None

    return render_attached


def _encoder(
    exact: bool, betas: Sequence[str], max_size: int | None = None
) -> Callable[[dict[str, Any]], str]:
    """The fingerprint function for a job: fast when orjson writes what json.dumps would.

    It refuses (_RenderError) a request the API could not receive: one holding a lone
    surrogate (not UTF-8) or larger than `max_size` bytes (the job's render_max_size).
    """
    sorted_betas = sorted(betas)
    dumps, option = orjson.dumps, orjson.OPT_SORT_KEYS
    sha256 = hashlib.sha256
    limit = max_size if max_size is not None else RENDER_MAX_SIZE_DEFAULT

    def encode(params: dict[str, Any]) -> str:
        obj = {"betas": sorted_betas, "params": params} if sorted_betas else params
        data = None
        if exact:
            try:
                data = dumps(obj, option=option)
            except (TypeError, orjson.JSONEncodeError):  # e.g. a lone surrogate from a row
                data = None
        if data is None:
            text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:
                problem = json_problem(params) or ("", "not UTF-8")
                where = f" at {problem[0]}" if problem[0] else ""
                raise _RenderError("", f"the rendered request{where}: {problem[1]}") from None
        _check_size(len(data), limit)
        return FINGERPRINT_PREFIX + sha256(data).hexdigest()

    return encode


def _check_size(size: int, limit: int) -> None:
    """Refuse a rendered request of `size` bytes over the job's `limit` (render_max_size)."""
    if size > limit:
        raise _RenderError(
            "",
            f"the rendered request is {size:,} bytes, over the size budget of "
            f"{limit:,} (render_max_size)",
        )


def _attached_encoder(
    encode: Callable[[dict[str, Any]], str], renderer: Any, betas: Sequence[str]
) -> tuple[Callable[[dict[str, Any]], str], Callable[[], int | None]]:
    """`encode` for a job with attachments, each file's base64 written and hashed once
    (`attachments.Written`), not once an item; and what tells the size of the params the last
    fingerprint was of (None: not known; `request_size_of` then writes them out)."""
    if not renderer.exact:
        return encode, lambda: None
    written = attachments.Written()
    dumps, option, sorted_betas = orjson.dumps, orjson.OPT_SORT_KEYS, sorted(betas)
    limit = renderer.max_size if renderer.max_size is not None else RENDER_MAX_SIZE_DEFAULT
    if sorted_betas:
        # the params' length inside `{"betas":[...],"params":...}`: the whole less the frame's
        frame = len(dumps({"betas": sorted_betas, "params": 0}, option=option)) - 1

        def wrap(params: Any) -> Any:
            return {"betas": sorted_betas, "params": params}
    else:
        frame = 0

        def wrap(params: Any) -> Any:
            return params

    def write(obj: Any) -> bytes:
        return dumps(obj, option=option)

    last: list[int | None] = [None]

    def encode_attached(params: dict[str, Any]) -> str:
        last[0] = None
        try:
            hashed = written.hashed(params, wrap, write)
        except (TypeError, orjson.JSONEncodeError):  # a lone surrogate: told by `encode`
            hashed = None
        if hashed is None:
            return encode(params)
        digest, size = hashed
        _check_size(size, limit)
        last[0] = size - frame
        return FINGERPRINT_PREFIX + digest.hexdigest()

    return encode_attached, lambda: last[0]


# What a cost estimate needs from a raw request; the API checks the rest when it processes it.
_RAW_REQUIRED = (
    ("model", str, "a string"),
    ("max_tokens", int, "an integer"),
    ("messages", list, "a list"),
)


RECENT_CUSTOM_IDS = 1 << 16  # custom_ids of a requests file held at once (the rest logged)


def _checked_requests(job: Job, path: Path, root: Path, problems: _Problems) -> Iterator[Item]:
    """`_raw_items` of a requests file, its custom_ids checked for duplicates in little memory,
    as `rowmaker._checked` checks a template job's keys: those of the last lines held, the
    hash of every one logged (`KeyHashes`). A hash logged twice (a custom_id given again, or
    two with one hash) has the file read again holding the custom_ids of those hashes exactly
    (`SuspectKeys`), whose problems are then the ones raised: what a full set of custom_ids
    reports. (A duplicate is always an error, so the items given meanwhile are never used.)"""
    log = KeyHashes()
    fatal = None
    try:
        try:
            yield from _raw_items(job, path, root, problems, log=log)
        except _Fatal as e:
            fatal = e
        suspects = log.suspects()
    finally:
        log.close()
    if suspects:  # the problems of the file read again are the ones told (or its _Fatal)
        problems.clear()
        for _ in _raw_items(job, path, root, problems, seen=SuspectKeys(suspects)):
            pass
    elif fatal is not None:
        raise fatal


def _raw_items(
    job: Job,
    path: Path,
    root: Path,
    problems: _Problems,
    seen: dict[str, int] | SuspectKeys | None = None,
    log: KeyHashes | None = None,
) -> Iterator[Item]:
    """The items of a requests file: each line a request `{"custom_id", "params"}`, sent as
    written. A line that is plainly right (`_plain_request`) is taken as it is read; any other
    goes through `_raw_item`, which reports it (or takes it) exactly as ever. `seen` holds the
    custom_ids met (where first); with `log`, only those of the last lines, the others logged
    there. (A custom_id given again among those held is reported as ever, and logged again; one
    given again past them is logged twice; a hash logged twice has `_checked_requests` read the
    file again.)"""
    shown = display_path(path, root)
    name = job.name
    if seen is None:
        seen = {}
    make_id = _custom_id_maker(name)
    plain = _plain_request(job.betas)
    try:
        for first, lines in _line_blocks(path, shown, root):
            for number, line in enumerate(lines, first):
                if log is not None and len(seen) >= RECENT_CUSTOM_IDS:
                    log.add(seen)
                    seen.clear()
                made = plain(line)
                if made is not None and made[0] not in seen:
                    custom_id, params, fp, body = made
                    seen[custom_id] = number
                    sent = make_id(custom_id, fp)
                    yield Item(
                        name, custom_id, sent, params, fp, None, body + len(sent) + REQUEST_FRAME
                    )
                    continue
                if not line.strip():
                    continue
                request = _json_line(line, number, shown)
                item = _raw_item(job, request, number, shown, seen, problems)
                if item is not None:
                    yield item
                elif log is not None and type(request) is dict:
                    # told among those held: logged again, so that a read again (for another
                    # duplicate far apart) holds this custom_id too, and tells it again
                    custom_id = request.get("custom_id")
                    if type(custom_id) is str and seen.get(custom_id, number) != number:
                        log.add((custom_id,))
    finally:  # the reading ended (a line that ends it too): the last custom_ids are logged
        if log is not None:
            log.add(seen)
            seen.clear()


# What a custom_id may hold (`CUSTOM_ID_RE`), for `str.strip`.
_CUSTOM_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _plain_request(
    betas: Sequence[str],
) -> Callable[[bytes], tuple[str, dict, str, int] | None]:
    """(custom_id, params, fingerprint, bytes of the params' JSON) of a requests-file line with nothing `_raw_item` would
    say of it, found with a few C calls; None for any line it does not find plainly right (a
    blank or bad line, a duplicate key, a field missing or of another type, a param the batch
    API refuses, nesting near the limit), which `_raw_item` then reads as ever.

    The line is read by orjson, as the full reading reads it first: it refuses lone surrogates
    and infinite numbers, and reads an integer past 64 bits as a float (a line with 19 digits
    in a row is left to the full reading, which reads it again exactly: `_exact`), so of what
    `json_problem` looks for only deep nesting is left: a line with no more than MAX_DEPTH
    brackets cannot nest that deep. Its params are written as canonical
    JSON by orjson, as `canonical_json` does, when the line writes no number below 1e-4 (the
    floats orjson writes otherwise than json does); else by `canonical_json`. A key given twice
    is found as `_json_line` finds it: the line holds more colons than the row written again
    (two keys, a custom_id with none, and the params)."""
    loads, dumps, sort = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    decode_error = orjson.JSONDecodeError
    allowed = frozenset(BATCH_FORBIDDEN_PARAMS).isdisjoint
    sha256 = hashlib.sha256
    sorted_betas = sorted(betas)

    def plain(line: bytes) -> tuple[str, dict, str, int] | None:
        try:
            row = loads(line)
        except decode_error:
            return None
        if type(row) is not dict or len(row) != 2:
            return None
        custom_id, params = row.get("custom_id"), row.get("params")
        if (
            type(custom_id) is not str
            or type(params) is not dict
            or not 0 < len(custom_id) <= 64
            or custom_id.strip(_CUSTOM_ID_CHARS)
        ):
            return None
        max_tokens = params.get("max_tokens")
        if (
            type(params.get("model")) is not str
            or type(max_tokens) is not int
            or not 0 < max_tokens <= MAX_TOKENS_CAP
            or type(params.get("messages")) is not list
            or line.count(b"{") + line.count(b"[") > MAX_DEPTH
            or not allowed(params)
        ):
            return None
        data = dumps(params, option=sort)
        if line.count(b":") != data.count(b":") + 2 or b"\\u003" in line:
            return None
        zeros = line.translate(_DIGITS_AS_ZERO)
        if b"0e-" in zeros or b"0E-" in zeros or b"0.0000" in line or _LONG_NUMBER in zeros:
            return None
        body = len(data)  # what `request_size_of` counts: the same bytes, sorted
        if sorted_betas:
            data = dumps({"betas": sorted_betas, "params": params}, option=sort)
        return custom_id, params, FINGERPRINT_PREFIX + sha256(data).hexdigest(), body

    return plain


def _raw_item(
    job: Job,
    request: Any,
    number: int,
    shown: str,
    seen: dict[str, int],
    problems: _Problems,
) -> Item | None:
    """The item of one line of a requests file, or None with its problems added."""
    name = job.name
    where = f"{shown}: line {number}"
    if isinstance(request, _BadRow):
        problems.add(f"{where}: job {name}: {request.message}")
        return None
    if not isinstance(request, dict):
        problems.add(f"{where}: job {name}: expected an object, not {type(request).__name__}")
        return None
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
        max_tokens = params.get("max_tokens")
        if type(max_tokens) is int and not 0 <= max_tokens <= MAX_TOKENS_CAP:
            line_problems.append(f"params.max_tokens: at most {MAX_TOKENS_CAP:,}")
        problem = json_problem(params)
        if problem is not None:
            line_problems.append(f"params.{problem[0]}: {problem[1]}")
        for param, reason in forbidden_param_problems(params):
            line_problems.append(f"params.{param}: {reason}")
    for p in line_problems:
        problems.add(f"{prefix}: {p}")
    if line_problems:
        if isinstance(custom_id, str) and custom_id not in seen:
            seen[custom_id] = number
        return None
    seen[custom_id] = number
    fp = fingerprint(params, job.betas)
    return Item(name, custom_id, custom_id_for(name, custom_id, fp), params, fp, None)


# Bytes around a request's custom_id and params in a create body: `{"custom_id":"","params":}`
# and the separator after it.
REQUEST_FRAME = 28
ENVELOPE_BYTES = 1024  # the create body around its requests


def request_size_of(custom_id: str, params: dict[str, Any]) -> int:
    """Bytes of `{"custom_id": …, "params": …}` and its separator in a create body."""
    try:
        body = len(orjson.dumps(params))
    except (TypeError, orjson.JSONEncodeError):
        body = len(json.dumps(params, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return body + len(custom_id.encode()) + REQUEST_FRAME


def request_size(item: Item) -> int:
    if item.size is not None:
        return item.size
    return request_size_of(item.custom_id, item.params)


def _fields(count: int) -> str:
    return f"{count:,} field" if count == 1 else f"{count:,} fields"
