"""The sans-I/O engine (Session, decisions, batcher.process) without sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import speech_like
from daemon_support import build_store, fake_engine, held_out

from voxguard.audio import load_audio, resample
from voxguard.daemon.batcher import Batcher
from voxguard.daemon.decisions import IdentityTracker, VerificationTracker, verdict
from voxguard.daemon.call import CallSession
from voxguard.daemon.session import EngineInfo, SessionLimits
from voxguard.daemon.snapshot import load_snapshot
from voxguard.llr import calibrate_trials
from voxguard.protocol import ProtocolError
from voxguard.windows import speech_windows

ENGINE = fake_engine({"alice"})


def start(session: CallSession, **over) -> list[dict]:
    msg = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "stream_id": "s1", **over}
    return session.receive_text(json.dumps(msg)).events


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def with_silence(x: np.ndarray, sr: int = 16000, lead: float = 0.6, trail: float = 1.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(lead * sr), np.float32), x, np.zeros(int(trail * sr), np.float32)])


def feed(session: CallSession, data: bytes, sizes, frame_bytes: int = 2, withdrawn: list | None = None):
    """Feed ``data`` in chunks (sizes cycle, rounded to whole frames); returns (events, jobs)."""
    events, jobs = [], []
    i, k = 0, 0
    while i < len(data):
        n = max(frame_bytes, sizes[k % len(sizes)] // frame_bytes * frame_bytes)
        out = session.receive_audio(data[i:i + n])
        events += out.events
        jobs += out.requests
        if withdrawn is not None:
            withdrawn += out.withdrawn
        i += n
        k += 1
    out = session.receive_text('{"type": "stop"}')
    return events + out.events, jobs + out.requests


# -- protocol errors --------------------------------------------------------------------------
@pytest.mark.parametrize("action, code", [
    (lambda s: s.receive_audio(b"\0\0"), "not_started"),
    (lambda s: s.receive_text('{"type": "stop"}'), "not_started"),
    (lambda s: s.receive_text("not json"), "invalid_json"),
    (lambda s: s.receive_text('{"type": "hello"}'), "unknown_type"),
    (lambda s: start(s, sample_rate=96000), "unsupported_format"),
    (lambda s: start(s, encoding="mp3"), "unsupported_format"),
    (lambda s: start(s, channels=6), "unsupported_format"),
    (lambda s: start(s, claimed_speaker="bob"), "unknown_speaker"),
    (lambda s: start(s, options={"window": 99}), "invalid_message"),
])
def test_session_errors_before_start(action, code):
    with pytest.raises(ProtocolError) as e:
        action(CallSession(ENGINE))
    assert e.value.code == code


def test_session_errors_after_start():
    s = CallSession(ENGINE, SessionLimits(max_frame_bytes=4096, max_duration=1.0))
    assert start(s)[0]["type"] == "ready"
    for action, code in [(lambda: start(s), "already_started"),
                         (lambda: s.receive_audio(b"\0\0\0"), "partial_frame"),
                         (lambda: s.receive_audio(b"\0" * 4098), "frame_too_large")]:
        with pytest.raises(ProtocolError) as e:
            action()
        assert e.value.code == code
    s.receive_audio(b"\0" * 4000)  # 0.125 s
    with pytest.raises(ProtocolError) as e:
        for _ in range(10):
            s.receive_audio(b"\0" * 4000)
    assert e.value.code == "duration_limit" and e.value.close_code == 4413
    f = CallSession(ENGINE)
    start(f, encoding="pcm_f32le", channels=2)
    with pytest.raises(ProtocolError) as e:
        f.receive_audio(np.array([0.1, np.nan], "<f4").tobytes())
    assert e.value.code == "non_finite_audio"
    with pytest.raises(ProtocolError) as e:
        f.receive_audio(np.zeros(3, "<f4").tobytes())  # 1.5 stereo frames
    assert e.value.code == "partial_frame"
    # finite but absurdly loud float samples clip at full scale: nothing downstream turns NaN
    loud = CallSession(ENGINE)
    start(loud, encoding="pcm_f32le")
    x = (speech_like(3.0) * 3e38).astype("<f4")
    _, jobs = feed(loud, x.tobytes(), [6400], frame_bytes=4)
    assert jobs and all(np.isfinite(j.samples).all() and np.abs(j.samples).max() <= 1.0 for j in jobs)


# -- audio path ---------------------------------------------------------------------------------
def test_events_and_windows_match_offline_segmentation():
    x = with_silence(speech_like(4.0, seed=3))
    s = CallSession(ENGINE)
    ready = start(s)
    events, jobs = feed(s, pcm16(x), [300, 4410, 17, 32000, 960])
    types = [e["type"] for e in ready + events]
    assert types == ["ready", "speech_start", "speech_end"]
    assert [e["seq"] for e in ready + events] == [0, 1, 2]
    offline = speech_windows(np.frombuffer(pcm16(x), "<i2").astype(np.float32) / 32768.0)
    assert len(jobs) == len(offline) >= 5
    for j, w in zip(jobs, offline):
        assert j.start == pytest.approx(w.start) and j.end == pytest.approx(w.end)
        np.testing.assert_allclose(j.samples, w.samples, atol=1e-6)
    starts = [j.start for j in jobs]
    assert all(b - a == pytest.approx(0.5, abs=0.02) for a, b in zip(starts, starts[1:-1]))
    assert events[0]["time"] == pytest.approx(0.6, abs=0.2)  # speech begins after 0.6 s of silence
    assert events[1]["time"] == pytest.approx(4.6, abs=0.4)
    assert s.time == pytest.approx(len(x) / 16000)


@pytest.mark.parametrize("rate, channels, encoding", [(8000, 2, "pcm_s16le"), (48000, 1, "pcm_f32le"),
                                                      (44100, 2, "pcm_f32le")])
def test_resampled_inputs(rate, channels, encoding):
    ref = with_silence(speech_like(4.0, seed=5))
    x = resample(ref, 16000, rate)
    frames = np.repeat(x[:, None], channels, axis=1)
    data = pcm16(frames) if encoding == "pcm_s16le" else frames.astype("<f4").tobytes()
    fb = channels * (2 if encoding == "pcm_s16le" else 4)
    s = CallSession(ENGINE)
    start(s, sample_rate=rate, channels=channels, encoding=encoding)
    events, jobs = feed(s, data, [rate // 10 * fb + fb, 777 * fb], frame_bytes=fb)
    assert [e["type"] for e in events] == ["speech_start", "speech_end"]
    s16 = CallSession(ENGINE)
    start(s16)
    _, jobs16 = feed(s16, pcm16(ref), [3200])
    assert abs(len(jobs) - len(jobs16)) <= 1
    assert jobs[0].start == pytest.approx(jobs16[0].start, abs=0.07)
    assert s.time == pytest.approx(len(x) / rate)
    # the streaming resampler matches a one-shot resample of the whole input
    n = min(len(jobs[0].samples), len(jobs16[0].samples))
    corr = np.corrcoef(jobs[0].samples[:n], jobs16[0].samples[:n])[0, 1]
    assert corr > 0.9 or len(jobs) != len(jobs16)


def test_overload_policy_drops_oldest_outstanding_windows():
    s = CallSession(ENGINE, SessionLimits(max_pending=2))
    start(s)
    withdrawn = []
    events, reqs = feed(s, pcm16(with_silence(speech_like(6.0, seed=1))), [16000], withdrawn=withdrawn)
    track = s.sessions[0]
    warnings = [e for e in events if e["type"] == "warning"]
    emitted = track._windows.windows_emitted
    assert emitted >= 8 and track.backlog == 2 and track.dropped == emitted - 2
    kept = sorted(track._outstanding)
    assert kept == list(range(emitted))[-2:]
    assert sorted(i for _, i in withdrawn) == [r.index for r in reqs if r.index not in kept]
    assert warnings and warnings[0]["code"] == "overload" and warnings[-1]["dropped_windows"] <= track.dropped
    # a window the worker took is answered for sure: never dropped
    s2 = CallSession(ENGINE, SessionLimits(max_pending=2))
    start(s2)
    first = []
    for chunk in (pcm16(with_silence(speech_like(6.0, seed=1)))[i:i + 16000] for i in range(0, 6 * 32000, 16000)):
        out = s2.receive_audio(chunk)
        for r in out.requests:
            if not first:
                first.append(r.index)
                s2.taken(r.key, r.index)
    assert first and first[0] in s2.sessions[0]._outstanding and s2.sessions[0].dropped > 0
    # a dropped window's result is stale: ignored by index; the kept ones are decided
    from voxguard.daemon.session import WindowResult
    assert s.complete(WindowResult(track.key, reqs[0].index)) == []
    for i in kept:
        assert [e["type"] for e in s.complete(WindowResult(track.key, i))] == ["identity"]
    assert track.backlog == 0 and track.scored == 2
    summary = s.summary("stop")
    assert summary["windows"] == {"emitted": emitted, "scored": 2, "dropped": emitted - 2}
    assert summary["realtime"] is True


def test_lossless_mode_never_drops():
    s = CallSession(ENGINE, SessionLimits(max_pending=2))
    ready = start(s, options={"realtime": False})
    assert ready[0]["options"]["realtime"] is False
    withdrawn = []
    events, reqs = feed(s, pcm16(with_silence(speech_like(6.0, seed=1))), [16000], withdrawn=withdrawn)
    assert not withdrawn and not [e for e in events if e["type"] == "warning"]
    assert s.backlog == len(reqs) >= 8  # the server stops reading instead (backpressure)
    assert s.summary("stop")["windows"]["dropped"] == 0


def test_engine_with_a_fake_embedder_and_no_threads():
    """The whole engine — call, sessions, worker functions — driven by hand, one thread."""
    from voxguard.daemon import batcher
    from voxguard.daemon.session import WindowResult

    class FakeEmbedder:
        calls = 0

        def embed(self, windows):
            self.calls += 1
            return np.stack([np.full(4, float(np.abs(w).mean()), np.float32) for w in windows])

    emb = FakeEmbedder()
    s = CallSession(ENGINE)
    start(s, claimed_speaker="alice")
    _, reqs = feed(s, pcm16(with_silence(speech_like(4.0, seed=2))), [3200])
    assert reqs and all(not r.samples.flags.writeable for r in reqs)
    with pytest.raises(ValueError):
        reqs[0].samples[0] = 1.0  # requests are immutable: the worker cannot change a stream's audio
    results = batcher.score(batcher.embed(emb, reqs), reqs)
    assert emb.calls == 1 and [r.index for r in results] == [q.index for q in reqs]
    events = [e for r in results for e in s.complete(r)]
    assert [e["type"] for e in events] == ["identity", "verification"] * len(reqs)
    assert s.backlog == 0
    # a second answer for the same window (e.g. after a withdraw race) is stale
    assert s.complete(results[0]) == []
    # an embedder failure is reported for the window's stream only
    s2 = CallSession(ENGINE)
    start(s2)
    _, reqs2 = feed(s2, pcm16(with_silence(speech_like(3.0, seed=4))), [3200])
    bad = batcher.failed(reqs2[:1], RuntimeError("model broke"))
    with pytest.raises(RuntimeError, match="model broke"):
        s2.complete(bad[0])


def test_claim_on_a_removed_speaker_is_revoked():
    from dataclasses import replace

    from voxguard.daemon.session import WindowResult

    s = CallSession(ENGINE)
    start(s, claimed_speaker="alice")
    _, reqs = feed(s, pcm16(with_silence(speech_like(4.0, seed=2))), [3200])
    without_alice = replace(ENGINE.snapshot, _rows={"bob": 0}, revision=7)
    assert s.store_changed(ENGINE.snapshot) == []  # alice still enrolled: nothing changes
    warn = s.store_changed(without_alice)
    assert [w["code"] for w in warn] == ["claimed_speaker_removed"] and "revision 7" in warn[0]["message"]
    assert s.store_changed(without_alice) == []  # said once
    verif = [e for r in reqs for e in s.complete(WindowResult(r.key, r.index, claimed_score=0.99))
             if e["type"] == "verification"]
    assert verif and all(v["window"]["decision"] == "reject" and v["session"]["decision"] == "reject"
                         for v in verif)
    summary = s.summary("stop")
    assert summary["verification"]["decision"] == "reject" and "removed" in summary["verification"]["revoked"]


def test_decision_trackers():
    t = IdentityTracker(0.7, enter=2, exit=3)
    seq = [("a", .8), ("a", .8), ("b", .9), ("a", .8), ("b", .9), ("b", .9), ("b", .9), (None, None),
           ("a", .5), ("a", .6), ("a", .65)]
    got = [t.update(s, sc).speaker for s, sc in seq]
    assert got == [None, "a", "a", "a", "a", "a", "b", "b", "b", None, None]
    assert t.changes == 3
    assert [verdict(x, 0.7, 0.02) for x in (0.73, 0.71, 0.69, 0.67, None)] == \
        ["accept", "undecided", "undecided", "reject", "undecided"]
    rng = np.random.default_rng(0)
    win = calibrate_trials("window", "wide", rng.normal(0.8, 0.05, 500), rng.normal(0.6, 0.05, 5000))
    ses = {n: calibrate_trials("session", "wide", rng.normal(0.8, 0.05 / n ** .5, 500),
                               rng.normal(0.6, 0.05 / n ** .5, 5000), windows=n) for n in (1, 2, 3)}
    v = VerificationTracker("a", win, lambda n: ses[min(n, 3)], band=0.5, min_windows=3)
    assert v.update(0.9) == ("accept", "undecided")
    assert v.update(0.5) == ("reject", "undecided")
    assert v.update(None) == ("undecided", "undecided")
    assert v.update(0.9) == ("accept", "accept")  # mean 0.767 after 3 scored windows
    assert v.session_score == pytest.approx(2.3 / 3)
    assert v.session_cal is ses[3] and v.session_llr == pytest.approx(ses[3].llr(2.3 / 3))
    assert v.summary()["windows_accepted"] == 2
    assert v.summary()["calibration"] == "session[n=3]/wide"
    # uncalibrated: never decides
    u = VerificationTracker("a", None, lambda n: None)
    assert [u.update(x) for x in (0.9, 0.9, 0.9)][-1] == ("undecided", "undecided")
    # CloneTracker: tests/test_clone_detection.py


# -- real scoring --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("store") / "vg.db"
    return path, build_store(path, embedder, an4_speakers)


@pytest.mark.an4
def test_engine_identifies_and_verifies_an_enrolled_speaker(small_store, embedder, an4_speakers):
    path, names = small_store
    snap = load_snapshot(path, embedder.identity)
    engine = EngineInfo(embedder=embedder.identity.as_dict(), snapshot=snap)
    target = names[1]
    audio = np.concatenate([load_audio(p).samples for p in held_out(an4_speakers, target)[:3]])
    batcher = Batcher(embedder, deliver=lambda r: None)
    s = CallSession(engine)
    ready = start(s, claimed_speaker=target, stream_id="an4")
    assert ready[0]["index"]["enrolled_speakers"] == len(names)
    events, jobs = feed(s, pcm16(audio), [3200])
    results = batcher.process(jobs[: len(jobs) // 2]) + batcher.process(jobs[len(jobs) // 2:])
    scored = [ev for r in results for ev in s.complete(r)]
    ident = [e for e in scored if e["type"] == "identity"]
    verif = [e for e in scored if e["type"] == "verification"]
    assert len(ident) == len(verif) == len(jobs) >= 6
    assert sum(e["speaker"] == target for e in ident) >= 0.6 * len(ident)
    assert ident[-1]["decision"]["speaker"] == target and ident[-1]["session"]["speaker"] == target
    assert verif[-1]["session"]["decision"] == "accept"
    summary = s.summary("stop")
    assert summary["identity"]["speaker"] == target and summary["verification"]["decision"] == "accept"
    assert summary["windows"] == {"emitted": len(jobs), "scored": len(jobs), "dropped": 0}
    assert 0.3 < summary["speech_ratio"] <= 1.0
    seqs = [e["seq"] for e in ready + events + scored + [summary]]
    assert sorted(seqs) == list(range(len(seqs)))
    # an impostor claim is rejected over the session
    other = names[0]
    s2 = CallSession(engine)
    start(s2, claimed_speaker=other)
    _, jobs2 = feed(s2, pcm16(audio), [8000])
    verif2 = [e for r in batcher.process(jobs2) for e in s2.complete(r) if e["type"] == "verification"]
    assert verif2[-1]["session"]["decision"] == "reject"


def test_worker_delivers_in_take_order_with_several_embed_threads():
    """Two embed replicas, the first one slow: results still reach the streams in the order
    the batches were taken (window order), and withdrawn requests are never embedded."""
    import threading
    import time as _time

    from voxguard.daemon.batcher import Batcher

    class Replica:
        def __init__(self, delay):
            self.delay, self.seen = delay, []

        def embed(self, windows):
            _time.sleep(self.delay)
            self.seen.append(len(windows))
            return np.zeros((len(windows), 4), np.float32)

    s = CallSession(ENGINE, SessionLimits(max_pending=1000))
    start(s)
    _, reqs = feed(s, pcm16(with_silence(speech_like(8.0, seed=6))), [3200])
    delivered, done = [], threading.Event()

    def deliver(results):
        delivered.extend(r.index for r in results)
        if len(delivered) >= len(reqs) - 2:
            done.set()

    slow, fast = Replica(0.2), Replica(0.0)
    b = Batcher(slow, deliver, max_batch=2, max_wait=0.0, workers=[slow, fast])
    b.submit(reqs)
    assert b.withdraw([(reqs[-1].key, reqs[-1].index), (reqs[-2].key, reqs[-2].index)]) == 2
    b.start()
    assert done.wait(30)
    b.stop()
    assert delivered == [r.index for r in reqs[:-2]]
    assert slow.seen and fast.seen and sum(slow.seen) + sum(fast.seen) == len(reqs) - 2
