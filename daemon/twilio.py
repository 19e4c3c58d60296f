"""Twilio Media Streams, sans I/O: Twilio's WebSocket messages in, the call engine's input out.

Implemented from Twilio's public "Media Streams - WebSocket Messages" documentation.
Twilio sends JSON text messages, each with an ``event``:

* ``connected`` (``protocol``, ``version``) — first, nothing to do;
* ``start`` — ``start.streamSid``, ``start.callSid``, ``start.accountSid``, ``start.tracks``
  (``inbound`` and/or ``outbound``), ``start.customParameters`` (the TwiML ``<Parameter>`` s),
  ``start.mediaFormat`` (``encoding`` ``audio/x-mulaw``, ``sampleRate`` 8000, ``channels`` 1);
* ``media`` — ``media.track``, ``media.chunk``, ``media.timestamp`` (ms), ``media.payload``
  (base64 audio, 20 ms per message);
* ``dtmf`` (``dtmf.track``, ``dtmf.digit``), ``mark`` (``mark.name``) — recorded, no audio;
* ``stop`` — the end of the stream.

Mapping: each track of ``start.tracks`` is a separate channel, numbered in the order
listed (``inbound`` first when Twilio sends both); the ``streamSid`` is the stream id;
``customParameters.claimed_speaker`` claims the ``inbound`` track (the caller) and
``customParameters.claimed_speaker_outbound`` the ``outbound`` one.  Anything that does
not follow the format is a :class:`~voxguard.protocol.ProtocolError`.

Authentication: Twilio drops query strings from ``<Stream url>``, so when the daemon needs
a token and the handshake carried none, the token must come as the TwiML
``<Parameter name="token">`` (``start.customParameters.token``; ``token_check`` decides),
else the stream ends with ``unauthorized``.  The token is never echoed in events.
"""

from __future__ import annotations

import base64
import binascii
import json

from voxguard.protocol import ProtocolError, Start, json_object, parse_client_text

from .call import CallSession
from .session import Output

EVENTS = ("connected", "start", "media", "dtmf", "mark", "stop")
TRACKS = ("inbound", "outbound")
MEDIA_ENCODINGS = {"audio/x-mulaw": "pcm_mulaw", "audio/x-alaw": "pcm_alaw"}
CLAIM_PARAMETERS = {"inbound": "claimed_speaker", "outbound": "claimed_speaker_outbound"}


