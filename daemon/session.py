"""One stream's engine, free of I/O.

The server feeds a :class:`Session` the client's text messages and audio bytes; it
answers with :class:`Output` — events to send and :class:`WindowJob` s to embed.  When
the shared batcher has scored a job, :meth:`Session.complete` turns the
:class:`WindowResult` into ``identity`` / ``verification`` / ``clone_suspicion``
events.  Protocol violations raise :class:`~voxguard.protocol.ProtocolError`.

Audio path: PCM bytes -> float -> downmix -> streaming resample to 16 kHz
(``soxr.ResampleStream``) -> webrtcvad segmenter (``speech_start`` / ``speech_end``)
-> window scheduler over voiced audio -> window jobs.

Decisions read the calibration of the stream's pinned scoring snapshot (the one current
when the stream started) for the stream's band: ``telephone`` for input sampled at 8 kHz
or less, else ``wide`` (:mod:`voxguard.bands`).

Overload policy: at most ``max_pending`` windows of a stream wait for the embedder;
when a new window would exceed that, the oldest window not yet taken by the
embedder is dropped (counted, and reported by a ``warning`` event at most once per
second of stream time).  The stream itself carries on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import soxr

from voxguard import SAMPLE_RATE
from voxguard.audio import downmix, pcm_to_float
from voxguard.bands import TELEPHONE, TELEPHONE_RATE, WIDE
from voxguard.clone_detection import CloneAssessment
from voxguard.index import SearchResult
from voxguard.protocol import (PROTOCOL_VERSION, WARNINGS, ProtocolError, Start, Stop,
                               parse_client_text)
from voxguard.vad import SpeechEnd, SpeechStart, VadConfig, VoiceActivityDetector, Voiced
from voxguard.windows import WindowConfig, WindowScheduler

from .decisions import CloneTracker, IdentityTracker, SessionEvidence, VerificationTracker
from .snapshot import ScoringSnapshot


@dataclass(frozen=True)
class SessionLimits:
    max_frame_bytes: int = 1 << 20
    max_duration: float = 4 * 3600.0  # seconds of stream time
    max_pending: int = 16  # windows waiting for the embedder, per stream
    enter_windows: int = 2
    exit_windows: int = 3
    undecided_band: float = 0.5  # LLR units: undecided within ±band of a threshold
    verify_min_windows: int = 3


CALIBRATED_WINDOW_S = WindowConfig().window_s  # what enrollment windows, and so every calibration, use


@dataclass(frozen=True)
class EngineInfo:
    """What a stream is scored against: the model, and the scoring snapshot current when
    the stream starts (index, calibration, clone detector), pinned for its whole life."""

    embedder: dict
    snapshot: ScoringSnapshot

    @property
    def speakers(self) -> frozenset[str]:
        return self.snapshot.speakers

    @property
    def index(self) -> dict:
        return self.snapshot.info()

    def thresholds(self, band: str, limits: "SessionLimits", window_s: float = CALIBRATED_WINDOW_S) -> dict:
        """The ``ready`` event's ``thresholds``: each decision's LLR threshold and calibration."""
        snap = self.snapshot
        cal = snap.calibration
        win = snap.trial("window", band)
        ses = snap.session(limits.verify_min_windows, band)
        r = lambda x: None if x is None else round(float(x), 4)  # noqa: E731
        return {"source": snap.thresholds.source if cal is None else cal.source,
                "backend": "cosine" if cal is None else cal.backend_name, "band": band, "units": "llr",
                "accept": r(win.accept_llr) if win else None,
                "open_set_llr": r(snap.open_set_llr("window", band)),
                "open_set_rate": None if cal is None else cal.open_set_alpha,
                "undecided_band": limits.undecided_band,
                "window": None if win is None else {"calibration": win.label(), "accept_llr": r(win.accept_llr),
                                                    "far": r(win.far), "frr": r(win.frr)},
                "session": None if ses is None else {"calibration": ses.label(), "accept_llr": r(ses.accept_llr),
                                                     "far": r(ses.far), "frr": r(ses.frr)},
                "notice": "; ".join(n for n in (
                    None if cal is None else cal.notice,
                    None if abs(window_s - CALIBRATED_WINDOW_S) < 1e-9 else
                    f"windows are calibrated at {CALIBRATED_WINDOW_S:g} s; this stream's {window_s:g} s windows "
                    f"are decided with that calibration") if n) or None}


@dataclass(eq=False)
class WindowJob:
    """One window to embed and score."""

    session: "Session" = field(repr=False)
    index: int
    samples: np.ndarray = field(repr=False)
    start: float
    end: float
    received_at: float  # monotonic time the audio completing this window arrived
    claimed: str | None
    top_k: int
    snapshot: ScoringSnapshot = field(repr=False)  # the stream's pinned scoring state
    band: str = WIDE
    cancelled: bool = False  # dropped by the overload policy
    taken: bool = False  # picked up by the embedder (can no longer be dropped)


@dataclass
class WindowResult:
    job: WindowJob
    window: SearchResult | None = None  # speakers ranked by window score, with LLR and cosine
    claimed_window: float | None = None  # the claimed speaker's backend score for this window
    clone: CloneAssessment | None = None
    error: str | None = None


@dataclass
class Output:
    events: list[dict] = field(default_factory=list)
    jobs: list[WindowJob] = field(default_factory=list)
    dropped: int = 0  # windows dropped by the overload policy during this call
    stop: bool = False  # the client sent ``stop``: flush done, send the summary once jobs finish


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _top(result: SearchResult | None, k: int = 20) -> list[dict]:
    return [] if result is None else [{"speaker": s.speaker, "score": _r(s.score), "llr": _r(s.llr),
                                       "cosine": _r(s.cosine)} for s in result.speakers[:k]]


class Session:
    """The state of one stream."""

    def __init__(self, engine: EngineInfo, limits: SessionLimits | None = None):
        self.engine = engine
        self.limits = limits or SessionLimits()
        self.start: Start | None = None
        self.stream_id = ""
        self.stopped = False
        self._seq = 0
        self._frames_in = 0  # input sample frames received
        self._resampler: soxr.ResampleStream | None = None
        self._vad: VoiceActivityDetector | None = None
        self._windows: WindowScheduler | None = None
        self._speech_started_at: float | None = None
        self.pending: deque[WindowJob] = deque()
        self._lock = threading.Lock()
        self.band = WIDE
        self.identity: IdentityTracker | None = None
        self.verification: VerificationTracker | None = None
        self.evidence = SessionEvidence()
        self.clone = CloneTracker()
        self.heard: dict[str, int] = {}  # speaker -> windows the identity decision held it
        self.scored = 0
        self.dropped = 0
        self._warned_at = -1e9

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Stream time: seconds of input audio received."""
        return self._frames_in / self.start.sample_rate if self.start else 0.0

    @property
    def speech_seconds(self) -> float:
        if self._vad is None:
            return 0.0
        return self._vad.voiced_frames * self._vad.frame_len / SAMPLE_RATE

    def event(self, type_: str, time: float | None = None, **fields) -> dict:
        ev = {"type": type_, "stream_id": self.stream_id, "seq": self._seq,
              "time": round(self.time if time is None else time, 4), **fields}
        self._seq += 1
        return ev

    def error_event(self, err: ProtocolError) -> dict:
        return self.event("error", code=err.code, message=err.message, close_code=err.close_code)

    # -- client input ----------------------------------------------------------------------
    def receive_text(self, text: str, now: float = 0.0) -> Output:
        msg = parse_client_text(text)
        if isinstance(msg, Start):
            if self.start is not None:
                raise ProtocolError("already_started", "this stream was already started")
            return self._begin(msg)
        assert isinstance(msg, Stop)
        if self.start is None:
            raise ProtocolError("not_started", "'stop' before 'start'")
        return self.finish()

    def _begin(self, start: Start) -> Output:
        if start.claimed_speaker is not None and start.claimed_speaker not in self.engine.speakers:
            raise ProtocolError("unknown_speaker",
                                f"claimed speaker {start.claimed_speaker!r} is not enrolled")
        self.start = start
        self.stream_id = start.stream_id
        o = start.options
        if start.sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(start.sample_rate, SAMPLE_RATE, 1, dtype="float32",
                                                  quality="HQ")
        self._vad = VoiceActivityDetector(VadConfig(aggressiveness=o.vad_aggressiveness, frame_ms=o.vad_frame_ms))
        self._windows = WindowScheduler(WindowConfig(window_s=o.window, hop_s=o.hop))
        self.band = TELEPHONE if start.sample_rate <= TELEPHONE_RATE else WIDE
        snap = self.engine.snapshot
        open_set = snap.open_set_llr("window", self.band)
        # uncalibrated (no calibration and no shipped default): no window ever names a speaker
        self.identity = IdentityTracker(float("inf") if open_set is None else open_set,
                                        self.limits.enter_windows, self.limits.exit_windows)
        if start.claimed_speaker is not None:
            band = self.band
            self.verification = VerificationTracker(start.claimed_speaker, snap.trial("window", band),
                                                    lambda n: snap.session(n, band), self.limits.undecided_band,
                                                    self.limits.verify_min_windows)
        ready = self.event(
            "ready", 0.0, protocol_version=PROTOCOL_VERSION, embedder=self.engine.embedder,
            index=self.engine.index, thresholds=self.engine.thresholds(self.band, self.limits, o.window),
            decision={"enter_windows": self.limits.enter_windows, "exit_windows": self.limits.exit_windows,
                      "verify_min_windows": self.limits.verify_min_windows},
            input={"sample_rate": start.sample_rate, "encoding": start.encoding, "channels": start.channels},
            options={"window": o.window, "hop": o.hop, "vad_aggressiveness": o.vad_aggressiveness,
                     "vad_frame_ms": o.vad_frame_ms, "top_k": o.top_k},
            claimed_speaker=start.claimed_speaker)
        return Output(events=[ready])

    def receive_audio(self, data: bytes, now: float = 0.0) -> Output:
        if self.start is None:
            raise ProtocolError("not_started", "audio before 'start'")
        if self.stopped:
            raise ProtocolError("invalid_message", "audio after 'stop'")
        if len(data) > self.limits.max_frame_bytes:
            raise ProtocolError("frame_too_large", f"binary message of {len(data)} bytes exceeds the "
                                                   f"limit of {self.limits.max_frame_bytes} bytes")
        fb = self.start.frame_bytes
        if len(data) % fb:
            raise ProtocolError("partial_frame", f"{len(data)} bytes is not a whole number of "
                                                 f"{fb}-byte sample frames ({self.start.encoding}, "
                                                 f"{self.start.channels} channel(s))")
        if not data:
            return Output()
        x = pcm_to_float(data, self.start.encoding, self.start.channels)
        if self.start.encoding == "pcm_f32le" and not np.isfinite(x).all():
            raise ProtocolError("non_finite_audio", "pcm_f32le audio holds NaN or infinite samples")
        if self.start.encoding == "pcm_f32le":
            x = np.clip(x, -1.0, 1.0)  # full scale is ±1; louder samples clip, as a DAC would
        self._frames_in += len(x)
        if self.time > self.limits.max_duration:
            raise ProtocolError("duration_limit", f"the stream exceeded the maximum duration of "
                                                  f"{self.limits.max_duration:g} s")
        mono = downmix(x)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=False)
        return self._process(mono, now)

    def finish(self) -> Output:
        """End of input (``stop`` or shutdown): flush the resampler, VAD and scheduler."""
        if self.start is None or self.stopped:
            return Output(stop=True)
        self.stopped = True
        tail = np.zeros(0, dtype=np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(tail, last=True)
        out = self._process(tail, None, final=True)
        out.stop = True
        return out

    def _process(self, samples: np.ndarray, now: float | None, final: bool = False) -> Output:
        out = Output()
        vad_events = self._vad.process(samples) if len(samples) else []
        if final:
            vad_events += self._vad.flush()
        windows = []
        for ev in vad_events:
            if isinstance(ev, Voiced):
                windows.extend(self._windows.push(ev.samples, ev.start))
            elif isinstance(ev, SpeechStart):
                self._speech_started_at = ev.time
                out.events.append(self.event("speech_start", ev.time))
            elif isinstance(ev, SpeechEnd):
                began = self._speech_started_at if self._speech_started_at is not None else ev.time
                out.events.append(self.event("speech_end", ev.time, duration=round(ev.time - began, 4)))
                self._speech_started_at = None
        if final:
            windows.extend(self._windows.flush())
        stamp = time.monotonic() if now is None else now
        claimed = self.start.claimed_speaker
        for w in windows:
            job = WindowJob(self, w.index, w.samples, w.start, w.end, stamp, claimed, self.start.options.top_k,
                            self.engine.snapshot, self.band)
            out.jobs.append(job)
        out.dropped = self._enqueue(out.jobs)
        if out.dropped and self.time - self._warned_at >= 1.0:
            self._warned_at = self.time
            out.events.append(self.event("warning", code="overload", message=WARNINGS["overload"],
                                         dropped_windows=self.dropped))
        return out

    def _enqueue(self, jobs: list[WindowJob]) -> int:
        """Apply the overload policy; returns how many waiting windows were dropped."""
        dropped = 0
        with self._lock:
            for job in jobs:
                self.pending.append(job)
                while len(self.pending) > self.limits.max_pending:
                    victim = next((j for j in self.pending if not j.taken), None)
                    if victim is None:
                        break
                    victim.cancelled = True
                    self.pending.remove(victim)
                    dropped += 1
        self.dropped += dropped
        return dropped

    # -- scored windows --------------------------------------------------------------------
    def complete(self, result: WindowResult) -> list[dict]:
        """Events for one scored window (none if the window had been dropped)."""
        job = result.job
        with self._lock:
            if job.cancelled:
                return []
            try:
                self.pending.remove(job)
            except ValueError:
                return []
        if result.error is not None:
            raise RuntimeError(result.error)
        self.scored += 1
        win = {"index": job.index, "start": round(job.start, 4), "end": round(job.end, 4)}
        best = result.window.best if result.window else None
        decision = self.identity.update(best.speaker if best else None, best.llr if best else None)
        if decision.speaker is not None:
            self.heard[decision.speaker] = self.heard.get(decision.speaker, 0) + 1
        if result.window is not None:
            self.evidence.add([(s.speaker, s.score) for s in result.window.speakers])
        snap = self.engine.snapshot
        win_cal = snap.trial("window", self.band)
        events = [self.event(
            "identity", job.end, window=win, speaker=best.speaker if best else None,
            score=_r(best.score) if best else None, llr=_r(best.llr) if best else None,
            cosine=_r(best.cosine) if best else None,
            margin=_r(result.window.margin) if result.window else None,
            top=_top(result.window, job.top_k), decision=decision.as_dict(),
            threshold_llr=None if self.identity.threshold == float("inf") else _r(self.identity.threshold),
            calibration=None if win_cal is None else win_cal.label(),
            session=self.session_identity(job.top_k))]
        if self.verification is not None:
            v = self.verification
            w, _ = v.update(result.claimed_window)
            events.append(self.event(
                "verification", job.end, claimed_speaker=v.claimed, threshold=_r(v.threshold),
                calibration=None if win_cal is None else win_cal.label(),
                window={**win, "score": _r(result.claimed_window), "llr": _r(v.window_llr(result.claimed_window)),
                        "decision": w},
                session=v.session_dict()))
        if result.clone is not None and self.clone.update(result.clone.score, result.clone.level):
            c = result.clone
            events.append(self.event("clone_suspicion", job.end, window=win, speaker=c.speaker,
                                     score=_r(c.score), level=c.level, evidence=c.evidence,
                                     session=self.clone.as_dict()))
        return events

    def session_identity(self, k: int = 5) -> dict:
        """Who the whole stream so far is (open set): the speaker with the best mean window
        score, named when that mean's session LLR passes the open-set threshold."""
        snap = self.engine.snapshot
        n = self.evidence.windows
        ranking = self.evidence.ranking(k)
        cal = snap.session(n, self.band) if n else None
        if not ranking or cal is None:
            return {"speaker": None, "best": ranking[0][0] if ranking else None,
                    "score": _r(ranking[0][1]) if ranking else None, "llr": None, "threshold_llr": None,
                    "top": [{"speaker": s, "score": _r(v)} for s, v in ranking], "windows": n,
                    "calibration": None}
        threshold = snap.open_set_llr("session", self.band, n)
        llrs = cal.llr([v for _, v in ranking])
        named = float(llrs[0]) >= threshold
        return {"speaker": ranking[0][0] if named else None, "best": ranking[0][0], "score": _r(ranking[0][1]),
                "llr": _r(llrs[0]), "threshold_llr": _r(threshold),
                "top": [{"speaker": s, "score": _r(v), "llr": _r(x)} for (s, v), x in zip(ranking, llrs)],
                "windows": n, "calibration": cal.label()}

    def summary(self, reason: str) -> dict:
        """The ``summary`` event (after every job of the stream completed)."""
        duration = self.time
        speech = self.speech_seconds
        ident = {**self.session_identity(),
                 "decision": {"speaker": self.identity.current if self.identity else None,
                              "changes": self.identity.changes if self.identity else 0},
                 "speakers_heard": [{"speaker": s, "windows": n} for s, n in
                                    sorted(self.heard.items(), key=lambda kv: -kv[1])]}
        return self.event(
            "summary", duration, reason=reason, duration=round(duration, 4), speech_duration=round(speech, 4),
            speech_ratio=round(speech / duration, 4) if duration else 0.0,
            band=self.band,
            windows={"emitted": self._windows.windows_emitted if self._windows else 0, "scored": self.scored,
                     "dropped": self.dropped},
            identity=ident, verification=self.verification.summary() if self.verification else None,
            clone=self.clone.as_dict())
