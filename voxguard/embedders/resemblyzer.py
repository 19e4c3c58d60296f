"""Resemblyzer's GE2E speaker encoder (256-d).  Its weights ship in the PyPI package,
so this is the default, offline embedder.

Two runtimes compute the same embeddings (cosine >= 0.9999 on AN4 windows, see
``bench/bench_embedder_runtime.py``): ``torch`` (Resemblyzer's own module) and ``onnx`` (the
same weights exported to ONNX at first use, cached by their hash, run by ONNX Runtime; on CPU
as fast with one thread and up to twice as fast or more with two, see the README).  ``auto`` (the default) picks ``onnx`` on CPU when ONNX Runtime is installed, else
``torch``.  The runtime is not part of the embedder's identity: stores and calibrations made
with one apply to the other.  ``onnx-int8`` (opt-in) quantises the LSTM's second and third
layers to int8: faster again, mean cosine 0.9996 (min 0.9985) to the others on AN4, AN4 EER
12.73 % instead of 12.67 %.  A few windows fall below cosine 0.999, so int8 embeddings are
not "the same": ``onnx-int8`` has its own identity (version suffix ``+int8``), and stores and
calibrations made with the float runtimes are refused with it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelError
from .base import EmbedderIdentity, group_by_length, l2_normalise, pick_device
from .onnx_runtime import OnnxEncoder, import_onnxruntime, onnxruntime_available, resolve_runtime

log = logging.getLogger(__name__)


class ResemblyzerEmbedder:
    name = "resemblyzer"
    dim = 256

    def __init__(self, device: str = "auto", max_batch: int = 64, runtime: str | None = None,
                 weights: str | Path | None = None, onnx_cache: str | Path | None = None):
        """``runtime``: ``auto`` / ``torch`` / ``onnx`` / ``onnx-int8`` (default ``$VOXGUARD_EMBEDDER_RUNTIME``, else
        ``auto``).  ``weights``: another GE2E checkpoint than the bundled one (tests, retraining).
        ``onnx_cache``: where the ONNX export is cached (default ``$VOXGUARD_ONNX_CACHE``, else
        the user cache directory)."""
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import resemblyzer
            from resemblyzer import VoiceEncoder
            from resemblyzer.audio import wav_to_mel_spectrogram  # noqa: F401
            from resemblyzer.hparams import audio_norm_target_dBFS

        self._torch = torch
        self.device = pick_device(device)
        self.max_batch = max_batch
        requested = resolve_runtime(runtime)
        if requested.startswith("onnx"):
            import_onnxruntime()  # a clear error before the model loads
            if self.device != "cpu":
                raise ModelError(f"the onnx embedder runtime runs on the CPU, not {self.device}; "
                                 f"use --device cpu, or --runtime torch")
        weights = Path(weights) if weights else Path(resemblyzer.__file__).parent / "pretrained.pt"
        self._encoder = VoiceEncoder(self.device, verbose=False, weights_fpath=weights)
        self._encoder.eval()
        self._target_dbfs = audio_norm_target_dBFS
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()
        self._version = f"resemblyzer-{metadata.version('resemblyzer')}+{sha[:12]}"
        self._mel_basis = None
        auto = requested == "auto"
        if auto:
            requested = "onnx" if self.device == "cpu" and onnxruntime_available() else "torch"
        self.runtime = requested
        self._onnx = None
        if requested.startswith("onnx"):
            int8 = requested == "onnx-int8"
            try:
                self._onnx = OnnxEncoder(self._encoder, "resemblyzer-ge2e", sha[:32], features=40,
                                         threads=torch.get_num_threads(),
                                         directory=Path(onnx_cache) if onnx_cache else None,
                                         int8=int8, probe=self._probe_mels() if int8 else None)
            except ModelError:
                if not auto:
                    raise
                log.warning("ONNX export rejected; the resemblyzer encoder runs on torch")
                self.runtime = "torch"
            except Exception as e:  # asked for: the error; by default: PyTorch, as before
                if not auto:
                    raise ModelError(f"cannot run the resemblyzer encoder on ONNX Runtime: {e}; "
                                     f"use --runtime torch") from e
                log.warning("ONNX Runtime path unavailable (%s); the resemblyzer encoder runs on torch", e)
                self.runtime = "torch"

    def replicas(self, n: int) -> list["ResemblyzerEmbedder"]:
        """``n`` embedders that can run at the same time, splitting this one's threads: on
        ONNX Runtime, ``n`` sessions of the same export with ``threads // n`` (at least 1)
        intra-op threads each; otherwise (PyTorch's one process-wide pool) just this one."""
        if n <= 1 or self._onnx is None:
            return [self]
        per = max(1, (self._onnx.threads or 1) // n)
        out = []
        for _ in range(n):
            twin = copy.copy(self)
            twin._onnx = self._onnx.with_threads(per)
            out.append(twin)
        return out

    @property
    def identity(self) -> EmbedderIdentity:
        version = self._version + ("+int8" if self.runtime == "onnx-int8" else "")
        return EmbedderIdentity(self.name, self.dim, version)

    def _mels(self, batch: np.ndarray) -> np.ndarray:
        """[n, samples] -> [n, frames, 40] log-free mel power, as Resemblyzer computes it."""
        import librosa
        from resemblyzer import hparams as hp

        n_fft = int(hp.sampling_rate * hp.mel_window_length / 1000)
        hop = int(hp.sampling_rate * hp.mel_window_step / 1000)
        if self._mel_basis is None:
            self._mel_basis = librosa.filters.mel(sr=hp.sampling_rate, n_fft=n_fft, n_mels=hp.mel_n_channels)
        spec = np.abs(librosa.stft(batch, n_fft=n_fft, hop_length=hop)) ** 2  # [n, freq, frames]
        mel = np.einsum("mf,nft->ntm", self._mel_basis, spec, optimize=True)
        return mel.astype(np.float32)

    def _probe_mels(self) -> list[np.ndarray]:
        """Mel spectrograms of a few voice-like windows (harmonics of a gliding pitch, syllable
        envelope, a little noise), to check a quantised encoder on input like speech."""
        rng = np.random.default_rng(7)
        t = np.arange(24000) / 16000
        out = []
        for f0 in (95.0, 140.0, 210.0):
            phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / 16000
            x = sum(np.sin(k * phase) / k for k in range(1, 16)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
            out.append((0.1 * x + 0.003 * rng.standard_normal(len(t))).astype(np.float32))
        return [self._mels(self._normalise_volume(np.stack(out)))]

    def _normalise_volume(self, batch: np.ndarray) -> np.ndarray:
        # Resemblyzer's preprocess_wav: raise quiet audio to -30 dBFS (never lower it).
        rms = np.sqrt(np.mean(batch.astype(np.float64) ** 2, axis=1)) + 1e-12
        gain_db = self._target_dbfs - 20 * np.log10(rms)
        gain = np.where(gain_db > 0, 10 ** (gain_db / 20), 1.0).astype(np.float32)
        return batch * gain[:, None]

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        torch = self._torch
        for _, idx in group_by_length(windows).items():
            batch = self._normalise_volume(np.stack([windows[i] for i in idx]).astype(np.float32))
            mels = self._mels(batch)
            for s in range(0, len(idx), self.max_batch):
                if self._onnx is not None:
                    e = self._onnx(mels[s: s + self.max_batch])
                else:
                    chunk = torch.from_numpy(mels[s: s + self.max_batch]).to(self.device)
                    with torch.inference_mode():
                        e = self._encoder(chunk).float().cpu().numpy()
                out[idx[s: s + self.max_batch]] = e
        return l2_normalise(out)
