"""Channel simulations: what a recording goes through between a mouth and voxguard.

Codecs run through ffmpeg (MP3, AAC, Opus, G.711 µ-law / A-law at 8 kHz), the rest with
numpy/scipy: band-limiting and resampling, additive noise at a given SNR, reverberation
(an exponentially decaying noise impulse response of a given RT60) and gain with
clipping.  Every channel maps 16 kHz mono float32 to 16 kHz mono float32 of the same
length and is deterministic for a given ``seed``.

Two fixed lists split them for measurement: :data:`TRAIN_CHANNELS` are the ones training
(scoring backends, calibrations, countermeasures) may see; :data:`HELDOUT_CHANNELS` are
kept out of training, to test on.  :func:`apply_chain` applies several in a row, and
:func:`random_chain` draws one from a list.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import SAMPLE_RATE
from .bands import g711_roundtrip

FFMPEG_TIMEOUT_S = 60


class ChannelError(RuntimeError):
    """A channel could not be applied (e.g. ffmpeg missing or failing)."""


@dataclass(frozen=True)
class Channel:
    name: str
    family: str  # codec | band | noise | reverb | gain | clean
    apply: Callable[[np.ndarray, int], np.ndarray]  # (samples, seed) -> samples
    needs_ffmpeg: bool = False


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None


def ffmpeg_roundtrip(x: np.ndarray, codec_args: Sequence[str], fmt: str, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Encode ``x`` with ffmpeg (``codec_args``, container ``fmt``) and decode it back to 16 kHz."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise ChannelError("ffmpeg is not installed (apt-get install ffmpeg)")
    pcm = np.clip(np.asarray(x, dtype="<f4"), -1, 1).tobytes()
    base = [exe, "-nostdin", "-v", "error", "-y"]
    try:
        enc = subprocess.run(base + ["-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "pipe:0",
                                     "-ar", str(rate), *codec_args, "-f", fmt, "pipe:1"],
                             input=pcm, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
        if enc.returncode or not enc.stdout:
            raise ChannelError(f"ffmpeg could not encode {fmt}: {enc.stderr.decode(errors='replace').strip()[-200:]}")
        demux = {"adts": "aac"}.get(fmt, fmt)  # the ADTS muxer's demuxer is called "aac"
        dec = subprocess.run(base + ["-f", demux, *(["-ar", str(rate), "-ac", "1"] if fmt in ("mulaw", "alaw") else []),
                                     "-i", "pipe:0", "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "pipe:1"],
                             input=enc.stdout, capture_output=True, timeout=FFMPEG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ChannelError(f"ffmpeg did not finish within {FFMPEG_TIMEOUT_S} s") from None
    if dec.returncode:
        raise ChannelError(f"ffmpeg could not decode {fmt}: {dec.stderr.decode(errors='replace').strip()[-200:]}")
    return _fit(np.frombuffer(dec.stdout, dtype="<f4"), len(x))


def _codec(codec_args: Sequence[str], fmt: str, rate: int = SAMPLE_RATE):
    return lambda x, seed: ffmpeg_roundtrip(x, codec_args, fmt, rate)


def _g711(law: str):
    def apply(x, seed):
        from .audio import resample

        return _fit(resample(g711_roundtrip(resample(x, SAMPLE_RATE, 8000), 8000, law), 8000, SAMPLE_RATE), len(x))
    return apply


def bandpass(x: np.ndarray, low: float, high: float, order: int = 6) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(order, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return sosfiltfilt(sos, np.asarray(x, dtype=np.float64)).astype(np.float32)


def _band(low: float, high: float):
    return lambda x, seed: bandpass(x, low, high)


def _resample_via(rate: int):
    def apply(x, seed):
        from .audio import resample

        return _fit(resample(resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE), len(x))
    return apply


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2), n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, exponent: float, seed: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    rms = np.sqrt(np.mean(x ** 2)) + 1e-9
    noise = coloured_noise(len(x), exponent, np.random.default_rng(seed))
    return x + noise * rms / (10 ** (snr_db / 20))


def _noise(snr_db: float, exponent: float):
    return lambda x, seed: add_noise(x, snr_db, exponent, seed)


def reverberate(x: np.ndarray, rt60: float, seed: int, direct: float = 0.5) -> np.ndarray:
    """Convolve with an exponentially decaying noise impulse response (RT60 in seconds)."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    n = max(16, int(rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    rir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    rir[0] = 0.0
    rir = rir / (np.sqrt(np.sum(rir ** 2)) + 1e-12) * (1 - direct)
    rir[0] = direct
    y = fftconvolve(np.asarray(x, dtype=np.float64), rir)[: len(x)]
    peak = np.max(np.abs(y)) + 1e-9
    src = np.max(np.abs(x)) + 1e-9
    return (y * (src / peak)).astype(np.float32)


