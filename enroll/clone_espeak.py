"""``espeak`` cloning backend: formant speech synthesis with espeak-ng, no conversion.

The crudest text-to-speech family: espeak-ng's formant synthesiser says the text with a
voice variant, speed and pitch drawn at random; the pitch is set near the target's median
F0 (estimated from its enrolled audio) so the spoof at least shares the target's register.
It does not sound like the target; it is a spoof family with artefacts of its own
(rule-based formants, no recorded excitation) for training and testing countermeasures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .cloning import Clone, CloningError, TargetVoice, reject_options
from .clone_convert import espeak

VARIANTS = ("", "+m1", "+m3", "+f1", "+f3", "+klatt", "+klatt2")


def median_f0(audio: np.ndarray) -> float | None:
    import pyworld as pw

    from .. import SAMPLE_RATE

    x = np.ascontiguousarray(audio, dtype=np.float64)
    f0, _ = pw.dio(x, SAMPLE_RATE, frame_period=10.0)
    f0 = f0[f0 > 0]
    return float(np.median(f0)) if len(f0) >= 5 else None


class EspeakCloner:
    name = "espeak"

    def __init__(self, voice: str = "en-us"):
        self.voice = voice

    def params(self) -> dict:
        return {"voice": self.voice, "variants": list(VARIANTS)}

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        if not texts:
            raise CloningError("the espeak backend needs --text")
        f0s = [f for f in (median_f0(r.audio) for r in target.references[:4]) if f]
        f0 = float(np.median(f0s)) if f0s else 140.0
        base_pitch = int(np.clip((f0 - 60.0) / 2.0, 0, 99))  # espeak pitch 0-99 (50 ~ 160 Hz male voice)
        out = []
        for i in range(count):
            text = texts[int(rng.integers(len(texts)))]
            variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
            speed = int(rng.integers(140, 200))
            pitch = int(np.clip(base_pitch + rng.integers(-10, 11), 0, 99))
            y = espeak(text, self.voice + variant, speed=speed, pitch=pitch)
            out.append(Clone(y.astype(np.float32), f"text: {text}",
                             {"variant": variant or "default", "speed": speed, "pitch": pitch}))
        return out


def create(espeak_voice: str | None = None, text=None, **unused) -> EspeakCloner:
    reject_options("espeak", unused)
    return EspeakCloner(espeak_voice or "en-us")
