"""The template sandbox: what a template from a pull request may do, and for how long.

Jinja2's immutable sandbox already keeps a template away from files, imports and Python
internals. It does not bound work: one line of template can loop 10^10 times, build a
gigabyte string (`'x'.ljust(999999999)`, `'x'|center(...)`, `'%0999999999d' % 1`,
`'{:>999999999}'.format(1)`), or a number of a billion digits (`((9**999)**999)**999`), and
take CI down with it. Every item is therefore rendered under a `Budget`:

- **time** (`render_seconds`, default 2 s, at most 30 s): checked at every call, filter, test,
  attribute or item lookup, operator, output and loop iteration, so a template stops within
  a few milliseconds of its budget (no signals: rendering also runs in worker processes and
  threads, where SIGALRM cannot be used).
- **size** (`render_max_size`, default 10,000,000, at most 32,000,000): no value a template
  builds (a string, in characters; a list or mapping, counting its elements and everything
  inside) and no rendered output may be larger, and the request as sent may not be larger
  in bytes. Operations that amplify (`*`, `+`, `%`, `ljust`/`rjust`/`center`/`zfill`,
  `format`, `join`, `replace`, `expandtabs`, `translate`, `indent`, `wordwrap`, `batch`,
  `slice`, `sum`) are refused *before* they run when their result would be too large, and
  everything built counts towards a total of 8 times the budget per item, so a loop that keeps
  building large strings stops too.
- **numbers**: no integer beyond 4,096 bits; `**` and `*` are refused before they run.
- **loops**: `range()` yields at most 100,000 numbers; every loop iteration is counted against
  the time budget.

The budget of the render in progress lives in a context variable, so concurrent renders in
threads do not share it. The hooks are Jinja2's own (`call`, `call_binop`, `getattr`,
`finalize`, `wrap_str_format`) plus a small rewrite of the template tree before it is compiled:
loops iterate through `budget_iter`, `~` goes through `budget_concat`, literal lists and
mappings through `budget_value`, and text inside loops and macros through `budget_text`.
"""

from __future__ import annotations

import functools
import json
import re
import string
import textwrap
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from time import monotonic
from typing import Any

from jinja2 import StrictUndefined, Template, Undefined, nodes, pass_environment
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

from batchops.spec.model import RENDER_MAX_SIZE_DEFAULT, RENDER_SECONDS_DEFAULT  # noqa: F401

MAX_INT_BITS = 4096
MAX_RANGE = 100_000
ALLOCATION_FACTOR = 8


class BudgetExceeded(SecurityError):
    """A template went over its time or size budget."""


class UnstableOutput(SecurityError):
    """A template printed a function or an object with no text of its own, whose text holds a
    memory address: another request, and another fingerprint, in every process."""


def refuse_unstable(value: Any) -> None:
    """Raise `UnstableOutput` if `value` prints differently from run to run: a function, a
    method, a class (`{{ body.upper }}`, `{{ dict }}`), or an object without a text of its own.
    A template name the item lacks but a template function has (`{{ range }}`) is its own
    error: the field is missing."""
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return
    if isinstance(value, Undefined):  # its own error, when it is printed
        return
    if not callable(value) and (
        t.__repr__ is not object.__repr__ or t.__str__ is not object.__str__
    ):
        return
    for name, known in ENV.globals.items():
        if known is value:
            raise UnstableOutput(
                f"{name!r} is undefined (a template function has that name: give the item that "
                "field, or call the function)"
            )
    kind = "a function or method" if callable(value) else "an object with no text of its own"
    raise UnstableOutput(
        f"prints {kind} ({t.__name__}), whose text changes from run to run: call it, or print "
        "a value"
    )


