"""Custom_ids and fingerprints identify requests already sent: no speed-up may change one.

A golden digest over varied items (made by the code before the row-reading renderer), and a
property: rendering from the row gives exactly what rendering from the full context gives."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batchops.spec.items import _Renderer, _RenderError, iter_items
from batchops.spec.model import Job, load_project

SPEC = """
version = 1

[defaults]
model = "claude-haiku-4-5"
max_tokens = 16

[jobs.plain]
system = "Reply with one word."
prompt = "Subject: {{ subject }}\\n\\n{{ body }} {{body}} {{ n }} {{ key }}"
input = { path = "data/rows.jsonl", key = "id" }
params = { temperature = 0.5, stop_sequences = ["END"] }

[jobs.blocks]
betas = ["b2", "b1"]
system = [{ type = "text", text = "Sys {{ subject }}", cache_control = { type = "ephemeral" } }]
messages = [
  { role = "user", content = [{ type = "text", text = "{{ row }} / {{ tags }} / {{ obj }}" }] },
  { role = "assistant", content = "ok {{ flag }} {{ none }} {{ f }}" },
  { role = "user", content = "{{ key }}{{ key }} {{ subject }}" },
]
input = { path = "data/rows.jsonl", key = "id" }

[jobs.jinja]
prompt = "{{ subject | upper }} {% if n %}{{ n + 1 }}{% endif %} {{ row.body }}"
input = { path = "data/rows.jsonl", key = "id" }

[jobs.table]
prompt = "{{ a }}-{{ b }}"
input = { path = "data/rows.csv", key = "a" }

[jobs.inline]
prompt = "{{ text }} {{ key }}"
items = [{ key = "one", text = "first" }, { key = "two", text = "second \\u00e9" }]
"""

ROWS = [
    {"id": "r-1", "subject": "Hello", "body": "World", "n": 1},
    {"id": 2, "subject": "Ünïcödé ☃ {braces}", "body": "line\nbreak\ttab", "n": 0},
    {"id": "k" * 80, "subject": "", "body": "x" * 300, "n": -5},
    {"id": "weird key/with:chars é", "subject": "s", "body": "b", "n": 2.5},
    {"id": "r-5", "subject": "t", "body": "b", "n": 3, "tags": ["a", 1], "obj": {"k": [1, 2]}},
    {"id": "r-6", "subject": "t", "body": "b", "n": 1e-7, "flag": True, "none": None, "f": 0.1},
    {"id": "🙂", "subject": "\"quoted\" 'single'", "body": "{{ not a template }}", "n": 10**18},
]


def _project(root: Path) -> Path:
    data = root / "jobs" / "data"
    data.mkdir(parents=True)
    (root / "jobs" / "a.toml").write_text(textwrap.dedent(SPEC), encoding="utf-8")
    full = [{"tags": [], "obj": {}, "flag": False, "none": None, "f": 1.5, **r} for r in ROWS]
    (data / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full), "utf-8")
    (data / "rows.csv").write_text('a,b\n1,x\n2,"y,z"\nkey é,\n', encoding="utf-8")
    return root


def test_custom_ids_and_fingerprints_are_unchanged(tmp_path: Path) -> None:
    project = load_project(_project(tmp_path) / "jobs", root=tmp_path)
    digest = hashlib.sha256()
    for job in project.jobs:
        for item in iter_items(job, project.root):
            digest.update(
                f"{item.job}\t{item.key}\t{item.custom_id}\t{item.fingerprint}\n".encode()
            )
            digest.update(orjson.dumps(item.params, option=orjson.OPT_SORT_KEYS) + b"\n")
    assert digest.hexdigest() == GOLDEN


GOLDEN = "96789c1dc5135e26b83059c891fe87ac4f6b626abd589eefe37cb590b1930dd5"

names = st.sampled_from(["subject", "body", "key", "row", "missing", "range", "namespace", "n"])
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    template=st.lists(
        st.one_of(names.map(lambda n: "{{ " + n + " }}"), st.text("ab {}\n", max_size=6)),
        max_size=6,
    ),
    row=st.dictionaries(
        st.sampled_from(["subject", "body", "key", "row", "n", "range", "x"]), values
    ),
    key=st.text(max_size=10),
    max_size=st.sampled_from([5, 40, 10_000_000]),
)
@example(["{{ body }}", "{{ body }}"], {"body": "abc"}, "k", 5)
@example(["{{ row }}", "{{ key }}"], {"key": "not me", "row": 1}, "k", 10_000_000)
@example(["{{ missing }}", "{{ body }}"], {"body": "x" * 50}, "k", 40)
@example(["{{ range }}{{ n }}"], {"n": [1, {"a": None}]}, "k", 10_000_000)
def test_rendering_from_the_row_is_rendering_from_the_context(template, row, key, max_size):
    source = "".join(template)
    job = _job(source, max_size)
    problems: list[str] = []
    renderer = _Renderer(job, problems, "here")
    if problems:
        return
    slow = _Renderer.render.__get__(renderer)
    assert _outcome(renderer.render, row, key) == _outcome(slow, row, key)


def _outcome(render, row, key):
    try:
        return render(row, key)
    except _RenderError as e:
        return ("error", e.describe())


def _job(prompt: str, max_size: int) -> Job:
    return Job(
        name="j",
        spec_file=Path("jobs/a.toml"),
        model="claude-haiku-4-5",
        max_tokens=8,
        system="S {{ key }}",
        prompt=prompt,
        render_max_size=max_size,
    )


def test_the_common_templates_render_from_the_row() -> None:
    renderer = _Renderer(_job("{{ subject }} {{ body }}", 100), [], "here")
    assert renderer.render.__func__ is _Renderer._render_from_row  # type: ignore[attr-defined]
    jinja = _Renderer(_job("{{ subject | upper }}", 100), [], "here")
    assert jinja.render.__func__ is _Renderer.render  # type: ignore[attr-defined]
