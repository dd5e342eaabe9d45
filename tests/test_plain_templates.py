"""Templates that only substitute names are read without Jinja (`items._plain_pieces`).

Reading them must give exactly the pieces Jinja's own parse gives (`items._pieces_of`), or
decline, so a job renders the same bytes whether or not jinja2 was imported.
"""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.spec import items

FRAGMENTS = (
    "{{", "}}", "{", "}", " ", "  ", "\n", "\t", "\r", "\r\n", "x", "body", "a_b", "_", "1",
    "é", "true", "None", "not", "if", "row", "key", "range", "{%", "%}", "{#", "#}", "-", "+",
    "|", ".", "(", ")", "[0]", "'s'", "Subject: ", "{{ x }}", "{{body}}", "{{ y\n}}",
)  # fmt: skip


def _jinja_pieces(source: str) -> list[tuple[bool, str]] | None:
    items._load_templating()
    return items._pieces_of(items._ENV.parse(source))


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_plain_pieces_are_the_pieces_jinja_finds(parts):
    source = "".join(parts)
    pieces = items._plain_pieces(source)
    if pieces is not None:
        assert _jinja_pieces(source) == pieces, source


def test_the_common_templates_are_read_without_jinja():
    for source, expected in (
        ("Say {{ word }}", [(False, "Say "), (True, "word")]),
        ("{{body}}", [(True, "body")]),
        ("\nSubject: {{ subject }}\n\n{{ body }}\n", [
            (False, "\nSubject: "), (True, "subject"), (False, "\n\n"), (True, "body"),
            (False, "\n"),
        ]),
        ("{{ a }}{{ a }} } {", [(True, "a"), (True, "a"), (False, " } {")]),
    ):  # fmt: skip
        assert items._plain_pieces(source) == expected
        assert _jinja_pieces(source) == expected


def test_anything_else_is_left_to_jinja():
    for source in (
        "{{ body | upper }}",
        "{{ row.body }}",
        "{{ true }}",
        "{{- body }}",
        "{% if x %}y{% endif %}",
        "{# note #}{{ x }}",
        "{{{ x }}",
        "a\r\n{{ x }}",
        "{{ naïve }}",
    ):
        assert items._plain_pieces(source) is None, source


def test_a_plain_job_renders_without_importing_jinja(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'system = "Be brief about {{ topic }}."\nprompt = "Say {{ word }} {{ n }}"\n'
        'items = [{ key = "a", word = "hello", topic = "t", n = 3 }]\n',
        encoding="utf-8",
    )
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchops.spec.model import load_project\n"
        "from batchops.spec.items import iter_items\n"
        "root = Path(sys.argv[1])\n"
        "project = load_project(root / 'jobs', root)\n"
        "[item] = iter_items(project.jobs[0], root)\n"
        "print(item.params['system'], item.params['messages'][0]['content'])\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.splitlines() == ["Be brief about t. Say hello 3", "False"]
