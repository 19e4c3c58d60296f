"""voxguard.windows: the window scheduler (counts, times across gaps, flush) and
speech_windows over whole recordings."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import speech_like
from voxguard.windows import WindowConfig, WindowScheduler, speech_windows

SR = 16000


def ramp(seconds: float, offset: int = 0) -> np.ndarray:
    """Distinct sample values, so each window's content can be located exactly."""
    return (np.arange(int(round(seconds * SR))) + offset).astype(np.float32)


def push_all(chunks: list[tuple[np.ndarray, float]], config: WindowConfig | None = None, flush: bool = True):
    s = WindowScheduler(config)
    out = []
    for samples, start in chunks:
        out += s.push(samples, start)
    if flush:
        out += s.flush()
    return s, out


@pytest.mark.parametrize("seconds,expected", [(1.5, 1), (2.0, 2), (3.0, 4), (10.0, 18)])
def test_window_count_contiguous(seconds, expected):
    s, ws = push_all([(ramp(seconds), 0.0)])
    assert len(ws) == expected == s.windows_emitted
    for i, w in enumerate(ws):
        assert w.index == i
        assert len(w.samples) == 1.5 * SR
        assert w.start == pytest.approx(0.5 * i)
        assert w.end == pytest.approx(0.5 * i + 1.5)


def test_flush_covers_the_tail():
    # 3.2 s: the 0.2 s not covered is less than half a hop -> no extra window
    _, ws = push_all([(ramp(3.2), 0.0)])
    assert len(ws) == 4
    # 3.3 s: 0.3 s uncovered -> one last full-length window ending at the end of the audio
    _, ws = push_all([(ramp(3.3), 0.0)])
    assert len(ws) == 5
    last = ws[-1]
    assert len(last.samples) == 1.5 * SR and last.end == pytest.approx(3.3) and last.start == pytest.approx(1.8)
    np.testing.assert_array_equal(last.samples, ramp(3.3)[-int(1.5 * SR):])


def test_short_audio_gets_one_short_window_or_none():
    _, ws = push_all([(ramp(1.0), 2.0)])
    assert len(ws) == 1 and len(ws[0].samples) == SR
    assert ws[0].start == pytest.approx(2.0) and ws[0].end == pytest.approx(3.0)
    _, ws = push_all([(ramp(0.3), 0.0)])  # below min_window_s
    assert ws == []
    _, ws = push_all([(ramp(0.3), 0.0)], WindowConfig(min_window_s=0.2))
    assert len(ws) == 1


def test_flush_without_new_audio_emits_nothing():
    s, ws = push_all([(ramp(2.0), 0.0)])
    assert s.flush() == []
    assert WindowScheduler().flush() == []
    assert WindowScheduler().push(np.zeros(0, np.float32), 0.0) == []


def test_times_across_gaps():
    """Silences removed by the VAD are skipped; times still point into the stream."""
    a, b = ramp(1.0), ramp(1.0, offset=SR)
    _, ws = push_all([(a, 0.0), (b, 5.0)])
    assert len(ws) == 2
    w0, w1 = ws
    assert w0.start == pytest.approx(0.0) and w0.end == pytest.approx(5.5)
    assert w1.start == pytest.approx(0.5) and w1.end == pytest.approx(6.0)
    np.testing.assert_array_equal(w0.samples, np.concatenate([a, b])[: int(1.5 * SR)])
    # a window that starts inside the second run gets that run's time
    _, ws = push_all([(ramp(1.0), 0.0), (ramp(2.0, offset=SR), 10.0)])
    assert ws[2].start == pytest.approx(10.0) and ws[2].end == pytest.approx(11.5)


def test_chunking_does_not_change_windows():
    x = ramp(7.3)
    _, whole = push_all([(x, 3.0)])
    for size in (160, 4000, 23999):
        _, parts = push_all([(x[i: i + size], 3.0 + i / SR) for i in range(0, len(x), size)])
        np.testing.assert_allclose([(w.start, w.end) for w in parts], [(w.start, w.end) for w in whole], atol=1e-9)
        for p, w in zip(parts, whole):
            np.testing.assert_array_equal(p.samples, w.samples)


def test_long_stream_with_gaps_keeps_content_and_times():
    """Many chunks, with gaps, force buffer compaction; contents and times must survive it."""
    rng = np.random.default_rng(0)
    voiced, chunks, t, n = [], [], 0.0, 0
    for _ in range(200):
        size = int(rng.integers(800, 8000))
        chunks.append((ramp(size / SR, offset=n), t))
        voiced.append((n, t))
        n += size
        t += size / SR + (float(rng.uniform(0.1, 2.0)) if rng.random() < 0.3 else 0.0)
    total = np.arange(n, dtype=np.float32)
    offs = np.array([o for o, _ in voiced])
    times = np.array([tt for _, tt in voiced])

    def time_of(offset: int) -> float:
        i = np.searchsorted(offs, offset, side="right") - 1
        return times[i] + (offset - offs[i]) / SR

    _, ws = push_all(chunks, flush=False)
    assert len(ws) == (n - int(1.5 * SR)) // int(0.5 * SR) + 1
    for w in ws:
        start_off = w.index * int(0.5 * SR)
        np.testing.assert_array_equal(w.samples, total[start_off: start_off + int(1.5 * SR)])
        assert w.start == pytest.approx(time_of(start_off), abs=1e-6)
        assert w.end == pytest.approx(time_of(start_off + int(1.5 * SR) - 1) + 1 / SR, abs=1e-6)


@pytest.mark.parametrize("kwargs", [dict(window_s=0.2), dict(window_s=11), dict(hop_s=2.0, window_s=1.5),
                                    dict(hop_s=0.05), dict(min_window_s=2.0)])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        WindowConfig(**kwargs)


def test_speech_windows_follow_the_voiced_audio():
    sil = np.zeros(SR, dtype=np.float32)
    x = np.concatenate([sil, speech_like(3.0), sil, sil])
    ws = speech_windows(x)
    assert len(ws) >= 3
    for w in ws:  # windows sit on the speech (plus the VAD's preroll and trail)
        assert w.start >= 1.0 - 0.2 and w.end <= 4.0 + 0.5
        i = round(w.start * SR)
        np.testing.assert_array_equal(w.samples, x[i: i + len(w.samples)])


def test_speech_windows_fall_back_to_the_whole_recording():
    # too quiet for the VAD: the whole recording is windowed instead
    quiet = (1e-5 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32)
    ws = speech_windows(quiet)
    assert len(ws) == 2 and ws[0].start == 0.0
    # shorter than min_window_s: one window with everything
    ws = speech_windows(quiet[: SR // 4])
    assert len(ws) == 1 and len(ws[0].samples) == SR // 4
    assert speech_windows(np.zeros(0, dtype=np.float32)) == []
