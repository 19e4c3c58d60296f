"""One call's engine, free of I/O: one :class:`Session` per speaker track.

A ``start`` with ``"channel_mode": "mix"`` (the default) is one track: the channels are
averaged by the session, exactly as before.  ``"separate"`` makes each channel its own
track — its own resampler, VAD, windows, identity, verification and clone tracking —
by giving each channel a mono :class:`Session` of its own, fed that channel's samples
through the session's ordinary methods (``receive_text`` with a mono ``start``,
``receive_audio``, ``finish``, ``complete``, ``summary``).  Nothing inside
:class:`Session` knows about calls.

The :class:`CallSession` numbers every event of the stream (``seq`` 0, 1, 2, ...),
tags each event of a separate-channel stream with its ``channel``, merges the
channels' ``ready`` events into one, and builds a ``summary`` with one section per
channel.  The server talks only to it; adapters for other wire formats (Twilio, see
:mod:`.twilio`) call :meth:`begin` and :meth:`receive_channel_audio` directly.
"""

from __future__ import annotations

import numpy as np

from voxguard.protocol import ENCODINGS, ProtocolError, Start, Stop, parse_client_text

from .session import EngineInfo, Output, Session, SessionLimits, WindowJob, WindowResult


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
        self._channel_of: dict[Session, int] = {}
        self._seq = 0

    @property
    def separate(self) -> bool:
        return self.start is not None and self.start.channel_mode == "separate"

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

    def pending_jobs(self) -> list[WindowJob]:
        return [j for s in self.sessions for j in list(s.pending)]

    def cancel_all(self) -> None:
        """Cancel every window still waiting (the stream ends without a summary)."""
        for s in self.sessions:
            for job in list(s.pending):
                job.cancelled = True
            s.pending.clear()

    def _tag(self, events: list[dict], session: Session | None) -> list[dict]:
        for ev in events:
            ev["seq"] = self._seq
            self._seq += 1
            if self.separate and session is not None:
                ev["channel"] = self._channel_of[session]
        return events

    def _merge(self, out: Output, part: Output, session: Session) -> None:
        out.events.extend(self._tag(part.events, session))
        out.jobs.extend(part.jobs)
        out.dropped += part.dropped
        out.stop = out.stop or part.stop

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
            if self.start is not None:
                raise ProtocolError("already_started", "this stream was already started")
            return self.begin(msg)
        assert isinstance(msg, Stop)
        if self.start is None:
            raise ProtocolError("not_started", "'stop' before 'start'")
        return self.finish()

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
        readies = []
        for c, track in enumerate(tracks):
            s = Session(self.engine, self.limits)
            readies.append(s.receive_text(track.to_json()).events[0])
            self.sessions.append(s)
            self._channel_of[s] = c
        self.start = start
        self.stream_id = start.stream_id
        self.channel_names = channel_names
        ready = readies[0]
        if start.channel_mode == "separate":
            ready["input"] = {**ready["input"], "channels": start.channels}
            ready["claimed_speaker"] = None
            ready["channel_mode"] = "separate"
            ready["claimed_speakers"] = {str(c): n for c, n in sorted(start.claimed_speakers.items())}
            if channel_names:
                ready["channel_names"] = list(channel_names)
        ready.update(extra or {})
        ready["seq"] = self._seq
        self._seq += 1
        return Output(events=[ready])

    def _check_started(self) -> None:
        if self.start is None:
            raise ProtocolError("not_started", "audio before 'start'")
        if self.stopped:
            raise ProtocolError("invalid_message", "audio after 'stop'")

    def receive_audio(self, data: bytes, now: float = 0.0) -> Output:
        """Interleaved PCM of every channel (the ``/v1/stream`` binary message)."""
        self._check_started()
        if not self.separate:
            out = Output()
            self._merge(out, self.sessions[0].receive_audio(data, now), self.sessions[0])
            return out
        if len(data) > self.limits.max_frame_bytes:
            raise ProtocolError("frame_too_large", f"binary message of {len(data)} bytes exceeds the "
                                                   f"limit of {self.limits.max_frame_bytes} bytes")
        fb = self.start.frame_bytes
        if len(data) % fb:
            raise ProtocolError("partial_frame", f"{len(data)} bytes is not a whole number of "
                                                 f"{fb}-byte sample frames ({self.start.encoding}, "
                                                 f"{self.start.channels} channel(s))")
        width = ENCODINGS[self.start.encoding]
        frames = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.start.channels, width)
        out = Output()
        for c, s in enumerate(self.sessions):
            self._merge(out, s.receive_audio(frames[:, c, :].tobytes(), now), s)
        return out

    def receive_channel_audio(self, channel: int, data: bytes, now: float = 0.0) -> Output:
        """One channel's own PCM (mono, the stream's encoding): tracks that arrive apart."""
        self._check_started()
        if not 0 <= channel < len(self.sessions) or not self.separate:
            raise ProtocolError("unknown_channel", f"no channel {channel} in this stream")
        s = self.sessions[channel]
        out = Output()
        self._merge(out, s.receive_audio(data, now), s)
        return out

    def finish(self) -> Output:
        """End of input: flush every track."""
        out = Output(stop=True)
        if self.start is None or self.stopped:
            return out
        self.stopped = True
        for s in self.sessions:
            self._merge(out, s.finish(), s)
        return out

    # -- scored windows ----------------------------------------------------------------------------
    def owns(self, session: Session) -> bool:
        return session in self._channel_of

    def complete(self, result: WindowResult) -> list[dict]:
        s = result.job.session
        return self._tag(s.complete(result), s)

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
            identity=None, verification=None, clone=None, channel_mode="separate", channels=parts)
