"""A lazy dataclass behaves as the dataclass it declares, and is made only when used.

`batchops.lazyclass.dataclass` leaves a class unmade until its first instance (a call, an
unpickling, a copy), which takes 14–20 ms off every cold start (`bench/run.py --only cold`).
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batchops.lazyclass import dataclass, ready

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)

    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclass(frozen=True, kw_only=True)
class Named:
    name: str
    size: int = 1


@dataclass
class Counter:
    count: int = 0
    seen: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Base:
    a: int


@dataclass(frozen=True)
class Child(Base):
    b: str = "b"


@dataclass(frozen=True)
class Unpickled:
    key: str
    size: int


def test_an_instance_is_the_declared_dataclass():
    p = Point(1, 2)
    assert p == Point(1, 2) and p != Point(2, 1)
    assert hash(Base(1)) == hash(Base(1)) and len({Base(1), Base(1), Base(2)}) == 2
    assert repr(p) == "Point(x=1, y=2, tags=[])"
    assert p.norm() == 3
    assert Point(1).tags is not Point(1).tags  # a default_factory, called for each instance
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    assert dataclasses.replace(p, y=7) == Point(1, 7)
    assert dataclasses.asdict(p) == {"x": 1, "y": 2, "tags": []}
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "tags"]
    assert dataclasses.is_dataclass(p)


def test_keywords_only_mutable_and_inheritance():
    with pytest.raises(TypeError):
        Named("n")  # type: ignore[misc]
    assert Named(name="n") == Named(name="n", size=1)
    c = Counter()
    c.count += 1
    c.seen["a"] = 1
    assert c == Counter(1, {"a": 1})
    with pytest.raises(TypeError, match="unhashable"):
        hash(c)
    child = Child(1, "x")
    assert child == Child(1, "x") and child != Child(2, "x")
    assert repr(child) == "Child(a=1, b='x')"
    assert [f.name for f in dataclasses.fields(child)] == ["a", "b"]
    assert Base(1) == Base(1)
    with pytest.raises(TypeError):
        Child()  # type: ignore[call-arg]


def test_a_class_is_made_only_by_its_first_instance():
    code = (
        "import dataclasses, sys\n"
        "from batchops.plan.actions import Plan, JobPlan\n"
        "from batchops.spec.model import Job, Project\n"
        "print(dataclasses.is_dataclass(Plan), dataclasses.is_dataclass(Job))\n"
        "from batchops.lazyclass import ready\n"
        "ready(Plan)\n"
        "print(dataclasses.is_dataclass(Plan), dataclasses.is_dataclass(JobPlan))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split("\n")
    assert out[:2] == ["False False", "True False"]


def test_unpickling_and_copying_make_the_class():
    # A worker process unpickles an instance of a class it has not made yet: its __eq__ and
    # frozen __setattr__ must be there all the same.
    code = (
        "import dataclasses, pickle, sys\n"
        "from tests.test_lazyclass import Unpickled\n"
        "u = pickle.loads(sys.stdin.buffer.read())\n"
        "print(dataclasses.is_dataclass(Unpickled), u == Unpickled('k', 3), repr(u))\n"
        "try:\n"
        "    u.size = 4\n"
        "except dataclasses.FrozenInstanceError:\n"
        "    print('frozen')\n"
    )
    ready(Unpickled)
    blob = pickle.dumps(Unpickled("k", 3))
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, check=True, cwd=REPO
    ).stdout.decode()
    assert out.split("\n")[:2] == ["True True Unpickled(key='k', size=3)", "frozen"]
    p = Point(3, 4, ["t"])
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    assert copy.deepcopy(p).tags is not p.tags


def test_first_instances_made_on_many_threads_at_once():
    classes = []
    for n in range(40):  # fresh classes, each unmade, each made first by eight threads at once
        classes.append(dataclass(frozen=True)(type(f"T{n}", (), {"__annotations__": {"v": int}})))
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        try:
            for cls in classes:
                assert cls(5) == cls(5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_what_cannot_wait_is_made_at_once():
    @dataclass(init=False)
    class NoInit:
        x: int = 1

    @dataclass
    class Slotted:
        __slots__ = ("x",)
        x: int

    class Mixin:
        pass

    @dataclass(frozen=True)
    class NamesItsClass(Mixin):
        x: int

        @property
        def doubled(self) -> int:
            return 2 * self.x

        @doubled.setter
        def doubled(self, value: int) -> None:
            super().__setattr__("x", value // 2)

    for cls in (NoInit, Slotted, NamesItsClass):
        assert dataclasses.is_dataclass(cls), cls  # made when defined, as the stdlib makes it
    assert NoInit().x == 1 and Slotted(2).x == 2 and NamesItsClass(3).doubled == 6


def test_every_dataclass_of_batchops_is_lazy_or_says_why():
    # The stdlib decorator is allowed only where the lazy one cannot serve (slots=True).
    offenders = []
    for path in sorted((REPO / "batchops").rglob("*.py")):
        text = path.read_text("utf-8")
        if path.name == "lazyclass.py":
            continue
        if re.search(r"^from dataclasses import .*\bdataclass\b", text, re.M) or re.search(
            r"@dataclasses\.dataclass", text
        ):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
