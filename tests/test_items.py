"""Items: rendering, the three sources, fingerprints, custom_ids and the item-level error lines."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from batchops.errors import SpecError
from batchops.spec.items import (
    CUSTOM_ID_RE,
    Item,
    canonical_json,
    custom_id_for,
    fingerprint,
    iter_items,
)
from batchops.spec.model import Project, load_project

REPO = Path(__file__).resolve().parent.parent

TICKETS = [
    {"ticket_id": "T-1001", "subject": "Login", "body": "Cannot log in."},
    {"ticket_id": "T-1002", "subject": "Billing", "body": "Charged twice."},
    {"ticket_id": 1003, "subject": "Thanks", "body": "Great support!"},
]

SUPPORT_TOML = """
version = 1

[defaults]
model = "claude-haiku-4-5"

[jobs.ticket-sentiment]
description = "Label tickets"
max_tokens = 8
system = "Reply with one word."
prompt = "Subject: {{ subject }}\\n\\n{{ body }}"
input = { path = "data/tickets.jsonl", key = "ticket_id" }
params = { temperature = 0.0, stop_sequences = ["END"] }
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "jobs/data/tickets.jsonl", TICKETS)
    return tmp_path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def load(root: Path) -> Project:
    return load_project(root / "jobs", root=root)


def items_of(root: Path, job: str | None = None) -> list[Item]:
    project = load(root)
    jobs = [j for j in project.jobs if job is None or j.name == job]
    return [item for j in jobs for item in iter_items(j, project.root)]


def item_problems(root: Path) -> list[str]:
    project = load(root)
    (job,) = project.jobs
    with pytest.raises(SpecError) as info:
        list(iter_items(job, project.root))
    return info.value.problems


def fingerprints(root: Path) -> dict[tuple[str, str], str]:
    return {(i.job, i.key): i.fingerprint for i in items_of(root)}


def spec_job(root: Path, body: str, name: str = "j") -> None:
    write(root / "jobs/a.toml", f"version = 1\n[jobs.{name}]\n" + textwrap.dedent(body))


# --- rendering ----------------------------------------------------------------------------------


def test_renders_prompt_system_and_params(project: Path) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    first, second, third = items_of(project)
    assert first.job == "ticket-sentiment"
    assert first.key == "T-1001"
    assert third.key == "1003"  # integer keys become strings
    assert first.params == {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "system": "Reply with one word.",
        "messages": [{"role": "user", "content": "Subject: Login\n\nCannot log in."}],
        "temperature": 0.0,
        "stop_sequences": ["END"],
    }
    assert first.row == TICKETS[0]
    assert first.custom_id == custom_id_for("ticket-sentiment", "T-1001", first.fingerprint)
    assert first.fingerprint == fingerprint(first.params)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.fingerprint)


def test_renders_messages_and_system_blocks(project: Path) -> None:
    spec_job(
        project,
        """
        model = "claude-sonnet-4-6"
        max_tokens = 100
        system = [
          { type = "text", text = "Rubric for {{ key }}", cache_control = { type = "ephemeral" } },
        ]
        messages = [
          { role = "user", content = [
              { type = "text", text = "Q: {{ q }}" },
              { type = "image", source = { type = "url", url = "https://x/{{ q }}.png" } },
          ] },
          { role = "assistant", content = "{{ row.a }}" },
          { role = "user", content = "again" },
        ]
        items = [{ key = "k1", q = "why", a = "because" }]
        """,
    )
    (item,) = items_of(project)
    assert item.row == {"key": "k1", "q": "why", "a": "because"}
    assert item.params == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "system": [
            {"type": "text", "text": "Rubric for k1", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Q: why"},
                    # only text/content strings are templates; everything else is as written
                    {"type": "image", "source": {"type": "url", "url": "https://x/{{ q }}.png"}},
                ],
            },
            {"role": "assistant", "content": "because"},
            {"role": "user", "content": "again"},
        ],
    }


