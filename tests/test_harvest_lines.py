"""How a harvest reads result lines: a succeeded result's message is stored as the API's JSON of
it, sliced from the line when the line has the API's compact shape and written out again from
the parsed value otherwise, so what is stored always parses to the message the line carried."""

from __future__ import annotations

import orjson
import pytest

from batchops.apply.evaluator import _message_json
from batchops.remote.client import _parse_lines

MESSAGE = '{"id":"msg_1","content":[{"type":"text","text":"h\\u00e9 \\"message\\": x"}],"usage":{}}'


def stored(raw: str) -> str:
    (line,) = _parse_lines(iter([raw]), "read results")
    result = line["result"]
    return _message_json(line, line["custom_id"], result, result.get("message") or {})


def test_a_compact_line_gives_its_own_slice():
    raw = '{"custom_id":"job-a_1","result":{"type":"succeeded","message":' + MESSAGE + "}}\n"
    assert stored(raw) == MESSAGE  # as the API wrote it, escapes and all


@pytest.mark.parametrize(
    "raw",
    [
        # whitespace, another key order, a key more, a duplicate key, a nested "message" key
        '{"custom_id": "a", "result": {"type": "succeeded", "message": {"id": "m"}}}',
        '{"result":{"type":"succeeded","message":{"id":"m"}},"custom_id":"a"}',
        '{"custom_id":"a","result":{"type":"succeeded","message":{"id":"m"},"x":1}}',
        '{"custom_id":"a","result":{"type":"succeeded","message":{"id":"n"},"message":{"id":"m"}}}',
        '{"custom_id":"a","result":{"type":"succeeded","message":{"id":"n"},"type":"succeeded"}}',
        '{"custom_id":"a","result":{"type":"succeeded","message":{"id":"m"} }}',
        '{"custom_id":"a","result":{"type":"succeeded","message":{"id":"m","message":{}}}}',
        '{"custom_id":"a","result":{"type":"succeeded","message":null}}',
    ],
)
def test_any_other_line_is_written_out_from_what_it_parses_to(raw):
    message = orjson.loads(raw)["result"]["message"] or {}
    assert stored(raw) == orjson.dumps(message).decode()
