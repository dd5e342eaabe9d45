"""The spec format's JSON Schema, for editors: completion and checks while a spec is written.

It is generated from the very pydantic models that load specs (`batchops.spec.raw`), tidied
for people (no `null` alternatives TOML cannot write, readable titles, a description per field),
and shipped as `batchops/data/spec.schema.json`; a test regenerates it and compares, so the
shipped file never drifts from the loader. Point an editor at it with a first line
`#:schema ./spec.schema.json` in a TOML spec (taplo, Even Better TOML) or a `"$schema"` key in a
JSON spec. The loader stays the judge: the schema cannot express everything it checks (paths
inside the project, exactly one item source, templates that render).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from batchops.spec.model import JOB_NAME_RE, SPEC_VERSION

SHIPPED = "data/spec.schema.json"

_TITLES = {
    "_RawSpec": "batchops job spec (version 1)",
    "_RawDefaults": "Defaults",
    "_RawJob": "Job",
    "_RawInput": "Input data file",
    "_RawOutput": "Output file",
    "_RawPath": "Requests file",
    "_RawMove": "Move (a renamed job)",
}
_DESCRIPTIONS = {
    "$schema": "Where editors find this schema; ignored by batchops.",
    "version": "Spec format version; this batchops reads 1.",
    "defaults": "Fields every job in this file inherits unless it sets them itself.",
    "jobs": "Jobs by name (lowercase letters, digits, '-' and '_'; unique across all specs).",
    "moved": "Renamed jobs, reviewed like code: apply moves each one's state rows to its new name.",
    "from": "The job's old name (no longer defined).",
    "to": "The job's new name (a job defined in the specs).",
    "description": "What the job is for (changes no fingerprint).",
    "model": "The Messages API model, e.g. claude-haiku-4-5.",
    "max_tokens": "Maximum output tokens per request (the cost estimate's ceiling).",
    "system": "System prompt: a string or a list of content blocks (cache_control allowed).",
    "prompt": "A Jinja2 template of the one user message; row fields are variables.",
    "messages": "A Jinja2-templated list of messages, instead of prompt.",
    "params": "Any other Messages API parameter, sent as written (temperature, tools, thinking…).",
    "betas": "anthropic-beta values for this job's requests.",
    "budget_usd": "plan and apply refuse the job when its estimate exceeds this many dollars.",
    "reuse": "Answer an item from a stored result of the very same request (any job); false opts out.",
    "cache": "auto: mark the longest shared prefix (tools, system) for prompt caching when it pays.",
    "expected_output_tokens": "A reply's usual length in tokens: the central estimate's output until the job has results (budgets still gate on max_tokens).",
    "max_attempts": "Submissions of an item before a retryable error counts as failed.",
    "render_seconds": "Time budget for rendering one item's templates (seconds, at most 30).",
    "render_max_size": "Size budget of one rendered request and of any string made on the way.",
    "output": "Where apply (and `batchops results`) write the joined results once the job is done.",
    "input": "A data file: one request per row, identified by the row's key field.",
    "items": "Inline items, one request each; each table has a `key`.",
    "requests": "A JSONL file of ready-made requests in the Anthropic batch format.",
    "path": "A path relative to this spec file, inside the project root.",
    "key": "The field of each row that identifies it (stable across edits).",
    "format": "jsonl, csv or json; by default from the file name's suffix.",
    "columns": "Fields of each JSON answer (a tool call's input, or JSON text) to export as columns.",
    "attachments": "Images (PNG, JPEG, GIF, WebP) and PDFs sent before the prompt: templates of paths relative to this spec file; an empty result attaches nothing.",
}


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a version-1 spec file, TOML or JSON."""
    from batchops.spec.raw import _RawSpec  # pydantic: `batchops schema` prints the shipped file

    schema = _RawSpec.model_json_schema(by_alias=True)
    defs = schema.pop("$defs")
    for model in (schema, *defs.values()):
        _tidy(model)
    defs["_RawJob"]["properties"]["requests"] = {
        "anyOf": [{"$ref": "#/$defs/_RawPath"}, {"type": "string"}],
        "description": _DESCRIPTIONS["requests"] + " A path, or a table with `path`.",
    }
    schema["properties"]["version"]["const"] = SPEC_VERSION
    schema["properties"]["jobs"]["propertyNames"] = {"pattern": JOB_NAME_RE.pattern}
    renamed = {name: _TITLES[name].split(" ")[0] for name in defs}
    text = json.dumps({"$defs": defs, **schema})
    for old in defs:
        text = text.replace(f'"#/$defs/{old}"', f'"#/$defs/{renamed[old]}"')
    tidy = json.loads(text)
    defs = {renamed[name]: body for name, body in tidy.pop("$defs").items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **tidy,
        "$defs": dict(sorted(defs.items())),
    }


def _tidy(model: dict[str, Any]) -> None:
    model["title"] = _TITLES.get(model.get("title", ""), model.get("title"))
    for name, prop in model.get("properties", {}).items():
        options = prop.get("anyOf")
        if options and {"type": "null"} in options and prop.get("default", ...) is None:
            rest = [o for o in options if o != {"type": "null"}]
            prop.pop("anyOf")
            prop.pop("default")
            if len(rest) == 1:
                prop.update(rest[0])
            else:
                prop["anyOf"] = rest
        if name == "system":
            prop.pop("default", None)
            prop["anyOf"] = [
                {"type": "string"},
                {"type": "array", "items": {"type": "object"}},
            ]
        prop.pop("title", None)
        if name in _DESCRIPTIONS:
            prop["description"] = _DESCRIPTIONS[name]


def render_schema() -> str:
    """The schema as shipped: indented JSON with a final newline."""
    return json.dumps(spec_json_schema(), indent=2, ensure_ascii=False) + "\n"


def shipped_schema() -> str:
    """The schema file shipped with the package (what `batchops schema` prints)."""
    return resources.files("batchops").joinpath(SHIPPED).read_text(encoding="utf-8")