def test_csv_input(project: Path) -> None:
    write(
        project / "jobs/data/p.csv",
        'sku,name,notes\nA-1,Tent,"two doors,\nfreestanding"\n\nB-2,Stove,light\n',
    )
    spec_job(
        project,
        """
        model = "m"
        max_tokens = 5
        prompt = "{{ name }}: {{ notes }}"
        input = { path = "data/p.csv", key = "sku" }
        """,
    )
    a, b = items_of(project)
    assert (a.key, a.params["messages"][0]["content"]) == ("A-1", "Tent: two doors,\nfreestanding")
    assert (b.key, b.row) == ("B-2", {"sku": "B-2", "name": "Stove", "notes": "light"})


def test_json_array_input(project: Path) -> None:
    write(project / "jobs/data/rows.json", json.dumps([{"id": 1, "t": "x"}, {"id": 2, "t": "y"}]))
    spec_job(
        project,
        """
        model = "m"
        max_tokens = 5
        prompt = "{{ t }}"
        input = { path = "data/rows.json", key = "id" }
        """,
    )
    assert [(i.key, i.params["messages"][0]["content"]) for i in items_of(project)] == [
        ("1", "x"),
        ("2", "y"),
    ]


def test_raw_requests_are_sent_as_written(project: Path) -> None:
    requests = [
        {
            "custom_id": "case-1",
            "params": {
                "model": "claude-opus-4-6",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "{{ not a template }}"}],
                "temperature": 1e-05,
            },
        }
    ]
    write_jsonl(project / "jobs/data/r.jsonl", requests)
    spec_job(project, 'requests = "data/r.jsonl"\nbetas = ["b1"]\n')
    (item,) = items_of(project)
    assert item.key == "case-1"
    assert item.params == requests[0]["params"]
    assert item.row is None
    assert item.custom_id == custom_id_for("j", "case-1", item.fingerprint)
    assert item.fingerprint == fingerprint(requests[0]["params"], ["b1"])


def test_the_example_jobs_render() -> None:
    project = load_project(REPO / "jobs", root=REPO)
    counts = {}
    for job in project.jobs:
        items = list(iter_items(job, project.root))
        counts[job.name] = len(items)
        for item in items:
            assert CUSTOM_ID_RE.match(item.custom_id)
            assert item.params["model"].startswith("claude-")
            assert item.params["messages"][0]["content"]
            assert "{{" not in json.dumps(item.params)
    assert all(10 <= n <= 25 for n in counts.values()), counts
    judge = next(iter_items(project.job("answer-quality-judge"), project.root))
    assert judge.params["system"][0]["cache_control"] == {"type": "ephemeral"}


# --- fingerprints -------------------------------------------------------------------------------


def test_reformatting_a_spec_changes_no_fingerprint(project: Path) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    assert len(before) == 3

    # Key order and whitespace (also inside `{{ }}`), and the default moved into the job.
    write(
        project / "jobs/support.toml",
        r"""
        version    =    1
        [jobs.ticket-sentiment]
        params = {   stop_sequences = [ "END" ],temperature = 0.0 }
        input = { key = "ticket_id", path = "data/tickets.jsonl" }
        prompt = '''Subject: {{subject}}

        {{   body   }}'''
        system = "Reply with one word."
        max_tokens = 8
        model = "claude-haiku-4-5"
        """,
    )
    assert fingerprints(project) == before

    # TOML -> JSON.
    (project / "jobs/support.toml").unlink()
    spec = {
        "jobs": {
            "ticket-sentiment": {
                "params": {"temperature": 0.0, "stop_sequences": ["END"]},
                "prompt": "Subject: {{ subject }}\n\n{{ body }}",
                "input": {"key": "ticket_id", "path": "data/tickets.jsonl"},
                "max_tokens": 8,
                "system": "Reply with one word.",
                "description": "Label tickets",
                "model": "claude-haiku-4-5",
            }
        },
        "version": 1,
    }
    write(project / "jobs/support.json", json.dumps(spec, indent=4))
    assert fingerprints(project) == before

    # Reordering the keys within the data rows changes nothing either.
    write_jsonl(
        project / "jobs/data/tickets.jsonl", [dict(reversed(list(r.items()))) for r in TICKETS]
    )
    assert fingerprints(project) == before


