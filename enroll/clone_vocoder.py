"""``vocoder`` cloning backend: WORLD analysis/resynthesis of the target's own recordings.

Each clone is one enrolled recording of the target, analysed by the WORLD vocoder
(F0, spectral envelope, aperiodicity — :mod:`pyworld`) and resynthesised, optionally
with its pitch scaled and its timing stretched by a random factor.  It is a *vocoder
replay* of the speaker: the voice is the target's own, the artefacts are the vocoder's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyworld as pw

from .. import SAMPLE_RATE
from .cloning import Clone, CloningError, TargetVoice, random_factor, reject_options

FRAME_PERIOD_MS = 5.0


@dataclass(frozen=True)
class WorldFeatures:
    f0: np.ndarray  # [frames] Hz, 0 when unvoiced
    sp: np.ndarray  # [frames, bins] spectral envelope
    ap: np.ndarray  # [frames, bins] aperiodicity


def world_analyse(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, f0_method: str = "dio") -> WorldFeatures:
    """WORLD analysis (``dio``+StoneMask, or the slower, more robust ``harvest``)."""
    x = np.ascontiguousarray(audio, dtype=np.float64)
    if f0_method == "harvest":
        f0, t = pw.harvest(x, sample_rate, frame_period=FRAME_PERIOD_MS)
    elif f0_method == "dio":
        f0, t = pw.dio(x, sample_rate, frame_period=FRAME_PERIOD_MS)
        f0 = pw.stonemask(x, f0, t, sample_rate)
    else:
        raise CloningError(f"unknown F0 method {f0_method!r} (dio or harvest)")
    sp = pw.cheaptrick(x, f0, t, sample_rate)
    ap = pw.d4c(x, f0, t, sample_rate)
    return WorldFeatures(f0, sp, ap)


def world_synthesise(feats: WorldFeatures, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    y = pw.synthesize(np.ascontiguousarray(feats.f0), np.ascontiguousarray(feats.sp),
                      np.ascontiguousarray(feats.ap), sample_rate, FRAME_PERIOD_MS)
    return y.astype(np.float32)


def stretch(feats: WorldFeatures, factor: float) -> WorldFeatures:
    """Change the timing: ``factor`` > 1 is slower (more frames).  Frames are interpolated
    linearly; voicing follows the nearest frame."""
    n = len(feats.f0)
    m = max(2, int(round(n * factor)))
    pos = np.linspace(0, n - 1, m)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo)[:, None]
    sp = (1 - w) * feats.sp[lo] + w * feats.sp[hi]
    ap = (1 - w) * feats.ap[lo] + w * feats.ap[hi]
    near = np.rint(pos).astype(int)
    voiced = feats.f0[near] > 0
    f0 = np.where(voiced & (feats.f0[lo] > 0) & (feats.f0[hi] > 0),
                  (1 - w[:, 0]) * feats.f0[lo] + w[:, 0] * feats.f0[hi], feats.f0[near])
    return WorldFeatures(np.where(voiced, f0, 0.0), np.ascontiguousarray(sp), np.ascontiguousarray(ap))


class VocoderCloner:
    """WORLD resynthesis of the target's enrolled recordings with random pitch/tempo factors."""

    name = "vocoder"

    def __init__(self, pitch_range: float = 0.0, tempo_range: float = 0.0, f0_method: str = "dio"):
        if not 0.0 <= pitch_range < 0.5 or not 0.0 <= tempo_range < 0.5:
            raise CloningError("--pitch-range and --tempo-range must be between 0 and 0.5")
        if f0_method not in ("dio", "harvest"):
            raise CloningError(f"unknown F0 method {f0_method!r} (dio or harvest)")
        self.pitch_range = pitch_range
        self.tempo_range = tempo_range
        self.f0_method = f0_method

    def params(self) -> dict:
        return {"pitch_range": self.pitch_range, "tempo_range": self.tempo_range, "f0_method": self.f0_method,
                "frame_period_ms": FRAME_PERIOD_MS}

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        clones = []
        for ref in target.references_in_turn(count, rng):
            pitch = random_factor(rng, self.pitch_range)
            tempo = random_factor(rng, self.tempo_range)
            feats = world_analyse(ref.audio, f0_method=self.f0_method)
            if tempo != 1.0:
                feats = stretch(feats, tempo)
            if pitch != 1.0:
                feats = WorldFeatures(feats.f0 * pitch, feats.sp, feats.ap)
            clones.append(Clone(world_synthesise(feats), ref.label,
                                {"pitch_factor": round(pitch, 4), "tempo_factor": round(tempo, 4)}))
        return clones


def create(pitch_range: float = 0.0, tempo_range: float = 0.0, f0_method: str = "dio", **unused) -> VocoderCloner:
    reject_options("vocoder", unused)
    return VocoderCloner(pitch_range, tempo_range, f0_method)
