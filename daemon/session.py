"""One speaker track's engine, free of I/O: no sockets, no threads, no clock.

A :class:`Session` is fed float samples of one track (``receive_samples``) and answers
with an :class:`Output`: events, and immutable :class:`WindowRequest` s for the shared
worker (:mod:`.batcher`).  The worker answers each request with an immutable
:class:`WindowResult`, which :meth:`Session.complete` turns into ``identity`` /
``verification`` / ``clone_suspicion`` events.  Every piece of per-track state — the
resampler, VAD, window scheduler, the windows still outstanding, the decision trackers,
the pinned scoring snapshot — is owned here and touched only by the caller's thread (the
server's event loop).  The caller passes the time (``now``) in; the session never reads
a clock.  The protocol (parsing messages, numbering events, channel layouts) is
:class:`~voxguard.daemon.call.CallSession`'s job.

Audio path: float samples -> downmix -> streaming resample to 16 kHz
(``soxr.ResampleStream``) -> webrtcvad segmenter (``speech_start`` / ``speech_end``)
-> window scheduler over voiced audio -> window requests.

Scoring snapshot: the one current when the stream starts (index, calibration, clone
detector) is pinned for the stream's life, so every running mean stays in one set of
units; a reload applies to streams started after it.  One exception: when a reload
removes the claimed speaker, :meth:`Session.revoke_claim` turns the claim into a
``reject`` (a ``warning`` event says why) — a removed speaker is never accepted.

Overload policy (``realtime``, the default): at most ``max_pending`` windows of a track
are outstanding; when a new window would exceed that, the oldest outstanding window the
worker has not yet taken (the worker says which it took: :meth:`Session.taken`) is
dropped and withdrawn from the worker's queue; a result that comes back for a dropped
window anyway (it was taken just before the news arrived) is ignored by its index.  Drops are counted in the summary and reported by a
``warning`` event at most once per second of stream time.  With ``realtime: false``
(files) nothing is dropped: the server stops reading while :attr:`Session.backlog` is at
``max_pending`` (backpressure).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import soxr

from voxguard import SAMPLE_RATE
from voxguard.audio import downmix
from voxguard.bands import WIDE, detect_band
from voxguard.clone_detection import CloneAssessment
from voxguard.index import SearchResult
from voxguard.protocol import CLONE_LEVELS, PROTOCOL_VERSION, WARNINGS, ProtocolError, Start
from voxguard.vad import SpeechEnd, SpeechStart, VadConfig, VoiceActivityDetector, Voiced
from voxguard.windows import WindowConfig, WindowScheduler

from .countermeasure_checks import (ContextRequest, ContextResult, ContextScheduler, CountermeasureInfo,
                                    CountermeasureTracker)
from .decisions import CloneTracker, IdentityTracker, SessionEvidence, VerificationTracker
from .snapshot import ScoringSnapshot


@dataclass(frozen=True)
class SessionLimits:
    max_frame_bytes: int = 1 << 20
    max_duration: float = 4 * 3600.0  # seconds of stream time
    max_pending: int = 16  # windows outstanding at the worker, per track
    enter_windows: int = 2
    exit_windows: int = 3
    undecided_band: float = 0.5  # LLR units: undecided within ±band of a threshold
    verify_min_windows: int = 3
    # enrollment from a call (POST /v1/streams/{id}/enroll): the newest voiced audio kept per
    # track (seconds; 0: none kept, no enrollment from calls) and how long after the stream ends
    # it stays available (the server keeps it; the session only holds it)
    enroll_buffer_s: float = 60.0
    enroll_window_s: float = 120.0
    enroll_min_speech_s: float = 8.0


CALIBRATED_WINDOW_S = WindowConfig().window_s  # what enrollment windows, and so every calibration, use


@dataclass(frozen=True)
class EngineInfo:
    """What a stream is scored against: the model, and the scoring snapshot current when
    the stream starts (index, calibration, clone detector), pinned for its whole life."""

    embedder: dict
    snapshot: ScoringSnapshot
    countermeasure: CountermeasureInfo | None = None  # the pretrained countermeasure, when installed
    countermeasure_reason: str | None = None  # why there is none

    def clone_detection(self) -> dict:
        """The ``ready`` event's ``clone_detection``: whether anything weighs clone evidence on this stream
        (the store's window detector, the pretrained countermeasure), and if nothing does, why."""
        det = self.snapshot.detector
        sources = ([det.source] if det.available else []) + ([self.countermeasure.name] if self.countermeasure else [])
        reasons = ([] if det.available else [det.reason or "no window detector"]) + (
            [] if self.countermeasure else [self.countermeasure_reason or "no countermeasure"])
        return {"available": bool(sources), "sources": sources,
                "reason": None if sources else "; ".join(reasons)}

    def countermeasure_status(self) -> dict:
        """The ``ready`` event's ``countermeasure``: what checks this stream's voiced audio, or why nothing does."""
        if self.countermeasure is None:
            return {"available": False, "reason": self.countermeasure_reason or "no countermeasure"}
        return {"available": True, **self.countermeasure.as_dict()}

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


@dataclass(frozen=True, eq=False)
class WindowRequest:
    """One window to embed and score: everything the worker needs, nothing it may change."""

    key: int  # the track (Session) it belongs to
    index: int  # the window's number in its track
    start: float  # stream time of the window's first and last voiced sample
    end: float
    samples: np.ndarray = field(repr=False)  # 16 kHz float32, read-only
    snapshot: ScoringSnapshot = field(repr=False)  # the track's pinned scoring state
    band: str = WIDE
    claimed: str | None = None
    top_k: int = 5


@dataclass(frozen=True, eq=False)
class WindowResult:
    """The worker's answer for one :class:`WindowRequest`."""

    key: int
    index: int
    vector: np.ndarray | None = field(default=None, repr=False)  # the window's embedding
    window: SearchResult | None = None  # speakers ranked by window score, with LLR and cosine
    claimed_score: float | None = None  # the claimed speaker's backend score for this window
    clone: CloneAssessment | None = None
    error: str | None = None


@dataclass
class Output:
    events: list[dict] = field(default_factory=list)
    requests: list[WindowRequest] = field(default_factory=list)
    withdrawn: list[tuple[int, int]] = field(default_factory=list)  # (key, index) dropped by the overload policy
    checks: list[ContextRequest] = field(default_factory=list)  # countermeasure contexts for its worker
    stop: bool = False  # the client sent ``stop``: flush done, send the summary once the backlog is empty

    @property
    def dropped(self) -> int:
        return len(self.withdrawn)

    def extend(self, other: "Output") -> None:
        self.events.extend(other.events)
        self.requests.extend(other.requests)
        self.withdrawn.extend(other.withdrawn)
        self.checks.extend(other.checks)
        self.stop = self.stop or other.stop


@dataclass(frozen=True)
class EnrollMaterial:
    """What a track offers for enrollment: its newest voiced audio (16 kHz float32, at most
    ``enroll_buffer_s`` seconds), the embeddings of its scored windows over that audio, and what
    the stream decided about it (clone level, who was identified)."""

    audio: np.ndarray
    vectors: np.ndarray  # [n, dim]
    clone_level: str  # the highest session clone level reached
    # enrolled speakers the stream named (window decision, session identity) or whose session
    # LLR passes the accept threshold
    identified: frozenset[str]
    band: str

    @property
    def speech_seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class _Outstanding:
    request: WindowRequest  # what was handed to the worker (the window's times among it)
    received_at: float  # the caller's clock when the audio completing this window arrived


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _top(result: SearchResult | None, k: int = 20) -> list[dict]:
    return [] if result is None else [{"speaker": s.speaker, "score": _r(s.score), "llr": _r(s.llr),
                                       "cosine": _r(s.cosine)} for s in result.speakers[:k]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


_keys = itertools.count(1)


class Session:
    """The state of one track (one speaker channel) of a started stream."""

    def __init__(self, engine: EngineInfo, start: Start, limits: SessionLimits | None = None,
                 key: int | None = None):
        self.engine = engine
        self.snapshot = engine.snapshot  # pinned for the track's life
        self.limits = limits or SessionLimits()
        self.start = start
        self.key = next(_keys) if key is None else key
        self.stream_id = start.stream_id
        self.stopped = False
        o = start.options
        self.realtime = o.realtime
        self._frames_in = 0  # input sample frames received
        self._resampler = (None if start.sample_rate == SAMPLE_RATE else
                           soxr.ResampleStream(start.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"))
        self._vad = VoiceActivityDetector(VadConfig(aggressiveness=o.vad_aggressiveness, frame_ms=o.vad_frame_ms))
        self._windows = WindowScheduler(WindowConfig(window_s=o.window, hop_s=o.hop))
        self._speech_started_at: float | None = None
        self._outstanding: OrderedDict[int, _Outstanding] = OrderedDict()
        self._taken: set[int] = set()  # outstanding windows the worker has taken (never dropped)
        self.band = detect_band(None, start.sample_rate, start.encoding)
        open_set = self.snapshot.open_set_llr("window", self.band)
        # uncalibrated (no calibration and no shipped default): no window ever names a speaker
        self.identity = IdentityTracker(float("inf") if open_set is None else open_set,
                                        self.limits.enter_windows, self.limits.exit_windows)
        self.verification: VerificationTracker | None = None
        if start.claimed_speaker is not None:
            snap, band = self.snapshot, self.band
            self.verification = VerificationTracker(start.claimed_speaker, snap.trial("window", band),
                                                    lambda n: snap.session(n, band), self.limits.undecided_band,
                                                    self.limits.verify_min_windows)
        self.evidence = SessionEvidence()
        self.clone = CloneTracker()
        cm = engine.countermeasure
        self._cm = None if cm is None else ContextScheduler(self.key, cm.context_samples, cm.min_samples,
                                                                 supersede=self.realtime)
        self.countermeasure = None if cm is None else CountermeasureTracker(cm)
        self._checks: dict[int, ContextRequest] = {}  # countermeasure checks not answered yet
        self.heard: dict[str, int] = {}  # speaker -> windows the identity decision held it
        self.scored = 0
        self.dropped = 0
        self._warned_at = -1e9
        # enrollment buffer: voiced audio as int16 (bounded), window embeddings over it
        self._voiced: deque[np.ndarray] = deque()
        self._voiced_len = 0
        self._voiced_max = int(self.limits.enroll_buffer_s * SAMPLE_RATE)
        hop = max(o.hop, 0.1)
        self._vectors: deque[np.ndarray] = deque(maxlen=max(1, int(self.limits.enroll_buffer_s / hop) + 1))

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Stream time: seconds of input audio received."""
        return self._frames_in / self.start.sample_rate

    @property
    def speech_seconds(self) -> float:
        return self._vad.voiced_frames * self._vad.frame_len / SAMPLE_RATE

    @property
    def backlog(self) -> int:
        """Windows and countermeasure checks handed to the workers whose results have not come back
        (the summary waits for all of them)."""
        return len(self._outstanding) + len(self._checks)

    @property
    def window_backlog(self) -> int:
        return len(self._outstanding)

    @property
    def check_backlog(self) -> int:
        return len(self._checks)

    def received_at(self, index: int) -> float | None:
        o = self._outstanding.get(index)
        return None if o is None else o.received_at

    def event(self, type_: str, time: float | None = None, **fields) -> dict:
        """An event of this track; the call numbers it (``seq``) before it is sent."""
        return {"type": type_, "stream_id": self.stream_id, "seq": None,
                "time": round(self.time if time is None else time, 4), **fields}

    def ready_event(self) -> dict:
        start, o = self.start, self.start.options
        return self.event(
            "ready", 0.0, protocol_version=PROTOCOL_VERSION, embedder=self.engine.embedder,
            index=self.engine.index, thresholds=self.engine.thresholds(self.band, self.limits, o.window),
            decision={"enter_windows": self.limits.enter_windows, "exit_windows": self.limits.exit_windows,
                      "verify_min_windows": self.limits.verify_min_windows},
            input={"sample_rate": start.sample_rate, "encoding": start.encoding, "channels": start.channels},
            options={"window": o.window, "hop": o.hop, "vad_aggressiveness": o.vad_aggressiveness,
                     "vad_frame_ms": o.vad_frame_ms, "top_k": o.top_k, "realtime": o.realtime},
            countermeasure=self.engine.countermeasure_status(), clone_detection=self.engine.clone_detection(),
            claimed_speaker=start.claimed_speaker, enrollment=self.enrollment_info())

    def enrollment_info(self) -> dict | None:
        """The ``ready`` event's ``enrollment``: what ``POST /v1/streams/{id}/enroll`` can use."""
        lim = self.limits
        if lim.enroll_buffer_s <= 0:
            return None
        return {"buffer_s": lim.enroll_buffer_s, "window_after_s": lim.enroll_window_s,
                "min_speech_s": lim.enroll_min_speech_s}

    def _keep_voiced(self, samples: np.ndarray) -> None:
        if self._voiced_max <= 0 or not len(samples):
            return
        chunk = (np.clip(samples[-self._voiced_max:], -1, 1) * 32767).astype(np.int16)
        self._voiced.append(chunk)
        self._voiced_len += len(chunk)
        while self._voiced_len > self._voiced_max:
            extra = self._voiced_len - self._voiced_max
            first = self._voiced[0]
            if len(first) <= extra:
                self._voiced.popleft()
                self._voiced_len -= len(first)
            else:
                self._voiced[0] = first[extra:]
                self._voiced_len -= extra

    def enrollment_material(self) -> EnrollMaterial:
        audio = (np.concatenate(list(self._voiced)).astype(np.float32) / 32767 if self._voiced
                 else np.zeros(0, np.float32))
        dim = len(self._vectors[0]) if self._vectors else 0
        vectors = np.stack(list(self._vectors)) if self._vectors else np.zeros((0, dim), np.float32)
        named = set(self.heard)
        who = self.session_identity()["speaker"]
        if who is not None:
            named.add(who)
        # and every speaker whose mean window score over the stream passes the session
        # calibration's accept (verification) threshold, named or not
        n = self.evidence.windows
        cal = self.snapshot.session(n, self.band) if n else None
        ranking = self.evidence.ranking(max(1, self.snapshot.enrolled))
        if cal is not None and ranking:
            for (speaker, _), llr in zip(ranking, cal.llr([v for _, v in ranking])):
                if float(llr) >= cal.accept_llr:
                    named.add(speaker)
        # the clone gate reads the session's clone state: window evidence and countermeasure checks together
        return EnrollMaterial(audio, vectors, self.clone_session()["max_level"], frozenset(named), self.band)

    # -- input ----------------------------------------------------------------------------------
    def receive_samples(self, x: np.ndarray, now: float) -> Output:
        """Float samples of this track at the stream's rate ([frames] or [frames, channels],
        channels averaged), already checked and clipped by the call."""
        if self.stopped:
            raise ProtocolError("invalid_message", "audio after 'stop'")
        if not len(x):
            return Output()
        self._frames_in += len(x)
        if self.time > self.limits.max_duration:
            raise ProtocolError("duration_limit", f"the stream exceeded the maximum duration of "
                                                  f"{self.limits.max_duration:g} s")
        mono = downmix(x)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=False)
        return self._process(mono, now)

    def finish(self, now: float) -> Output:
        """End of input (``stop`` or shutdown): flush the resampler, VAD and scheduler."""
        if self.stopped:
            return Output(stop=True)
        self.stopped = True
        tail = np.zeros(0, dtype=np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(tail, last=True)
        out = self._process(tail, now, final=True)
        out.stop = True
        return out

    def _process(self, samples: np.ndarray, now: float, final: bool = False) -> Output:
        out = Output()
        vad_events = self._vad.process(samples) if len(samples) else []
        if final:
            vad_events += self._vad.flush()
        windows = []
        for ev in vad_events:
            if isinstance(ev, Voiced):
                self._keep_voiced(ev.samples)
                windows.extend(self._windows.push(ev.samples, ev.start))
                if self._cm is not None:
                    out.checks.extend(self._cm.push(ev.samples, ev.start))
            elif isinstance(ev, SpeechStart):
                self._speech_started_at = ev.time
                out.events.append(self.event("speech_start", ev.time))
            elif isinstance(ev, SpeechEnd):
                began = self._speech_started_at if self._speech_started_at is not None else ev.time
                out.events.append(self.event("speech_end", ev.time, duration=round(ev.time - began, 4)))
                self._speech_started_at = None
        if final:
            windows.extend(self._windows.flush())
            last = self._cm.flush() if self._cm is not None else None
            if last is not None:
                out.checks.append(last)
        for c in out.checks:
            self._checks[c.index] = c
        for w in windows:
            samples = np.array(w.samples, dtype=np.float32)  # the request's own, read-only copy
            samples.flags.writeable = False
            req = WindowRequest(self.key, w.index, w.start, w.end, samples, self.snapshot, self.band,
                                self.start.claimed_speaker, self.start.options.top_k)
            out.requests.append(req)
            self._outstanding[w.index] = _Outstanding(req, now)
            if self.realtime and len(self._outstanding) > self.limits.max_pending:
                victim = next((i for i in self._outstanding if i not in self._taken), None)
                if victim is not None:
                    del self._outstanding[victim]
                    out.withdrawn.append((self.key, victim))
        # a window dropped before it left this call is not sent at all
        gone = {i for _, i in out.withdrawn}
        if gone:
            out.requests = [r for r in out.requests if r.index not in gone]
            self.dropped += len(gone)
            if self.time - self._warned_at >= 1.0:
                self._warned_at = self.time
                out.events.append(self.event("warning", code="overload", message=WARNINGS["overload"],
                                             dropped_windows=self.dropped))
        return out

    def taken(self, index: int) -> None:
        """The worker took window ``index`` into a batch: it will be answered, so it is no
        longer a candidate for dropping."""
        if index in self._outstanding:
            self._taken.add(index)

    def abandon(self) -> list[tuple[int, int]]:
        """The stream ends without a summary: forget every outstanding window (returns them
        for the worker's queue to withdraw)."""
        gone = [(self.key, i) for i in self._outstanding]
        self._outstanding.clear()
        self._taken.clear()
        self._checks.clear()
        return gone

    # -- store changes ---------------------------------------------------------------------
    def revoke_claim(self, snapshot: ScoringSnapshot) -> list[dict]:
        """A reload produced ``snapshot``; if it no longer enrolls the claimed speaker, the
        claim is rejected from now on (the pinned snapshot still scores the rest)."""
        v = self.verification
        if v is None or v.revoked or v.claimed in snapshot.speakers:
            return []
        v.revoke(f"claimed speaker {v.claimed!r} was removed from the store (revision {snapshot.revision})")
        return [self.event("warning", code="claimed_speaker_removed", message=v.revoked,
                           claimed_speaker=v.claimed)]

    # -- scored windows --------------------------------------------------------------------
    def complete(self, result: WindowResult) -> list[dict]:
        """Events for one scored window (none when it was dropped: stale results are ignored
        by index)."""
        slot = self._outstanding.pop(result.index, None)
        self._taken.discard(result.index)
        if slot is None:
            return []
        req = slot.request
        if result.error is not None:
            raise RuntimeError(result.error)
        self.scored += 1
        if result.vector is not None and self._voiced_max > 0:
            self._vectors.append(np.asarray(result.vector, dtype=np.float32))
        win = {"index": result.index, "start": round(req.start, 4), "end": round(req.end, 4)}
        best = result.window.best if result.window else None
        decision = self.identity.update(best.speaker if best else None, best.llr if best else None)
        if decision.speaker is not None:
            self.heard[decision.speaker] = self.heard.get(decision.speaker, 0) + 1
        if result.window is not None:
            self.evidence.add([(s.speaker, s.score) for s in result.window.speakers])
        top_k = self.start.options.top_k
        win_cal = self.snapshot.trial("window", self.band)
        events = [self.event(
            "identity", req.end, window=win, speaker=best.speaker if best else None,
            score=_r(best.score) if best else None, llr=_r(best.llr) if best else None,
            cosine=_r(best.cosine) if best else None,
            margin=_r(result.window.margin) if result.window else None,
            top=_top(result.window, top_k), decision=decision.as_dict(),
            threshold_llr=None if self.identity.threshold == float("inf") else _r(self.identity.threshold),
            calibration=None if win_cal is None else win_cal.label(),
            session=self.session_identity(top_k))]
        if self.verification is not None:
            v = self.verification
            w, _ = v.update(result.claimed_score)
            events.append(self.event(
                "verification", req.end, claimed_speaker=v.claimed, threshold=_r(v.threshold),
                calibration=None if win_cal is None else win_cal.label(),
                window={**win, "score": _r(result.claimed_score), "llr": _r(v.window_llr(result.claimed_score)),
                        "decision": w},
                session=v.session_dict()))
        if result.clone is not None and self.clone.update(result.clone):
            c = result.clone
            events.append(self.event("clone_suspicion", req.end, window=win, speaker=c.speaker,
                                     score=_r(c.score), llr=_r(c.llr), level=c.level, evidence=c.evidence,
                                     session=self.clone_session()))
        return events

    def complete_check(self, result: ContextResult) -> list[dict]:
        """Events for one answered countermeasure check (none when it was skipped or failed)."""
        req = self._checks.pop(result.index, None)
        if req is None or self.countermeasure is None:
            return []
        upd = self.countermeasure.update(req, result)
        if upd is None:
            return []
        c = upd["check"]
        info = self.countermeasure.info
        who = self.start.claimed_speaker or self.identity.current
        return [self.event("clone_suspicion", req.end, check=c, speaker=who, score=_r(_sigmoid(c["llr"])),
                           llr=c["llr"], level=c["level"],
                           evidence={"detector": info.name, "values": {"countermeasure_raw": c["raw"]},
                                     "contributions": {"countermeasure": c["llr"]}},
                           session=self.clone_session())]

    def clone_session(self) -> dict:
        """The session's clone state: the window evidence's CUSUM and the countermeasure's, and the
        higher of their levels (``unavailable`` only when neither is available)."""
        d = self.clone.as_dict()
        cm = self.countermeasure
        if cm is None:
            return d
        order = ("unavailable",) + tuple(CLONE_LEVELS)
        d["window_level"], d["window_max_level"] = d["level"], d["max_level"]
        d["countermeasure"] = cm.as_dict(self.speech_seconds)
        cm_level = cm.level if cm.checks else "none"
        d["level"] = max(d["level"], cm_level, key=order.index)
        d["max_level"] = max(d["max_level"], cm.max_level if cm.checks else "none", key=order.index)
        return d

    def session_identity(self, k: int = 5) -> dict:
        """Who the whole stream so far is (open set): the speaker with the best mean window
        score, named when that mean's session LLR passes the open-set threshold."""
        snap = self.snapshot
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
        """The ``summary`` event (after every outstanding window came back)."""
        duration = self.time
        speech = self.speech_seconds
        ident = {**self.session_identity(),
                 "decision": {"speaker": self.identity.current, "changes": self.identity.changes},
                 "speakers_heard": [{"speaker": s, "windows": n} for s, n in
                                    sorted(self.heard.items(), key=lambda kv: -kv[1])]}
        return self.event(
            "summary", duration, reason=reason, duration=round(duration, 4), speech_duration=round(speech, 4),
            speech_ratio=round(speech / duration, 4) if duration else 0.0,
            band=self.band, realtime=self.realtime,
            windows={"emitted": self._windows.windows_emitted, "scored": self.scored, "dropped": self.dropped},
            identity=ident, verification=self.verification.summary() if self.verification else None,
            clone=self.clone_session())
