"""Synthetic-speech countermeasure: LFCC features and a bona fide / spoof GMM pair.

This is the ASVspoof 2019 LFCC-GMM baseline: 20 linear-frequency cepstral coefficients
(20 triangular filters spaced linearly over 0-8 kHz, log energies, DCT-II) with deltas
and delta-deltas (60 values per frame) from 20 ms Hamming frames every 10 ms, scored by
two diagonal-covariance GMMs.  The score of a stretch of audio is the mean per-frame
log-likelihood ratio ``log p(x | spoof) - log p(x | bona fide)``: above 0 looks
synthetic.  (ASVspoof reports the opposite sign; here higher means "more clone-like",
like every other clone score in voxguard.)

Only inference lives here (the daemon runs it on every 1.5 s window: a few ms);
training is :mod:`voxguard.enroll.clone_training`.  Models serialise to plain JSON-able
dicts, so they travel inside the calibration record without pickles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import librosa
import numpy as np
from scipy import fft as scipy_fft
from scipy.fft import dct
from scipy.special import logsumexp

from . import SAMPLE_RATE
from .vad import VadConfig, VoiceActivityDetector, Voiced

N_FILTERS = 20
N_CEPS = 20
WIN_S = 0.020
HOP_S = 0.010
N_FFT = 512
FEATURE_DIM = 3 * N_CEPS
FEATURE_VERSION = 1
"""Version of the LFCC front end; a detector trained on another version is refused."""
MIN_VOICED_S = 0.3
"""Less voiced audio than this and :func:`voiced_audio` keeps the whole recording."""


@lru_cache(maxsize=4)
def linear_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_filters: int = N_FILTERS) -> np.ndarray:
    """``[n_filters, n_fft // 2 + 1]`` triangular filters equally spaced in Hz from 0 to Nyquist."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = np.linspace(0.0, sample_rate / 2, n_filters + 2)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lo) / (mid - lo)
    falling = (hi - freqs[None, :]) / (hi - mid)
    fb = np.maximum(0.0, np.minimum(rising, falling))
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=4)
def _stft_window(sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """The Hamming window of ``WIN_S`` and its offset inside the ``N_FFT``-point frame (librosa
    centres the shorter window in the frame; the frame's other samples are zeroed)."""
    win = int(round(WIN_S * sample_rate))
    w = librosa.filters.get_window("hamming", win, fftbins=True).astype(np.float32)
    w.setflags(write=False)
    return w, (N_FFT - win) // 2


def lfcc(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """LFCC + delta + delta-delta: float32 ``[frames, 60]`` (no frames for less than 32 ms of audio)."""
    return lfcc_batch([samples], sample_rate)[0]


def _lfcc_equal_length(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """LFCC + deltas of equally long stretches ``x [b, n]`` (n >= N_FFT): ``[b, frames, 60]``.

    The STFT of ``librosa.stft(center=False, win_length=WIN_S)`` (20 ms Hamming window centred in
    a 512-point frame, every 10 ms) computed directly: only the window's samples of each frame are
    windowed into a zero frame, every frame of every stretch in one FFT."""
    hop = int(round(HOP_S * sample_rate))
    w, off = _stft_window(sample_rate)
    n_frames = 1 + (x.shape[1] - N_FFT) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x[:, off:], len(w), axis=1)[:, : n_frames * hop: hop]
    buf = np.zeros((x.shape[0], n_frames, N_FFT), dtype=np.float32)  # the zero-padded frames
    np.multiply(frames, w, out=buf[:, :, off: off + len(w)])
    spec = scipy_fft.rfft(buf, axis=-1)  # [b, frames, freq] complex64
    power = spec.real ** 2 + spec.imag ** 2
    fb = linear_filterbank(sample_rate, N_FFT, N_FILTERS)
    energies = (power.reshape(-1, power.shape[-1]) @ fb.T.astype(np.float32)).astype(np.float64)
    energies = energies.reshape(x.shape[0], n_frames, N_FILTERS)  # [b, frames, filters]
    ceps = dct(np.log(energies + 1e-10), type=2, axis=2, norm="ortho")[:, :, :N_CEPS]
    d1 = librosa.feature.delta(ceps, width=3, order=1, axis=1, mode="nearest")
    d2 = librosa.feature.delta(ceps, width=3, order=2, axis=1, mode="nearest")
    return np.concatenate([ceps, d1, d2], axis=2).astype(np.float32)


def lfcc_batch(windows: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """:func:`lfcc` of each stretch of audio, vectorised: stretches of equal length (the daemon's
    windows) go through one framing, one FFT, one filterbank product, one DCT and one delta filter."""
    out: list[np.ndarray | None] = [None] * len(windows)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(len(w), []).append(i)
    for n, rows in groups.items():
        if n < N_FFT:  # each 20 ms window sits zero-padded in a 512-point frame
            for i in rows:
                out[i] = np.zeros((0, FEATURE_DIM), dtype=np.float32)
            continue
        x = np.stack([np.asarray(windows[i], dtype=np.float32) for i in rows])  # [b, n]
        feats = _lfcc_equal_length(x, sample_rate)
        for k, i in enumerate(rows):
            out[i] = feats[k]
    return out


def voiced_audio(samples: np.ndarray, vad: VadConfig | None = None) -> np.ndarray:
    """The voiced parts of a 16 kHz recording, concatenated (what the daemon's windows hold).

    Falls back to the whole recording when the VAD finds less than 0.3 s of speech.
    """
    det = VoiceActivityDetector(vad)
    parts = [ev.samples for ev in det.process(np.asarray(samples, dtype=np.float32)) + det.flush()
             if isinstance(ev, Voiced)]
    voiced = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return voiced if len(voiced) >= MIN_VOICED_S * SAMPLE_RATE else np.asarray(samples, dtype=np.float32)


@dataclass(frozen=True)
class DiagGmm:
    """A diagonal-covariance Gaussian mixture (inference only)."""

    weights: np.ndarray  # [k]
    means: np.ndarray  # [k, d]
    variances: np.ndarray  # [k, d]

    def __post_init__(self):
        # Precompute the terms of log N(x; mu, diag(var)) = x^2 . a + x . b + c
        inv = 1.0 / self.variances
        const = (np.log(self.weights) - 0.5 * (self.means.shape[1] * np.log(2 * np.pi)
                                                + np.log(self.variances).sum(1) + (self.means ** 2 * inv).sum(1)))
        object.__setattr__(self, "_a", (-0.5 * inv).T.astype(np.float64))
        object.__setattr__(self, "_b", (self.means * inv).T.astype(np.float64))
        object.__setattr__(self, "_c", const.astype(np.float64))

    def log_likelihood(self, x: np.ndarray) -> np.ndarray:
        """Per-frame log-likelihood ``[n]`` of frames ``[n, d]``."""
        x = np.asarray(x, dtype=np.float64)
        comp = (x * x) @ self._a + x @ self._b + self._c
        return logsumexp(comp, axis=1)

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def as_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "DiagGmm":
        return cls(np.asarray(d["weights"], dtype=np.float64), np.asarray(d["means"], dtype=np.float64),
                   np.asarray(d["variances"], dtype=np.float64))


class LfccGmmCountermeasure:
    """Scores audio as synthetic (> 0) or bona fide (< 0) with two GMMs over standardised LFCCs."""

    name = "lfcc-gmm"

    def __init__(self, bona_fide: DiagGmm, spoof: DiagGmm, feature_mean: np.ndarray, feature_std: np.ndarray):
        self.bona_fide = bona_fide
        self.spoof = spoof
        self.feature_mean = np.asarray(feature_mean, dtype=np.float32)
        self.feature_std = np.asarray(feature_std, dtype=np.float32)

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Standardised LFCC frames of 16 kHz audio."""
        return (lfcc(samples) - self.feature_mean) / self.feature_std

    def frame_llr(self, feats: np.ndarray) -> np.ndarray:
        """Per-frame ``log p(spoof) - log p(bona fide)`` of standardised frames."""
        if len(feats) == 0:
            return np.zeros(0)
        return self.spoof.log_likelihood(feats) - self.bona_fide.log_likelihood(feats)

    def score(self, samples: np.ndarray) -> float:
        """Mean per-frame spoof LLR of 16 kHz audio (a daemon window, or voiced audio); 0.0 if too short."""
        llr = self.frame_llr(self.features(samples))
        return float(llr.mean()) if len(llr) else 0.0

    def score_frames(self, frames: np.ndarray) -> float:
        """:meth:`score` of precomputed (unstandardised) LFCC frames."""
        llr = self.frame_llr((np.asarray(frames) - self.feature_mean) / self.feature_std)
        return float(llr.mean()) if len(llr) else 0.0

    def score_recording(self, samples: np.ndarray) -> float:
        """Score a whole recording on its voiced audio, as the daemon sees it."""
        return self.score(voiced_audio(samples))

    def score_batch(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`score` of each stretch of audio (daemon windows: already voiced, no VAD here):
        features vectorised (:func:`lfcc_batch`), every frame through the GMMs in one call."""
        return self.score_frames_batch(lfcc_batch(windows))

    def score_frames_batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`score_frames` of each item of ``frames`` (unstandardised LFCC ``[n_i, 60]``)."""
        sizes = np.array([len(f) for f in frames], dtype=np.int64)
        out = np.zeros(len(frames))
        if not sizes.sum():
            return out
        x = np.concatenate([np.asarray(f, dtype=np.float32) for f in frames if len(f)])
        llr = self.frame_llr((x - self.feature_mean) / self.feature_std)
        has = sizes > 0
        starts = np.concatenate([[0], np.cumsum(sizes[has])[:-1]])
        out[has] = np.add.reduceat(llr, starts) / sizes[has]
        return out

    def as_dict(self) -> dict:
        return {"type": self.name, "bona_fide": self.bona_fide.as_dict(), "spoof": self.spoof.as_dict(),
                "feature_mean": self.feature_mean.tolist(), "feature_std": self.feature_std.tolist(),
                "features": {"kind": "lfcc", "n_filters": N_FILTERS, "n_ceps": N_CEPS, "win_s": WIN_S,
                             "hop_s": HOP_S, "deltas": 2}}

    @classmethod
    def from_dict(cls, d: dict) -> "LfccGmmCountermeasure":
        if d.get("type") != cls.name:
            raise ValueError(f"not an {cls.name} countermeasure: {d.get('type')!r}")
        return cls(DiagGmm.from_dict(d["bona_fide"]), DiagGmm.from_dict(d["spoof"]),
                   np.asarray(d["feature_mean"]), np.asarray(d["feature_std"]))


def countermeasure_from_dict(d: dict):
    """The countermeasure a stored dict describes (``lfcc-gmm`` or ``lfcc-cnn``)."""
    kind = d.get("type")
    if kind == LfccGmmCountermeasure.name:
        return LfccGmmCountermeasure.from_dict(d)
    if kind == "lfcc-cnn":
        from .countermeasure_cnn import CnnCountermeasure

        return CnnCountermeasure.from_dict(d)
    raise ValueError(f"unknown countermeasure type {kind!r}")