def test_whitespace_inside_template_tags_changes_nothing(project: Path) -> None:
    # `{{subject}}` and `{{ subject }}` render the same, so they fingerprint the same.
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    write(project / "jobs/support.toml", SUPPORT_TOML.replace("{{ subject }}", "{{subject}}"))
    assert fingerprints(project) == before


def test_changing_one_row_changes_exactly_one_fingerprint(project: Path) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    rows = [dict(r) for r in TICKETS]
    rows[1]["body"] = "Charged three times."
    write_jsonl(project / "jobs/data/tickets.jsonl", rows)
    after = fingerprints(project)
    assert after.keys() == before.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert changed == [("ticket-sentiment", "T-1002")]


def test_a_field_the_template_does_not_use_changes_nothing(project: Path) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    write_jsonl(project / "jobs/data/tickets.jsonl", [{**r, "agent": "x"} for r in TICKETS])
    assert fingerprints(project) == before


def test_description_changes_no_fingerprint(project: Path) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    write(project / "jobs/support.toml", SUPPORT_TOML.replace("Label tickets", "Sort tickets"))
    assert fingerprints(project) == before


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('model = "claude-haiku-4-5"', 'model = "claude-sonnet-4-6"'),
        ("Subject:", "Topic:"),
        ("max_tokens = 8", "max_tokens = 9"),
        ("temperature = 0.0", "temperature = 0.5"),
        ("Reply with one word.", "Reply briefly."),
        ("params = {", 'betas = ["x"]\nparams = {'),
    ],
)
def test_request_changes_change_every_fingerprint(project: Path, old: str, new: str) -> None:
    write(project / "jobs/support.toml", SUPPORT_TOML)
    before = fingerprints(project)
    write(project / "jobs/support.toml", SUPPORT_TOML.replace(old, new))
    after = fingerprints(project)
    assert all(before[k] != after[k] for k in before)


@pytest.mark.parametrize(
    "obj",
    [
        {"b": 1, "a": [1.5, 0.0, -0.0, 1e-05, 1e-7, 1e16, 1e22, 0.0001, 123.456]},
        {"text": 'caf\u00e9 \U0001f600 \u2028 \x00 \x1f \x7f "q" \\ /'},
        {"big": 2**70, "neg": -(2**63) - 1, "t": True, "n": None},
        {"nested": {"z": {"y": [{"b": 2, "a": 1}]}}},
        {"lone": "\ud800"},
        [1, "x", {"k": float("inf")}],
    ],
)
def test_canonical_json_is_json_dumps_sorted_compact(obj: object) -> None:
    expected = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(obj) == expected.encode("utf-8", "surrogatepass")


def test_fingerprint_of_tiny_float_params_matches_the_public_function(project: Path) -> None:
    spec = SUPPORT_TOML.replace("temperature = 0.0", "temperature = 1e-5, top_p = 2e-7")
    write(project / "jobs/support.toml", spec)
    for item in items_of(project):
        assert item.fingerprint == fingerprint(item.params)
        assert b"1e-05" in canonical_json(item.params)


def test_fingerprint_with_betas_is_order_independent() -> None:
    params = {"model": "m"}
    assert fingerprint(params, ["b", "a"]) == fingerprint(params, ["a", "b"])
    assert fingerprint(params, ["a"]) != fingerprint(params)
    assert fingerprint(params).startswith("sha256:")


# --- custom_id ----------------------------------------------------------------------------------

NASTY_KEYS = [
    "",
    "T-1001",
    "with space",
    "a/b/c",
    "../../etc/passwd",
    "ключ",
    "键",
    "emoji 😀",
    "x" * 500,
    "x" * 499 + "y",
    " ",
    "_",
    "-",
    "\x00",
    "a\nb",
    "1",
    "01",
    "A-1",
    "A_1",
    "A 1",
]


@pytest.mark.parametrize("job", ["j", "ticket-sentiment", "x" * 64, "a_b-c"])
def test_custom_id_matches_the_api_pattern_for_any_key(job: str) -> None:
    ids = [custom_id_for(job, key, FP) for key in NASTY_KEYS]
    for custom_id in ids:
        assert CUSTOM_ID_RE.match(custom_id), custom_id
        assert re.fullmatch(r"^[a-zA-Z0-9_-]{1,64}$", custom_id)
    assert len(set(ids)) == len(NASTY_KEYS)


