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
