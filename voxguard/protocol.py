"""The voxguard streaming protocol (version :data:`PROTOCOL_VERSION`): message types,
validation, error codes and WebSocket close codes.

Clients import only this module (plus :mod:`voxguard.audio` to decode files); the
daemon uses it to parse what clients send and to build what it sends back.  The
normative description, with a JSON schema and an example for every message, is
``docs/protocol.md``; :data:`SCHEMAS` holds the same schemas.

A stream: the client opens ``/v1/stream``, sends a ``start`` text message, then binary
frames of interleaved little-endian PCM, then ``{"type": "stop"}``.  Every server
message is a JSON text message with ``type``, ``stream_id``, ``seq`` (0, 1, 2, ... per
stream) and ``time`` (stream time in seconds: input samples received so far, or the
end of the window the event is about).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
STREAM_PATH = "/v1/stream"
TWILIO_PATH = "/v1/twilio"  # Twilio Media Streams (docs/telephony.md)
MONITOR_PATH = "/v1/monitor"  # every active stream's events (docs/protocol.md, "Monitor feed")

# encoding -> bytes per sample; pcm_mulaw / pcm_alaw are G.711 (ITU-T) 8-bit telephone audio
ENCODINGS = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}
CHANNEL_MODES = ("mix", "separate")  # mix: channels averaged into one voice; separate: one track each
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
CHANNELS = (1, 2)
MAX_STREAM_ID = 128
MAX_SPEAKER_NAME = 200


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf; numpy floats included) replaced by
    ``None``, in nested dicts, lists and tuples: what JSON can represent."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if type(obj).__module__ == "numpy":  # numpy scalars (np.float32 is not a float subclass)
        if hasattr(obj, "dtype") and getattr(obj, "ndim", 0) == 0 and obj.dtype.kind == "f":
            v = float(obj)
            return v if math.isfinite(v) else None
        if hasattr(obj, "tolist"):
            return finite_json(obj.tolist())
    return obj


def wire_json(obj: Any) -> str:
    """The one JSON encoding of everything voxguard writes to a wire (events, HTTP bodies,
    the monitor feed, webhooks, client messages): strict JSON, non-finite floats as ``null``
    (``json.dumps`` would write ``NaN``/``Infinity``, which JSON parsers reject)."""
    return json.dumps(finite_json(obj), allow_nan=False)

# -- client -> server ---------------------------------------------------------------------
CLIENT_TYPES = ("start", "stop")
# -- monitor client -> server -------------------------------------------------------------
MONITOR_TYPES = ("subscribe",)
# -- server -> client ---------------------------------------------------------------------
EVENT_TYPES = ("ready", "speech_start", "speech_end", "identity", "verification", "clone_suspicion",
               "warning", "summary", "error")
DECISIONS = ("accept", "reject", "undecided")
CLONE_LEVELS = ("none", "low", "medium", "high")
CLONE_UNAVAILABLE = "unavailable"
"""The clone level when no detector is available (no known clones and no trained detector,
or a refused one): score and LLR are then null."""


class CloseCode:
    """WebSocket close codes the server uses (RFC 6455 section 7.4; 4000-4999 are ours)."""

    NORMAL = 1000  # after ``stop``: summary sent
    GOING_AWAY = 1001  # server shutdown: summary sent
    POLICY = 1008  # slow consumer (when a close frame can still be sent)
    TOO_BIG = 1009  # frame larger than the server's limit
    INTERNAL = 1011  # server bug
    TRY_AGAIN = 1013  # too many concurrent streams
    BAD_REQUEST = 4400  # protocol misuse (see ERRORS)
    UNAUTHORIZED = 4401  # Twilio stream whose start message carries no valid token
    NOT_FOUND = 4404  # claimed speaker not enrolled
    IDLE = 4408  # nothing received for the idle timeout
    TOO_LONG = 4413  # stream longer than the maximum duration
    UNSUPPORTED = 4415  # unsupported sample rate, encoding or channel count


@dataclass(frozen=True)
class ErrorSpec:
    close_code: int
    description: str


ERRORS: dict[str, ErrorSpec] = {
    "invalid_json": ErrorSpec(CloseCode.BAD_REQUEST, "a text message is not a JSON object"),
    "unknown_type": ErrorSpec(CloseCode.BAD_REQUEST, "a JSON message has a missing or unknown 'type'"),
    "invalid_message": ErrorSpec(CloseCode.BAD_REQUEST, "a field of a message is missing, unknown or invalid"),
    "not_started": ErrorSpec(CloseCode.BAD_REQUEST, "audio or 'stop' before 'start'"),
    "already_started": ErrorSpec(CloseCode.BAD_REQUEST, "a second 'start' on the same connection"),
    "partial_frame": ErrorSpec(CloseCode.BAD_REQUEST,
                               "a binary message is not a whole number of sample frames"),
    "non_finite_audio": ErrorSpec(CloseCode.BAD_REQUEST, "pcm_f32le audio holds NaN or infinite samples"),
    "unknown_channel": ErrorSpec(CloseCode.BAD_REQUEST,
                                 "a per-channel claim names a channel the stream does not have"),
    "unknown_track": ErrorSpec(CloseCode.BAD_REQUEST,
                               "a Twilio media message names a track its start message did not announce"),
    "invalid_payload": ErrorSpec(CloseCode.BAD_REQUEST, "a Twilio media payload is not valid base64 audio"),
    "unauthorized": ErrorSpec(CloseCode.UNAUTHORIZED,
                              "a Twilio stream opened without a token has no valid customParameters.token"),
    "unsupported_format": ErrorSpec(CloseCode.UNSUPPORTED, "sample rate, encoding or channel count not supported"),
    "frame_too_large": ErrorSpec(CloseCode.TOO_BIG, "a binary message exceeds the server's frame limit"),
    "unknown_speaker": ErrorSpec(CloseCode.NOT_FOUND, "the claimed speaker is not enrolled"),
    "idle_timeout": ErrorSpec(CloseCode.IDLE, "no message received within the idle timeout"),
    "duration_limit": ErrorSpec(CloseCode.TOO_LONG, "the stream exceeded the maximum duration"),
    "server_busy": ErrorSpec(CloseCode.TRY_AGAIN, "the server already serves its maximum number of streams"),
    "slow_consumer": ErrorSpec(CloseCode.POLICY,
                               "the client does not read its events (write timeout); usually the TCP "
                               "connection is aborted and the client sees 1006"),
    "internal_error": ErrorSpec(CloseCode.INTERNAL, "unexpected server error"),
}

WARNINGS = {
    "overload": "windows were dropped because the stream's queue of windows waiting for the embedder was full",
    "claimed_speaker_removed": "the claimed speaker was removed from the store; the claim is rejected from now on",
}


class ProtocolError(Exception):
    """A client broke the protocol; ``code`` is a key of :data:`ERRORS`."""

    def __init__(self, code: str, message: str):
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return ERRORS[self.code].close_code


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream tuning, each within bounds (``start.options``)."""

    window: float = 1.5  # analysis window, seconds of voiced audio
    hop: float = 0.5  # seconds between window starts
    vad_aggressiveness: int = 2  # webrtcvad mode 0..3
    vad_frame_ms: int = 30  # 10, 20 or 30
    top_k: int = 5  # speakers listed per identity event
    # True: live audio, windows the embedder cannot keep up with are dropped (and counted);
    # False: a file sent as fast as possible, the server stops reading instead (lossless)
    realtime: bool = True

    BOUNDS = {"window": (0.5, 10.0), "hop": (0.1, 10.0), "vad_aggressiveness": (0, 3),
              "vad_frame_ms": (10, 30), "top_k": (1, 20), "realtime": (False, True)}


