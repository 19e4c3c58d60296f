"""voxguard.audio: decoding, downmix, resampling, PCM conversions and bad files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

from voxguard.audio import (MIN_DURATION_S, _read_ffmpeg, downmix, float_to_pcm16, load_audio, pcm_to_float,
                            resample)
from voxguard.errors import AudioError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# -- resampling and downmix --------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_preserves_frequency_and_duration(rate):
    x = sine(440.0, 2.0, rate)
    y = resample(x, rate, 16000)
    assert y.dtype == np.float32
    assert abs(len(y) - 32000) <= 1
    assert abs(peak_hz(y, 16000) - 440.0) < 1.0
    # amplitude kept (away from the filter's edges)
    assert np.max(np.abs(y[1000:-1000])) == pytest.approx(0.5, abs=0.02)


def test_resample_removes_content_above_the_new_nyquist():
    x = sine(7000.0, 1.0, 48000) + sine(300.0, 1.0, 48000)
    y = resample(x, 48000, 8000)  # 7 kHz is above 4 kHz: must be filtered, not aliased to 1 kHz
    spec = np.abs(np.fft.rfft(y[400:-400]))
    freqs = np.fft.rfftfreq(len(y) - 800, 1 / 8000)
    alias = spec[(freqs > 900) & (freqs < 1100)].max()
    assert alias < 0.01 * spec.max()
    assert abs(peak_hz(y, 8000) - 300.0) < 2.0


def test_resample_same_rate_is_identity():
    x = sine(100.0, 0.5, 16000)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)


def test_downmix():
    left = np.ones(10, dtype=np.float32)
    right = -0.5 * np.ones(10, dtype=np.float32)
    np.testing.assert_allclose(downmix(np.stack([left, right], axis=1)), 0.25)
    np.testing.assert_array_equal(downmix(left[:, None]), left)
    np.testing.assert_array_equal(downmix(left), left)
    assert downmix(np.stack([left, right], axis=1)).dtype == np.float32


def test_pcm_roundtrip():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], dtype=np.float32)
    pcm = float_to_pcm16(x)
    back = pcm_to_float(pcm, "pcm_s16le", 1)[:, 0]
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1 / 16000)
    stereo = pcm_to_float(np.arange(8, dtype="<f4").tobytes(), "pcm_f32le", 2)
    assert stereo.shape == (4, 2) and stereo[1, 1] == 3.0
    with pytest.raises(ValueError):
        pcm_to_float(b"\0\0", "mulaw", 1)


# -- decoding files ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_load_formats_stereo_resampled(tmp_path, fmt, ext):
    sr = 44100
    left, right = sine(300.0, 1.0, sr), sine(300.0, 1.0, sr)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, np.stack([left, right], axis=1), sr, format=fmt)
    a = load_audio(path)
    assert a.sample_rate == 16000 and a.source_rate == sr and a.source_channels == 2
    assert a.samples.ndim == 1 and a.samples.dtype == np.float32
    assert a.duration == pytest.approx(1.0, abs=0.01)
    assert abs(peak_hz(a.samples, 16000) - 300.0) < 2.0


def test_load_mp3_8k_stereo_via_soundfile(tmp_path):
    path = tmp_path / "call.mp3"
    sig = np.stack([sine(250.0, 2.0, 8000), sine(250.0, 2.0, 8000, 0.3)], axis=1)
    try:
        sf.write(path, sig, 8000, format="MP3")
    except (sf.LibsndfileError, ValueError, TypeError) as e:
        pytest.skip(f"this libsndfile cannot write MP3: {e}")
    a = load_audio(path)
    assert a.source_rate == 8000 and a.source_channels == 2
    assert a.duration == pytest.approx(2.0, abs=0.1)
    assert abs(peak_hz(a.samples, 16000) - 250.0) < 3.0


@needs_ffmpeg
def test_ffmpeg_decoder(tmp_path):
    """The ffmpeg path (used for M4A, Opus...): an 8 kHz stereo AAC file."""
    import subprocess

    src = tmp_path / "src.wav"
    sf.write(src, np.stack([sine(400.0, 1.5, 8000)] * 2, axis=1), 8000)
    m4a = tmp_path / "call.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(src), "-c:a", "aac", str(m4a)], check=True)
    data, rate = _read_ffmpeg(m4a)
    assert rate == 8000 and data.shape[1] == 2
    a = load_audio(m4a)
    assert a.source_channels == 2 and a.duration == pytest.approx(1.5, abs=0.1)
    assert abs(peak_hz(a.samples, 16000) - 400.0) < 3.0


# -- bad files ------------------------------------------------------------------------------------

def _error(path) -> AudioError:
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    assert str(path) in str(ei.value)
    return ei.value


def test_missing_file(tmp_path):
    assert "no such file" in _error(tmp_path / "nope.wav").reason


def test_directory(tmp_path):
    assert "directory" in _error(tmp_path).reason


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    assert "empty" in _error(p).reason


def test_zero_frame_wav(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    assert p.stat().st_size > 0
    assert "no audio" in _error(p).reason


def test_text_file_renamed_wav(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("these are meeting notes, not audio\n" * 20)
    assert "not a readable audio file" in _error(p).reason


def test_too_short(tmp_path):
    p = tmp_path / "blip.wav"
    sf.write(p, sine(200.0, 0.05, 16000), 16000)
    e = _error(p)
    assert "too short" in e.reason and "0.050 s" in e.reason and f"{MIN_DURATION_S:.2f}" in e.reason


def test_non_finite_samples(tmp_path):
    p = tmp_path / "nan.wav"
    x = sine(200.0, 1.0, 16000)
    x[100] = np.nan
    sf.write(p, x, 16000, subtype="FLOAT")
    assert "NaN" in _error(p).reason
