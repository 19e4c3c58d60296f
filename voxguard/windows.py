"""Fixed-length analysis windows over voiced audio.  No I/O.

Voiced audio from the VAD is concatenated (silences removed) and cut into windows of
``window_s`` every ``hop_s``.  Each window remembers the stream times of its first and
last sample, so events can point back into the original stream.  The same scheduler
serves enrollment (whole files) and the daemon (live streams).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from . import SAMPLE_RATE
from .vad import VadConfig, VoiceActivityDetector, Voiced


@dataclass(frozen=True)
class WindowConfig:
    window_s: float = 1.5
    hop_s: float = 0.5
    min_window_s: float = 0.5  # a shorter final window is still embedded if at least this long

    def __post_init__(self):
        if not 0.5 <= self.window_s <= 10.0:
            raise ValueError("window must be between 0.5 and 10 seconds")
        if not 0.1 <= self.hop_s <= self.window_s:
            raise ValueError("hop must be between 0.1 s and the window length")
        if not 0.1 <= self.min_window_s <= self.window_s:
            raise ValueError("min_window must be between 0.1 s and the window length")


@dataclass(frozen=True)
class Window:
    index: int
    samples: np.ndarray = field(repr=False)
    start: float  # stream time of the first sample (s)
    end: float  # stream time just after the last sample (s)

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class WindowScheduler:
    """Cuts windows from voiced audio pushed in stream order."""

    def __init__(self, config: WindowConfig | None = None, sample_rate: int = SAMPLE_RATE):
        self.config = config or WindowConfig()
        self.sample_rate = sample_rate
        self.win = int(round(self.config.window_s * sample_rate))
        self.hop = int(round(self.config.hop_s * sample_rate))
        self.min_win = int(round(self.config.min_window_s * sample_rate))
        self._buf = np.zeros(self.win + self.hop + sample_rate, dtype=np.float32)
        self._len = 0  # valid samples in _buf
        self._next = 0  # buffer offset where the next window starts
        # (buffer offset, stream time) at the start of each contiguous voiced run
        self._anchor_off: list[int] = []
        self._anchor_time: list[float] = []
        self._count = 0
        self._covered_to = 0  # buffer offset just after the last emitted window
        self.voiced_samples = 0

    def _time_at(self, offset: int) -> float:
        i = bisect.bisect_right(self._anchor_off, offset) - 1
        return self._anchor_time[i] + (offset - self._anchor_off[i]) / self.sample_rate

    def _append(self, samples: np.ndarray, start: float) -> None:
        n = len(samples)
        if self._len + n > len(self._buf):
            self._compact()
            if self._len + n > len(self._buf):
                grown = np.zeros(self._len + n + self.sample_rate, dtype=np.float32)
                grown[: self._len] = self._buf[: self._len]
                self._buf = grown
        if not self._anchor_off or abs(self._time_at(self._len) - start) > 0.5 / self.sample_rate:
            self._anchor_off.append(self._len)
            self._anchor_time.append(start)
        self._buf[self._len: self._len + n] = samples
        self._len += n
        self.voiced_samples += n

    def _compact(self) -> None:
        # keep the last full window's worth of audio: flush() may need it for the tail window
        drop = min(self._next, max(0, self._len - self.win))
        if drop == 0:
            return
        keep_time = self._time_at(drop) if self._anchor_off else 0.0
        self._buf[: self._len - drop] = self._buf[drop: self._len]
        self._len -= drop
        self._next -= drop
        self._covered_to = max(0, self._covered_to - drop)
        offs, times = [0], [keep_time]
        for o, t in zip(self._anchor_off, self._anchor_time):
            if o > drop:
                offs.append(o - drop)
                times.append(t)
        self._anchor_off, self._anchor_time = offs, times

    def _emit(self, start_off: int, end_off: int) -> Window:
        w = Window(
            index=self._count,
            samples=self._buf[start_off:end_off].copy(),
            start=self._time_at(start_off),
            end=self._time_at(end_off - 1) + 1.0 / self.sample_rate,
        )
        self._count += 1
        self._covered_to = max(self._covered_to, end_off)
        return w

    def push(self, samples: np.ndarray, start: float) -> list[Window]:
        """Add voiced ``samples`` whose first sample is at stream time ``start``."""
        if len(samples) == 0:
            return []
        self._append(samples, start)
        out = []
        while self._len - self._next >= self.win:
            out.append(self._emit(self._next, self._next + self.win))
            self._next += self.hop
        return out

    def flush(self) -> list[Window]:
        """End of audio: cover the voiced tail that no full window reached yet."""
        if self._count == 0:
            if self._len - self._next >= self.min_win:
                return [self._emit(self._next, self._len)]
            return []
        if self._len - self._covered_to >= self.hop // 2 and self._len >= self.win:
            return [self._emit(self._len - self.win, self._len)]
        return []

    @property
    def windows_emitted(self) -> int:
        return self._count


def speech_windows(samples: np.ndarray, vad: VadConfig | None = None,
                   windows: WindowConfig | None = None) -> list[Window]:
    """All windows over the voiced parts of a whole 16 kHz recording.

    If the VAD finds too little speech for even one window (very short or very
    quiet recordings), the whole recording is windowed instead, so a clean short
    utterance still gets an embedding.
    """
    detector = VoiceActivityDetector(vad)
    sched = WindowScheduler(windows)
    out: list[Window] = []
    for ev in detector.process(samples) + detector.flush():
        if isinstance(ev, Voiced):
            out.extend(sched.push(ev.samples, ev.start))
    out.extend(sched.flush())
    if out:
        return out
    sched = WindowScheduler(windows)
    out = sched.push(samples, 0.0)
    out.extend(sched.flush())
    if not out and len(samples):
        out = [Window(0, np.asarray(samples, dtype=np.float32), 0.0, len(samples) / SAMPLE_RATE)]
    return out