@dataclass(frozen=True)
class Start:
    sample_rate: int
    encoding: str
    channels: int
    stream_id: str
    claimed_speaker: str | None = None
    options: StreamOptions = field(default_factory=StreamOptions)
    channel_mode: str = "mix"
    claimed_speakers: dict[int, str] = field(default_factory=dict)  # separate mode: channel -> claim

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (one sample of every channel)."""
        return ENCODINGS[self.encoding] * self.channels

    def to_json(self) -> str:
        d: dict[str, Any] = {"type": "start", "sample_rate": self.sample_rate, "encoding": self.encoding,
                             "channels": self.channels, "stream_id": self.stream_id}
        if self.claimed_speaker is not None:
            d["claimed_speaker"] = self.claimed_speaker
        if self.channel_mode != "mix":
            d["channel_mode"] = self.channel_mode
        if self.claimed_speakers:
            d["claimed_speakers"] = {str(c): n for c, n in sorted(self.claimed_speakers.items())}
        opts = asdict(self.options)
        defaults = asdict(StreamOptions())
        changed = {k: v for k, v in opts.items() if v != defaults[k]}
        if changed:
            d["options"] = changed
        return wire_json(d)


@dataclass(frozen=True)
class Stop:
    def to_json(self) -> str:
        return wire_json({"type": "stop"})


ClientMessage = Start | Stop


def _int(d: dict, key: str, lo: int, hi: int, code: str = "invalid_message") -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("invalid_message", f"'{key}' must be an integer")
    if not lo <= v <= hi:
        raise ProtocolError(code, f"'{key}' must be between {lo} and {hi}, got {v}")
    return v


def _number(d: dict, key: str, lo: float, hi: float) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError("invalid_message", f"'{key}' must be a finite number")
    if not lo <= v <= hi:
        raise ProtocolError("invalid_message", f"'{key}' must be between {lo} and {hi}, got {v}")
    return float(v)


def _parse_options(raw: Any) -> StreamOptions:
    if raw is None:
        return StreamOptions()
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_message", "'options' must be an object")
    unknown = set(raw) - set(StreamOptions.BOUNDS)
    if unknown:
        raise ProtocolError("invalid_message", f"unknown option(s): {', '.join(sorted(unknown))}")
    b = StreamOptions.BOUNDS
    d = asdict(StreamOptions())
    for key in ("window", "hop"):
        if key in raw:
            d[key] = _number(raw, key, *b[key])
    for key in ("vad_aggressiveness", "top_k", "vad_frame_ms"):
        if key in raw:
            d[key] = _int(raw, key, *b[key])
    if "realtime" in raw:
        if not isinstance(raw["realtime"], bool):
            raise ProtocolError("invalid_message", "'realtime' must be true or false")
        d["realtime"] = raw["realtime"]
    if d["vad_frame_ms"] not in (10, 20, 30):
        raise ProtocolError("invalid_message", "'vad_frame_ms' must be 10, 20 or 30")
    if d["hop"] > d["window"]:
        raise ProtocolError("invalid_message", "'hop' must not exceed 'window'")
    return StreamOptions(**d)


def _parse_start(d: dict) -> Start:
    allowed = {"type", "sample_rate", "encoding", "channels", "stream_id", "claimed_speaker", "options",
               "channel_mode", "claimed_speakers"}
    unknown = set(d) - allowed
    if unknown:
        raise ProtocolError("invalid_message", f"unknown field(s) in start: {', '.join(sorted(unknown))}")
    for key in ("sample_rate", "encoding", "channels", "stream_id"):
        if key not in d:
            raise ProtocolError("invalid_message", f"start needs '{key}'")
    rate = _int(d, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, code="unsupported_format")
    enc = d["encoding"]
    if enc not in ENCODINGS:
        raise ProtocolError("unsupported_format",
                            f"unsupported encoding {enc!r}; use one of: {', '.join(ENCODINGS)}")
    channels = d["channels"]
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise ProtocolError("invalid_message", "'channels' must be an integer")
    if channels not in CHANNELS:
        raise ProtocolError("unsupported_format", f"unsupported channel count {channels}; use 1 or 2")
    sid = d["stream_id"]
    if not isinstance(sid, str) or not 1 <= len(sid) <= MAX_STREAM_ID or not sid.isprintable():
        raise ProtocolError("invalid_message",
                            f"'stream_id' must be a printable string of 1 to {MAX_STREAM_ID} characters")
    claimed = d.get("claimed_speaker")
    if claimed is not None and (not isinstance(claimed, str) or not 1 <= len(claimed) <= MAX_SPEAKER_NAME):
        raise ProtocolError("invalid_message",
                            f"'claimed_speaker' must be null or a string of 1 to {MAX_SPEAKER_NAME} characters")
    mode = d.get("channel_mode", "mix")
    if mode not in CHANNEL_MODES:
        raise ProtocolError("invalid_message",
                            f"unknown channel_mode {mode!r}; use one of: {', '.join(CHANNEL_MODES)}")
    claims = _parse_claims(d.get("claimed_speakers"), channels)
    if claims and mode != "separate":
        raise ProtocolError("invalid_message", "'claimed_speakers' needs \"channel_mode\": \"separate\" "
                                               "(a mixed stream has one voice: use 'claimed_speaker')")
    if claimed is not None and mode == "separate":
        raise ProtocolError("invalid_message", "with \"channel_mode\": \"separate\" claim per channel "
                                               "with 'claimed_speakers', e.g. {\"0\": \"alice\"}")
    return Start(rate, enc, channels, sid, claimed, _parse_options(d.get("options")), mode, claims)


def _parse_claims(raw: Any, channels: int) -> dict[int, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_message", "'claimed_speakers' must be an object: channel number -> speaker")
    claims: dict[int, str] = {}
    for key, name in raw.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 3):
            raise ProtocolError("invalid_message", f"'claimed_speakers' key {key!r} is not a channel number")
        ch = int(key)
        if ch >= channels:
            raise ProtocolError("unknown_channel", f"a claim for channel {ch}, but the stream has {channels} "
                                                   f"channel(s) (numbered from 0)")
        if name is None:
            continue
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_SPEAKER_NAME:
            raise ProtocolError("invalid_message", f"'claimed_speakers' values must be null or strings of 1 to "
                                                   f"{MAX_SPEAKER_NAME} characters")
        claims[ch] = name
    return claims


def json_object(text: str, what: str = "text message") -> dict:
    """``text`` parsed as a JSON object; raises ``invalid_json`` naming ``what`` otherwise."""
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("invalid_json", f"{what} is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("invalid_json", f"a {what} must be a JSON object")
    return d


def parse_client_text(text: str) -> ClientMessage:
    """Parse one client text message; raises :class:`ProtocolError`."""
    d = json_object(text)
    kind = d.get("type")
    if kind == "start":
        return _parse_start(d)
    if kind == "stop":
        if set(d) != {"type"}:
            raise ProtocolError("invalid_message", "stop takes no other field")
        return Stop()
    raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of: {', '.join(CLIENT_TYPES)}")


def parse_event(text: str) -> dict:
    """Decode one server event (clients); raises ``ValueError`` on a malformed one."""
    d = json.loads(text)
    if not isinstance(d, dict) or d.get("type") not in EVENT_TYPES:
        raise ValueError(f"not a voxguard event: {text[:200]!r}")
    return d


@dataclass(frozen=True)
class MonitorFilter:
    """Which events a ``/v1/monitor`` subscriber receives; an empty set matches everything.
    ``min_clone_level`` holds back ``clone_suspicion`` events below that level."""

    stream_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    min_clone_level: str = "none"

    def matches(self, event: dict) -> bool:
        if self.stream_ids and event.get("stream_id") not in self.stream_ids:
            return False
        if self.types and event.get("type") not in self.types:
            return False
        if event.get("type") == "clone_suspicion" and self.min_clone_level != "none":
            level = event.get("level", "none")
            rank = CLONE_LEVELS.index(level) if level in CLONE_LEVELS else 0
            return rank >= CLONE_LEVELS.index(self.min_clone_level)
        return True

    def to_query(self) -> dict[str, str]:
        """Query-string form (``/v1/monitor?stream_id=a,b&types=identity&min_clone_level=medium``)."""
        q = {}
        if self.stream_ids:
            q["stream_id"] = ",".join(sorted(self.stream_ids))
        if self.types:
            q["types"] = ",".join(sorted(self.types))
        if self.min_clone_level != "none":
            q["min_clone_level"] = self.min_clone_level
        return q

    def to_json(self) -> str:
        return wire_json({"type": "subscribe", "stream_ids": sorted(self.stream_ids), "types": sorted(self.types),
                           "min_clone_level": self.min_clone_level})


def _monitor_filter(stream_ids: list, types: list, level: Any) -> MonitorFilter:
    for sid in stream_ids:
        if not isinstance(sid, str) or not 1 <= len(sid) <= MAX_STREAM_ID:
            raise ProtocolError("invalid_message", f"stream ids must be strings of 1 to {MAX_STREAM_ID} characters")
    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        raise ProtocolError("invalid_message", f"unknown event type(s) {bad}; use: {', '.join(EVENT_TYPES)}")
    if level not in CLONE_LEVELS:
        raise ProtocolError("invalid_message",
                            f"unknown min_clone_level {level!r}; use one of: {', '.join(CLONE_LEVELS)}")
    return MonitorFilter(frozenset(stream_ids), frozenset(types), level)


def parse_monitor_query(query: dict[str, list[str]]) -> MonitorFilter:
    """The filter of a ``/v1/monitor`` URL's query (``parse_qs`` form); ``token`` is ignored."""
    unknown = set(query) - {"token", "stream_id", "types", "min_clone_level"}
    if unknown:
        raise ProtocolError("invalid_message", f"unknown monitor parameter(s): {', '.join(sorted(unknown))}; "
                                               f"use stream_id, types, min_clone_level")

    def split(key: str) -> list[str]:
        return [p for v in query.get(key, []) for p in v.split(",") if p]

    levels = query.get("min_clone_level", ["none"])
    return _monitor_filter(split("stream_id"), split("types"), levels[-1])