FP = "sha256:" + "0" * 64


def test_custom_id_is_deterministic_and_traceable() -> None:
    assert custom_id_for("ticket-sentiment", "T-1001", FP) == custom_id_for(
        "ticket-sentiment", "T-1001", FP
    )
    custom_id = custom_id_for("ticket-sentiment", "T-1001", FP)
    assert custom_id.startswith("ticket-sentiment-T_1001-")
    assert re.fullmatch(r"ticket-sentiment-T_1001-[a-z2-7]{12}", custom_id)
    # The same key in another job is another custom_id.
    assert custom_id_for("other", "T-1001", FP) != custom_id
    # The same job and key rendered to another request is another custom_id: a result proves
    # which request it answers (a teammate's other prompt is not taken for ours).
    assert custom_id_for("ticket-sentiment", "T-1001", "sha256:" + "1" * 64) != custom_id


# --- bad input: one exact line per problem --------------------------------------------------------

BASE = """
model = "m"
max_tokens = 5
prompt = "{{ body }}"
"""


def test_missing_template_variable(project: Path) -> None:
    write_jsonl(project / "jobs/data/t.jsonl", [{"id": "T-1", "body": "x"}, {"id": "T-2"}])
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n', "sentiment")
    assert item_problems(project) == [
        "jobs/data/t.jsonl: line 2: job sentiment: item T-2: template 'prompt': 'body' is undefined"
    ]


def test_missing_template_variable_in_messages(project: Path) -> None:
    spec_job(
        project,
        """
        model = "m"
        max_tokens = 5
        messages = [{ role = "user", content = [{ type = "text", text = "{{ nope }}" }] }]
        items = [{ key = "k1" }]
        """,
    )
    assert item_problems(project) == [
        "jobs/a.toml: jobs.j.items.0: job j: item k1: template 'messages[0].content[0].text': "
        "'nope' is undefined"
    ]


def test_template_reaching_python_internals(project: Path) -> None:
    spec_job(
        project,
        BASE.replace("{{ body }}", "{{ ''.__class__.__mro__ }}") + 'items = [{ key = "k" }]',
    )
    assert item_problems(project) == [
        "jobs/a.toml: jobs.j.items.0: job j: item k: template 'prompt': "
        "access to attribute '__class__' of 'str' object is unsafe."
    ]


def test_template_calling_unsafe_method(project: Path) -> None:
    spec_job(project, BASE.replace("{{ body }}", "{{ row.clear() }}") + 'items = [{ key = "k" }]')
    assert item_problems(project) == [
        "jobs/a.toml: jobs.j.items.0: job j: item k: template 'prompt': "
        "access to attribute 'clear' of 'dict' object is unsafe."
    ]


@pytest.mark.parametrize(
    ("tag", "shown"),
    [
        ("{% include 'x' %}", "include"),
        ("{% import 'x' as y %}", "import"),
        ("{% from 'x' import y %}", "from-import"),
        ("{% extends 'x' %}", "extends"),
    ],
)
def test_template_reaching_another_file(project: Path, tag: str, shown: str) -> None:
    spec_job(project, BASE.replace("{{ body }}", tag) + 'items = [{ key = "k" }]')
    assert item_problems(project) == [
        f"jobs/a.toml: job j: template 'prompt': {{% {shown} %}} is not allowed "
        "(a template sees only its item)"
    ]


def test_template_syntax_error(project: Path) -> None:
    spec_job(
        project,
        BASE.replace("{{ body }}", "{{ body }") + 'system = "{% if %}"\nitems = [{ key = "k" }]',
    )
    assert item_problems(project) == [
        "jobs/a.toml: job j: template 'system': syntax error at line 1: Expected an expression, "
        "got 'end of statement block'",
        "jobs/a.toml: job j: template 'prompt': syntax error at line 1: unexpected '}'",
    ]


