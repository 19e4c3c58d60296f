"""voxguard.protocol: parsing, validation, error codes, and the schemas in docs/protocol.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from voxguard.protocol import (ERRORS, EVENT_TYPES, SCHEMAS, ProtocolError, Start, Stop, StreamOptions,
                               parse_client_text, parse_event)

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
GOOD = {"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le", "channels": 2, "stream_id": "call-1"}


def test_parse_start_and_stop_round_trip():
    s = parse_client_text(json.dumps({**GOOD, "claimed_speaker": "alice", "options": {"window": 2, "hop": 0.25,
                                                                                     "vad_aggressiveness": 3}}))
    assert isinstance(s, Start) and s.frame_bytes == 8 and s.claimed_speaker == "alice"
    assert s.options == StreamOptions(window=2.0, hop=0.25, vad_aggressiveness=3)
    assert parse_client_text(s.to_json()) == s
    jsonschema.validate(json.loads(s.to_json()), SCHEMAS["start"])
    assert isinstance(parse_client_text('{"type": "stop"}'), Stop)


@pytest.mark.parametrize("text, code", [
    ("hello", "invalid_json"), ("[1, 2]", "invalid_json"), ('{"sample_rate": 1}', "unknown_type"),
    ('{"type": "pause"}', "unknown_type"), ('{"type": "stop", "now": true}', "invalid_message"),
    (json.dumps({**GOOD, "sample_rate": 7999}), "unsupported_format"),
    (json.dumps({**GOOD, "sample_rate": 48001}), "unsupported_format"),
    (json.dumps({**GOOD, "sample_rate": 16000.5}), "invalid_message"),
    (json.dumps({**GOOD, "encoding": "opus"}), "unsupported_format"),
    (json.dumps({**GOOD, "channels": 3}), "unsupported_format"),
    (json.dumps({**GOOD, "channels": True}), "invalid_message"),
    (json.dumps({**GOOD, "stream_id": ""}), "invalid_message"),
    (json.dumps({**GOOD, "extra": 1}), "invalid_message"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "encoding"}), "invalid_message"),
    (json.dumps({**GOOD, "options": {"hop": 2, "window": 1}}), "invalid_message"),
    (json.dumps({**GOOD, "options": {"vad_frame_ms": 25}}), "invalid_message"),
    (json.dumps({**GOOD, "options": {"speed": 2}}), "invalid_message"),
    ('{"type": "start", "sample_rate": NaN}', "invalid_message"),
])
def test_bad_client_messages(text, code):
    with pytest.raises(ProtocolError) as e:
        parse_client_text(text)
    assert e.value.code == code
    assert e.value.close_code == ERRORS[code].close_code


def test_close_codes_are_valid_websocket_codes():
    for spec in ERRORS.values():
        assert spec.close_code in (1008, 1009, 1011, 1013) or 4000 <= spec.close_code <= 4999
    with pytest.raises(ValueError):
        ProtocolError("no_such_code", "x")
    with pytest.raises(ValueError):
        parse_event('{"type": "nope"}')


def _doc_blocks() -> dict[str, dict]:
    """Every ```json block of docs/protocol.md that is a schema, by its title."""
    text = DOC.read_text()
    out = {}
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        d = json.loads(block)
        if isinstance(d, dict) and "$schema" in d:
            out[d["title"]] = d
    return out


def _doc_examples() -> list[dict]:
    text = DOC.read_text()
    return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)
            if "$schema" not in json.loads(b) and "type" in json.loads(b)]


def test_docs_hold_every_schema_and_valid_examples():
    blocks = _doc_blocks()
    assert set(blocks) == set(SCHEMAS)
    for name, schema in SCHEMAS.items():
        assert blocks[name] == schema, f"docs/protocol.md schema for {name!r} differs from voxguard.protocol"
        jsonschema.Draft202012Validator.check_schema(schema)
    examples = _doc_examples()
    seen = {e["type"] for e in examples}
    assert seen >= set(EVENT_TYPES) | {"start", "stop"}
    for e in examples:
        jsonschema.validate(e, SCHEMAS[e["type"]])
        if e["type"] in ("start", "stop"):
            parse_client_text(json.dumps(e))
        if e["type"] == "error":
            assert ERRORS[e["code"]].close_code == e["close_code"]
