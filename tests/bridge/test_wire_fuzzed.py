"""The protocol parser and the daemon on damaged input: random JSON values of every type in every
field, truncated and mangled text, nesting deep enough to break a recursive parser, unannounced and
mis-sized binary frames. Every one is an `error` with a protocol code (never `internal`), the
connection stays in step, and every accepted job ends once. Seeded fuzz runs (tools/fuzz) and
Hypothesis properties."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffclip.bridge.messages import parse_edit
from ffclip.plugin.protocol import ERROR_CODES, EngineError, decode
from tools.fuzz import runner, wire  # noqa: E402

PROTOCOL_CODES = set(ERROR_CODES) - {"internal"}


def parse(text: str) -> str:
    """'ok' or the error code of what the daemon runs on a text message; anything else escapes."""
    try:
        message = decode(text)
        if message["type"] == "edit":
            parse_edit(message, wire.WIRE_MAX_PIXELS)
    except EngineError as exc:
        assert exc.code in PROTOCOL_CODES and exc.message, exc
        return exc.code
    return "ok"


# --------------------------------------------------------------------------- seeded fuzz runs


def test_fuzzed_messages_are_parsed_or_refused_never_escape(tmp_path: Path) -> None:
    report = runner.run(wire.ParserTarget(), 600, seed=18, workdir=tmp_path)
    assert report.escapes == [], report.escapes[:3]
    assert report.outcomes["bad_request"] > 300 and report.outcomes["ok"] > 30, report.outcomes


def test_fuzzed_conversations_with_the_daemon_stay_in_step(tmp_path: Path) -> None:
    """Mutated messages, announcements followed by too few, too many, mis-sized, oversized or
    fragmented frames, frames nobody announced: errors with protocol codes, never `internal`, a
    fence round trip after each (a message of a unique unknown type, refused by name), every queued
    job ended once (tools/fuzz/wire.py: Client)."""
    report = runner.run(wire.ServerTarget(), 80, seed=18, workdir=tmp_path)
    assert report.escapes == [], report.escapes[:3]
    assert report.outcomes["error:bad_request"] > 20 and report.outcomes["result"] > 3, report.outcomes


# --------------------------------------------------------------------------- the parser


def _edit() -> dict:
    return wire.edit_message(random.Random(18))


def test_every_truncation_of_an_edit_message_is_bad_request() -> None:
    text = json.dumps(_edit())
    assert parse(text) == "ok"
    for end in range(len(text)):
        assert parse(text[:end]) == "bad_request", text[:end]


@pytest.mark.parametrize("opening", ["[", '{"a":', '{"type": "edit", "edits": ['])
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_nesting_too_deep_for_the_parser_is_bad_request(opening: str, depth: int) -> None:
    assert parse(opening * depth) == "bad_request"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
FIELDS = ["type", "id", "prompt", "strength", "edits", "faces", "preview", "image", "selection", "supersede", "domain"]


@given(field=st.sampled_from(FIELDS), value=JSON)
@settings(max_examples=300)
def test_any_json_value_in_any_field_is_accepted_or_bad_request(field: str, value: Any) -> None:
    message = _edit()
    message[field] = value
    assert parse(json.dumps(message)) in {"ok", "bad_request", "bad_image", "too_large"}


@given(field=st.sampled_from(["prompt", "strength", "width", "height", "format"]), value=JSON, index=st.integers(0, 3))
@settings(max_examples=200)
def test_any_json_value_inside_the_nested_fields_is_accepted_or_bad_request(field: str, value: Any, index: int) -> None:
    message = _edit()
    message["edits"] = [{"prompt": "smiling", "strength": 1.0} for _ in range(index + 1)]
    holder = message["image"] if field in ("width", "height", "format") else message["edits"][index]
    holder[field] = value
    assert parse(json.dumps(message)) in {"ok", "bad_request", "bad_image", "too_large"}


@given(value=JSON)
@settings(max_examples=200)
def test_any_json_document_is_a_message_or_bad_request(value: Any) -> None:
    assert parse(json.dumps(value)) in {"ok", "bad_request", "bad_image", "too_large"}


@given(data=st.binary(max_size=200))
@settings(max_examples=200)
def test_any_text_is_a_message_or_bad_request(data: bytes) -> None:
    assert parse(data.decode("utf-8", "replace")) in {"ok", "bad_request", "bad_image", "too_large"}


# --------------------------------------------------------------------------- frames


@pytest.fixture(scope="module")
def daemon():
    from ffclip.bridge.fake import FakeBackend
    from ffclip.bridge.testing import running_server

    with running_server(lambda: FakeBackend(0.0), max_pixels=wire.WIRE_MAX_PIXELS, max_queue=64) as thread:
        yield thread


def _talk(daemon, script: list[tuple[str, Any]]) -> list[dict]:
    client = wire.Client(daemon.url)
    try:
        for kind, payload in script:
            if kind == "text":
                client.send(payload)
            else:
                client.binary(payload, None)
        client.settle()  # a fence round trip: the stream is in step; every queued job has ended
        return client.replies[1:]
    finally:
        client.close()


def _announce(width: int = 64, height: int = 48, **fields: Any) -> str:
    message = wire.edit_message(random.Random(width * height), width, height)
    message.pop("selection", None)
    message.update(fields)
    return json.dumps(message)


SIZE = 64 * 48 * 4


def pixels(n: int) -> bytes:
    return random.Random(n).randbytes(n)  # a uniform image has no face, even for the fake backend


@pytest.mark.parametrize(
    ("name", "frames", "expected"),
    [
        ("one byte short", [SIZE - 1], "bad_image"),
        ("one byte long", [SIZE + 1], "bad_image"),
        ("empty", [0], "bad_image"),
        ("over the frame limit", [wire.WIRE_MAX_PIXELS * 4 + (1 << 16) + 1], "too_large"),
        ("the right size", [SIZE], "result"),
    ],
)
def test_a_mis_sized_frame_is_an_error_and_the_connection_goes_on(daemon, name, frames, expected) -> None:
    replies = _talk(daemon, [("text", _announce()), *(("binary", pixels(n)) for n in frames)])
    outcome = wire._label(replies)
    assert outcome == (expected if expected == "result" else f"error:{expected}"), (name, replies)


@pytest.mark.parametrize(
    ("size", "expected"), [(0, "bad_request"), (1, "bad_request"), (SIZE, "bad_request"), (900_000, "too_large")]
)
def test_a_frame_nobody_announced_is_refused(daemon, size: int, expected: str) -> None:
    """bad_request; over the frame limit it is discarded unread first: too_large."""
    replies = _talk(daemon, [("binary", pixels(size))])
    errors = [r for r in replies if r["type"] == "error"]
    assert [e["code"] for e in errors] == [expected], replies


def test_a_second_frame_after_an_edit_is_unannounced(daemon) -> None:
    replies = _talk(daemon, [("text", _announce()), ("binary", pixels(SIZE)), ("binary", pixels(SIZE))])
    kinds = [r["type"] for r in replies]
    assert "result" in kinds and [r["code"] for r in replies if r["type"] == "error"] == ["bad_request"], replies
