"""Audio bands: the wide band of 16 kHz microphones and the telephone band of 8 kHz calls.

A recording is scored against enrollment of the *same* band: every enrolled sample is
embedded twice, as recorded (``wide``) and through a telephone simulation
(``telephone``: 8 kHz, G.711 µ-law, back to 16 kHz), and every calibration is made per
band.  :func:`detect_band` picks the band of incoming audio: a source sampled at 8 kHz
or less, an 8-bit telephone encoding, or audio with (almost) no energy above the
telephone band's upper edge is ``telephone``.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from . import SAMPLE_RATE

WIDE = "wide"
TELEPHONE = "telephone"
BANDS = (WIDE, TELEPHONE)
TELEPHONE_RATE = 8000
TELEPHONE_ENCODINGS = ("pcm_mulaw", "pcm_alaw")

HIGH_BAND_HZ = 4000.0  # above this a telephone channel carries nothing
HIGH_BAND_RATIO = 1e-3  # energy above HIGH_BAND_HZ / total, below which audio is telephone band


def check_band(band: str) -> str:
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r} (choose from {', '.join(BANDS)})")
    return band


def g711_roundtrip(x: np.ndarray, rate: int, law: str = "ulaw") -> np.ndarray:
    """Encode float samples with G.711 (libsndfile's µ-law / A-law) and decode them again."""
    subtype = {"ulaw": "ULAW", "alaw": "ALAW"}[law]
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), rate, format="WAV", subtype=subtype)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return y


def telephone_simulation(samples: np.ndarray, law: str = "ulaw") -> np.ndarray:
    """16 kHz audio -> what it sounds like after an 8 kHz G.711 call, at 16 kHz again."""
    from .audio import resample

    narrow = resample(samples, SAMPLE_RATE, TELEPHONE_RATE)
    coded = g711_roundtrip(narrow, TELEPHONE_RATE, law)
    out = resample(coded, TELEPHONE_RATE, SAMPLE_RATE)
    return out[: len(samples)] if len(out) >= len(samples) else np.pad(out, (0, len(samples) - len(out)))


def high_band_ratio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Share of the signal's energy above :data:`HIGH_BAND_HZ`."""
    x = np.asarray(samples, dtype=np.float64)
    if len(x) < 512:
        return 0.0
    n = 512
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2] * np.hanning(n)
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    total = power[freqs > 100].sum()
    return float(power[freqs > HIGH_BAND_HZ].sum() / total) if total > 0 else 0.0


def detect_band(samples: np.ndarray | None = None, source_rate: int | None = None,
                encoding: str | None = None) -> str:
    """``telephone`` for 8 kHz (or lower) sources, G.711 encodings, or 16 kHz audio with no
    energy above 4 kHz (an upsampled call); else ``wide``."""
    if encoding in TELEPHONE_ENCODINGS:
        return TELEPHONE
    if source_rate is not None and source_rate <= TELEPHONE_RATE:
        return TELEPHONE
    if samples is not None and len(samples) and high_band_ratio(samples) < HIGH_BAND_RATIO:
        return TELEPHONE
    return WIDE
