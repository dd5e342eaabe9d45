"""Keys from a data file cannot forge a plan line, drive the terminal, or escape the Markdown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from tests.projects import write_project

FORGED = "x\r\n  + submit  t  everything-is-fine  [todo]"
TERMINAL_KEYS = ["\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b]8;;http://evil.example/\x1b\\x", FORGED]
MARKDOWN_KEYS = [
    "a```\n\n**No changes. State matches the specs.**\n\n![x](http://evil.example/x.png)",
    "````` ![x](http://evil.example/y.png) <img src=x> @everyone",
    "</details>\n# forged heading",
]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan(*args: str) -> str:
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_key_cannot_forge_a_plan_line_or_reach_the_terminal(project: Path) -> None:
    write_project(project, [{"id": key, "text": f"t{i}"} for i, key in enumerate(TERMINAL_KEYS)])
    out = plan()
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    submits = [line for line in out.splitlines() if line.startswith("  + submit  ")]
    assert len(submits) == len(TERMINAL_KEYS)
    assert all(line.startswith("  + submit  demo  ") for line in submits)
    assert (
        "  + submit  demo  x\\x0d\\x0a  + submit  t  everything-is-fine  [todo]  [todo]" in submits
    )
    assert "  + submit  demo  \\x1b[2J\\x1b[H  [todo]" in submits


def test_a_key_cannot_escape_the_markdown_block(project: Path) -> None:
    keys = MARKDOWN_KEYS + TERMINAL_KEYS
    write_project(project, [{"id": key, "text": f"t{i}"} for i, key in enumerate(keys)])
    out = plan("--markdown")
    assert "\x1b" not in out and "\r" not in out
    lines = out.splitlines()
    # one fenced block, opened with a fence longer than any backtick run in a key, closed once
    opener = next(line for line in lines if line.endswith("diff") and line.startswith("```"))
    fence = opener[: -len("diff")]
    assert len(fence) > 5
    start = lines.index(opener)
    end = lines.index(fence, start + 1)
    inside, outside = lines[start + 1 : end], lines[:start] + lines[end + 1 :]
    assert len([line for line in inside if line.startswith("+ submit  demo  ")]) == 7
    assert all(line.startswith(("+ submit  demo  ", "  …")) for line in inside)
    # nothing of a key is outside the block: no image, heading, HTML or banner
    text_outside = "\n".join(outside)
    assert "evil.example" not in text_outside and "<img" not in text_outside
    assert "# forged" not in text_outside and "@everyone" not in text_outside
    assert text_outside.count("No changes") == 0
    assert text_outside.count("</details>") == 1  # the real one
    assert not any(re.match(r"^\s*`{3,}", line) for line in inside)


def test_a_price_tables_text_in_a_note_or_the_footer_is_escaped(project: Path) -> None:
    """A cost note quotes the price table's source (its path and `as_of`), and the footer
    shows it inside `<sub>`: neither may carry HTML; a note quoting a long model name is cut."""
    write_project(project, [{"id": "a", "text": "t"}])
    (project / "jobs" / "odd.toml").write_text(
        f'version = 1\n[jobs.odd]\nmodel = "claude-{"x" * 5_000}"\nmax_tokens = 5\n'
        'prompt = "hi"\nitems = [{ key = "a" }]\n',
        encoding="utf-8",
    )
    (project / "jobs" / "unpriced.toml").write_text(
        'version = 1\n[jobs.unpriced]\nmodel = "claude-haiku-9"\nmax_tokens = 5\n'
        'prompt = "hi"\nitems = [{ key = "a" }]\n',
        encoding="utf-8",
    )
    (project / "prices.toml").write_text(
        'as_of = "2026</sub> <img src=https://evil.example/x.png> & @octocat"\n', encoding="utf-8"
    )
    out = (
        CliRunner()
        .invoke(cli, ["--prices", "prices.toml", "plan", "--no-refresh", "--markdown"])
        .stdout
    )
    shown = "as of 2026&lt;/sub&gt; &lt;img src\\=https\\://evil\\.example/x\\.png&gt; &amp;"
    assert "<img" not in out and out.count(shown) == 2  # the cost note of `unpriced`, the footer
    assert out.count("</sub>") == 1
    note = next(line for line in out.splitlines() if "claude\\-xxx" in line)
    assert note.endswith("… _(cut to 1,000 characters: `batchops plan` shows the whole note)_")
    assert "x" * 1_000 not in note


def test_keys_of_backticks_still_fit_githubs_limit(project: Path) -> None:
    """A backtick run in a key lengthens the block's fence; the plan still fits, and what it
    says it left out is what is missing."""
    keys = ["`" * 290 + f"{i:03d}" for i in range(25)]
    write_project(project, [{"id": key, "text": "t"} for key in keys])
    spec = ['version = 1\n[defaults]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n']
    spec += [
        f'[jobs.more-{n:02d}]\nprompt = "{{{{ text }}}}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
        for n in range(20)
    ]
    (project / "jobs" / "more.toml").write_text("".join(spec), encoding="utf-8")
    out = plan("--markdown")
    assert len(out) <= 65_536
    lines = out.splitlines()
    fence = "`" * 291
    start = lines.index(fence + "diff")
    end = lines.index(fence, start + 1)
    left = re.search(r"comment limit: (\d+) action lines\.", out)
    assert left is not None
    # 21 jobs of 25 items: 20 action lines and an `… and 5 more` line each
    assert len(lines[start + 1 : end]) + int(left.group(1)) == 21 * 21