def test_the_random_filter_is_not_there(project: Path) -> None:
    """`random` picks anew on every render, as `lipsum` writes anew: each plan would show a
    request apply does not send. A template using it is refused, as one naming no filter."""
    spec_job(
        project, BASE.replace("{{ body }}", "{{ ['a', 'b'] | random }}") + 'items = [{ key = "k" }]'
    )
    assert item_problems(project) == [
        "jobs/a.toml: job j: template 'prompt': syntax error at line 1: No filter named 'random'."
    ]


def test_duplicate_item_key(project: Path) -> None:
    rows = [{"id": "a", "body": "1"}, {"id": "b", "body": "2"}, {"id": "a", "body": "3"}]
    write_jsonl(project / "jobs/data/t.jsonl", rows)
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/t.jsonl: line 3: job j: item a: duplicate key (first at line 1)"
    ]


def test_duplicate_inline_key_int_and_str(project: Path) -> None:
    spec_job(project, BASE + 'items = [{ key = 1, body = "x" }, { key = "1", body = "y" }]\n')
    assert item_problems(project) == [
        "jobs/a.toml: jobs.j.items.1: job j: item 1: duplicate key (first at jobs.j.items.0)"
    ]


def test_row_without_the_key_field(project: Path) -> None:
    rows = [{"body": "1"}, {"id": "", "body": "2"}, {"id": None}, {"id": 1.5}, {"id": True}]
    write_jsonl(project / "jobs/data/t.jsonl", rows)
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/t.jsonl: line 1: job j: no 'id' field",
        "jobs/data/t.jsonl: line 2: job j: empty 'id'",
        "jobs/data/t.jsonl: line 3: job j: empty 'id'",
        "jobs/data/t.jsonl: line 4: job j: 'id' must be a string or an integer, not float",
        "jobs/data/t.jsonl: line 5: job j: 'id' must be a string or an integer, not bool",
    ]


def test_inline_item_without_key(project: Path) -> None:
    spec_job(project, BASE + 'items = [{ body = "x" }]\n')
    assert item_problems(project) == ["jobs/a.toml: jobs.j.items.0: job j: no 'key' field"]


def test_non_utf8_data_file(project: Path) -> None:
    write(
        project / "jobs/data/t.jsonl",
        b'{"id": "a", "body": "ok"}\n{"id": "b", "body": "caf\xe9"}\n',
    )
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/t.jsonl: job j: not valid UTF-8 (byte 0xe9 at line 2, column 25)"
    ]


def test_non_utf8_csv_file(project: Path) -> None:
    write(project / "jobs/data/p.csv", b"id,body\na,ok\nb,caf\xe9\n")
    spec_job(project, BASE + 'input = { path = "data/p.csv", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/p.csv: job j: not valid UTF-8 (byte 0xe9 at line 3, column 6)"
    ]


def test_invalid_json_line_is_fatal(project: Path) -> None:
    write(project / "jobs/data/t.jsonl", '{"id": "a", "body": "1"}\n{"id": "b",}\n{"id": "c"}\n')
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/t.jsonl: line 2: job j: invalid JSON: trailing comma is not allowed (column 11)"
    ]


def test_problems_before_a_fatal_one_are_kept(project: Path) -> None:
    write(project / "jobs/data/t.jsonl", '{"body": "1"}\nnot json\n')
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/t.jsonl: line 1: job j: no 'id' field",
        "jobs/data/t.jsonl: line 2: job j: invalid JSON: invalid literal, expected 'null' (column 1)",
    ]


def test_ragged_csv_row(project: Path) -> None:
    write(project / "jobs/data/p.csv", "id,body\na,1\nb,2,extra\nc\nd,4\n")
    spec_job(project, BASE + 'input = { path = "data/p.csv", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/p.csv: line 3: job j: row has 3 fields, the header has 2",
        "jobs/data/p.csv: line 4: job j: row has 1 field, the header has 2",
    ]


def test_json_array_of_non_objects(project: Path) -> None:
    write(project / "jobs/data/rows.json", '[{"id": "a", "body": "x"}, 5]')
    spec_job(project, BASE + 'input = { path = "data/rows.json", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/rows.json: row 2: job j: expected an object, not int"
    ]


