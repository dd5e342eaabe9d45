"""What an apply sends when no saved plan holds the requests: each submit step's items rendered
again from the specs (`saved.spec_requests`), in order, with the spec's fixed parts shared by
every item's params, not copied."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from batchops.plan import saved
from batchops.spec.model import load_project

SPEC = (
    'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
    'prompt = "Subject: {{ subject }}\\n\\n{{ body }}"\n'
    'params = { temperature = 0.5, top_k = 40, metadata = { user_id = "u-1" } }\n'
    'input = { path = "data/rows.jsonl", key = "id" }\n'
)


def _project(root: Path, n: int, spec: str = SPEC):
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "j.toml").write_text(spec, encoding="utf-8")
    with (root / "jobs" / "data" / "rows.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(
            json.dumps({"id": f"row-{i}", "subject": f"Order {i}", "body": f"Late {i}."}) + "\n"
            for i in range(n)
        )
    return load_project(root / "jobs", root)


def test_the_requests_rendered_again_are_the_general_paths_in_order(tmp_path):
    from batchops.spec.desired import items_for

    project = _project(tmp_path, 50)
    made = list(saved._item_requests(project, "j", {"row-3", "row-40"}))
    general = [
        (i.key, i.fingerprint, i.params)
        for i in items_for(project, "j", {"row-3", "row-40"}, custom_ids=False)
    ]
    assert [m[:2] for m in made] == [g[:2] for g in general] and len(made) == 2
    # the same values, of the same types, in the same order (what the create body is made of)
    assert [repr(m[2]) for m in made] == [repr(g[2]) for g in general]


def test_a_steps_requests_share_the_specs_fixed_parts(tmp_path):
    """A submit step holds its items' params until they are sent: a long system prompt and the
    tools are the spec's own objects in each, not a copy per item (a copy held 212.9 MB for
    5,000 such requests, found in review)."""
    tools = ", ".join(
        f'{{ name = "tool{i}", description = "{"d" * 200}", input_schema = {{ type = "object",'
        ' properties = { a = { type = "string" } } } }'
        for i in range(20)
    )
    spec = SPEC.replace(
        "params = {", f'system = "{"Long shared rubric. " * 500}"\nparams = {{ tools = [{tools}],'
    )
    project = _project(tmp_path, 2_000, spec)
    tracemalloc.start()
    try:
        held = list(saved._item_requests(project, "j", None))
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(held) == 2_000 and len(held[0][2]["system"]) == 10_000
    assert len(held[0][2]["tools"]) == 20
    # 2,000 copies of 14 KB of fixed text alone would be 28 MB
    assert size < 8_000_000, size