class Budget:
    """What one item's rendering may still spend."""

    __slots__ = ("seconds", "max_size", "deadline", "allocated", "max_allocated")

    def __init__(
        self, seconds: float = RENDER_SECONDS_DEFAULT, max_size: int = RENDER_MAX_SIZE_DEFAULT
    ):
        self.seconds = seconds
        self.max_size = max_size
        self.deadline = monotonic() + seconds
        self.allocated = 0
        self.max_allocated = ALLOCATION_FACTOR * max_size

    def tick(self) -> None:
        if monotonic() > self.deadline:
            raise BudgetExceeded(
                f"took longer than the time budget of {self.seconds:g} s (render_seconds)"
            )

    def refuse(self, size: int, what: str = "a value") -> None:
        raise BudgetExceeded(
            f"would build {what} of {size:,} characters, over the size budget of "
            f"{self.max_size:,} (render_max_size)"
        )

    def check(self, size: int) -> None:
        """Account for a value of `size` just built."""
        if size > self.max_size:
            self.refuse(size)
        self.allocated += size
        if self.allocated > self.max_allocated:
            raise BudgetExceeded(
                f"builds more than {self.max_allocated:,} characters in all, "
                f"{ALLOCATION_FACTOR} times the size budget of {self.max_size:,} (render_max_size)"
            )

    def value(self, value: Any) -> Any:
        """`value`, once its size (or bit length) is within budget."""
        t = type(value)
        if t is str:
            self.check(len(value))
        elif t is int:
            _check_int(value)
        elif t is bool or t is float or value is None:
            pass
        elif isinstance(value, Iterator) and not isinstance(value, str | bytes):
            return self.iterate(value)
        else:
            self.check(deep_size(value, self.max_size))
        return value

    def iterate(self, iterable: Any) -> Iterator[Any]:
        for element in iterable:
            self.tick()
            yield self.value(element) if type(element) is not str else element


_BUDGET: ContextVar[Budget | None] = ContextVar("batchops_render_budget", default=None)


def start(budget: Budget) -> Any:
    """Make `budget` the one of the render in progress; returns the token for `stop`."""
    return _BUDGET.set(budget)


def stop(token: Any) -> None:
    _BUDGET.reset(token)


class _CompileTime(Exception):
    """Raised by a guard called with no render in progress (keeps Jinja from folding it)."""


def current() -> Budget:
    """The budget of the render in progress (a default one outside any render)."""
    return _BUDGET.get() or Budget()


def _budget() -> Budget:
    budget = _BUDGET.get()
    if budget is None:
        raise _CompileTime()
    return budget


def deep_size(value: Any, limit: int) -> int:
    """Characters and elements in `value`, counting shared parts each time; stops past `limit`."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str | bytes | bytearray):
            total += len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            total += len(v)
            if total > limit:
                return total
            stack.extend(v)
        elif isinstance(v, dict):
            total += len(v)
            if total > limit:
                return total
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            total += 1
        if total > limit:
            return total
    return total


def _check_int(value: int, bits: int | None = None) -> None:
    bits = value.bit_length() if bits is None else bits
    if bits > MAX_INT_BITS:
        raise BudgetExceeded(f"would build a number of {bits:,} bits, over {MAX_INT_BITS:,}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- format specifications: width and precision are sizes too ------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?.?", re.S)
_DIGITS = re.compile(r"\d+")


def _check_number(text: str, budget: Budget) -> None:
    if len(text) > 9 or int(text) > budget.max_size:
        budget.refuse(int(text) if len(text) < 50 else 10**49, "a field")


def _check_percent(fmt: str, budget: Budget) -> None:
    """Refuse a `%` format whose width or precision would build more than the budget."""
    if "%" not in fmt:
        return
    for match in _PERCENT_SPEC.finditer(fmt):
        for part in match.groups():
            if part == "*":
                raise BudgetExceeded("'*' widths in % formats are not allowed")
            if part:
                _check_number(part, budget)


def _check_format(fmt: str, budget: Budget, depth: int = 0) -> None:
    """Refuse a str.format string whose widths or precisions would build too much."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _literal, _field, spec, _conversion in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise BudgetExceeded("nested replacement fields in a format spec are not allowed")
        for digits in _DIGITS.findall(spec):
            _check_number(digits, budget)


# --- size estimates of amplifying operations, before they run ------------------------------------


def _sized(value: Any, budget: Budget) -> int:
    return deep_size(value, budget.max_size)


