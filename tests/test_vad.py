"""voxguard.vad: the streaming webrtcvad segmenter, on synthetic speech-like signals."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import speech_like
from voxguard.vad import SpeechEnd, SpeechStart, VadConfig, VoiceActivityDetector, Voiced

SR = 16000


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def run(x: np.ndarray, config: VadConfig | None = None, chunk: int | None = None):
    d = VoiceActivityDetector(config)
    events = []
    if chunk is None:
        events += d.process(x)
    else:
        for i in range(0, len(x), chunk):
            events += d.process(x[i: i + chunk])
    events += d.flush()
    return d, events


def boundaries(events) -> list[tuple[str, float]]:
    return [(type(e).__name__, e.time) for e in events if not isinstance(e, Voiced)]


def segments(events) -> list[tuple[float, float]]:
    out, start = [], None
    for e in events:
        if isinstance(e, SpeechStart):
            start = e.time
        elif isinstance(e, SpeechEnd):
            out.append((start, e.time))
    return out


def test_silence_and_faint_noise_give_nothing():
    # webrtcvad marks up to 3 frames voiced while it adapts to a new stream's noise floor;
    # an onset of 5 frames (4 voiced needed) rides that out
    rng = np.random.default_rng(0)
    for x in (silence(3.0), (0.0005 * rng.standard_normal(3 * SR)).astype(np.float32)):
        d, events = run(x, VadConfig(onset_ms=150))
        assert events == []
        assert not d.in_speech
        assert d.speech_ratio < 0.05


def test_one_segment_with_onset_preroll_and_trail():
    cfg = VadConfig()
    x = np.concatenate([silence(1.0), speech_like(2.0), silence(1.5)])
    d, events = run(x, cfg)
    segs = segments(events)
    assert len(segs) == 1
    start, end = segs[0]
    # the onset is detected after `onset_ms` of speech; `preroll_ms` before that is kept
    assert 1.0 - cfg.preroll_ms / 1000 <= start <= 1.0
    # speech ends after the trailing silence plus at most webrtcvad's own smoothing
    assert 3.0 <= end <= 3.0 + cfg.trail_ms / 1000 + 0.3
    assert isinstance(events[0], SpeechStart) and isinstance(events[-1], SpeechEnd)
    assert 0.3 < d.speech_ratio < 0.7


def test_voiced_audio_is_the_input_at_the_stated_times():
    x = np.concatenate([silence(0.5), speech_like(1.5, seed=3), silence(1.0), speech_like(1.0, seed=4),
                        silence(1.0)])
    _, events = run(x)
    voiced = [e for e in events if isinstance(e, Voiced)]
    assert voiced
    for v in voiced:
        i = round(v.start * SR)
        np.testing.assert_array_equal(v.samples, x[i: i + len(v.samples)])
    # voiced chunks lie inside their segments and cover them exactly
    for (s, e) in segments(events):
        inside = [v for v in voiced if s - 1e-9 <= v.start < e]
        assert sum(len(v.samples) for v in inside) == round((e - s) * SR)


def test_hangover_keeps_short_pause_and_splits_on_long_pause():
    cfg = VadConfig(hangover_ms=300)
    short = np.concatenate([silence(0.5), speech_like(1.0), silence(0.15), speech_like(1.0, seed=1), silence(1.0)])
    assert len(segments(run(short, cfg)[1])) == 1
    long = np.concatenate([silence(0.5), speech_like(1.0), silence(1.0), speech_like(1.0, seed=1), silence(1.0)])
    segs = segments(run(long, cfg)[1])
    assert len(segs) == 2
    assert segs[0][1] < 2.0 and segs[1][0] > 1.5 - cfg.preroll_ms / 1000
    # a longer hangover bridges the same 1 s pause
    assert len(segments(run(long, VadConfig(hangover_ms=1500))[1])) == 1


def test_onset_needs_sustained_speech():
    # webrtcvad's own smoothing stretches a 30 ms burst to about 4 voiced frames (120 ms);
    # an onset of 7 frames (6 voiced needed) ignores it but not 300 ms of speech
    cfg = VadConfig(onset_ms=210)
    burst = np.concatenate([silence(1.0), speech_like(0.03), silence(1.0)])
    assert segments(run(burst, cfg)[1]) == []
    word = np.concatenate([silence(1.0), speech_like(0.3), silence(1.0)])
    assert len(segments(run(word, cfg)[1])) == 1


def test_chunked_input_gives_the_same_events():
    x = np.concatenate([silence(0.7), speech_like(1.2, seed=5), silence(0.9), speech_like(0.8, seed=6),
                        silence(0.4)])
    _, whole = run(x)
    for chunk in (160, 333, 4801):
        _, parts = run(x, chunk=chunk)
        assert boundaries(parts) == boundaries(whole)
        np.testing.assert_array_equal(np.concatenate([e.samples for e in parts if isinstance(e, Voiced)]),
                                      np.concatenate([e.samples for e in whole if isinstance(e, Voiced)]))


def test_flush_closes_open_segment_at_stream_end():
    x = np.concatenate([silence(0.5), speech_like(1.5)])
    d = VoiceActivityDetector()
    events = d.process(x)
    assert d.in_speech and not any(isinstance(e, SpeechEnd) for e in events)
    tail = d.flush()
    assert isinstance(tail[-1], SpeechEnd)
    assert tail[-1].time == pytest.approx(2.0, abs=0.031)
    assert not d.in_speech and d.flush() == []


@pytest.mark.parametrize("kwargs", [dict(aggressiveness=4), dict(frame_ms=25), dict(hangover_ms=-1),
                                    dict(preroll_ms=6000)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        VadConfig(**kwargs)


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_frame_sizes(frame_ms):
    x = np.concatenate([silence(0.6), speech_like(1.5), silence(1.0)])
    segs = segments(run(x, VadConfig(frame_ms=frame_ms))[1])
    assert len(segs) == 1 and 0.4 <= segs[0][0] <= 0.6


class _CountingNumpy:
    """numpy, with ``concatenate`` counting the samples it copies."""

    def __init__(self):
        self.copied = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def concatenate(self, arrays, *args, **kwargs):
        out = np.concatenate(arrays, *args, **kwargs)
        self.copied += out.size
        self.calls += 1
        return out


def test_one_large_frame_is_merged_in_linear_time(monkeypatch):
    """A 1 MiB frame (32.8 s of 16-bit PCM, ~1100 VAD frames) of speech: joining its voiced
    frames copies each sample a bounded number of times (pairwise joining copied the growing
    run once per 30 ms frame: ~550 times the audio), and the result is the same audio as
    the same signal fed in 100 ms chunks."""
    import voxguard.vad as vad

    x = np.concatenate([speech_like(16.0, seed=1), silence(0.8), speech_like(16.0, seed=2)])[: (1 << 20) // 2]
    counting = _CountingNumpy()
    monkeypatch.setattr(vad, "np", counting)
    _, big = run(x)
    monkeypatch.setattr(vad, "np", np)
    assert counting.copied <= 3 * len(x), counting.copied / len(x)
    voiced = [e for e in big if isinstance(e, Voiced)]
    assert len(voiced) <= 4  # a few large arrays, not one per frame
    _, small = run(x, chunk=1600)
    assert boundaries(big) == boundaries(small)
    a = np.concatenate([e.samples for e in voiced])
    b = np.concatenate([e.samples for e in small if isinstance(e, Voiced)])
    np.testing.assert_array_equal(a, b)
    assert voiced[0].start == pytest.approx(min(e.start for e in small if isinstance(e, Voiced)))
