"""The countermeasure's streaming side without sockets: what a track checks, when, and what the
checks add up to (``daemon/countermeasure_checks.py``), and the session feeding them."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
from conftest import speech_like
from daemon_support import fake_engine

from voxguard.clone_detection import SessionRule
from voxguard.daemon.countermeasure_checks import (ContextResult, ContextScheduler, CountermeasureInfo,
                                                   CountermeasureTracker)
from voxguard.daemon.session import EngineInfo, Session
from voxguard.protocol import SCHEMAS, Start

SR = 16000
N = 64600


def info(offset: float = 0.0) -> CountermeasureInfo:
    return CountermeasureInfo("test-cm@000000000000 shipped", N, 2 * SR, (0.5, 1.5, 3.0),
                              SessionRule.for_targets(1.0, offset, N / SR))


def test_first_check_after_one_whole_context_then_non_overlapping_rechecks():
    s = ContextScheduler(7, N, 2 * SR)
    got = []
    t = 0.0
    for _ in range(30):  # 30 chunks of 0.5 s of voiced audio, 1 s apart in stream time
        x = np.full(SR // 2, 0.1, dtype=np.float32)
        got += s.push(x, t)
        t += 1.0
    # 15 s of voice: contexts at 4.04 s, 8.08 s, 12.12 s of voiced audio
    assert [r.kind for r in got] == ["first", "recheck", "recheck"]
    assert [r.index for r in got] == [0, 1, 2]
    assert all(len(r.samples) == N and r.new_s == pytest.approx(N / SR) for r in got)
    assert not got[0].samples.flags.writeable
    # the first context is the first 4.04 s of voice: chunks 0..8 (the 9th only partly), stream times 0..8.x
    assert got[0].start == 0.0 and got[0].end == pytest.approx(8 + (N - 8 * SR // 2) / SR)
    assert got[1].start == pytest.approx(got[0].end, abs=0.6)  # contexts do not overlap
    # end of stream: 15 s - 12.12 s = 2.88 s uncovered >= 2 s minimum -> a final check of the last context
    last = s.flush()
    assert last.kind == "final" and len(last.samples) == N and last.new_s == pytest.approx(15 - 3 * N / SR)


def test_the_last_context_holds_the_newest_audio():
    s = ContextScheduler(1, N, 2 * SR)
    ramp = np.arange(3 * N, dtype=np.float32) / (3 * N)
    reqs = s.push(ramp, 0.0)
    assert len(reqs) == 3
    for k, r in enumerate(reqs):
        np.testing.assert_array_equal(r.samples, ramp[k * N:(k + 1) * N])
        assert r.start == pytest.approx(k * N / SR) and r.end == pytest.approx((k + 1) * N / SR)


def test_short_streams_get_a_tiled_final_check_or_none():
    s = ContextScheduler(1, N, 2 * SR)
    assert s.push(np.ones(int(2.5 * SR), dtype=np.float32), 0.0) == []
    last = s.flush()
    assert last.kind == "final" and len(last.samples) == int(2.5 * SR)  # the model tiles it
    s = ContextScheduler(1, N, 2 * SR)
    s.push(np.ones(int(1.5 * SR), dtype=np.float32), 0.0)
    assert s.flush() is None  # under the minimum: no verdict, never a guess


def test_tracker_cusum_levels_coverage_and_skips():
    i = info(offset=0.2)
    tr = CountermeasureTracker(i)
    s = ContextScheduler(1, N, 2 * SR)
    reqs = s.push(np.zeros(3 * N, dtype=np.float32), 0.0)
    assert tr.update(reqs[0], ContextResult(1, 0, skipped=True)) is None
    u = tr.update(reqs[1], ContextResult(1, 1, raw=1.0, llr=2.0))
    assert u["check"]["level"] == "medium" and u["check"]["kind"] == "recheck"
    assert tr.llr == pytest.approx(1.8)  # max(0, 0 + 1 * (2.0 - 0.2))
    u = tr.update(reqs[2], ContextResult(1, 2, raw=-3.0, llr=-5.0))
    assert tr.llr == 0.0 and u["check"]["level"] == "none"
    d = tr.as_dict(voiced_s=3 * N / SR)
    assert d["checks"] == 2 and d["skipped"] == 1 and d["coverage"] == pytest.approx(2 / 3, abs=1e-3)
    assert d["first_verdict_at_voiced_s"] == pytest.approx(2 * N / SR)  # the voice the first verdict is about
    # session edges: at most one false alarm per 1 / 20 / 100 h at one context every 4.0375 s
    assert i.rule.edges[1] == pytest.approx(np.log(3600 / (N / SR) * 20))


def test_tracker_says_why_a_short_track_has_no_verdict():
    tr = CountermeasureTracker(info())
    d = tr.as_dict(voiced_s=1.2)
    assert d["checks"] == 0 and "minimum" in d["verdict"] and d["level"] == "none"


def test_session_requests_checks_and_turns_results_into_events():
    """A Session with a countermeasure: checks come out of receive_samples with the windows, count in
    the backlog, and their results become clone_suspicion events with the checked span."""
    base = fake_engine({"alice"})
    eng = EngineInfo(base.embedder, base.snapshot, countermeasure=info())
    start = Start(sample_rate=SR, encoding="pcm_s16le", channels=1, stream_id="cm", claimed_speaker=None)
    sess = Session(eng, start)
    ready = sess.ready_event()
    assert ready["countermeasure"]["available"] and ready["countermeasure"]["context_s"] == pytest.approx(N / SR, abs=1e-3)
    out = sess.receive_samples(speech_like(12.0, seed=3), now=0.0)
    out.extend(sess.finish(now=1.0))
    assert out.checks, "12 s of voice must be checked"
    assert sess.backlog >= len(out.checks)
    first = out.checks[0]
    assert first.kind == "first"
    evs = sess.complete_check(ContextResult(first.key, first.index, raw=2.0, llr=4.0))
    assert len(evs) == 1 and evs[0]["type"] == "clone_suspicion"
    ev = evs[0]
    assert ev["check"]["start"] == first.start and ev["level"] == "high"
    assert ev["session"]["countermeasure"]["checks"] == 1
    assert ev["session"]["level"] != "unavailable"
    ev["seq"] = 0
    jsonschema.validate(ev, SCHEMAS["clone_suspicion"])
    jsonschema.validate({**ready, "seq": 0}, SCHEMAS["ready"])
    for c in out.checks[1:]:
        sess.complete_check(ContextResult(c.key, c.index, skipped=True))
    summary = sess.summary("stop")
    cm = summary["clone"]["countermeasure"]
    assert cm["checks"] == 1 and cm["skipped"] == len(out.checks) - 1
    assert 0 < cm["coverage"] <= 1


def test_no_countermeasure_is_said_in_ready():
    base = fake_engine({"alice"})
    eng = EngineInfo(base.embedder, base.snapshot, countermeasure_reason="no countermeasure installed: run "
                                                                        "`voxguard models fetch aasist`")
    sess = Session(eng, Start(sample_rate=SR, encoding="pcm_s16le", channels=1, stream_id="x"))
    cm = sess.ready_event()["countermeasure"]
    assert cm == {"available": False, "reason": "no countermeasure installed: run `voxguard models fetch aasist`"}
    out = sess.receive_samples(np.zeros(SR * 6, dtype=np.float32), 0.0)
    assert out.checks == []
    assert "countermeasure" not in sess.summary("stop")["clone"]
