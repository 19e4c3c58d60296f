"""Streaming voice activity detection with webrtcvad.  No I/O: feed 16 kHz float32
samples, get back speech boundaries and the voiced audio.

The detector frames the input (10, 20 or 30 ms), classifies each frame with
webrtcvad, and runs a small state machine:

* **onset** — speech starts once ``onset_ms`` of the most recent frames are at
  least 80 % voiced; the ``preroll_ms`` before that point are included so word
  onsets are not clipped;
* **hangover** — speech ends only after ``hangover_ms`` of unvoiced frames, so
  short pauses inside a phrase stay inside the segment; of that trailing
  silence only ``trail_ms`` is kept as voiced audio.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

with warnings.catch_warnings():  # webrtcvad imports the deprecated pkg_resources
    warnings.simplefilter("ignore")
    import webrtcvad

from . import SAMPLE_RATE
from .audio import float_to_int16


@dataclass(frozen=True)
class VadConfig:
    aggressiveness: int = 2  # 0 (least) .. 3 (most aggressive filtering of non-speech)
    frame_ms: int = 30  # 10, 20 or 30
    onset_ms: int = 90
    hangover_ms: int = 300
    preroll_ms: int = 150
    trail_ms: int = 90

    def __post_init__(self):
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError("VAD aggressiveness must be 0, 1, 2 or 3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("VAD frame_ms must be 10, 20 or 30")
        for name in ("onset_ms", "hangover_ms", "preroll_ms", "trail_ms"):
            if not 0 <= getattr(self, name) <= 5000:
                raise ValueError(f"VAD {name} must be between 0 and 5000")


@dataclass(frozen=True)
class SpeechStart:
    time: float


@dataclass(frozen=True)
class SpeechEnd:
    time: float


@dataclass(frozen=True)
class Voiced:
    samples: np.ndarray
    start: float  # stream time (s) of the first sample


VadEvent = SpeechStart | SpeechEnd | Voiced


class VoiceActivityDetector:
    """Incremental webrtcvad segmenter over one 16 kHz stream."""

    def __init__(self, config: VadConfig | None = None, sample_rate: int = SAMPLE_RATE):
        self.config = config or VadConfig()
        self.sample_rate = sample_rate
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        self.frame_len = sample_rate * self.config.frame_ms // 1000
        fm = self.config.frame_ms
        self._onset_frames = max(1, -(-self.config.onset_ms // fm))
        self._hangover_frames = max(1, -(-self.config.hangover_ms // fm))
        self._trail_frames = min(self._hangover_frames, self.config.trail_ms // fm)
        preroll = max(self._onset_frames, self.config.preroll_ms // fm)
        self._recent: deque[tuple[np.ndarray, bool]] = deque(maxlen=preroll)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames_done = 0  # frames classified so far
        self._triggered = False
        self._silence: list[np.ndarray] = []  # pause frames held back (beyond the trail)
        self._gap = 0  # unvoiced frames in the current pause
        self._gap_sent = 0  # of those, emitted as trail
        self.voiced_frames = 0
        self.total_frames = 0

    @property
    def in_speech(self) -> bool:
        return self._triggered

    def _time(self, frame_index: int) -> float:
        return frame_index * self.frame_len / self.sample_rate

    def process(self, samples: np.ndarray) -> list[VadEvent]:
        """Classify whole frames of ``samples`` (plus what was left over last time)."""
        if self._pending.size:
            samples = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(samples) // self.frame_len
        self._pending = samples[n * self.frame_len:].copy()
        if n == 0:
            return []
        frames = samples[: n * self.frame_len].reshape(n, self.frame_len)
        pcm = float_to_int16(frames)
        events: list[VadEvent] = []
        for i in range(n):
            idx = self._frames_done + i
            voiced = self._vad.is_speech(pcm[i].tobytes(), self.sample_rate)
            self.total_frames += 1
            self.voiced_frames += voiced
            frame = frames[i]
            if not self._triggered:
                self._recent.append((frame, voiced))
                tail = list(self._recent)[-self._onset_frames:]
                if len(tail) == self._onset_frames and sum(v for _, v in tail) >= 0.8 * self._onset_frames:
                    self._triggered = True
                    first = idx - len(self._recent) + 1
                    events.append(SpeechStart(self._time(first)))
                    events.append(Voiced(np.concatenate([f for f, _ in self._recent]), self._time(first)))
                    self._recent.clear()
                    self._silence = []
                    self._gap = self._gap_sent = 0
                continue
            if voiced:
                if self._silence:  # a pause inside speech: keep it
                    start = idx - len(self._silence)
                    events.append(Voiced(np.concatenate(self._silence + [frame]), self._time(start)))
                    self._silence = []
                else:
                    events.append(Voiced(frame, self._time(idx)))
                self._gap = self._gap_sent = 0
                continue
            self._gap += 1
            if self._gap_sent < self._trail_frames and not self._silence:
                # The first trail_ms of a pause are kept whatever follows: emit them now, so the
                # window that ends there is not held back for the whole hangover.
                events.append(Voiced(frame, self._time(idx)))
                self._gap_sent += 1
            else:
                self._silence.append(frame)
            if self._gap >= self._hangover_frames:
                events.extend(self._end(idx - self._gap + 1))
        self._frames_done += n
        return _merge_voiced(events, self.sample_rate)

    def _end(self, first_silent: int) -> list[VadEvent]:
        """Close the segment; the trailing ``trail_ms`` of silence were already emitted."""
        out: list[VadEvent] = [SpeechEnd(self._time(first_silent + self._gap_sent))]
        self._triggered = False
        self._silence = []
        self._gap = self._gap_sent = 0
        self._recent.clear()
        return out

    def flush(self) -> list[VadEvent]:
        """End of stream: close an open speech segment."""
        if not self._triggered:
            return []
        return self._end(self._frames_done - self._gap)

    @property
    def speech_ratio(self) -> float:
        return self.voiced_frames / self.total_frames if self.total_frames else 0.0


def _merge_voiced(events: list[VadEvent], sample_rate: int) -> list[VadEvent]:
    """Join consecutive contiguous Voiced chunks so callers get few, larger arrays.

    Linear in the input: a run of contiguous chunks is collected first and concatenated once
    (joining pairwise would copy the growing run again for every 10-30 ms frame).
    """
    out: list[VadEvent] = []
    run: list[Voiced] = []
    run_end = 0.0

    def close() -> None:
        if run:
            out.append(run[0] if len(run) == 1 else
                       Voiced(np.concatenate([v.samples for v in run]), run[0].start))
            run.clear()

    for ev in events:
        if isinstance(ev, Voiced):
            if run and abs(run_end - ev.start) < 1e-6:
                run.append(ev)
            else:
                close()
                run.append(ev)
            run_end = ev.start + len(ev.samples) / sample_rate
            continue
        close()
        out.append(ev)
    close()
    return out