def _reverb(rt60: float):
    return lambda x, seed: reverberate(x, rt60, seed)


def _gain(db: float):
    return lambda x, seed: np.clip(np.asarray(x, dtype=np.float32) * np.float32(10 ** (db / 20)), -1, 1)


CHANNELS: dict[str, Channel] = {c.name: c for c in [
    Channel("clean", "clean", lambda x, seed: np.asarray(x, dtype=np.float32)),
    Channel("mp3-32k", "codec", _codec(["-c:a", "libmp3lame", "-b:a", "32k"], "mp3"), True),
    Channel("mp3-16k-8khz", "codec", _codec(["-c:a", "libmp3lame", "-b:a", "16k"], "mp3", 8000), True),
    Channel("aac-24k", "codec", _codec(["-c:a", "aac", "-b:a", "24k"], "adts"), True),
    Channel("opus-12k", "codec", _codec(["-c:a", "libopus", "-b:a", "12k"], "ogg"), True),
    Channel("opus-8k-nb", "codec", _codec(["-c:a", "libopus", "-b:a", "8k"], "ogg", 8000), True),
    Channel("mulaw-8k", "codec", _g711("ulaw")),
    Channel("alaw-8k", "codec", _g711("alaw")),
    Channel("ffmpeg-alaw-8k", "codec", _codec(["-c:a", "pcm_alaw"], "alaw", 8000), True),
    Channel("band-300-3400", "band", _band(300.0, 3400.0)),
    Channel("band-100-6000", "band", _band(100.0, 6000.0)),
    Channel("resample-11k", "band", _resample_via(11025)),
    Channel("noise-white-20db", "noise", _noise(20.0, 0.0)),
    Channel("noise-pink-10db", "noise", _noise(10.0, 1.0)),
    Channel("noise-brown-5db", "noise", _noise(5.0, 2.0)),
    Channel("noise-pink-15db", "noise", _noise(15.0, 1.0)),
    Channel("reverb-0.3s", "reverb", _reverb(0.3)),
    Channel("reverb-0.7s", "reverb", _reverb(0.7)),
    Channel("gain-minus20db", "gain", _gain(-20.0)),
    Channel("gain-plus12db-clip", "gain", _gain(12.0)),
]}

# What training may see ...
TRAIN_CHANNELS = ("mp3-32k", "aac-24k", "mulaw-8k", "band-300-3400", "resample-11k",
                  "noise-white-20db", "noise-pink-10db", "reverb-0.3s", "gain-minus20db")
# ... and what is kept out of it, to test on (other codecs, other noise, other rooms).
HELDOUT_CHANNELS = ("opus-12k", "opus-8k-nb", "alaw-8k", "mp3-16k-8khz", "band-100-6000",
                    "noise-brown-5db", "noise-pink-15db", "reverb-0.7s", "gain-plus12db-clip")


def channel(name: str) -> Channel:
    try:
        return CHANNELS[name]
    except KeyError:
        raise ValueError(f"unknown channel {name!r} (choose from {', '.join(CHANNELS)})") from None


def apply_chain(samples: np.ndarray, names: Sequence[str], seed: int = 0) -> np.ndarray:
    """Apply channels in order (each with its own seed derived from ``seed``)."""
    y = np.asarray(samples, dtype=np.float32)
    for i, name in enumerate(names):
        y = channel(name).apply(y, seed * 1009 + i)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def random_chain(rng: np.random.Generator, names: Sequence[str], max_len: int = 2,
                 skip_ffmpeg: bool = False) -> tuple[str, ...]:
    """A random chain of 1..``max_len`` distinct channels of distinct families from ``names``."""
    pool = [n for n in names if not (skip_ffmpeg and CHANNELS[n].needs_ffmpeg)]
    if not pool:
        return ()
    k = int(rng.integers(1, max_len + 1))
    chain: list[str] = []
    for name in rng.permutation(pool):
        if len(chain) == k:
            break
        if CHANNELS[name].family not in {CHANNELS[c].family for c in chain}:
            chain.append(str(name))
    order = ("gain", "reverb", "noise", "band", "codec", "clean")  # acoustic first, then the line
    return tuple(sorted(chain, key=lambda c: order.index(CHANNELS[c].family)))
