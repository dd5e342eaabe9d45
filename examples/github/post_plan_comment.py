#!/usr/bin/env python3
"""Post `batchops plan --markdown` as one sticky pull-request comment, updated in place.

Standard library only, so a workflow can run it with any Python. The comment carries a hidden
marker; the script looks through the pull request's comments (every page) for the one with the
marker written by the workflow's own account, and PATCHes it, or POSTs a new one if there is none.
So a pull request has one batchops comment however often it is pushed to.

    python post_plan_comment.py plan.md [--errors plan.err] [--exit-code N]

Environment: GITHUB_TOKEN, GITHUB_REPOSITORY (owner/name) and PR_NUMBER (or GITHUB_EVENT_PATH,
which GitHub sets), GITHUB_API_URL (GitHub sets it; https://api.github.com by default), and
COMMENT_AUTHOR (whose comment to update; github-actions[bot] by default).
Exit codes: 0 posted or updated, 1 an error (one `Error:` line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "<!-- batchops-plan -->"
MAX_BODY = 65_536  # GitHub's limit for a comment body, in characters
DEFAULT_AUTHOR = "github-actions[bot]"
PER_PAGE = 100

Opener = Callable[..., Any]  # urllib.request.urlopen, or a stand-in in tests


class Failed(Exception):
    """One line for the `Error:` message."""


def comment_body(plan: str, errors: str = "", exit_code: int = 0) -> str:
    """The marker, then the plan (or why it failed), cut to fit in one comment."""
    if exit_code not in (0, 2):
        fence = "~~~~"  # not a backtick fence: no error text can close it
        text = errors.strip().replace(fence, "~ ~ ~ ~") or "(no error output)"
        plan = f"### batchops plan failed (exit {exit_code})\n\n{fence}\n{text}\n{fence}\n"
    body = f"{MARKER}\n{plan.rstrip()}\n"
    if len(body) > MAX_BODY:
        note = "\n\n… the plan was cut here: it is longer than a comment may be. See the job log.\n"
        body = body[: MAX_BODY - len(note)] + note
    return body


class GitHub:
    def __init__(self, api_url: str, token: str, repository: str, opener: Opener | None = None):
        self.api = api_url.rstrip("/")
        self.token = token
        self.repository = repository
        self.open = opener or urllib.request.urlopen

    def call(self, method: str, path: str, payload: dict | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            f"{self.api}{path}",
            data=data,
            method=method,
            headers={
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {self.token}",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "batchops-plan-comment",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with self.open(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise Failed(
                f"{method} {path}: HTTP {exc.code}: {' '.join(str(detail).split())}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Failed(f"{method} {path}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(raw) if raw else None

    def find_comment(self, number: int, author: str) -> int | None:
        """The id of `author`'s comment carrying the marker, looking through every page."""
        page = 1
        while True:
            comments = self.call(
                "GET",
                f"/repos/{self.repository}/issues/{number}/comments?per_page={PER_PAGE}&page={page}",
            )
            for comment in comments:
                if MARKER in (comment.get("body") or "") and (
                    (comment.get("user") or {}).get("login") == author
                ):
                    return int(comment["id"])
            if len(comments) < PER_PAGE:
                return None
            page += 1

    def upsert(self, number: int, body: str, author: str) -> tuple[str, int]:
        """PATCH the existing comment, else POST one; returns ("updated" | "created", its id)."""
        found = self.find_comment(number, author)
        if found is not None:
            self.call("PATCH", f"/repos/{self.repository}/issues/comments/{found}", {"body": body})
            return "updated", found
        made = self.call(
            "POST", f"/repos/{self.repository}/issues/{number}/comments", {"body": body}
        )
        return "created", int(made["id"])


def pull_request_number(environ: dict[str, str]) -> int:
    if environ.get("PR_NUMBER"):
        return int(environ["PR_NUMBER"])
    event = environ.get("GITHUB_EVENT_PATH")
    if event:
        data = json.loads(Path(event).read_text(encoding="utf-8"))
        number = (data.get("pull_request") or {}).get("number") or data.get("number")
        if number:
            return int(number)
    raise Failed("no pull request number: set PR_NUMBER (or run on a pull_request event)")


def main(
    argv: list[str] | None = None,
    environ: dict[str, str] | None = None,
    opener: Opener | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", type=Path, help="the output of `batchops plan --markdown`")
    parser.add_argument("--errors", type=Path, help="plan's standard error, shown if it failed")
    parser.add_argument("--exit-code", type=int, default=0, help="plan's exit code")
    args = parser.parse_args(argv)
    environ = dict(os.environ if environ is None else environ)
    try:
        token, repository = environ.get("GITHUB_TOKEN"), environ.get("GITHUB_REPOSITORY")
        if not token or not repository:
            raise Failed("GITHUB_TOKEN and GITHUB_REPOSITORY must be set")
        try:
            plan = args.plan.read_text(encoding="utf-8") if args.plan.exists() else ""
            errors = args.errors.read_text(encoding="utf-8") if args.errors else ""
        except OSError as exc:
            raise Failed(f"cannot read {exc.filename}: {exc.strerror}") from None
        github = GitHub(
            environ.get("GITHUB_API_URL") or "https://api.github.com", token, repository, opener
        )
        what, comment_id = github.upsert(
            pull_request_number(environ),
            comment_body(plan, errors, args.exit_code),
            environ.get("COMMENT_AUTHOR") or DEFAULT_AUTHOR,
        )
    except Failed as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{what.capitalize()} the plan comment ({comment_id}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
