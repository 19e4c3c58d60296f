"""Audio input: decode any file to 16 kHz mono float32, and the sample conversions the
streaming engine shares (PCM bytes to float, downmix, resample).

WAV/FLAC/OGG (and MP3 with libsndfile >= 1.1) are read with soundfile; everything
else is decoded by ffmpeg.  Resampling uses soxr (high quality).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from . import SAMPLE_RATE
from .errors import AudioError

MIN_DURATION_S = 0.25
"""Shorter files are refused: there is not enough audio for a speaker embedding."""

FFMPEG_TIMEOUT_S = 120


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, mono, at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def downmix(x: np.ndarray) -> np.ndarray:
    """[frames, channels] (or [frames]) -> [frames] float32, the mean of the channels."""
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    if x.shape[1] == 1:
        return x[:, 0].astype(np.float32, copy=False)
    return x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot high-quality resampling (soxr)."""
    if from_rate == to_rate:
        return np.ascontiguousarray(x, dtype=np.float32)
    return soxr.resample(np.ascontiguousarray(x, dtype=np.float32), from_rate, to_rate, quality="HQ")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, rate


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(path, "not a readable audio file (not a format soundfile reads, and ffmpeg, "
                               "which decodes the others, is not installed)")
    with tempfile.TemporaryDirectory(prefix="voxguard-") as tmp:
        out = Path(tmp) / "decoded.wav"
        cmd = [exe, "-nostdin", "-v", "error", "-y", "-i", str(path), "-vn", "-c:a", "pcm_f32le", str(out)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AudioError(path, f"ffmpeg did not finish decoding within {FFMPEG_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not out.exists():
            detail = (proc.stderr or "").strip().splitlines()
            why = detail[-1] if detail else f"ffmpeg exited with {proc.returncode}"
            raise AudioError(path, f"not a readable audio file ({why})")
        return _read_soundfile(out)


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
               min_duration: float = MIN_DURATION_S, keep_channels: bool = False) -> Audio:
    """Decode ``path`` to mono float32 at ``sample_rate`` (``keep_channels``: ``[frames,
    channels]`` instead, each channel resampled, none mixed).

    Raises :class:`AudioError` naming the file when it is missing, empty,
    undecodable, holds non-finite samples, or is shorter than ``min_duration``.
    """
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "no such file")
    if p.is_dir():
        raise AudioError(p, "is a directory, not an audio file")
    if p.stat().st_size == 0:
        raise AudioError(p, "file is empty (0 bytes)")
    try:
        data, rate = _read_soundfile(p)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        data, rate = _read_ffmpeg(p)
    if data.size == 0:
        raise AudioError(p, "contains no audio samples")
    channels = data.shape[1]
    mono = downmix(data)
    if not np.isfinite(mono).all():
        raise AudioError(p, "contains NaN or infinite samples")
    duration = len(mono) / rate
    if duration < min_duration:
        raise AudioError(p, f"too short: {duration:.3f} s of audio (at least {min_duration:.2f} s needed)")
    if keep_channels:
        return Audio(resample(data, rate, sample_rate), sample_rate, rate, channels)
    return Audio(resample(mono, rate, sample_rate), sample_rate, rate, channels)


def pcm_to_float(data: bytes, encoding: str, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM bytes -> [frames, channels] float32 in [-1, 1].

    ``encoding`` is ``pcm_s16le``, ``pcm_f32le``, or G.711 ``pcm_mulaw`` / ``pcm_alaw``
    (one byte per sample, decoded by libsndfile).  The caller checks that the byte count
    is a whole number of sample frames.
    """
    if encoding == "pcm_s16le":
        x = int16_to_float(np.frombuffer(data, dtype="<i2"))
    elif encoding == "pcm_f32le":
        x = np.frombuffer(data, dtype="<f4").astype(np.float32)
    elif encoding in G711_SUBTYPES:
        if not data:
            return np.zeros((0, channels), dtype=np.float32)
        # the rate only labels the raw "file"; decoding G.711 is per byte and ignores it
        x, _ = sf.read(io.BytesIO(data), format="RAW", subtype=G711_SUBTYPES[encoding], samplerate=8000,
                       channels=channels, dtype="float32", always_2d=True)
        return x
    else:
        raise ValueError(f"unsupported encoding {encoding!r}")
    return x.reshape(-1, channels)


G711_SUBTYPES = {"pcm_mulaw": "ULAW", "pcm_alaw": "ALAW"}  # protocol encoding -> libsndfile subtype


def float_to_g711(x: np.ndarray, encoding: str) -> bytes:
    """float samples ([frames] or [frames, channels], in [-1, 1]) -> G.711 bytes (libsndfile)."""
    buf = io.BytesIO()
    x = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    sf.write(buf, x, 8000, format="RAW", subtype=G711_SUBTYPES[encoding])
    return buf.getvalue()


def int16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1) (scaled by 1/32768)."""
    return x.astype(np.float32) * np.float32(1.0 / 32768.0)


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> little-endian int16 (clipped, scaled by 32767)."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def float_to_pcm16(x: np.ndarray) -> bytes:
    """float32 [-1, 1] -> int16 little-endian bytes (clipped)."""
    return float_to_int16(x).tobytes()