def test_raw_request_invalid_custom_id(project: Path) -> None:
    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    lines = [
        {"custom_id": "has space", "params": good},
        {"custom_id": "x" * 65, "params": good},
        {"custom_id": 7, "params": good},
        {"params": good},
    ]
    write_jsonl(project / "jobs/data/r.jsonl", lines)
    spec_job(project, 'requests = "data/r.jsonl"\n')
    rule = "(1-64 characters from A-Z, a-z, 0-9, '-' and '_')"
    assert item_problems(project) == [
        f'jobs/data/r.jsonl: line 1: job j: item has space: invalid custom_id "has space" {rule}',
        f'jobs/data/r.jsonl: line 2: job j: item {"x" * 65}: invalid custom_id "{"x" * 65}" {rule}',
        f"jobs/data/r.jsonl: line 3: job j: invalid custom_id 7 {rule}",
        "jobs/data/r.jsonl: line 4: job j: required field 'custom_id' missing",
    ]


def test_raw_request_duplicate_custom_id(project: Path) -> None:
    good = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    lines = [{"custom_id": c, "params": good} for c in ("a", "b", "a")]
    write_jsonl(project / "jobs/data/r.jsonl", lines)
    spec_job(project, 'requests = "data/r.jsonl"\n')
    assert item_problems(project) == [
        "jobs/data/r.jsonl: line 3: job j: item a: duplicate custom_id (first at line 1)"
    ]


def test_raw_request_shape_and_refused_params(project: Path) -> None:
    lines = [
        {"custom_id": "a", "params": {"model": "m", "max_tokens": 5, "messages": []}, "x": 1},
        {
            "custom_id": "b",
            "params": {"max_tokens": 0, "messages": [], "model": "m", "stream": True},
        },
        {"custom_id": "c", "params": "nope"},
        {"custom_id": "d", "params": {"model": "m", "messages": [], "speed": "fast"}},
    ]
    write_jsonl(project / "jobs/data/r.jsonl", lines)
    spec_job(project, 'requests = "data/r.jsonl"\n')
    assert item_problems(project) == [
        "jobs/data/r.jsonl: line 1: job j: item a: unknown field 'x' "
        "(a request has custom_id and params)",
        "jobs/data/r.jsonl: line 2: job j: item b: params.stream: true is not allowed in a "
        "Message Batch",
        "jobs/data/r.jsonl: line 2: job j: item b: params.max_tokens: 0 is not allowed in a "
        "Message Batch",
        "jobs/data/r.jsonl: line 3: job j: item c: params must be an object",
        "jobs/data/r.jsonl: line 4: job j: item d: params.max_tokens: required, an integer",
        "jobs/data/r.jsonl: line 4: job j: item d: params.speed: not allowed in a Message Batch",
    ]


def test_problems_are_capped_at_fifty_lines(project: Path) -> None:
    write_jsonl(project / "jobs/data/t.jsonl", [{"id": str(n)} for n in range(120)])
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    lines = item_problems(project)
    assert len(lines) == 51
    assert (
        lines[0]
        == "jobs/data/t.jsonl: line 1: job j: item 0: template 'prompt': 'body' is undefined"
    )
    assert lines[-1] == "... and 70 more problems"


def test_good_items_are_yielded_before_the_error(project: Path) -> None:
    rows = [{"id": "a", "body": "1"}, {"id": "a", "body": "2"}, {"id": "b", "body": "3"}]
    write_jsonl(project / "jobs/data/t.jsonl", rows)
    spec_job(project, BASE + 'input = { path = "data/t.jsonl", key = "id" }\n')
    project_ = load(project)
    seen = []
    with pytest.raises(SpecError):
        for item in iter_items(project_.jobs[0], project_.root):
            seen.append(item.key)
    assert seen == ["a", "b"]


def test_custom_id_hash_is_lowercase_base32_of_sha256() -> None:
    import base64
    import hashlib

    for job, key in [("j", "k"), ("ticket-sentiment", "T-1001"), ("x", "ключ" * 40)]:
        digest = hashlib.sha256(f"{job}\x1f{key}\x1f{FP}".encode()).digest()
        expected = base64.b32encode(digest).decode().lower()[:12]
        assert custom_id_for(job, key, FP).endswith("-" + expected)