def _replace_size(s: str, old: str, new: str, count: int = -1) -> int:
    occurrences = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        occurrences = min(occurrences, count)
    return len(s) + occurrences * max(0, len(new) - len(old))


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _materialize(args: tuple, index: int, budget: Budget) -> tuple:
    """`args` with the iterable at `index` turned into a list (each element counted)."""
    if len(args) <= index or isinstance(args[index], str | list | tuple | dict):
        return args
    items = list(budget.iterate(args[index]))
    return (*args[:index], items, *args[index + 1 :])


def _check_join(budget: Budget, sep: Any, items: Any) -> None:
    if isinstance(items, list | tuple) and isinstance(sep, str):
        size = len(sep) * max(0, len(items) - 1) + _sized(items, budget)
        if size > budget.max_size:
            budget.refuse(size)


def _method_precheck(obj: Any, args: tuple, kwargs: dict, budget: Budget) -> tuple:
    """Refuse a str method call whose result would be over budget; may materialize args."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str):
        return args
    name = getattr(obj, "__name__", "")
    if name in ("ljust", "rjust", "center", "zfill"):
        width = _arg(args, kwargs, 0, "width", 0)
        if _is_int(width) and width > budget.max_size:
            budget.refuse(width)
    elif name == "expandtabs":
        tabsize = _arg(args, kwargs, 0, "tabsize", 8)
        if _is_int(tabsize):
            size = len(owner) + owner.count("\t") * max(0, tabsize)
            if size > budget.max_size:
                budget.refuse(size)
    elif name == "join":
        args = _materialize(args, 0, budget)
        if args:
            _check_join(budget, owner, args[0])
    elif name == "replace":
        old, new = _arg(args, kwargs, 0, "old", ""), _arg(args, kwargs, 1, "new", "")
        if isinstance(old, str) and isinstance(new, str):
            size = _replace_size(owner, old, new, _arg(args, kwargs, 2, "count", -1))
            if size > budget.max_size:
                budget.refuse(size)
    elif name == "translate":
        table = _arg(args, kwargs, 0, "table", None)
        if isinstance(table, dict):
            longest = max((len(v) for v in table.values() if isinstance(v, str)), default=1)
            if len(owner) * longest > budget.max_size:
                budget.refuse(len(owner) * longest)
    return args


def _filter_precheck(name: str, args: tuple, kwargs: dict, budget: Budget) -> tuple:
    """Refuse a filter call whose result would be over budget; `args[0]` is the value."""
    value = args[0] if args else None
    if name == "center":
        width = _arg(args, kwargs, 1, "width", 80)
        if _is_int(width) and width > budget.max_size:
            budget.refuse(width)
    elif name == "indent":
        width = _arg(args, kwargs, 1, "width", 4)
        pad = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        text = value if isinstance(value, str) else ""
        size = len(text) + max(0, pad) * (text.count("\n") + 1)
        if size > budget.max_size:
            budget.refuse(size)
    elif name == "wordwrap":
        width = _arg(args, kwargs, 1, "width", 79)
        wrap = _arg(args, kwargs, 3, "wrapstring", None) or "\n"
        text = value if isinstance(value, str) else ""
        if _is_int(width) and isinstance(wrap, str):
            size = len(text) + (len(text) // max(1, width) + 1) * len(wrap)
            if size > budget.max_size:
                budget.refuse(size)
    elif name == "format":
        if isinstance(value, str):
            _check_percent(value, budget)
    elif name == "join":
        args = _materialize(args, 0, budget)
        _check_join(budget, _arg(args, kwargs, 1, "d", ""), args[0])
    elif name == "replace":
        old, new = _arg(args, kwargs, 1, "old", ""), _arg(args, kwargs, 2, "new", "")
        if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
            count = _arg(args, kwargs, 3, "count", None)
            size = _replace_size(value, old, new, -1 if count is None else count)
            if size > budget.max_size:
                budget.refuse(size)
    elif name in ("batch", "slice"):
        count = _arg(args, kwargs, 1, "linecount" if name == "batch" else "slices", 1)
        if _is_int(count) and count > budget.max_size:
            budget.refuse(count)
    elif name == "sum":
        args = _materialize(args, 0, budget)
        if not all(isinstance(v, int | float) for v in args[0]):
            size = _sized(args[0], budget) + _sized(_arg(args, kwargs, 2, "start", 0), budget)
            if size > budget.max_size:
                budget.refuse(size)
    elif name == "tojson":
        indent = _arg(args, kwargs, 1, "indent", None)
        if (_is_int(indent) and indent > 64) or (isinstance(indent, str) and len(indent) > 64):
            raise BudgetExceeded("tojson indent over 64 is not allowed")
    return args


# --- the environment ------------------------------------------------------------------------------


def _budget_range(*args: int) -> Any:
    """range(), at most MAX_RANGE numbers, iterated under the budget."""
    budget = _budget()
    budget.tick()
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise BudgetExceeded(f"range() of {len(numbers):,} numbers, over {MAX_RANGE:,}")
    return numbers


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every operation that can grow or loop held to a Budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.tick()
        if operator == "**":
            if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
                _check_int(0, (abs(left).bit_length() - 1) * right)
            result = left**right
        elif operator == "*":
            if _is_int(left) and _is_int(right):
                _check_int(0, left.bit_length() + right.bit_length() - 1)
            else:
                seq, n = (left, right) if _is_int(right) else (right, left)
                if _is_int(n) and n > 0 and isinstance(seq, str | list | tuple | bytes):
                    size = _sized(seq, budget) * n
                    if size > budget.max_size:
                        budget.refuse(size)
            result = left * right
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                size = _sized(left, budget) + _sized(right, budget)
                if size > budget.max_size:
                    budget.refuse(size)
            result = left + right
        else:  # "%"
            if isinstance(left, str):
                _check_percent(left, budget)
                for value in right if type(right) is tuple else (right,):
                    refuse_unstable(value)
            result = left % right
        return budget.value(result)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.tick()
        if getattr(__obj, "__self__", None) is __self and __obj.__name__.startswith("budget_"):
            return __obj(*args)  # a helper of the rewritten tree (it counts itself); kwargs are
            # Jinja's own bookkeeping (_loop_vars, _block_vars)
        for value in (*args, *kwargs.values()):  # `'{}'.format(range)`: its address
            refuse_unstable(value)
        args = _method_precheck(__obj, args, kwargs, budget)
        return budget.value(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            budget = _budget()
            _check_format(fmt, budget)
            return budget.value(wrapped(*args, **kwargs))

        return checked

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()
        return super().getitem(obj, argument)

    # Helpers the rewritten template tree calls (see _Guard).

    def budget_iter(self, iterable: Any) -> Iterator[Any]:
        return _budget().iterate(iterable)

    def budget_concat(self, *parts: Any) -> str:
        budget = _budget()
        for p in parts:
            refuse_unstable(p)
        strings = [p if type(p) is str else str(p) for p in parts]
        size = sum(map(len, strings))
        if size > budget.max_size:
            budget.refuse(size)
        budget.check(size)
        return "".join(strings)

    def budget_value(self, value: Any) -> Any:
        return _budget().value(value)

    def budget_text(self, text: str) -> str:
        _budget().check(len(text))
        return text


def as_text(value: Any) -> str:
    """What `{{ value }}` prints: a list or dict as JSON (`["a", "b"]`, not Python's
    `['a', 'b']`), anything else as str()."""
    if type(value) is list or type(value) is dict:
        try:
            return json.dumps(value, ensure_ascii=False, default=_other_text)
        except (TypeError, ValueError, RecursionError):
            return str(value)
    refuse_unstable(value)
    return str(value)


def _other_text(value: Any) -> str:
    """The text of a value JSON has no form for, inside a list or dict a template prints."""
    refuse_unstable(value)
    return str(value)


def _finalize(value: Any) -> str:
    """Every `{{ ... }}` output: converted to text and counted."""
    budget = _budget()
    text = value if type(value) is str else as_text(value)
    budget.check(len(text))
    return text


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 0 if _PassArg.from_obj(func) is None else 1

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.tick()
        for arg in (*args[skip:], *kwargs.values()):
            refuse_unstable(arg)
        args = (*args[:skip], *_filter_precheck(name, args[skip:], kwargs, budget))
        return budget.value(func(*args, **kwargs))

    return guarded


def _guard_test(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        return func(*args, **kwargs)

    return guarded


class _TimedWrapper(textwrap.TextWrapper):
    """textwrap, ticking the render's time budget at each break of a word or run of whitespace
    longer than the width: each break copies what is left of it, so a long run at a small width
    (`(" " * 1000000 + "x") | wordwrap(1)`) took minutes in one call."""

    def _handle_long_word(self, reversed_chunks, cur_line, cur_len, width):  # type: ignore[no-untyped-def]
        _budget().tick()
        super()._handle_long_word(reversed_chunks, cur_line, cur_len, width)


@pass_environment
def _wordwrap(
    environment: Any,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's `wordwrap` (each line a paragraph, wrapped alone), with `_TimedWrapper`."""
    if wrapstring is None:
        wrapstring = environment.newline_sequence
    wrapper = _TimedWrapper(
        width=width,
        expand_tabs=False,
        replace_whitespace=False,
        break_long_words=break_long_words,
        break_on_hyphens=break_on_hyphens,
    )
    return wrapstring.join([wrapstring.join(wrapper.wrap(line)) for line in s.splitlines()])


