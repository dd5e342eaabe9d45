"""The CI workflows users copy (examples/github/): they lint clean with actionlint, their exit-code
gating does what the comments say, and the comment script keeps ONE plan comment per pull request,
tested offline against a fake GitHub API on loopback that answers in the REST API's shape."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "github"
WORKFLOWS = sorted(EXAMPLES.glob("*.yml"))
SCRIPT = EXAMPLES / "post_plan_comment.py"
MARKER = "<!-- batchops-plan -->"


def actionlint() -> str:
    """The actionlint binary the test extra installs beside this Python (or one on PATH)."""
    here = Path(sys.executable).parent / "actionlint"
    found = str(here) if here.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is missing: pip install -e '.[test]' installs it", pytrace=False)
    return found


def test_the_examples_are_there() -> None:
    assert [p.name for p in WORKFLOWS] == ["batchops-apply.yml", "batchops-plan.yml"]


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_lints_clean(workflow: Path) -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", str(workflow)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_does_find_problems(tmp_path: Path) -> None:
    """The lint test above can fail: a broken workflow is reported."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope_nope }}\n"
        "        if: steps.missing.outputs.x == 1\n"
    )
    result = subprocess.run(
        [actionlint(), "-no-color", str(broken)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "broken.yml" in result.stdout


# ---------------------------------------------------------------- exit-code gating
def step_script(workflow: str, name: str) -> str:
    """The `run: |` script of the step called `name`, as the runner's bash gets it."""
    lines = (EXAMPLES / workflow).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"- name: {name}")
    run = next(i for i in range(start, len(lines)) if lines[i].strip() == "run: |")
    indent = len(lines[run]) - len(lines[run].lstrip()) + 2
    body = []
    for line in lines[run + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line[indent:])
    return "\n".join(body) + "\n"


def run_step(tmp_path: Path, script: str, batchops_exit: int) -> tuple[int, str, str]:
    """Run a step with a fake `batchops` that prints its arguments and exits `batchops_exit`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "batchops"
    fake.write_text(
        f'#!/bin/sh\necho "batchops $*"\necho "some stderr" >&2\nexit {batchops_exit}\n'
    )
    fake.chmod(0o755)
    output = tmp_path / "github_output"
    output.write_text("")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "GITHUB_OUTPUT": str(output)}
    # GitHub runs `run:` steps with `bash -e {0}`
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    return done.returncode, output.read_text(), done.stdout


@pytest.mark.parametrize(("code", "fails"), [(0, False), (2, False), (1, True)])
def test_plan_step_records_the_exit_code_and_2_is_not_a_failure(
    tmp_path: Path, code: int, fails: bool
) -> None:
    returncode, outputs, stdout = run_step(tmp_path, step_script("batchops-plan.yml", "Plan"), code)
    assert returncode == 0  # the comment is posted in every case; a later step fails the check
    assert outputs == f"exitcode={code}\n"
    assert (tmp_path / "plan.md").read_text() == ("batchops plan --markdown --detailed-exitcode\n")
    assert (tmp_path / "plan.err").read_text() == "some stderr\n"
    assert ("::error::batchops plan failed" in stdout) == fails
    # ...and that later step fails exactly when plan failed
    text = (EXAMPLES / "batchops-plan.yml").read_text()
    gate = "if: steps.plan.outputs.exitcode != '0' && steps.plan.outputs.exitcode != '2'"
    assert gate in text


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 0), (1, 1)])
def test_apply_step_treats_a_timeout_with_work_pending_as_success(
    tmp_path: Path, code: int, expected: int
) -> None:
    returncode, _, stdout = run_step(tmp_path, step_script("batchops-apply.yml", "Apply"), code)
    assert returncode == expected
    assert stdout.startswith("batchops apply --yes --wait --timeout ")
    assert ("::notice::items still pending" in stdout) == (code == 3)


def test_apply_runs_in_one_queued_concurrency_group() -> None:
    text = (EXAMPLES / "batchops-apply.yml").read_text()
    assert "concurrency:\n  group: batchops-apply\n  cancel-in-progress: false\n" in text
    assert "BATCHOPS_STATE: ${{ secrets.BATCHOPS_STATE }}" in text
    assert "schedule:" in text and "branches: [main]" in text


# ---------------------------------------------------------------- the comment script
class FakeGitHub:
    """Issue comments of one repository, answered the way the REST API answers them."""

    def __init__(self, comments: list[dict] | None = None, fail: int | None = None):
        self.comments = comments or []
        self.fail = fail
        self.requests: list[tuple[str, str, dict | None, str]] = []
        self.next_id = 9000
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, data: object) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append(
                    (self.command, self.path, body, self.headers.get("Authorization", ""))
                )
                if fake.fail:
                    return self._answer(
                        fake.fail,
                        {
                            "message": "Resource not accessible by integration",
                            "documentation_url": "https://docs.github.com/rest",
                            "status": str(fake.fail),
                        },
                    )
                url = urlsplit(self.path)
                if m := re.fullmatch(r"/repos/o/r/issues/7/comments", url.path):
                    if self.command == "GET":
                        query = parse_qs(url.query)
                        per, page = int(query["per_page"][0]), int(query["page"][0])
                        return self._answer(200, fake.comments[(page - 1) * per : page * per])
                    fake.next_id += 1
                    made = fake.comment(fake.next_id, "github-actions[bot]", body["body"])
                    fake.comments.append(made)
                    return self._answer(201, made)
                if m := re.fullmatch(r"/repos/o/r/issues/comments/(\d+)", url.path):
                    found = next(c for c in fake.comments if c["id"] == int(m.group(1)))
                    found["body"] = body["body"]
                    return self._answer(200, found)
                return self._answer(404, {"message": "Not Found"})

            do_GET = do_POST = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def comment(comment_id: int, login: str, body: str) -> dict:
        return {
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "url": f"https://api.github.com/repos/o/r/issues/comments/{comment_id}",
            "html_url": f"https://github.com/o/r/pull/7#issuecomment-{comment_id}",
            "body": body,
            "user": {"login": login, "id": 41898282, "type": "Bot" if "[bot]" in login else "User"},
            "created_at": "2026-03-10T12:00:00Z",
            "updated_at": "2026-03-10T12:00:00Z",
            "author_association": "NONE",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def plan_files(tmp_path: Path) -> Path:
    (tmp_path / "plan.md").write_text("### batchops plan\n\n2 to submit.\n")
    (tmp_path / "plan.err").write_text("")
    return tmp_path


def post(github: FakeGitHub, folder: Path, *args: str, **env: str):
    full = {
        **os.environ,
        "GITHUB_TOKEN": "ghs_test",
        "GITHUB_REPOSITORY": "o/r",
        "PR_NUMBER": "7",
        "GITHUB_API_URL": github.url,
        **env,
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), "plan.md", *args],
        cwd=folder,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_first_plan_creates_the_comment_and_the_next_updates_it(plan_files: Path) -> None:
    github = FakeGitHub()
    try:
        first = post(github, plan_files)
        assert first.returncode == 0, first.stderr
        assert first.stdout == "Created the plan comment (9001).\n"
        (plan_files / "plan.md").write_text("### batchops plan\n\nNo changes.\n")
        second = post(github, plan_files)
        assert second.returncode == 0, second.stderr
        assert second.stdout == "Updated the plan comment (9001).\n"
    finally:
        github.close()
    assert [(m, p.split("?")[0]) for m, p, _, _ in github.requests] == [
        ("GET", "/repos/o/r/issues/7/comments"),
        ("POST", "/repos/o/r/issues/7/comments"),
        ("GET", "/repos/o/r/issues/7/comments"),
        ("PATCH", "/repos/o/r/issues/comments/9001"),
    ]
    assert {auth for *_, auth in github.requests} == {"Bearer ghs_test"}
    [comment] = github.comments
    assert comment["body"] == f"{MARKER}\n### batchops plan\n\nNo changes.\n"


def test_the_bots_comment_is_found_on_a_later_page_and_others_are_left_alone(
    plan_files: Path,
) -> None:
    chatter = [FakeGitHub.comment(i, "alice", f"comment {i}") for i in range(1, 101)]
    quoting = FakeGitHub.comment(200, "mallory", f"quoting {MARKER} here")
    ours = FakeGitHub.comment(201, "github-actions[bot]", f"{MARKER}\nold plan")
    github = FakeGitHub([*chatter, quoting, ours])
    try:
        result = post(github, plan_files)
    finally:
        github.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Updated the plan comment (201).\n"
    pages = [parse_qs(urlsplit(p).query)["page"] for m, p, _, _ in github.requests if m == "GET"]
    assert pages == [["1"], ["2"]]
    assert quoting["body"] == f"quoting {MARKER} here"
    assert ours["body"].startswith(f"{MARKER}\n### batchops plan")
    assert len(github.comments) == 102


def test_a_failed_plan_is_posted_with_its_error(plan_files: Path) -> None:
    (plan_files / "plan.md").write_text("")
    (plan_files / "plan.err").write_text("Error: jobs/demo.toml: jobs.demo.max_tokens: ```bad```\n")
    github = FakeGitHub()
    try:
        result = post(github, plan_files, "--errors", "plan.err", "--exit-code", "1")
    finally:
        github.close()
    assert result.returncode == 0, result.stderr
    [(_, _, sent, _)] = [r for r in github.requests if r[0] == "POST"]
    assert sent["body"] == (
        f"{MARKER}\n### batchops plan failed (exit 1)\n\n~~~~\n"
        "Error: jobs/demo.toml: jobs.demo.max_tokens: ```bad```\n~~~~\n"
    )


def test_a_plan_too_long_for_a_comment_is_cut_with_a_note(plan_files: Path) -> None:
    (plan_files / "plan.md").write_text("x" * 70_000)
    github = FakeGitHub()
    try:
        assert post(github, plan_files).returncode == 0
    finally:
        github.close()
    body = github.comments[0]["body"]
    assert len(body) <= 65_536 and body.startswith(MARKER)
    assert body.endswith("it is longer than a comment may be. See the job log.\n")


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, "Error: GET /repos/o/r/issues/7/comments?per_page=100&page=1: HTTP 403: "
             "Resource not accessible by integration\n"),
        ({"GITHUB_TOKEN": ""}, "Error: GITHUB_TOKEN and GITHUB_REPOSITORY must be set\n"),
        ({"PR_NUMBER": "", "GITHUB_EVENT_PATH": ""},
         "Error: no pull request number: set PR_NUMBER (or run on a pull_request event)\n"),
    ],
    ids=["forbidden", "no-token", "no-pr"],
)  # fmt: skip
def test_failures_are_one_error_line(plan_files: Path, env: dict, error: str) -> None:
    github = FakeGitHub(fail=403)
    try:
        result = post(github, plan_files, **env)
    finally:
        github.close()
    assert (result.returncode, result.stdout, result.stderr) == (1, "", error)


def test_the_pull_request_number_comes_from_the_event_file(plan_files: Path) -> None:
    event = plan_files / "event.json"
    event.write_text(json.dumps({"action": "synchronize", "pull_request": {"number": 7}}))
    github = FakeGitHub()
    try:
        result = post(github, plan_files, PR_NUMBER="", GITHUB_EVENT_PATH=str(event))
    finally:
        github.close()
    assert result.returncode == 0, result.stderr
    assert github.requests[-1][:2] == ("POST", "/repos/o/r/issues/7/comments")