@pytest.mark.parametrize(
    "source",
    [
        "Subject: {{ subject }}\n\n{{n}}",
        "{{- subject -}}  {{ n }} {{ f }} {{ none }} {{ flag }} {{ tags }} {{ obj }}\n",
        "braces { } {{ '{x}' }} {{ subject }}",
        "{# a comment #}{{ subject }}",
        "{{ subject | upper }} {{ row.subject }} {% if n > 1 %}many{% endif %}",
        "{{ key }}: {{ row }}",
    ],
)
def test_fast_substitution_renders_exactly_as_jinja(source: str) -> None:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from batchops.spec.items import _GLOBALS, _compile
    from batchops.spec.sandbox import as_text

    row = {
        "subject": "Hi {there}",
        "n": 3,
        "f": 0.1,
        "none": None,
        "flag": True,
        "tags": ["a", "b"],
        "obj": {"k": 1},
    }
    context = {**_GLOBALS, **row, "row": row, "key": "k1"}
    problems: list[str] = []
    template = _compile(source, "prompt", problems, "here")
    assert problems == []
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=as_text
    )
    assert template.render(context) == env.from_string(source).render(context)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "'x' * 10**9",
            "would build a value of 1,000,000,000 characters, over the size budget of "
            "10,000,000 (render_max_size)",
        ),
        (
            "[1] * 20000000",
            "would build a value of 40,000,000 characters, over the size budget of "
            "10,000,000 (render_max_size)",
        ),
        ("9 ** 99999", "would build a number of 299,997 bits, over 4,096"),
    ],
)
def test_template_cannot_exhaust_memory(project: Path, expression: str, message: str) -> None:
    spec_job(project, BASE.replace("body", expression) + 'items = [{ key = "k" }]')
    assert item_problems(project) == [
        f"jobs/a.toml: jobs.j.items.0: job j: item k: template 'prompt': {message}"
    ]


def test_template_arithmetic_still_works(project: Path) -> None:
    spec_job(
        project, BASE.replace("body", "'-' * 3 ~ 2 ** 3 ~ n * 2") + 'items = [{ key = "k", n = 4 }]'
    )
    (item,) = items_of(project)
    assert item.params["messages"][0]["content"] == "---88"


@pytest.mark.parametrize(
    "source",
    [
        "{{ tags }} {{ obj }}",
        "{{ tags if true }} {{ obj | default('') }}",
        "{{ row.tags }} {{ row.obj }}",
    ],
)
def test_lists_and_dicts_print_as_json_not_python(project: Path, source: str) -> None:
    # The fast substitution path and the sandbox agree: JSON, so `['a']` never reaches a prompt.
    write_jsonl(
        project / "jobs/data/rows.jsonl",
        [{"id": "r1", "tags": ["a", "é"], "obj": {"k": True, "n": None}}],
    )
    spec_job(
        project,
        'model = "m"\nmax_tokens = 5\n'
        f'prompt = {json.dumps(source)}\ninput = {{ path = "data/rows.jsonl", key = "id" }}\n',
    )
    (item,) = items_of(project)
    assert item.params["messages"][0]["content"] == '["a", "é"] {"k": true, "n": null}'


def test_a_csv_field_past_the_field_limit_names_the_row_it_is_in(project: Path) -> None:
    """A quoted field over many lines that passes csv's field limit is named by the line its
    row begins on (the line where it passed the limit is said beside it)."""
    long_text = "\n".join(["y" * 1000] * 140)  # 140,139 characters over 140 lines
    write(project / "jobs/data/p.csv", f'id,body\na,1\nb,"{long_text}"\nc,3\n')
    spec_job(project, BASE + 'input = { path = "data/p.csv", key = "id" }\n')
    assert item_problems(project) == [
        "jobs/data/p.csv: line 3: job j: invalid CSV: field larger than field limit (131072) "
        "(in the row that begins there and reaches line 133)"
    ]
