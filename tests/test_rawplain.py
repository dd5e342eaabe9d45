"""A plain spec file is checked without pydantic (`spec.rawplain`): to exactly the values the
models of `spec.raw` give, and never one the models refuse."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from batchops.spec import rawplain
from batchops.spec.raw import _RawSpec

REPO = Path(__file__).resolve().parent.parent

# Values the models take, for each field; a spec of these is drawn and then, in most examples,
# one of its values replaced by anything at all (a wrong type, out of range, unknown).
TEXT = st.sampled_from(["", "x", "claude-haiku-4-5", "Say {{ word }}"])
NAME = st.sampled_from(["x", "claude-haiku-4-5", "id"])
TABLE = st.dictionaries(
    st.sampled_from(["role", "content", "type", "text", "key", "id"]),
    st.one_of(st.none(), st.booleans(), TEXT, st.integers(), st.floats(), st.lists(TEXT)),
    max_size=3,
)
FORMAT = st.sampled_from(["jsonl", "csv", "json"])
ANY = st.one_of(
    st.none(), st.booleans(), TEXT, st.integers(-5, 2**60), st.floats(), TABLE,
    st.lists(st.one_of(TEXT, TABLE, st.integers()), max_size=2),
    st.sampled_from([0, 1, 100, 101, 999, 1_000, 10**6 + 1, 32_000_001, 30.5, -0.0, "xml", "on"]),
)  # fmt: skip
FIELDS = {
    "description": TEXT,
    "model": NAME,
    "max_tokens": st.integers(1, 10**6),
    "system": st.one_of(TEXT, st.lists(TABLE, max_size=2)),
    "prompt": TEXT,
    "messages": st.lists(TABLE, min_size=1, max_size=2),
    "params": TABLE,
    "betas": st.lists(TEXT, max_size=2),
    "budget_usd": st.one_of(st.integers(0, 10**6), st.floats(0, 1e6)),
    "reuse": st.booleans(),
    "cache": st.sampled_from(["auto", "off"]),
    "expected_output_tokens": st.integers(1, 10**6),
    "max_attempts": st.integers(1, 100),
    "render_seconds": st.one_of(st.integers(1, 30), st.floats(1e-9, 30)),
    "render_max_size": st.integers(1_000, 32_000_000),
    "output": st.fixed_dictionaries(
        {"path": TEXT}, optional={"format": FORMAT, "columns": st.lists(NAME, max_size=2)}
    ),
}
JOB_FIELDS = {
    **FIELDS,
    "input": st.fixed_dictionaries({"path": TEXT, "key": NAME}, optional={"format": FORMAT}),
    "items": st.lists(TABLE, max_size=2),
    "requests": st.one_of(TEXT, st.fixed_dictionaries({"path": TEXT})),
    "attachments": st.lists(TEXT, max_size=2),
}
SPEC = st.fixed_dictionaries(
    {
        "version": st.just(1),
        "jobs": st.dictionaries(
            st.sampled_from(["a", "b-1", "Bad name"]),
            st.fixed_dictionaries({}, optional=JOB_FIELDS),
            min_size=1,
            max_size=2,
        ),
    },
    optional={
        "defaults": st.fixed_dictionaries({}, optional=FIELDS),
        "$schema": TEXT,
    },
)


@st.composite
def specs(draw):
    """A spec of values the models take, often with a value or two replaced by another one."""
    raw = draw(SPEC)
    tables = [(t, [*JOB_FIELDS, "x"]) for t in [raw.get("defaults"), *raw["jobs"].values()] if t]
    for table, _ in list(tables):
        for value in table.values():
            if isinstance(value, dict):  # output, input, requests
                tables.append((value, ["path", "key", "format", "columns", "x"]))
    tables.append((raw, ["$schema", "moved", "version", "defaults", "jobs", "x"]))
    for _ in range(draw(st.integers(0, 2))):
        table, names = draw(st.sampled_from(tables))
        name = draw(st.sampled_from(names))
        table[name] = draw(st.one_of(st.sampled_from(EDGES.get(name, [None])), ANY))
    return raw


# Values at the edges of what each field takes, on both sides.
EDGES = {
    "max_tokens": [0, 1, -1, 10**6, 10**6 + 1, True, 1.0],
    "expected_output_tokens": [0, 1, 10**6, 10**6 + 1, True],
    "max_attempts": [0, 1, 100, 101, True],
    "render_max_size": [999, 1_000, 32_000_000, 32_000_001, 1e4],
    "budget_usd": [-1, -0.5, -0.0, 0, True, math.nan, math.inf, 10**20, "1"],
    "render_seconds": [0, 0.0, -1, 30, 30.0, 30.000001, 31, True, math.nan, math.inf, 1e-300],
    "model": ["", "x", 1],
    "description": ["", 1, ["x"]],
    "prompt": ["", 1],
    "system": [[], [{}], [1], {}, 1],
    "cache": ["on", "auto", "off", "OFF"],
    "reuse": [0, 1, "true", False],
    "format": ["xml", "jsonl", "JSON", 1],
    "key": ["", "k", 1],
    "path": ["", "p", 1],
    "columns": [[""], ["a"], "a", [1], []],
    "messages": [[], [{}], [1], "x", [{"role": "user"}], [{1: 2}]],
    "items": [[1], [{}], {}, [{"a": 1}], [{1: "a"}]],
    "params": [{}, {1: 2}, [], {"temperature": 0}],
    "betas": [[], [""], [1], "x"],
    "attachments": [[], ["a"] * 100, ["a"] * 101, [1], "a"],
    "input": [{"path": "p"}, {"key": "k"}, {"path": "p", "key": "k"}, "p"],
    "output": [{"path": "p"}, {}, "p", {"path": "p", "key": "k"}],
    "requests": ["p", {"path": "p"}, {"path": "p", "key": "k"}, {}, 1],
    "moved": [[], [{"from": "a", "to": "b"}]],
    "$schema": [None, "s", 1],
    "version": [1, 1.0, True],
}
NAMES = [*JOB_FIELDS, "path", "key", "format", "columns", "moved", "$schema", "version", "x"]


def same(fast, model) -> bool:
    """`fast` holds every field of pydantic model `model`, with equal values of the same types."""
    if model is None or fast is None:
        return model is None and fast is None
    if set(vars(fast)) != set(type(model).model_fields):
        return False
    for name in vars(fast):
        a, b = getattr(fast, name), getattr(model, name)
        if isinstance(b, BaseModel):
            if not same(a, b):
                return False
        elif type(a) is not type(b) or a != b:
            return False
    return True


ACCEPTED: list[bool] = []


def check(raw):
    fast = rawplain.spec_of(raw)
    ACCEPTED.append(fast is not None)
    try:
        model = _RawSpec.model_validate(raw)
    except Exception:
        assert fast is None, raw
        return None
    if fast is not None:
        assert same(fast.defaults, model.defaults), raw
        assert list(fast.jobs) == list(model.jobs), raw
        for name, job in fast.jobs.items():
            assert same(job, model.jobs[name]), (raw, name)
    return fast


@settings(max_examples=4000, deadline=None)
@given(specs())
@example({"version": 1, "jobs": {"a": {"budget_usd": 1, "render_seconds": 2}}})
@example({"version": 1, "jobs": {"a": {"budget_usd": True}}})
@example({"version": 1, "jobs": {"a": {"max_tokens": True}}})
@example({"version": 1, "jobs": {"a": {"render_seconds": math.inf}}})
@example({"version": 1, "jobs": {"a": {"requests": "r.jsonl"}}})
@example({"version": 1, "jobs": {"a": {"input": {"path": "a.csv", "key": ""}}}})
def test_plain_specs_check_to_the_models_values(raw):
    check(raw)


def test_the_examples_are_plain():
    for file in sorted((REPO / "jobs").glob("*.*")):
        text = file.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
        assert check(raw) is not None, file


def test_generated_specs_are_often_plain():
    # the property above means little unless the fast path takes many of the specs it draws
    ACCEPTED.clear()
    test_plain_specs_check_to_the_models_values()
    assert sum(ACCEPTED) >= len(ACCEPTED) // 20, (sum(ACCEPTED), len(ACCEPTED))


@pytest.mark.parametrize("name", sorted(EDGES))
def test_every_edge_of_every_field(name):
    base = {"model": "m", "max_tokens": 8, "prompt": "hi", "items": []}
    sub = {"input": {"path": "p", "key": "k"}, "output": {"path": "p"}, "requests": {"path": "p"}}
    for value in EDGES[name]:
        check({"version": 1, "jobs": {"a": {**base, name: value}}})
        check({"version": 1, "defaults": {name: value}, "jobs": {"a": base}})
        check({"version": 1, name: value, "jobs": {"a": base}})
        for field, table in sub.items():
            check({"version": 1, "jobs": {"a": {**base, field: {**table, name: value}}}})
