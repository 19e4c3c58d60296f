"""One call's engine, free of I/O: the protocol shell around one :class:`Session` per
speaker track.

A ``start`` with ``"channel_mode": "mix"`` (the default) is one track: the channels are
averaged.  ``"separate"`` makes each channel its own track — its own resampler, VAD,
windows, identity, verification and clone tracking — with a :class:`Session` of its own.

The :class:`CallSession` is the one place that speaks the protocol: it parses client
messages, checks and decodes binary frames (frame size, whole sample frames, finite
``pcm_f32le`` clipped at full scale), numbers every event of the stream (``seq`` 0, 1,
2, ...), tags each event of a separate-channel stream with its ``channel``, merges the
channels' ``ready`` events into one, and builds a ``summary`` with one section per
channel.  Sessions know nothing about messages or calls.  The server talks only to
it; adapters for other wire formats (Twilio, see :mod:`.twilio`) call :meth:`begin` and
:meth:`receive_channel_audio` directly.

The caller passes its clock in (``now``, used only to measure event latency); nothing
here reads a clock, holds a lock or touches a socket.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from voxguard.audio import pcm_to_float
from voxguard.protocol import ENCODINGS, ProtocolError, Start, Stop, parse_client_text

from .session import EngineInfo, Output, Session, SessionLimits, WindowResult
from .snapshot import ScoringSnapshot

SLICE_S = 0.25  # seconds of audio the engine processes between two yields to the event loop


class CallSession:
    """The state of one stream: one or more per-track sessions."""

    def __init__(self, engine: EngineInfo, limits: SessionLimits | None = None):
        self.engine = engine
        self.limits = limits or SessionLimits()
        self.start: Start | None = None
        self.stream_id = ""
        self.stopped = False
        self.sessions: list[Session] = []
        self.channel_names: list[str] | None = None
        self._by_key: dict[int, tuple[int, Session]] = {}  # session key -> (channel, session)
        self._seq = 0

    @property
    def separate(self) -> bool:
        return self.start is not None and self.start.channel_mode == "separate"

    @property
    def realtime(self) -> bool:
        return self.start is None or self.start.options.realtime

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def time(self) -> float:
        return max((s.time for s in self.sessions), default=0.0)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received, summed over the tracks (a 60 s stereo call in separate
        mode is 120 s, so that voiced / audio stays a ratio)."""
        return sum(s.time for s in self.sessions)

    @property
    def speech_seconds(self) -> float:
        return sum(s.speech_seconds for s in self.sessions)

    @property
    def scored(self) -> int:
        return sum(s.scored for s in self.sessions)

    @property
    def backlog(self) -> int:
        """Windows and countermeasure checks of this stream the workers have not answered yet."""
        return sum(s.backlog for s in self.sessions)

    def full(self, max_windows: int, max_checks: int) -> bool:
        """A lossless stream's backpressure: some track has ``max_windows`` windows or ``max_checks``
        countermeasure checks outstanding (windows and checks are bounded apart, so a slow
        countermeasure does not throttle identity windows until its own bound)."""
        return any(s.window_backlog >= max_windows or s.check_backlog >= max_checks for s in self.sessions)

    @property
    def keys(self) -> list[int]:
        return list(self._by_key)

    def abandon(self) -> list[tuple[int, int]]:
        """The stream ends without a summary: forget every outstanding window; returns the
        (key, index) pairs to withdraw from the worker's queue."""
        return [w for s in self.sessions for w in s.abandon()]

    def _tag(self, events: list[dict], session: Session | None) -> list[dict]:
        for ev in events:
            ev["seq"] = self._seq
            self._seq += 1
            if self.separate and session is not None:
                ev["channel"] = self._by_key[session.key][0]
        return events

    def _merge(self, out: Output, part: Output, session: Session) -> None:
        self._tag(part.events, session)
        out.extend(part)

    def event(self, type_: str, **fields) -> dict:
        ev = {"type": type_, "stream_id": self.stream_id, "seq": self._seq, "time": round(self.time, 4), **fields}
        self._seq += 1
        return ev

    def error_event(self, err: ProtocolError) -> dict:
        return self.event("error", code=err.code, message=err.message, close_code=err.close_code)

    # -- input ---------------------------------------------------------------------------------
    def receive_text(self, text: str, now: float = 0.0) -> Output:
        msg = parse_client_text(text)
        if isinstance(msg, Start):
            return self.begin(msg)
        assert isinstance(msg, Stop)
        if self.start is None:
            raise ProtocolError("not_started", "'stop' before 'start'")
        return self.finish(now)

    def begin(self, start: Start, channel_names: list[str] | None = None, extra: dict | None = None) -> Output:
        """Start the stream (a validated ``start``); ``channel_names`` label separate channels
        (Twilio's track names), ``extra`` adds fields to the ``ready`` event."""
        if self.start is not None:
            raise ProtocolError("already_started", "this stream was already started")
        for name in [start.claimed_speaker, *start.claimed_speakers.values()]:
            if name is not None and name not in self.engine.speakers:
                raise ProtocolError("unknown_speaker", f"claimed speaker {name!r} is not enrolled")
        tracks = ([start] if start.channel_mode == "mix" else
                  [Start(start.sample_rate, start.encoding, 1, start.stream_id, start.claimed_speakers.get(c),
                         start.options) for c in range(start.channels)])
        for c, track in enumerate(tracks):
            s = Session(self.engine, track, self.limits)
            self.sessions.append(s)
            self._by_key[s.key] = (c, s)
        self.start = start
        self.stream_id = start.stream_id
        self.channel_names = channel_names
        ready = self.sessions[0].ready_event()
        if start.channel_mode == "separate":
            ready["input"] = {**ready["input"], "channels": start.channels}
            ready["claimed_speaker"] = None
            ready["channel_mode"] = "separate"
            ready["claimed_speakers"] = {str(c): n for c, n in sorted(start.claimed_speakers.items())}
            if channel_names:
                ready["channel_names"] = list(channel_names)
        ready.update(extra or {})
        return Output(events=self._tag([ready], None))

    def enrollment_material(self, channel: int | str | None = None):
        """The :class:`~.session.EnrollMaterial` of one track: ``channel`` an index or a channel
        name (Twilio's tracks); None for a mixed stream's only track.  ValueError when there is
        no such track (or a separate-channel stream is asked without one)."""
        if not self.sessions:
            raise ValueError("the stream was never started")
        if channel is None:
            if len(self.sessions) > 1:
                raise ValueError(f"this stream has {len(self.sessions)} channels: say which (channel=0..)")
            return self.sessions[0].enrollment_material()
        if isinstance(channel, str) and not channel.isdigit():
            names = self.channel_names or []
            if channel not in names:
                raise ValueError(f"no channel named {channel!r} (channels: {', '.join(names) or 'none named'})")
            channel = names.index(channel)
        c = int(channel)
        if not 0 <= c < len(self.sessions):
            raise ValueError(f"no channel {c}: the stream has {len(self.sessions)}")
        return self.sessions[c].enrollment_material()

    def _check_started(self) -> None:
        if self.start is None:
            raise ProtocolError("not_started", "audio before 'start'")
        if self.stopped:
            raise ProtocolError("invalid_message", "audio after 'stop'")

    def _decode(self, data: bytes, channels: int) -> np.ndarray:
        """Checked PCM bytes -> [frames, channels] float32 within full scale."""
        if len(data) > self.limits.max_frame_bytes:
            raise ProtocolError("frame_too_large", f"binary message of {len(data)} bytes exceeds the "
                                                   f"limit of {self.limits.max_frame_bytes} bytes")
        enc = self.start.encoding
        fb = ENCODINGS[enc] * channels
        if len(data) % fb:
            raise ProtocolError("partial_frame", f"{len(data)} bytes is not a whole number of "
                                                 f"{fb}-byte sample frames ({enc}, {channels} channel(s))")
        x = pcm_to_float(data, enc, channels)
        if enc == "pcm_f32le":
            if not np.isfinite(x).all():
                raise ProtocolError("non_finite_audio", "pcm_f32le audio holds NaN or infinite samples")
            x = np.clip(x, -1.0, 1.0)  # full scale is ±1; louder samples clip, as a DAC would
        return x.reshape(-1, channels)

    def receive_audio(self, data: bytes, now: float = 0.0) -> Output:
        """Interleaved PCM of every channel (the ``/v1/stream`` binary message)."""
        out = Output()
        for part in self.iter_audio(data, now):
            out.extend(part)
        return out

    def iter_audio(self, data: bytes, now: float = 0.0, slice_s: float = SLICE_S) -> Iterator[Output]:
        """:meth:`receive_audio` in slices of at most ``slice_s`` seconds, so that the caller
        can let other work run between them (a 1 MiB message is 32 s of 16-bit audio).  The
        whole message is checked before the first slice: a bad message changes nothing."""
        self._check_started()
        if not data:
            return
        x = self._decode(data, self.start.channels)
        step = max(1, int(slice_s * self.start.sample_rate))
        for i in range(0, len(x), step):
            part, chunk = Output(), x[i:i + step]
            if not self.separate:
                s = self.sessions[0]
                self._merge(part, s.receive_samples(chunk, now), s)
            else:
                for c, s in enumerate(self.sessions):
                    self._merge(part, s.receive_samples(chunk[:, c], now), s)
            yield part

    def receive_channel_audio(self, channel: int, data: bytes, now: float = 0.0) -> Output:
        """One channel's own PCM (mono, the stream's encoding): tracks that arrive apart."""
        self._check_started()
        if not 0 <= channel < len(self.sessions) or not self.separate:
            raise ProtocolError("unknown_channel", f"no channel {channel} in this stream")
        out = Output()
        if not data:
            return out
        s = self.sessions[channel]
        self._merge(out, s.receive_samples(self._decode(data, 1)[:, 0], now), s)
        return out

    def finish(self, now: float = 0.0) -> Output:
        """End of input: flush every track."""
        out = Output(stop=True)
        if self.start is None or self.stopped:
            return out
        self.stopped = True
        for s in self.sessions:
            self._merge(out, s.finish(now), s)
        return out

    # -- worker results and store changes --------------------------------------------------------
    def owns(self, key: int) -> bool:
        return key in self._by_key

    def received_at(self, result: WindowResult) -> float | None:
        """When the audio completing ``result``'s window arrived (None if it was dropped)."""
        return self._by_key[result.key][1].received_at(result.index)

    def taken(self, key: int, index: int) -> None:
        """The worker took window ``index`` of track ``key`` into a batch."""
        self._by_key[key][1].taken(index)

    def complete(self, result: WindowResult) -> list[dict]:
        s = self._by_key[result.key][1]
        return self._tag(s.complete(result), s)

    def complete_check(self, result) -> list[dict]:
        """A countermeasure check of track ``result.key`` came back."""
        s = self._by_key[result.key][1]
        return self._tag(s.complete_check(result), s)

    def store_changed(self, snapshot: ScoringSnapshot) -> list[dict]:
        """A reload made ``snapshot`` current.  Streams keep scoring against the snapshot
        they started with; a claim on a speaker the new snapshot no longer enrolls is revoked."""
        return [ev for s in self.sessions for ev in self._tag(s.revoke_claim(snapshot), s)]

    def summary(self, reason: str) -> dict:
        if not self.separate:
            return self._tag([self.sessions[0].summary(reason)], None)[0]
        parts = []
        for c, s in enumerate(self.sessions):
            sm = s.summary(reason)
            part = {"channel": c, **{k: sm[k] for k in ("duration", "speech_duration", "speech_ratio", "windows",
                                                        "identity", "verification", "clone")}}
            if self.channel_names:
                part["name"] = self.channel_names[c]
            parts.append(part)
        duration = self.time
        speech = sum(p["speech_duration"] for p in parts)
        windows = {k: sum(p["windows"][k] for p in parts) for k in ("emitted", "scored", "dropped")}
        return self.event(
            "summary", reason=reason, duration=round(duration, 4), speech_duration=round(speech, 4),
            speech_ratio=round(speech / (duration * len(parts)), 4) if duration else 0.0, windows=windows,
            band=self.sessions[0].band, realtime=self.realtime,
            identity=None, verification=None, clone=None, channel_mode="separate", channels=parts)
