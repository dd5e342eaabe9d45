"""How a harvest reads result lines: a succeeded result's message is stored as the API's JSON of
it, sliced from the line when the line has the API's compact shape and written out again from
the parsed value otherwise, so what is stored always parses to the message the line carried."""

from __future__ import annotations

import orjson
import pytest

from batchops.apply.harvest import HarvestFailed, _message_json
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


def texts(contents: list) -> list:
    """The `text` a harvest stores for succeeded lines with each of these `content` values."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from batchops.apply.evaluator import Evaluator
    from batchops.state.records import SentAttempt

    lines = [
        orjson.dumps(
            {"custom_id": f"c{i}", "result": {"type": "succeeded", "message": {"content": c}}}
        ).decode()
        for i, c in enumerate(contents)
    ]
    sent = {f"c{i}": SentAttempt(i + 1, f"k{i}", "sha256:x") for i in range(len(contents))}
    now = datetime(2026, 3, 10, tzinfo=UTC)
    ev = Evaluator(None, None, lambda: now)  # type: ignore[arg-type]
    record = SimpleNamespace(job="demo", id="msgbatch_1")
    rows = ev._verified_rows(record, _parse_lines(iter(lines), "read"), sent, len(contents))  # type: ignore[arg-type]
    return [row[7] for row in rows]


def test_the_text_is_every_text_block_joined_whatever_the_content():
    text = {"type": "text", "text": "hi"}
    contents = [
        [text],  # one block, as most replies
        [{"type": "tool_use", "id": "t", "name": "n", "input": {}}],
        [{"type": "text"}],
        [{"text": "no type"}],
        ["a string block"],
        [],
        [text, {"type": "thinking", "thinking": "x"}, {"type": "text", "text": " there"}],
    ]
    assert texts(contents) == ["hi", "", "", "", "", "", "hi there"]


@pytest.mark.parametrize("content", [None, {"type": "text"}, "x"])
def test_a_content_that_is_no_list_is_a_result_that_does_not_check_out(content):
    """A success whose content is missing or no list was stored with an empty text: a success
    with no answer, never asked again (found by a review). The API sends a list."""
    with pytest.raises(HarvestFailed) as caught:
        texts([content])
    assert str(caught.value) == (
        "the result for 'c0' is not of the shape the API sends (its message's content is not a list)"
    )


@pytest.mark.parametrize("value", [3, None, ["x"]])
def test_a_text_that_is_not_a_string_is_a_result_that_does_not_check_out(value):
    """A shape the API does not send: the batch's results do not check out (nothing stored, a
    problem reported), on the one-block path and the joined one alike; it was a TypeError that
    stopped apply."""
    with pytest.raises(HarvestFailed, match="not of the shape the API sends"):
        texts([[{"type": "text", "text": value}]])
    with pytest.raises(HarvestFailed, match="not of the shape the API sends"):
        texts([[{"type": "text", "text": "a"}, {"type": "text", "text": value}]])


def test_a_stream_that_breaks_off_is_a_remote_error_and_a_consumer_error_is_its_own():
    from batchops.errors import RemoteError
    from batchops.remote.client import _mapped, _parse_blocks

    def broken():
        yield b'{"custom_id":"a","result":{"type":"expired"}}\n'
        raise ConnectionError("peer closed")

    what = "read results of batch b"
    parsed = _parse_blocks(_mapped(broken(), what), what)  # as `result_blocks` gives them
    assert next(parsed)["custom_id"] == "a"
    with pytest.raises(RemoteError, match=r"the stream broke off \(ConnectionError: peer closed\)"):
        next(parsed)
    with pytest.raises(RemoteError, match="line 2 is not JSON"):
        list(_parse_lines(iter(["{}", "{nope", "{}"]), "read"))
    with pytest.raises(RemoteError, match="line 3 is not a JSON object"):
        list(_parse_lines(iter(["{}", " ", "[1]"]), "read"))
    with pytest.raises(KeyError):  # raised by the consumer: not taken for a broken stream
        for line in _parse_lines(iter(["{}", "{}"]), "read"):
            line["missing"]


def test_a_line_separator_inside_a_string_does_not_cut_the_line(sdk_client, emulator):
    """JSON allows U+2028, U+2029 and U+0085 unescaped inside strings (orjson, like the API,
    writes them as they are); a result line ends at "\\n" only, so such a result is harvested
    whole. Read through the real SDK from the emulator, whose tool call repeats a `const`."""
    from batchops.remote.client import BatchesClient
    from tests.conftest import DUMMY_API_KEY

    odd = "a\u2028b\u2029c\x85d é 😀"
    tool = {
        "name": "t",
        "description": "d",
        "input_schema": {"type": "object", "properties": {"s": {"const": odd}}, "required": ["s"]},
    }
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [tool],
        "tool_choice": {"type": "tool", "name": "t"},
    }
    batch = sdk_client.messages.batches.create(
        requests=[{"custom_id": f"c{i}", "params": params} for i in range(3)]
    )
    client = BatchesClient(base_url=emulator, api_key=DUMMY_API_KEY)
    try:
        with client.results(batch.id) as lines:
            parsed = list(lines)
    finally:
        client.close()
    assert sorted(line["custom_id"] for line in parsed) == ["c0", "c1", "c2"]
    for line in parsed:
        (block,) = line["result"]["message"]["content"]
        assert block["input"] == {"s": odd}
        assert orjson.loads(line.raw) == dict(line)  # the whole line, as the API wrote it


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 16])
def test_blocks_cut_anywhere_give_the_same_lines(size):
    """The stream comes in blocks cut at any byte, inside a line or a UTF-8 sequence; the lines
    and their numbers (in errors) are those of the whole text split at "\\n"."""
    from batchops.errors import RemoteError
    from batchops.remote.client import _parse_blocks

    lines = [
        '{"custom_id":"a","result":{"type":"expired"}}',
        "",
        '{"custom_id":"b\u2028","result":{"type":"succeeded","message":{"t":"é😀\\n"}}}\r',
        "  ",
        '{"custom_id":"c","result":{"type":"canceled"}}',
    ]
    data = "\n".join(lines).encode()
    blocks = [data[i : i + size] for i in range(0, len(data), size)]
    parsed = list(_parse_blocks(iter(blocks), "read"))
    assert [dict(p) for p in parsed] == [orjson.loads(x) for x in lines if x.strip()]
    assert [p.raw for p in parsed] == [x for x in lines if x.strip()]
    broken = (data + b"\n{nope\n").replace(b"\r", b"")
    with pytest.raises(RemoteError, match="line 6 is not JSON"):
        list(_parse_blocks(iter([broken[i : i + size] for i in range(0, len(broken), size)]), "r"))
    # invalid UTF-8 is read as the SDK's text would be: replaced, not refused
    (line,) = _parse_blocks(iter([b'{"custom_id":"\xff","result":{}}']), "read")
    assert line["custom_id"] == "\ufffd"
