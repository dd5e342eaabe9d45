"""Property tests: whatever a spec, a data file or a template holds, the answer is items or
SpecError lines (one printable line each), never another exception, and it comes quickly.

Short runs in the suite; `fuzz/` holds the long, coverage-guided run.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchops.errors import SpecError
from batchops.spec.items import iter_items
from batchops.spec.model import load_project

FAST = settings(
    max_examples=40,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIME_LIMIT_S = 5.0


def outcome(files: dict[str, bytes]) -> list[str] | int:
    """Write `files` in a fresh project; the problem lines, or the number of items rendered."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        start = time.monotonic()
        try:
            project = load_project(root / "jobs", root)
            count = 0
            for job in project.jobs:
                count += sum(1 for _ in iter_items(job, root))
            result: list[str] | int = count
        except SpecError as e:
            result = e.problems
            for line in result:
                assert "\n" not in line and "\x1b" not in line and "\r" not in line
                line.encode("utf-8")
        assert time.monotonic() - start < TIME_LIMIT_S
        return result


def spec_with(prompt: str, source: str) -> bytes:
    return (
        'version = 1\n[defaults]\nrender_seconds = 0.3\n[jobs.j]\nmodel = "m"\nmax_tokens = 4\n'
        f"prompt = {json.dumps(prompt)}\n{source}\n"
    ).encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(st.binary(max_size=400), st.sampled_from(["a.toml", "a.json"]))
def test_any_bytes_as_a_spec(content: bytes, name: str) -> None:
    outcome({f"jobs/{name}": content})


@FAST
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6), json_values)
def test_any_json_spec(top: dict, job: object) -> None:
    top = {"version": 1, **top, "jobs": {"j": job}}
    text = json.dumps(top, allow_nan=True)
    outcome({"jobs/a.json": text.encode("utf-8", "surrogatepass")})


@FAST
@given(st.binary(max_size=400), st.sampled_from(["t.jsonl", "t.csv", "t.json"]))
def test_any_bytes_as_a_data_file(content: bytes, name: str) -> None:
    outcome(
        {
            "jobs/a.toml": spec_with(
                "{{ row }}", f'input = {{ path = "data/{name}", key = "id" }}'
            ),
            f"jobs/data/{name}": content,
        }
    )


@FAST
@given(
    st.lists(st.dictionaries(st.sampled_from(["id", "body", "x", ":"]), json_values), max_size=5)
)
def test_any_jsonl_rows(rows: list) -> None:
    data = "\n".join(json.dumps(r, allow_nan=True) for r in rows).encode("utf-8", "surrogatepass")
    outcome(
        {
            "jobs/a.toml": spec_with("{{ body }}", 'input = { path = "data/t.jsonl", key = "id" }'),
            "jobs/data/t.jsonl": data,
        }
    )


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_as_raw_requests(content: bytes) -> None:
    outcome(
        {
            "jobs/a.toml": b'version = 1\n[jobs.r]\nrequests = "data/r.jsonl"\n',
            "jobs/data/r.jsonl": content,
        }
    )


SNIPPETS = [
    "{{ ",
    " }}",
    "{% ",
    " %}",
    "{% for i in range(",
    ") %}",
    "{% endfor %}",
    "{% if ",
    "{% endif %}",
    "{% set s = ",
    "{% macro m(n) %}",
    "{% endmacro %}",
    "m(",
    "'x'",
    "9",
    "**",
    "*",
    "~",
    "+",
    "%",
    "|center(",
    "|join(",
    "|format(",
    "|indent(",
    "|batch(",
    "|list",
    "|string",
    "|tojson",
    "|replace('x', ",
    ".ljust(",
    ".zfill(",
    ".format(",
    "'{:>9}'",
    "'%09d'",
    "[",
    "]",
    ",",
    "(",
    ")",
    "99999999",
    "row",
    "key",
    "loop.index",
    " ",
    "}}",
    "%}",
    "{#",
    "#}",
    "'\\udfff'",
    "lipsum(",
    "range",
    "namespace(",
    "dict(",
]


@settings(max_examples=150, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SNIPPETS) | st.text(max_size=3), max_size=25))
def test_any_template(pieces: list[str]) -> None:
    template = "".join(pieces)
    outcome({"jobs/a.toml": spec_with(template, 'items = [{ key = "k", n = 3 }]')})
