"""Imports flow one way: from the command line down to the state and the remote API (DESIGN §8).

Every `import` in the package (function-level ones included) is read with `ast`; an import of a
higher layer, or of the CLI's click anywhere but the CLI, fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import batchops

PACKAGE = Path(batchops.__file__).parent

# Top to bottom. A module may import its own layer and any layer below it.
LAYERS: list[tuple[str, ...]] = [
    ("batchops.cli", "batchops.__main__"),
    ("batchops.views",),
    ("batchops.commands",),
    ("batchops.apply",),
    ("batchops.plan",),
    ("batchops.spec", "batchops.pricing"),
    ("batchops.state", "batchops.remote"),
    (
        "batchops.clock",
        "batchops.errors",
        "batchops.heap",
        "batchops.safetext",
        "batchops.apirules",
        "batchops",
    ),
]
# The emulator stands apart: only the CLI (and tests) start it, and it uses no other layer.
APART = ("batchops.emulator",)
APART_MAY_USE = ("batchops.emulator", "batchops.errors", "batchops.apirules", "batchops")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "batchops":
                out += [(node.lineno, f"batchops.{alias.name}") for alias in node.names]
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        apart = any(name == p or name.startswith(p + ".") for p in APART)
        mine = layer_of(name)
        for line, target in imports_of(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: {name} imports {target}"
            if target.split(".")[0] == "click" and mine != 0:
                found.append(f"{where} (only the CLI uses click)")
            if not target.startswith("batchops"):
                continue
            if apart:
                if not any(target == p or target.startswith(p + ".") for p in APART_MAY_USE):
                    found.append(f"{where} (the emulator stands apart)")
                continue
            if any(target == p or target.startswith(p + ".") for p in APART):
                if mine != 0:
                    found.append(f"{where} (only the CLI starts the emulator)")
                continue
            theirs = layer_of(target)
            if mine is None or theirs is None:
                found.append(f"{where} (a module in no layer: add it to LAYERS)")
            elif theirs < mine:
                found.append(f"{where} (an import against the direction of the layers)")
    return found


def test_imports_flow_one_way():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    # the check itself can fail: a state module importing the planner is reported
    fake = PACKAGE / "state" / "_layering_probe.py"
    fake.write_text("from batchops.plan.actions import Plan\n", encoding="utf-8")
    try:
        found = violations()
    finally:
        fake.unlink()
    assert any("_layering_probe" in v and "against the direction" in v for v in found)
