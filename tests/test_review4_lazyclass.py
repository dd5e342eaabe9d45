"""Review of commit c723da7 (`batchops/lazyclass.py`): where a lazy dataclass was not the plain
dataclass it declares. Each test failed with that commit (the first one 5 times in 15 runs
without the pause it adds); the metaclass `_Making` and the fork hooks fixed them."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading

import pytest

from batchops.lazyclass import dataclass


@dataclass(frozen=True)
class _MadeInAChild:
    """Never instantiated in the parent: a forked child makes it first."""

    v: int


def test_a_second_thread_gets_a_half_made_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """lazyclass.py:37-38 and 73-80: only the thread that reaches `_Unmade.__init__` waits on
    `_MAKING`. `dataclasses._process_class` sets the class's `__init__` first and its
    `__repr__`, `__eq__`, frozen `__setattr__`/`__delattr__` and `__hash__` after, so another
    thread that makes an instance in between runs the new `__init__` without the lock and gets
    an instance of a half-made class: `==` is identity and a frozen instance can be changed.
    (The module docstring says such a thread "waits for it"; a plain dataclass is whole at
    import.) The window is held open here by pausing the maker inside `_repr_fn`, which
    `_process_class` calls right after it has set `__init__`."""

    @dataclass(frozen=True)
    class Row:
        v: int

    init_set, looked = threading.Event(), threading.Event()
    real_repr_fn = dataclasses._repr_fn  # type: ignore[attr-defined]

    def paused_repr_fn(*args, **kwargs):  # type: ignore[no-untyped-def]
        init_set.set()
        looked.wait(10)
        return real_repr_fn(*args, **kwargs)

    monkeypatch.setattr(dataclasses, "_repr_fn", paused_repr_fn)
    seen: dict[str, bool] = {}

    def look() -> None:  # another thread's instances, made while the maker is paused
        a, b = Row(1), Row(1)
        seen["equal"] = a == b
        try:
            a.v = 2  # type: ignore[misc]
            seen["frozen"] = False
        except dataclasses.FrozenInstanceError:
            seen["frozen"] = True

    maker = threading.Thread(target=Row, args=(1,))
    maker.start()
    while not init_set.wait(0.05) and maker.is_alive():
        pass
    looker = threading.Thread(target=look)
    looker.start()
    looker.join(2)  # a looker that waits for the maker (as the docstring says) is let on here
    looked.set()
    looker.join(10)
    maker.join(10)
    assert seen["equal"], (
        "Row(1) == Row(1) was False: __eq__ not yet set when the instance was made"
    )
    assert seen["frozen"], "a frozen dataclass's instance was changed: __setattr__ not yet set"


def test_a_fork_while_another_thread_makes_a_class_hangs_the_child() -> None:
    """lazyclass.py:28 and 73-80: making a class now happens under a module-level RLock,
    `_MAKING`, on whatever thread makes the first instance, and nothing re-creates the lock
    after `os.fork` (no `os.register_at_fork`). A fork while another thread is inside
    `ready()` leaves the child a lock held by a thread it does not have: the child's first
    instance of any class not made yet blocks forever. batchops forks while threads live
    (`spec/parallel.py`'s fork pool, e.g. beside `--emulator`'s in-process server thread);
    with plain dataclasses every class was made at import and a forked child never waited.
    The other thread is held inside `ready()` by a field default whose `__get__` blocks
    (`dataclasses` reads each default through the class)."""
    entered, release = threading.Event(), threading.Event()

    class _Blocking:
        def __get__(self, obj: object, owner: type) -> int:
            if obj is None and threading.current_thread() is not threading.main_thread():
                entered.set()
                release.wait(10)
            return 0

    @dataclass
    class Slow:
        x: int = _Blocking()  # type: ignore[assignment]

    maker = threading.Thread(target=Slow)
    maker.start()
    try:
        while not entered.wait(0.05) and maker.is_alive():
            pass
        # The fork waits for the maker to finish (os.register_at_fork): let it finish soon.
        threading.Timer(0.5, release.set).start()
        pid = os.fork()
        if pid == 0:  # the child: make a first instance, end 0; SIGALRM ends it if it hangs
            try:
                signal.alarm(3)
                _MadeInAChild(1)
                if Slow() != Slow():  # the class the maker was making, whole in the child
                    os._exit(2)
                os._exit(0)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        maker.join(10)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        "the forked child hung making its first instance "
        f"(killed by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})"
    )


# A second read of the fixed module (read-only) found these; each test failed before its fix.


def test_a_class_without_a_docstring_gets_the_stdlibs():
    """`dataclasses` writes a missing docstring from `inspect.signature(cls)`, which read the
    waiting metaclass's `__call__` while the class was made: `(*args, **kwargs)`."""

    @dataclass(frozen=True)
    class Undocumented:
        x: int
        y: str = "y"

    Undocumented(1)

    @dataclasses.dataclass(frozen=True)
    class Plain:
        x: int
        y: str = "y"

    assert Undocumented.__doc__ == Plain.__doc__.replace("Plain", "Undocumented")


def test_a_class_the_stdlib_refuses_fails_every_time():
    """The stdlib refuses a field without a default after one with a default factory; a second
    attempt made a class in which the first field had lost its default factory."""

    @dataclass
    class Refused:
        a: list = dataclasses.field(default_factory=list)
        b: int  # type: ignore[misc]

    for _ in range(2):
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            Refused([], 1)


def test_super_under_a_decorator_is_seen():
    """A method wrapped by `functools.wraps` that calls `super()` names the class defined first,
    not the one defined again: such a class must be made at once."""
    import functools

    def logged(f):  # type: ignore[no-untyped-def]
        @functools.wraps(f)
        def wrapper(*args):  # type: ignore[no-untyped-def]
            return f(*args)

        return wrapper

    @dataclass
    class Wrapped:
        x: int

        @logged
        def text(self) -> str:
            return super().__repr__()

    assert dataclasses.is_dataclass(Wrapped)
    assert Wrapped(1).text().startswith("<")


def test_a_base_with_its_own_setstate_keeps_it():
    class Restoring:
        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state, restored=True)

    @dataclass
    class Child(Restoring):
        x: int

    import copy

    assert copy.copy(Child(1)).restored is True  # type: ignore[attr-defined]
