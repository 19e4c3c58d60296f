"""Event-loop time of one maximum-size client frame in the VAD (voxguard.vad).

The daemon runs ``VoiceActivityDetector.process`` on the event loop for every binary
message; a 1 MiB frame (the default ``--max-frame-bytes``: 32.8 s of 16-bit PCM at
16 kHz) is the worst single message.  This times ``process`` on such a frame of speech
with the current ``_merge_voiced`` and with the former pairwise one (each voiced frame
re-concatenated onto the growing run), best of ``--trials``, in one run.

    .venv/bin/python bench/bench_vad_frame.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import voxguard.vad as vad  # noqa: E402
from conftest import speech_like  # noqa: E402


def pairwise_merge(events, sample_rate):
    """The former ``_merge_voiced``: quadratic in the length of a voiced run."""
    out = []
    for ev in events:
        if isinstance(ev, vad.Voiced) and out and isinstance(out[-1], vad.Voiced):
            prev = out[-1]
            if abs(prev.start + len(prev.samples) / sample_rate - ev.start) < 1e-6:
                out[-1] = vad.Voiced(np.concatenate([prev.samples, ev.samples]), prev.start)
                continue
        out.append(ev)
    return out


def time_frame(x: np.ndarray, trials: int) -> float:
    best = float("inf")
    for _ in range(trials):
        det = vad.VoiceActivityDetector()
        t0 = time.perf_counter()
        det.process(x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frame-bytes", type=int, default=1 << 20)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    n = args.frame_bytes // 2
    x = speech_like(n / 16000 + 1, seed=1)[:n]
    linear = vad._merge_voiced
    out = {"frame_bytes": args.frame_bytes, "samples": n}
    out["linear_ms"] = round(1000 * time_frame(x, args.trials), 1)
    vad._merge_voiced = pairwise_merge
    try:
        out["pairwise_ms"] = round(1000 * time_frame(x, args.trials), 1)
    finally:
        vad._merge_voiced = linear
    det = vad.VoiceActivityDetector()  # the webrtcvad classification alone, for scale
    t0 = time.perf_counter()
    pcm = vad.float_to_int16(x[: len(x) // det.frame_len * det.frame_len].reshape(-1, det.frame_len))
    for row in pcm:
        det._vad.is_speech(row.tobytes(), 16000)
    out["webrtcvad_only_ms"] = round(1000 * (time.perf_counter() - t0), 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