def _obj(d: dict, key: str, event: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ProtocolError("invalid_message", f"Twilio '{event}' message needs a '{key}' object")
    return v


def _str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise ProtocolError("invalid_message", f"Twilio {where} needs a non-empty string '{key}'")
    return v


class TwilioAdapter:
    """Feeds one Twilio Media Stream into a :class:`CallSession`."""

    def __init__(self, call: CallSession, token_check=None):
        self.call = call
        self.token_check = token_check  # None: the handshake was authenticated (or no token needed)
        self.tracks: list[str] = []
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict = {}
        self.media_messages = 0
        self.dtmf: list[str] = []
        self.marks: list[str] = []

    def receive_audio(self, data: bytes, now: float = 0.0) -> Output:
        raise ProtocolError("invalid_message", "Twilio Media Streams sends JSON text messages, not binary ones")

    def receive_text(self, text: str, now: float = 0.0) -> Output:
        d = json_object(text, "Twilio message")
        event = d.get("event")
        if event not in EVENTS:
            raise ProtocolError("unknown_type", f"unknown Twilio event {event!r}; expected one of: "
                                                f"{', '.join(EVENTS)}")
        return getattr(self, f"_{event}")(d, now)

    def _connected(self, d: dict, now: float) -> Output:
        return Output()

    def _start(self, d: dict, now: float) -> Output:
        if self.call.start is not None:
            raise ProtocolError("already_started", "a second Twilio 'start' message on the same stream")
        s = _obj(d, "start", "start")
        sid = _str(s, "streamSid", "start")
        tracks = s.get("tracks")
        if not isinstance(tracks, list) or not tracks or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError("invalid_message", "Twilio start.tracks must be a non-empty array of track names")
        for t in tracks:
            if t not in TRACKS:
                raise ProtocolError("unknown_track", f"unknown track {t!r} in start.tracks; Twilio sends "
                                                     f"{' and '.join(TRACKS)}")
        if len(set(tracks)) != len(tracks):
            raise ProtocolError("invalid_message", "Twilio start.tracks lists a track twice")
        fmt = _obj(s, "mediaFormat", "start.mediaFormat")
        enc = fmt.get("encoding")
        if enc not in MEDIA_ENCODINGS:
            raise ProtocolError("unsupported_format", f"unsupported mediaFormat.encoding {enc!r}; use one of: "
                                                      f"{', '.join(MEDIA_ENCODINGS)}")
        if fmt.get("channels", 1) != 1:
            raise ProtocolError("unsupported_format", "mediaFormat.channels must be 1 (one track per channel)")
        params = s.get("customParameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("invalid_message", "Twilio start.customParameters must be an object")
        if self.token_check is not None:
            token = params.get("token")
            if not isinstance(token, str) or not self.token_check(token):
                raise ProtocolError("unauthorized", "this stream needs a token: add <Parameter name=\"token\" "
                                                    "value=\"...\"/> to the TwiML <Stream> (Twilio drops query "
                                                    "strings)" if not token else "customParameters.token is not "
                                                                                 "a valid token")
        claims = {}
        for track, key in CLAIM_PARAMETERS.items():
            if params.get(key):
                if track not in tracks:
                    raise ProtocolError("unknown_channel", f"customParameters.{key} claims the {track} track, "
                                                           f"which this stream does not carry")
                claims[str(tracks.index(track))] = params[key]
        # validated like any start message: the sample rate, the stream id and the claims
        start = parse_client_text(json.dumps({
            "type": "start", "sample_rate": fmt.get("sampleRate"), "encoding": MEDIA_ENCODINGS[enc],
            "channels": len(tracks), "stream_id": sid, "channel_mode": "separate", "claimed_speakers": claims}))
        assert isinstance(start, Start)
        self.tracks, self.stream_sid = list(tracks), sid
        self.call_sid = s.get("callSid") if isinstance(s.get("callSid"), str) else None
        self.custom_parameters = {k: v for k, v in params.items()
                                  if isinstance(v, (str, int, float, bool)) and k != "token"}
        return self.call.begin(start, channel_names=self.tracks, extra={
            "source": "twilio", "call_sid": self.call_sid, "custom_parameters": self.custom_parameters})

    def _media(self, d: dict, now: float) -> Output:
        if self.call.start is None:
            raise ProtocolError("not_started", "Twilio 'media' before 'start'")
        m = _obj(d, "media", "media")
        track = m.get("track", "inbound")
        if track not in self.tracks:
            raise ProtocolError("unknown_track", f"media for track {track!r}, but start.tracks announced "
                                                 f"{self.tracks}")
        payload = m.get("payload")
        if not isinstance(payload, str):
            raise ProtocolError("invalid_message", "Twilio media needs a string 'payload'")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_payload", "media.payload is not valid base64") from None
        self.media_messages += 1
        return self.call.receive_channel_audio(self.tracks.index(track), audio, now)

    def _dtmf(self, d: dict, now: float) -> Output:
        digit = _obj(d, "dtmf", "dtmf").get("digit")
        if isinstance(digit, str):
            self.dtmf.append(digit)
        return Output()

    def _mark(self, d: dict, now: float) -> Output:
        name = _obj(d, "mark", "mark").get("name")
        if isinstance(name, str):
            self.marks.append(name)
        return Output()

    def _stop(self, d: dict, now: float) -> Output:
        if self.call.start is None:
            raise ProtocolError("not_started", "Twilio 'stop' before 'start'")
        return self.call.finish(now)
