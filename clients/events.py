"""Typed server events: one frozen dataclass per event type of :mod:`voxguard.protocol`.

:func:`parse_event` turns a server message into an :class:`Event` subclass; every
event keeps the JSON object it came from in ``raw`` (so nothing the server adds in a
later protocol revision is lost).  Nested objects (``top``, ``decision``, ``session``,
``evidence`` ...) stay plain dicts, exactly as ``docs/protocol.md`` describes them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from voxguard.protocol import parse_event as _decode
from voxguard.protocol import wire_json


@dataclass(frozen=True)
class Event:
    """Fields every server event carries."""

    type: ClassVar[str] = ""
    stream_id: str
    seq: int
    time: float  # stream time, seconds
    raw: dict = field(repr=False, compare=False)

    @property
    def channel(self) -> int | None:
        """The channel (speaker track) of a ``channel_mode: separate`` stream's event, else None."""
        return self.raw.get("channel")

    @property
    def json(self) -> str:
        """The event as JSON (the server's object, re-serialised)."""
        return wire_json(self.raw)


@dataclass(frozen=True)
class Ready(Event):
    type: ClassVar[str] = "ready"
    protocol_version: int
    embedder: dict
    index: dict
    thresholds: dict
    options: dict
    claimed_speaker: str | None = None
    input: dict | None = None
    decision: dict | None = None


@dataclass(frozen=True)
class SpeechStart(Event):
    type: ClassVar[str] = "speech_start"


@dataclass(frozen=True)
class SpeechEnd(Event):
    type: ClassVar[str] = "speech_end"
    duration: float


@dataclass(frozen=True)
class Identity(Event):
    """One scored window: the window's best speaker and the smoothed decision."""

    type: ClassVar[str] = "identity"
    window: dict
    speaker: str | None  # this window's best speaker (no threshold applied)
    score: float | None
    margin: float | None
    top: list
    decision: dict  # {"speaker": current speaker after hysteresis, "changed", "windows", "candidate"}
    session: dict

    @property
    def current(self) -> str | None:
        """Who is speaking according to the smoothed decision (None: nobody recognised)."""
        return self.decision.get("speaker")


@dataclass(frozen=True)
class Verification(Event):
    type: ClassVar[str] = "verification"
    claimed_speaker: str
    threshold: float
    window: dict  # {"index", "start", "end", "score", "decision"}
    session: dict  # {"score", "decision", "windows"}

    @property
    def decision(self) -> str:
        """The session decision so far: accept, reject or undecided."""
        return self.session["decision"]


@dataclass(frozen=True)
class CloneSuspicion(Event):
    type: ClassVar[str] = "clone_suspicion"
    speaker: str | None
    score: float
    level: str  # none, low, medium, high
    evidence: dict
    session: dict
    window: dict | None = None  # a window's clone evidence ...
    check: dict | None = None  # ... or a countermeasure check of a context of voiced audio


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the protocol's name
    type: ClassVar[str] = "warning"
    code: str
    message: str
    dropped_windows: int | None = None


@dataclass(frozen=True)
class Summary(Event):
    type: ClassVar[str] = "summary"
    reason: str  # "stop" or "shutdown"
    duration: float
    speech_duration: float
    speech_ratio: float
    windows: dict
    identity: dict | None  # None for a separate-channel stream: see ``channels``
    verification: dict | None
    clone: dict | None

    @property
    def channels(self) -> list[dict]:
        """One section per channel of a ``channel_mode: separate`` stream (else empty)."""
        return self.raw.get("channels") or []

    @property
    def dropped_windows(self) -> int:
        """Windows the server dropped because it could not keep up (real-time streams)."""
        return int((self.windows or {}).get("dropped") or 0)

    @property
    def verdict(self) -> str | None:
        """The claimed speaker's final decision (None when no speaker was claimed); for
        separate channels, reject if any claim was rejected, accept if all were accepted."""
        if self.channels:
            verdicts = [c["verification"]["decision"] for c in self.channels if c.get("verification")]
            if not verdicts:
                return None
            if "reject" in verdicts:
                return "reject"
            return "accept" if all(v == "accept" for v in verdicts) else "undecided"
        return self.verification["decision"] if self.verification else None


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str
    close_code: int


@dataclass(frozen=True)
class Reconnected(Event):
    """Client-side only (never sent by a server): the client lost its stream and opened a
    new one, ``stream_id``, after ``attempt`` tries.  Server state starts afresh."""

    type: ClassVar[str] = "reconnected"
    attempt: int = 0
    reason: str = ""


EVENT_CLASSES: dict[str, type[Event]] = {
    c.type: c for c in (Ready, SpeechStart, SpeechEnd, Identity, Verification, CloneSuspicion, Warning,
                        Summary, Error)}


def from_dict(d: dict) -> Event:
    """Build the typed event for a decoded server message (unknown extra keys are kept in ``raw``)."""
    cls = EVENT_CLASSES[d["type"]]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "raw":
            continue
        if f.name in d:
            kwargs[f.name] = d[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ValueError(f"{d['type']} event lacks {f.name!r}")
    return cls(raw=d, **kwargs)


def parse_event(text: str) -> Event:
    """Decode one server text message; raises ``ValueError`` when it is not a voxguard event."""
    return from_dict(_decode(text))
