"""LFCC features and the LFCC-GMM countermeasure (training in ``clone_training``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxguard.audio import load_audio
from voxguard.countermeasure import (FEATURE_DIM, DiagGmm, LfccGmmCountermeasure, lfcc, lfcc_batch,
                                     linear_filterbank, voiced_audio)
from voxguard.enroll.clone_training import equal_error_rate, fit_countermeasure
from voxguard.enroll.clone_vocoder import VocoderCloner
from voxguard.enroll.cloning import Reference, TargetVoice, generate_clones

from conftest import speech_like

TRAIN_SPEAKERS = 4
TEST_SPEAKERS = 2
FILES = 5
EER_FLOOR = 0.25
"""Held-out EER of a 16-component LFCC-GMM trained on 4 speakers' vocoder clones (measured
0.10 on this split); well below chance (0.5) is what this test guards."""


def test_lfcc_shape_and_frames():
    x = speech_like(1.0)
    f = lfcc(x)
    assert f.shape == (1 + (16000 - 512) // 160, FEATURE_DIM)  # 20 ms windows in 512-point frames
    assert f.dtype == np.float32 and np.isfinite(f).all()
    assert lfcc(x[:100]).shape == (0, FEATURE_DIM)  # shorter than one frame


def test_linear_filterbank_is_linear_triangles():
    fb = linear_filterbank()
    assert fb.shape == (20, 257)
    assert fb.max() <= 1.0 + 1e-9 and (fb >= 0).all()
    peaks = fb.argmax(axis=1)
    assert np.allclose(np.diff(peaks), np.diff(peaks).mean(), atol=1)  # equally spaced in Hz


def test_lfcc_sees_high_frequencies():
    """A 6 kHz tone and a 7 kHz tone give different cepstra (mel filters would blur them)."""
    t = np.arange(16000) / 16000
    a = lfcc((0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32))[:, :20].mean(0)
    b = lfcc((0.3 * np.sin(2 * np.pi * 7000 * t)).astype(np.float32))[:, :20].mean(0)
    assert np.linalg.norm(a - b) > 1.0


def test_diag_gmm_matches_sklearn():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (300, 5)), rng.normal(3, 0.5, (300, 5))])
    g = GaussianMixture(4, covariance_type="diag", random_state=0).fit(x)
    ours = DiagGmm(g.weights_, g.means_, g.covariances_)
    assert np.allclose(ours.log_likelihood(x), g.score_samples(x), atol=1e-6)


@pytest.fixture(scope="module")
def an4_split(an4_speakers):
    """(train genuine, train clones, test genuine, test clones): vocoder clones, disjoint speakers."""
    names = sorted(an4_speakers)[:: max(1, len(an4_speakers) // (TRAIN_SPEAKERS + TEST_SPEAKERS))]
    names = names[: TRAIN_SPEAKERS + TEST_SPEAKERS]
    cloner = VocoderCloner(pitch_range=0.05, tempo_range=0.05)
    parts = []
    for group in (names[:TRAIN_SPEAKERS], names[TRAIN_SPEAKERS:]):
        genuine, clones = [], []
        for k, n in enumerate(group):
            audio = [load_audio(f).samples for f in an4_speakers[n][:FILES]]
            genuine += audio
            target = TargetVoice(n, tuple(Reference(i, a) for i, a in enumerate(audio)))
            clones += [c.audio for c in generate_clones(cloner, target, FILES, seed=k)]
        parts += [genuine, clones]
    return parts


@pytest.fixture(scope="module")
def trained_cm(an4_split):
    genuine, clones, _, _ = an4_split
    return fit_countermeasure(genuine, clones, n_components=16, seed=0)


@pytest.mark.an4
def test_countermeasure_separates_heldout_vocoder_clones(trained_cm, an4_split):
    _, _, test_genuine, test_clones = an4_split
    g = np.array([trained_cm.score_recording(x) for x in test_genuine])
    c = np.array([trained_cm.score_recording(x) for x in test_clones])
    eer = equal_error_rate(g, c)
    assert c.mean() > g.mean()
    assert eer <= EER_FLOOR, f"held-out EER {eer:.3f}"


@pytest.mark.an4
def test_countermeasure_round_trips_through_json(trained_cm, an4_split):
    restored = LfccGmmCountermeasure.from_dict(json.loads(json.dumps(trained_cm.as_dict())))
    for x in an4_split[2][:3] + an4_split[3][:3]:
        assert restored.score_recording(x) == pytest.approx(trained_cm.score_recording(x), abs=1e-5)  # BLAS order
    with pytest.raises(ValueError):
        LfccGmmCountermeasure.from_dict({**trained_cm.as_dict(), "type": "cnn"})


@pytest.mark.an4
def test_window_scores_and_short_audio(trained_cm, an4_split):
    window = voiced_audio(an4_split[2][0])[:24000]
    s = trained_cm.score(window)
    assert np.isfinite(s)
    assert trained_cm.score(np.zeros(100, np.float32)) == 0.0
    assert len(voiced_audio(np.zeros(8000, np.float32))) == 8000  # no speech: keep the whole recording


def test_too_little_audio_is_a_clear_error():
    from voxguard.errors import VoxguardError

    with pytest.raises(VoxguardError, match=r"too little audio .* add about [\d.]+ s more"):
        fit_countermeasure([speech_like(0.3)], [speech_like(0.3, seed=1)], n_components=64)


@pytest.mark.an4
def test_cnn_countermeasure_learns_and_round_trips(an4_split):
    import torch

    from voxguard.countermeasure import countermeasure_from_dict
    from voxguard.countermeasure_cnn import CnnCountermeasure
    from voxguard.enroll.cnn_training import fit_cnn_countermeasure
    from voxguard.enroll.clone_training import recording_frames

    torch.set_num_threads(1)
    genuine, clones, test_genuine, test_clones = an4_split
    cm = fit_cnn_countermeasure([recording_frames(x) for x in genuine], [recording_frames(x) for x in clones],
                                seed=0, epochs=6)
    g = np.array([cm.score_recording(x) for x in test_genuine])
    c = np.array([cm.score_recording(x) for x in test_clones])
    assert equal_error_rate(g, c) <= 0.35, (g.round(2), c.round(2))  # held-out speakers; chance is 0.5
    restored = countermeasure_from_dict(json.loads(json.dumps(cm.as_dict())))
    assert isinstance(restored, CnnCountermeasure)
    assert restored.score_recording(test_clones[0]) == pytest.approx(cm.score_recording(test_clones[0]), abs=1e-4)
    assert np.isfinite(cm.score(voiced_audio(test_genuine[0])[:24000])) and cm.score(np.zeros(100, np.float32)) == 0.0


def test_cnn_too_little_audio_says_how_much_more():
    from voxguard.enroll.cnn_training import fit_cnn_countermeasure
    from voxguard.errors import VoxguardError

    f = [np.zeros((50, 60), np.float32)] * 5
    with pytest.raises(VoxguardError, match="add about 30 more recordings"):
        fit_cnn_countermeasure(f, f)


def daemon_windows(recordings, window: int = 24000, hop: int = 8000) -> list[np.ndarray]:
    """What the daemon assesses: 1.5 s windows every 0.5 s over the voiced audio of each recording
    (a recording's last window may be shorter), plus a stretch too short for one LFCC frame."""
    out = []
    for x in recordings:
        v = voiced_audio(x)
        out += [v[s: s + window] for s in range(0, max(1, len(v) - window + hop), hop)]
    return out + [v[:300]]


def test_lfcc_matches_the_librosa_stft_definition():
    """The direct STFT equals LFCC computed with ``librosa.stft`` (20 ms Hamming in 512-point frames)."""
    import librosa
    from scipy.fft import dct

    for n, seed in ((24000, 0), (9999, 1), (512, 2)):
        x = speech_like(n / 16000 + 0.01, seed=seed)[:n]
        spec = librosa.stft(x, n_fft=512, hop_length=160, win_length=320, window="hamming", center=False)
        ceps = dct(np.log(linear_filterbank() @ (np.abs(spec) ** 2) + 1e-10), type=2, axis=0, norm="ortho")[:20]
        d1 = librosa.feature.delta(ceps, width=3, order=1, axis=-1, mode="nearest")
        d2 = librosa.feature.delta(ceps, width=3, order=2, axis=-1, mode="nearest")
        want = np.concatenate([ceps, d1, d2], axis=0).T
        np.testing.assert_allclose(lfcc(x), want, rtol=1e-5, atol=1e-4)


def test_lfcc_batch_equals_lfcc():
    xs = [speech_like(1.5, seed=k) for k in range(5)] + [speech_like(0.9, seed=7), speech_like(0.01, seed=8)]
    for got, x in zip(lfcc_batch(xs), xs):
        assert got.shape == lfcc(x).shape and got.dtype == np.float32
        np.testing.assert_allclose(got, lfcc(x), rtol=1e-6, atol=1e-5)


@pytest.fixture(scope="module")
def windows(an4_split):
    return daemon_windows(an4_split[2][:4] + an4_split[3][:4])


@pytest.mark.an4
def test_gmm_batch_scores_equal_serial(trained_cm, windows, monkeypatch):
    import voxguard.countermeasure as cm_module

    serial = np.array([trained_cm.score(w) for w in windows])
    monkeypatch.setattr(cm_module, "VoiceActivityDetector", None)  # daemon windows: no VAD on this path
    batch = trained_cm.score_batch(windows)
    assert len(set(map(len, windows))) > 2 and serial[-1] == 0.0  # several lengths, one too short
    np.testing.assert_allclose(batch, serial, rtol=0, atol=1e-5)


@pytest.mark.an4
def test_cnn_batch_scores_equal_serial(an4_split, windows, monkeypatch):
    import torch

    import voxguard.countermeasure as cm_module
    from voxguard.enroll.cnn_training import fit_cnn_countermeasure
    from voxguard.enroll.clone_training import recording_frames

    torch.set_num_threads(1)
    genuine, clones, _, _ = an4_split
    cm = fit_cnn_countermeasure([recording_frames(x) for x in genuine], [recording_frames(x) for x in clones],
                                seed=0, epochs=1)
    serial = np.array([cm.score(w) for w in windows])
    monkeypatch.setattr(cm_module, "VoiceActivityDetector", None)
    calls = []
    forward = cm.net.forward
    monkeypatch.setattr(cm.net, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    batch = cm.score_batch(windows)
    np.testing.assert_allclose(batch, serial, rtol=0, atol=1e-5)
    full = sum(len(w) == 24000 for w in windows)
    lengths = {len(f) for f in map(lfcc, windows) if len(f) >= 2}
    assert full > 10 and full in calls and len(calls) == len(lengths)  # one forward per distinct length