def parse_subscribe(text: str) -> MonitorFilter:
    """A monitor's ``subscribe`` message (replaces its filter); raises :class:`ProtocolError`."""
    d = json_object(text)
    if d.get("type") not in MONITOR_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {d.get('type')!r}; a monitor sends only "
                                            f"'subscribe'")
    unknown = set(d) - {"type", "stream_ids", "types", "min_clone_level"}
    if unknown:
        raise ProtocolError("invalid_message", f"unknown field(s) in subscribe: {', '.join(sorted(unknown))}")
    ids, types = d.get("stream_ids", []), d.get("types", [])
    if not isinstance(ids, list) or not isinstance(types, list):
        raise ProtocolError("invalid_message", "'stream_ids' and 'types' must be arrays")
    return _monitor_filter(ids, types, d.get("min_clone_level", "none"))


# -- JSON schemas (draft 2020-12), the same as in docs/protocol.md ------------------------------
_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_CLONE_SESSION = {"type": "object", "required": ["llr", "level", "max_score", "max_level", "suspicious_windows"],
                  "properties": {"llr": _NUM_OR_NULL,
                                 "level": {"enum": [*CLONE_LEVELS, CLONE_UNAVAILABLE]},
                                 "max_level": {"enum": [*CLONE_LEVELS, CLONE_UNAVAILABLE]}}}
