"""A template from a pull request stops at its time and size budget, with one error line.

The memory cases run in a child process limited to 4 GB of address space, so that a failure
(a MemoryError, a SIGSEGV in a C extension) cannot take the test run down with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchops.spec.model import load_project
from tests.hostile.helpers import (
    item_problems,
    load_problems,
    one_line,
    problems_in_subprocess,
    timed_problems,
    write,
)

WHERE = "jobs/a.toml: jobs.j.items.0: job j: item k: template 'prompt': "
SIZE = "over the size budget of 10,000,000 (render_max_size)"


def template_job(root: Path, template: str, defaults: str = "render_seconds = 0.5\n") -> None:
    write(
        root,
        "jobs/a.toml",
        f'version = 1\n[defaults]\n{defaults}[jobs.j]\nmodel = "m"\nmax_tokens = 8\n'
        f'prompt = {json.dumps(template)}\nitems = [{{ key = "k" }}]\n',
    )


TIME_BOMBS = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i is odd }}{% endfor %}{% endfor %}",
    "{% macro m(n) %}{% if n %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(60) }}",
    "{% for i in range(100000) %}{% for x in range(100000)|select('odd') %}{% endfor %}{% endfor %}",
]


@pytest.mark.parametrize("template", TIME_BOMBS)
def test_time_bomb_stops_at_the_budget(tmp_path: Path, template: str) -> None:
    template_job(tmp_path, template)
    assert one_line(timed_problems(tmp_path, 3.0)) == (
        WHERE + "took longer than the time budget of 0.5 s (render_seconds)"
    )


def test_the_default_time_budget_is_two_seconds(tmp_path: Path) -> None:
    template_job(tmp_path, TIME_BOMBS[0], defaults="")
    assert one_line(timed_problems(tmp_path, 5.0)) == (
        WHERE + "took longer than the time budget of 2 s (render_seconds)"
    )


def test_huge_number(tmp_path: Path) -> None:
    template_job(tmp_path, "{{ ((9**999)**999)**999 }}")
    assert one_line(timed_problems(tmp_path, 2.0)) == (
        WHERE + "would build a number of 3,162,834 bits, over 4,096"
    )


MEMORY_BOMBS = [
    ("{{ 'x'.ljust(999999999) }}", "would build a value of 999,999,999 characters, " + SIZE),
    ("{{ 'x'.rjust(999999999) }}", "would build a value of 999,999,999 characters, " + SIZE),
    ("{{ 'x'.center(999999999) }}", "would build a value of 999,999,999 characters, " + SIZE),
    ("{{ 'x'.zfill(999999999) }}", "would build a value of 999,999,999 characters, " + SIZE),
    ("{{ '{:>999999999}'.format(1) }}", "would build a field of 999,999,999 characters, " + SIZE),
    ("{{ 'x'|center(999999999) }}", "would build a value of 999,999,999 characters, " + SIZE),
    ("{{ '%0999999999d' % 1 }}", "would build a field of 999,999,999 characters, " + SIZE),
    ("{{ '%0999999999d'|format(1) }}", "would build a field of 999,999,999 characters, " + SIZE),
    ("{{ '%.999999999f' % 1.5 }}", "would build a field of 999,999,999 characters, " + SIZE),
    ("{{ '%*d' % (999999999, 1) }}", "'*' widths in % formats are not allowed"),
    ("{{ 'x'.ljust(200000000) }}", "would build a value of 200,000,000 characters, " + SIZE),
    ("{{ 'x' * 1000000000 }}", "would build a value of 1,000,000,000 characters, " + SIZE),
    (
        "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
        "would build an output of 11,000,000 characters, " + SIZE,
    ),
    (
        "{% set s %}{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}{% endset %}{{ s }}",
        "builds more than 80,000,000 characters in all, 8 times the size budget of "
        "10,000,000 (render_max_size)",
    ),
    (
        "{% filter upper %}{% for i in range(100000) %}"
        + "L" * 10000
        + "{% endfor %}{% endfilter %}",
        "builds more than 80,000,000 characters in all, 8 times the size budget of "
        "10,000,000 (render_max_size)",
    ),
    (
        "{% set a = 'x' * 9000000 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}{{ b|string }}",
        "would build a value of 18,000,010 characters, " + SIZE,
    ),
    ("{{ 'a'|indent(999999999) }}", "would build a value of 1,000,000,000 characters, " + SIZE),
    (
        "{{ [1]|batch(999999999, 0)|list }}",
        "would build a value of 999,999,999 characters, " + SIZE,
    ),
    (
        "{{ ('x' * 100).join(range(100000)|map('string')) }}",
        "would build a value of 10,588,790 characters, " + SIZE,
    ),
    (
        "{{ ('a' * 9000000).replace('a', 'bb') }}",
        "would build a value of 18,000,000 characters, " + SIZE,
    ),
    (
        "{% set a = 'x' * 6000000 %}{{ a ~ a }}",
        "would build a value of 12,000,000 characters, " + SIZE,
    ),
    (
        "{% set a = 'x' * 6000000 %}{{ a + a }}",
        "would build a value of 12,000,000 characters, " + SIZE,
    ),
]


@pytest.mark.parametrize(("template", "message"), MEMORY_BOMBS)
def test_memory_bomb_is_refused_under_4_gb(tmp_path: Path, template: str, message: str) -> None:
    # What is tested is the size budget: a time budget of 10 s (not the 0.5 s of the time bombs)
    # keeps a loaded machine from ending the render on time first, with another message.
    template_job(tmp_path, template, defaults="render_seconds = 10\n")
    assert one_line(problems_in_subprocess(tmp_path)) == WHERE + message


def test_size_budget_is_configurable_within_its_cap(tmp_path: Path) -> None:
    template_job(tmp_path, "{{ 'x' * 2000 }}", defaults="render_max_size = 1000\n")
    assert one_line(item_problems(tmp_path)) == (
        WHERE + "would build a value of 2,000 characters, over the size budget of 1,000 "
        "(render_max_size)"
    )
    template_job(tmp_path, "hi", defaults="render_max_size = 40_000_000\n")
    assert one_line(load_problems(tmp_path)) == (
        "jobs/a.toml: defaults.render_max_size: Input should be less than or equal to 32000000"
    )
    template_job(tmp_path, "hi", defaults="render_seconds = 31\n")
    assert one_line(load_problems(tmp_path)) == (
        "jobs/a.toml: defaults.render_seconds: Input should be less than or equal to 30"
    )


def test_rendered_request_over_the_size_budget(tmp_path: Path) -> None:
    write(tmp_path, "jobs/data/t.jsonl", '{"id": "k", "body": "' + "x" * 3000 + '"}\n')
    write(
        tmp_path,
        "jobs/a.toml",
        'version = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 8\nrender_max_size = 5000\n'
        'system = "{{ body }}"\nprompt = "{{ body }}"\n'
        'input = { path = "data/t.jsonl", key = "id" }\n',
    )
    assert one_line(item_problems(tmp_path)) == (
        "jobs/data/t.jsonl: line 1: job j: item k: the rendered request is 6,082 bytes, over the "
        "size budget of 5,000 (render_max_size)"
    )


def test_a_name_repeated_in_a_plain_template_is_bounded(tmp_path: Path) -> None:
    write(tmp_path, "jobs/data/t.jsonl", '{"id": "k", "b": "' + "x" * 100_000 + '"}\n')
    write(
        tmp_path,
        "jobs/a.toml",
        'version = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 8\n'
        f'prompt = "{"{{ b }}" * 200}"\ninput = {{ path = "data/t.jsonl", key = "id" }}\n',
    )
    assert one_line(item_problems(tmp_path)) == (
        "jobs/data/t.jsonl: line 1: job j: item k: template 'prompt': would build an output of "
        "20,000,000 characters, " + SIZE
    )


def test_template_too_deep_to_compile(tmp_path: Path) -> None:
    template_job(tmp_path, "{{ " + "(" * 300 + "1" + ")" * 300 + " }}")
    line = one_line(item_problems(tmp_path))
    assert line.startswith("jobs/a.toml: job j: template 'prompt': ")


def test_ordinary_templates_still_render(tmp_path: Path) -> None:
    template = (
        "{% for w in row.words %}{{ loop.index }}. {{ w|upper|center(9) }}\n{% endfor %}"
        "{{ '%05.1f' % 3.14159 }} {{ '{:>6}'.format(key) }} {{ (2 ** 10) * 3 }} "
        "{{ ['a', 'b']|join(', ') }} {{ {'x': 1}|tojson }} {{ 'a:b'.replace(':', '-') }}"
    )
    write(
        tmp_path,
        "jobs/a.toml",
        'version = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 8\n'
        f'prompt = {json.dumps(template)}\nitems = [{{ key = "k", words = ["ab", "cd"] }}]\n',
    )
    from batchops.spec.items import iter_items

    (job,) = load_project(tmp_path / "jobs", tmp_path).jobs
    (item,) = iter_items(job, tmp_path)
    assert item.params["messages"][0]["content"] == (
        '1.     AB   \n2.     CD   \n003.1      k 3072 a, b {"x": 1} a-b'
    )
