"""`@dataclass`, with the class's methods made when its first instance is.

Python 3.11 writes each dataclass's `__init__`, `__repr__`, `__eq__`, `__hash__` (and a frozen
class's `__setattr__` and `__delattr__`) as source text and compiles it when the class is defined:
batchops' 34 dataclasses took 30–43 ms of a 105–130 ms cold start, and a command makes instances
of a few of them.

Here the class is defined again, over a stand-in base (`_Unmade`) and with a metaclass of its own
(`_Lazy`, which adds nothing to making an instance). The stand-in's `__init__` (a call) and
`__setstate__` (an unpickling, a copy) make the class first: `ready` hands it to
`dataclasses.dataclass` under a lock, and while it does, the class's metaclass is `_Making`, whose
`__call__` waits for that lock. So no thread makes an instance of a class half made (the stdlib
sets `__init__` before `__eq__` and a frozen class's `__setattr__`), but for one window: a thread
whose first instance's allocation runs a Python finalizer that lets another thread start making
the class may find its new `__init__` before the rest. And a fork waits until no class is being
made (the child would hold a lock no thread of it can release).

An instance sees a plain dataclass; only a look at the class itself before any instance
(`dataclasses.fields(cls)`, a field's default through the class, its signature) can tell, and
`ready(cls)` makes it whole for that. What cannot wait is made at once, as
`dataclasses.dataclass` makes it: a class with slots or `init=False`, with no field, with its own
`__init__`, `__new__`, `__setstate__` or `__slots__`, with a method that names its class
(`super()`, under decorators too), with a base that is a dataclass or has its own `__new__` or
`__setstate__`, or under another metaclass. A class `dataclasses.dataclass` refuses fails each
time an instance is made (the stdlib fails when it is defined). Not for batchops' classes, and
not checked: a plain subclass calling `super().__init__` (its `__init__` would run twice), class
keywords (not passed again when the class is defined again), a decorator under this one (it
sees the class before it is defined again).
`tests/test_lazyclass.py` and `tests/test_review4_lazyclass.py` hold them to the dataclasses they
declare.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from types import FunctionType
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T", bound=type)
_PENDING = "__batchops_dataclass_options__"
_MAKING = threading.RLock()
_OWN = frozenset({"__init__", "__new__", "__setstate__", "__slots__"})

os.register_at_fork(
    before=_MAKING.acquire, after_in_parent=_MAKING.release, after_in_child=_MAKING.release
)


class _Lazy(type):
    """The metaclass of a lazy dataclass: `type` itself, as far as an instance can tell."""


class _Making(_Lazy):
    """A lazy dataclass's metaclass while `ready` makes it: an instance waits until it is made."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        with _MAKING:
            pass
        return type.__call__(cls, *args, **kwargs)  # not super(): cls is _Lazy's again by now


class _Unmade:
    """The base of a dataclass not made yet: its first instance makes it."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ready(type(self)).__init__(self, *args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        ready(type(self))
        # What unpickling and copying do for a class without __setstate__, as a dataclass is.
        if isinstance(state, tuple):
            state, slots = state
            for name, value in (slots or {}).items():
                object.__setattr__(self, name, value)
        if state:
            self.__dict__.update(state)


@overload
def dataclass(cls: _T, /) -> _T: ...
@overload
def dataclass(*, frozen: bool = ..., kw_only: bool = ..., eq: bool = ...) -> Any: ...


@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))
def dataclass(cls: Any = None, /, **options: Any) -> Any:
    """`dataclasses.dataclass(cls, **options)`, done when the first instance is made."""

    def wrap(cls: type) -> type:
        if not _can_wait(cls, options):
            return dataclasses.dataclass(ready(cls), **options)  # its lazy bases made first
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        namespace[_PENDING] = options
        return _Lazy(cls.__name__, (_Unmade, *cls.__bases__), namespace)

    return wrap if cls is None else wrap(cls)


def ready(cls: _T) -> _T:
    """`cls` and its bases made into the dataclasses they were declared as, if not made yet."""
    if not any(_PENDING in base.__dict__ for base in cls.__mro__):
        return cls  # made (the mark goes once the class is whole): a copy need not take the lock
    with _MAKING:
        for base in reversed(cls.__mro__):
            options = base.__dict__.get(_PENDING)
            if isinstance(options, Exception):  # refused before: not made again
                raise TypeError(f"{base.__qualname__}: {options}")
            if options is not None:
                documented = bool(base.__doc__)
                base.__class__ = _Making  # type: ignore[assignment]
                try:
                    dataclasses.dataclass(base, **options)
                except Exception as e:  # half made: every later instance fails the same way
                    setattr(base, _PENDING, e)
                    raise
                else:
                    delattr(base, _PENDING)
                finally:
                    base.__class__ = _Lazy  # type: ignore[assignment]
                if not documented:  # the stdlib's docstring, read through `_Making.__call__`
                    base.__doc__ = base.__name__ + _signature(base)
    return cls


def _signature(cls: type) -> str:
    """What `dataclasses` puts in a class's docstring: its signature, as inspect gives it."""
    import inspect  # imported by dataclasses already

    try:
        return str(inspect.signature(cls)).replace(" -> None", "")
    except (TypeError, ValueError):
        return ""


def _can_wait(cls: type, options: dict[str, Any]) -> bool:
    if options.get("slots") or options.get("init") is False or type(cls) is not type:
        return False
    if _OWN & cls.__dict__.keys() or not cls.__dict__.get("__annotations__"):
        return False  # methods of its own, or no field (an empty instance unpickles unmade)
    for base in cls.__mro__[1:-1]:
        if dataclasses.is_dataclass(base) or _PENDING in base.__dict__:
            return False
        if {"__new__", "__setstate__"} & base.__dict__.keys():
            return False  # the stand-in's `__setstate__` would hide it; a `__new__` runs first
    for value in cls.__dict__.values():
        parts = [
            value,
            *(getattr(value, a, None) for a in ("__func__", "fget", "fset", "fdel", "func")),
        ]
        for f in parts:
            for _ in range(16):  # and what each decorator wraps (functools.wraps)
                if isinstance(f, FunctionType) and "__class__" in f.__code__.co_freevars:
                    return False
                f = getattr(f, "__wrapped__", None)
                if f is None:
                    break
    return True