_STR_OR_NULL = {"type": ["string", "null"]}
_SPEAKER_SCORE = {"type": "object", "required": ["speaker", "score"],
                  "properties": {"speaker": {"type": "string"}, "score": _NUM, "llr": _NUM_OR_NULL,
                                 "cosine": _NUM_OR_NULL}}
_CALIBRATION_LABEL = {"type": ["string", "null"]}


def _event(type_: str, props: dict, required: list[str]) -> dict:
    base = {"type": {"const": type_}, "stream_id": {"type": "string"},
            "seq": {"type": "integer", "minimum": 0}, "time": {"type": "number", "minimum": 0},
            "channel": {"type": "integer", "minimum": 0}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": type_, "type": "object",
            "required": ["type", "stream_id", "seq", "time", *required], "properties": {**base, **props}}


_DECISION = {"enum": list(DECISIONS)}
_VERIF = {"type": "object", "required": ["score", "decision"],
          "properties": {"score": _NUM_OR_NULL, "decision": _DECISION}}

SCHEMAS: dict[str, dict] = {
    "start": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "start", "type": "object",
        "required": ["type", "sample_rate", "encoding", "channels", "stream_id"], "additionalProperties": False,
        "properties": {
            "type": {"const": "start"},
            "sample_rate": {"type": "integer", "minimum": MIN_SAMPLE_RATE, "maximum": MAX_SAMPLE_RATE},
            "encoding": {"enum": list(ENCODINGS)},
            "channels": {"enum": list(CHANNELS)},
            "stream_id": {"type": "string", "minLength": 1, "maxLength": MAX_STREAM_ID},
            "claimed_speaker": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_SPEAKER_NAME},
            "channel_mode": {"enum": list(CHANNEL_MODES)},
            "claimed_speakers": {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,3}$"},
                                 "additionalProperties": {"type": ["string", "null"], "minLength": 1,
                                                          "maxLength": MAX_SPEAKER_NAME}},
            "options": {"type": "object", "additionalProperties": False, "properties": {
                "window": {"type": "number", "minimum": 0.5, "maximum": 10},
                "hop": {"type": "number", "minimum": 0.1, "maximum": 10},
                "vad_aggressiveness": {"type": "integer", "minimum": 0, "maximum": 3},
                "vad_frame_ms": {"enum": [10, 20, 30]},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
                "realtime": {"type": "boolean"}}}}},
    "stop": {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "stop", "type": "object",
             "required": ["type"], "additionalProperties": False, "properties": {"type": {"const": "stop"}}},
    "subscribe": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "subscribe", "type": "object",
        "required": ["type"], "additionalProperties": False, "properties": {
            "type": {"const": "subscribe"},
            "stream_ids": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": MAX_STREAM_ID}},
            "types": {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
            "min_clone_level": {"enum": list(CLONE_LEVELS)}}},
    "ready": _event("ready", {
        "protocol_version": {"const": PROTOCOL_VERSION},
        "embedder": {"type": "object", "required": ["name", "dim", "version", "device"]},
        "index": {"type": "object", "required": ["enrolled_speakers", "samples", "revision", "store_id"]},
        "thresholds": {"type": "object", "required": ["accept", "source", "undecided_band"],
                       "properties": {"accept": _NUM_OR_NULL, "source": {"type": "string"},
                                      "undecided_band": _NUM, "band": {"enum": ["wide", "telephone"]},
                                      "units": {"const": "llr"}, "open_set_llr": _NUM_OR_NULL,
                                      "window": {"type": ["object", "null"]},
                                      "session": {"type": ["object", "null"]}}},
        "decision": {"type": "object", "required": ["enter_windows", "exit_windows"]},
        "input": {"type": "object", "required": ["sample_rate", "encoding", "channels"]},
        "options": {"type": "object"},
        "claimed_speaker": _STR_OR_NULL,
        "clone_detection": {"type": "object", "required": ["available", "sources", "reason"],
                            "properties": {"available": {"type": "boolean"},
                                           "sources": {"type": "array", "items": {"type": "string"}},
                                           "reason": _STR_OR_NULL}},
        "countermeasure": {"type": "object", "required": ["available"],
                           "properties": {"available": {"type": "boolean"}, "reason": {"type": "string"},
                                          "calibration": {"type": "string"}}},
        "channel_mode": {"enum": list(CHANNEL_MODES)},
        "claimed_speakers": {"type": "object", "additionalProperties": {"type": "string"}},
        "channel_names": {"type": "array", "items": {"type": "string"}},
        "enrollment": {"type": ["object", "null"], "required": ["buffer_s", "window_after_s", "min_speech_s"],
                       "properties": {"buffer_s": _NUM, "window_after_s": _NUM, "min_speech_s": _NUM}}},
        ["protocol_version", "embedder", "index", "thresholds", "options"]),
    "speech_start": _event("speech_start", {}, []),
    "speech_end": _event("speech_end", {"duration": _NUM}, ["duration"]),
    "identity": _event("identity", {
        "window": {"type": "object", "required": ["index", "start", "end"]},
        "speaker": _STR_OR_NULL, "score": _NUM_OR_NULL, "llr": _NUM_OR_NULL, "cosine": _NUM_OR_NULL,
        "margin": _NUM_OR_NULL, "threshold_llr": _NUM_OR_NULL, "calibration": _CALIBRATION_LABEL,
        "top": {"type": "array", "items": _SPEAKER_SCORE},
        "decision": {"type": "object", "required": ["speaker", "changed", "windows"],
                     "properties": {"speaker": _STR_OR_NULL, "changed": {"type": "boolean"},
                                    "windows": {"type": "integer"}, "candidate": _STR_OR_NULL}},
        "session": {"type": "object", "required": ["speaker", "score", "top", "windows"],
                    "properties": {"speaker": _STR_OR_NULL, "best": _STR_OR_NULL, "score": _NUM_OR_NULL,
                                   "llr": _NUM_OR_NULL, "threshold_llr": _NUM_OR_NULL,
                                   "top": {"type": "array", "items": _SPEAKER_SCORE},
                                   "windows": {"type": "integer"}, "calibration": _CALIBRATION_LABEL}}},
        ["window", "speaker", "score", "margin", "top", "decision", "session"]),
    "verification": _event("verification", {
        "claimed_speaker": {"type": "string"}, "threshold": _NUM_OR_NULL, "calibration": _CALIBRATION_LABEL,
        "window": {"type": "object", "required": ["index", "start", "end", "score", "decision"],
                   "properties": {"score": _NUM_OR_NULL, "llr": _NUM_OR_NULL, "decision": _DECISION}},
        "session": {"type": "object", "required": ["score", "decision", "windows"], "properties": {
            "score": _NUM_OR_NULL, "llr": _NUM_OR_NULL, "threshold_llr": _NUM_OR_NULL, "decision": _DECISION,
            "windows": {"type": "integer"}, "calibration": _CALIBRATION_LABEL}}},
        ["claimed_speaker", "threshold", "window", "session"]),
    "clone_suspicion": _event("clone_suspicion", {
        # a window's clone evidence (``window``) or a countermeasure check of a context (``check``)
        "window": {"type": "object", "required": ["index", "start", "end"]},
        "check": {"type": "object", "required": ["index", "start", "end", "kind", "llr", "level"],
                  "properties": {"kind": {"enum": ["first", "recheck", "final"]}, "llr": _NUM,
                                 "level": {"enum": list(CLONE_LEVELS)}}},
        "speaker": _STR_OR_NULL, "score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "llr": _NUM_OR_NULL, "level": {"enum": [*CLONE_LEVELS, CLONE_UNAVAILABLE]}, "evidence": {"type": "object"},
        "session": _CLONE_SESSION},
        ["speaker", "score", "level", "evidence", "session"]),
    "warning": _event("warning", {"code": {"enum": list(WARNINGS)}, "message": {"type": "string"},
                                  "dropped_windows": {"type": "integer"}}, ["code", "message"]),
    "summary": _event("summary", {
        "reason": {"enum": ["stop", "shutdown"]},
        "duration": _NUM, "speech_duration": _NUM, "speech_ratio": _NUM,
        "band": {"enum": ["wide", "telephone"]},
        "windows": {"type": "object", "required": ["emitted", "scored", "dropped"]},
        "identity": {"type": ["object", "null"], "required": ["speaker", "score", "top", "decision"],
                     "properties": {"speaker": _STR_OR_NULL, "best": _STR_OR_NULL, "score": _NUM_OR_NULL,
                                    "llr": _NUM_OR_NULL, "threshold_llr": _NUM_OR_NULL,
                                    "calibration": _CALIBRATION_LABEL,
                                    "speakers_heard": {"type": "array", "items": {
                                        "type": "object", "required": ["speaker", "windows"]}}}},
        "verification": {"type": ["object", "null"]},
        "clone": {**_CLONE_SESSION, "type": ["object", "null"]},
        "channel_mode": {"enum": list(CHANNEL_MODES)},
        "channels": {"type": "array", "items": {
            "type": "object",
            "required": ["channel", "duration", "speech_duration", "windows", "identity", "verification", "clone"],
            "properties": {"channel": {"type": "integer", "minimum": 0}, "name": {"type": "string"},
                           "identity": {"type": "object"}, "verification": {"type": ["object", "null"]},
                           "clone": {"type": "object"}}}}},
        ["reason", "duration", "speech_duration", "speech_ratio", "windows", "identity", "verification", "clone"]),
    "error": _event("error", {"code": {"enum": list(ERRORS)}, "message": {"type": "string"},
                              "close_code": {"type": "integer"}}, ["code", "message", "close_code"]),
}
