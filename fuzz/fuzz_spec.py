"""Coverage-guided fuzzing of the spec layer with atheris (libFuzzer for Python).

The property is the suite's (tests/test_fuzz_spec.py), over much longer runs: whatever the bytes,
loading the spec and rendering every item ends in items or SpecError lines — never another
exception, never a hang (libFuzzer's -timeout), never a crash (-rss_limit_mb).

The first input byte picks the target — a TOML spec, a JSON spec, a jsonl/csv/json data file,
a raw requests file, or a template — and the rest is its content.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_spec.py fuzz/corpus -max_total_time=300 -timeout=10 \\
        -rss_limit_mb=4096

A finding is written as `crash-…`/`timeout-…` in the working directory; reproduce it with
`.venv/bin/python fuzz/fuzz_spec.py crash-…` and add it to tests/hostile as a regression test.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from batchops.errors import SpecError
    from batchops.spec.items import iter_items
    from batchops.spec.model import load_project

ROOT = Path(tempfile.mkdtemp(prefix="batchops-fuzz-"))
HEADER = 'version = 1\n[defaults]\nrender_seconds = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 4\n'


def _files(kind: int, body: bytes) -> dict[str, bytes]:
    if kind == 0:
        return {"jobs/a.toml": body}
    if kind == 1:
        return {"jobs/a.json": body}
    if kind in (2, 3, 4):
        name = ("t.jsonl", "t.csv", "t.json")[kind - 2]
        spec = (
            HEADER + f'prompt = "{{{{ row }}}}"\ninput = {{ path = "data/{name}", key = "id" }}\n'
        )
        return {"jobs/a.toml": spec.encode(), f"jobs/data/{name}": body}
    if kind == 5:
        spec = b'version = 1\n[jobs.r]\nrequests = "data/r.jsonl"\n'
        return {"jobs/a.toml": spec, "jobs/data/r.jsonl": body}
    template = body.decode("utf-8", "surrogateescape")
    spec = HEADER + f'prompt = {json.dumps(template)}\nitems = [{{ key = "k", n = 3 }}]\n'
    return {"jobs/a.toml": spec.encode("utf-8", "surrogatepass")}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    shutil.rmtree(ROOT / "jobs", ignore_errors=True)
    for name, content in _files(data[0] % 7, data[1:]).items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    try:
        project = load_project(ROOT / "jobs", ROOT)
        for job in project.jobs:
            for _ in iter_items(job, ROOT):
                pass
    except SpecError as e:
        for line in e.problems:
            if "\n" in line or "\x1b" in line:
                raise AssertionError(f"a problem line is not one safe line: {line!r}") from None
            line.encode("utf-8")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