ENV = _Sandbox(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize
)
ENV.filters["wordwrap"] = _wordwrap
# `random` would pick anew on every render, as `lipsum` writes anew: a request would be another
# on every plan, so what apply sends would not be what plan showed, and every fingerprint would
# change each run.
ENV.filters = {name: _guard_filter(name, f) for name, f in ENV.filters.items() if name != "random"}
ENV.tests = {name: _guard_test(f) for name, f in ENV.tests.items()}
ENV.globals.pop("lipsum", None)  # random text, as `random` above
ENV.globals["range"] = _budget_range


# --- the rewritten tree ---------------------------------------------------------------------------


def _env_call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    call = nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None)
    call.set_lineno(lineno)
    call.set_environment(ENV)
    return call


class _Guard(NodeTransformer):
    """Route loops, concatenation, literals and repeated text through the budget helpers."""

    def __init__(self) -> None:
        self.repeated = 0  # inside a loop, macro or block body: its text may be output many times

    def _body(self, node: nodes.Node) -> nodes.Node:
        self.repeated += 1
        try:
            return self.generic_visit(node)
        finally:
            self.repeated -= 1

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self._body(node)
        node.iter = _env_call("budget_iter", [node.iter], node.lineno)
        return node

    def visit_Macro(self, node: nodes.Node) -> nodes.Node:
        return self._body(node)

    visit_CallBlock = visit_FilterBlock = visit_AssignBlock = visit_Macro

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        node = self.generic_visit(node)
        if self.repeated:
            node.nodes = [
                _env_call("budget_text", [nodes.Const(child.data)], node.lineno)
                if isinstance(child, nodes.TemplateData)
                else child
                for child in node.nodes
            ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _env_call("budget_concat", list(node.nodes), node.lineno)

    def visit_List(self, node: nodes.Node) -> nodes.Node:
        node = self.generic_visit(node)
        return _env_call("budget_value", [node], node.lineno)

    visit_Dict = visit_List

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:
        node = self.generic_visit(node)
        if node.ctx != "load":
            return node
        return _env_call("budget_value", [node], node.lineno)


def compile_template(tree: nodes.Template) -> Template:
    """A parsed template, rewritten for the budget and compiled in the sandbox."""
    tree = _Guard().visit(tree)
    return ENV.template_class.from_code(ENV, ENV.compile(tree), ENV.make_globals(None), None)


def output_renderer(template: Template) -> Callable[[dict[str, Any]], str]:
    """Render `template` from a full context (globals included), its output held to the budget."""
    root, name, blocks = template.root_render_func, template.name, template.blocks

    def render(context: dict[str, Any]) -> str:
        budget = _BUDGET.get()
        token = None
        if budget is None:  # rendered outside `start`: under the default budget
            budget = Budget()
            token = start(budget)
        try:
            limit = budget.max_size
            out = []
            size = 0
            for piece in root(Context(ENV, context, name, blocks)):
                size += len(piece)
                if size > limit:
                    budget.refuse(size, "an output")
                out.append(piece)
            budget.tick()
            return "".join(out)
        finally:
            if token is not None:
                stop(token)

    return render
