"""``griffinlim`` cloning backend: the target's own recordings resynthesised from a mel
spectrogram by Griffin-Lim phase reconstruction (librosa).

Each clone is one enrolled recording of the target turned into an 80-band log-mel
spectrogram (what neural TTS acoustic models predict) and back to a waveform with
Griffin-Lim — the phase is estimated, not recorded — optionally with a small time
stretch (phase vocoder on the mel frames) and random mel-domain smoothing.  Like
``vocoder`` it is a replay of the speaker's own voice; its artefacts (phasiness, smeared
harmonics from the mel inversion) are those of mel-spectrogram vocoding, a family the
WORLD backends do not cover.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import librosa
import numpy as np

from .. import SAMPLE_RATE
from .cloning import Clone, CloningError, TargetVoice, random_factor, reject_options

N_FFT = 1024
HOP = 256
N_MELS = 80


def mel_griffin_lim(audio: np.ndarray, n_iter: int = 32, tempo: float = 1.0, seed: int = 0) -> np.ndarray:
    """16 kHz audio -> log-mel (80 bands, 1024/256) -> Griffin-Lim -> 16 kHz audio."""
    x = np.asarray(audio, dtype=np.float32)
    mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, power=1.0)
    if tempo != 1.0:
        n = mel.shape[1]
        pos = np.linspace(0, n - 1, max(2, int(round(n * tempo))))
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = pos - lo
        mel = (1 - w) * mel[:, lo] + w * mel[:, hi]
    stft = np.maximum(0.0, _mel_pinv() @ mel)  # least-squares inversion of the filterbank (NNLS is slow)
    y = librosa.griffinlim(stft, n_iter=n_iter, hop_length=HOP, n_fft=N_FFT, random_state=seed)
    n = int(round(len(x) * tempo))
    y = y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))
    peak = np.max(np.abs(y)) + 1e-9
    return (y * min(1.0, 0.95 * (np.max(np.abs(x)) + 1e-9) / peak)).astype(np.float32)


@lru_cache(maxsize=1)
def _mel_pinv() -> np.ndarray:
    return np.linalg.pinv(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS))


class GriffinLimCloner:
    name = "griffinlim"

    def __init__(self, n_iter: int = 32, tempo_range: float = 0.0):
        if not 1 <= n_iter <= 500:
            raise CloningError("--gl-iterations must be between 1 and 500")
        if not 0.0 <= tempo_range < 0.5:
            raise CloningError("--tempo-range must be between 0 and 0.5")
        self.n_iter = n_iter
        self.tempo_range = tempo_range

    def params(self) -> dict:
        return {"n_iter": self.n_iter, "tempo_range": self.tempo_range, "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS}

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        out = []
        for ref in target.references_in_turn(count, rng):
            tempo = random_factor(rng, self.tempo_range)
            y = mel_griffin_lim(ref.audio, self.n_iter, tempo, seed=int(rng.integers(2 ** 31)))
            out.append(Clone(y, ref.label, {"tempo_factor": round(tempo, 4)}))
        return out


def create(gl_iterations: int = 32, tempo_range: float = 0.0, **unused) -> GriffinLimCloner:
    reject_options("griffinlim", unused)
    return GriffinLimCloner(gl_iterations, tempo_range or 0.0)
