"""The Resemblyzer encoder on ONNX Runtime vs PyTorch: same embeddings on real speech, same
identity for the same weights (another identity and another cached export for other weights),
the cache re-exported when damaged, and clear errors when the onnx runtime cannot be used.
The opt-in int8 runtime stays close to PyTorch on real speech (mean cosine >= 0.9995)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from voxguard.errors import ModelError

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_embedder():
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    return ResemblyzerEmbedder(device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def onnx_embedder(cache):
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    return ResemblyzerEmbedder(device="cpu", runtime="onnx", onnx_cache=cache)


@pytest.fixture(scope="module")
def an4_windows(an4_speakers):
    from voxguard.audio import load_audio
    from voxguard.windows import speech_windows

    windows = []
    for spk in list(an4_speakers)[:4]:
        for f in an4_speakers[spk][:2]:
            windows += [w.samples for w in speech_windows(load_audio(f).samples)]
    return windows


@pytest.mark.an4
def test_onnx_matches_torch_on_an4_windows(an4_windows, torch_embedder, onnx_embedder):
    windows = an4_windows
    lengths = {len(w) for w in windows}
    assert len(windows) >= 16 and 24000 in lengths and len(lengths) > 1  # full and shorter final windows
    a, b = torch_embedder.embed(windows), onnx_embedder.embed(windows)
    cos = np.sum(a * b, axis=1)
    assert cos.min() >= 0.999, cos.min()
    # and batches of one give what the batch gave
    np.testing.assert_allclose(onnx_embedder.embed(windows[:1]), b[:1], atol=1e-5)


@pytest.mark.an4
@pytest.mark.parametrize("condition", ["telephone", "noise-brown-5db", "reverb-0.7s", "opus-8k-nb"])
def test_onnx_matches_torch_on_degraded_audio(an4_speakers, torch_embedder, onnx_embedder, condition):
    """Not only on AN4's close-talk audio: the same through the telephone band, noise, reverberation
    and a narrow-band codec (ffmpeg)."""
    from voxguard.audio import load_audio
    from voxguard.bands import telephone_simulation
    from voxguard.channels import apply_chain, ffmpeg_available
    from voxguard.windows import speech_windows

    if condition == "opus-8k-nb" and not ffmpeg_available():
        pytest.skip("ffmpeg is not installed")
    windows = []
    for i, spk in enumerate(list(an4_speakers)[4:7]):
        x = load_audio(an4_speakers[spk][0]).samples
        y = telephone_simulation(x) if condition == "telephone" else apply_chain(x, [condition], seed=i)
        windows += [w.samples for w in speech_windows(np.asarray(y, np.float32))]
    assert len(windows) >= 3
    cos = np.sum(torch_embedder.embed(windows) * onnx_embedder.embed(windows), axis=1)
    assert cos.min() >= 0.9999


def test_replicas_split_threads_and_embed_alike(an4_windows, torch_embedder, onnx_embedder):
    """The daemon's embed workers: replicas of one ONNX embedder, each with its own session."""
    reps = onnx_embedder.replicas(2)
    assert len(reps) == 2 and all(r.identity == onnx_embedder.identity for r in reps)
    assert reps[0]._onnx._session is not reps[1]._onnx._session
    assert all(r._onnx.threads == max(1, (onnx_embedder._onnx.threads or 1) // 2) for r in reps)
    ref = onnx_embedder.embed(an4_windows[:8])
    for r in reps:
        assert np.min(np.sum(r.embed(an4_windows[:8]) * ref, axis=1)) > 0.9999
    assert torch_embedder.replicas(2) == [torch_embedder]  # PyTorch: one process-wide pool, one worker


def test_runtime_keeps_identity_and_caches_by_weights(tmp_path, cache, torch_embedder, onnx_embedder):
    import torch
    from resemblyzer import VoiceEncoder

    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    assert onnx_embedder.runtime == "onnx" and torch_embedder.runtime == "torch"
    assert onnx_embedder.identity == torch_embedder.identity
    assert onnx_embedder._onnx.path.parent == cache and onnx_embedder._onnx.path.is_file()

    # other weights: another identity, another cached export, and it still matches torch
    state = VoiceEncoder("cpu", verbose=False).state_dict()
    state["linear.weight"] = state["linear.weight"] * 1.01
    other = tmp_path / "retrained.pt"
    torch.save({"model_state": state}, other)
    o_onnx = ResemblyzerEmbedder(device="cpu", runtime="onnx", weights=other, onnx_cache=cache)
    o_torch = ResemblyzerEmbedder(device="cpu", runtime="torch", weights=other)
    assert o_onnx.identity == o_torch.identity != onnx_embedder.identity
    assert o_onnx._onnx.path != onnx_embedder._onnx.path
    rng = np.random.default_rng(0)
    w = [0.1 * rng.standard_normal(24000).astype(np.float32) for _ in range(3)]
    assert np.sum(o_onnx.embed(w) * o_torch.embed(w), axis=1).min() >= 0.999


def test_damaged_cache_is_exported_again(tmp_path, onnx_embedder):
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    path = tmp_path / onnx_embedder._onnx.path.name
    path.write_bytes(b"not an onnx model")
    emb = ResemblyzerEmbedder(device="cpu", runtime="onnx", onnx_cache=tmp_path)
    assert emb._onnx.path == path and path.read_bytes() != b"not an onnx model"
    w = [0.1 * np.random.default_rng(1).standard_normal(24000).astype(np.float32)]
    np.testing.assert_allclose(emb.embed(w), onnx_embedder.embed(w), atol=1e-5)


def test_runtime_choice_and_errors(monkeypatch):
    from voxguard.embedders import create_embedder
    from voxguard.embedders.onnx_runtime import RUNTIME_ENV, resolve_runtime
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    assert resolve_runtime(None) == "auto"
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert resolve_runtime(None) == "torch" and resolve_runtime("onnx") == "onnx"
    with pytest.raises(ModelError, match="unknown embedder runtime 'tensorrt'"):
        resolve_runtime("tensorrt")
    with pytest.raises(ModelError, match="onnx embedder runtime runs on the CPU"):
        ResemblyzerEmbedder(device="cuda", runtime="onnx")
    with pytest.raises(ModelError, match="onnx runtime is for the resemblyzer embedder"):
        create_embedder("titanet", runtime="onnx")

    # the export fails (say a future torch without this exporter): auto -> PyTorch; asked for -> the error
    import voxguard.embedders.resemblyzer as rz

    def broken(*a, **k):
        raise RuntimeError("exporter gone")

    monkeypatch.setattr(rz, "OnnxEncoder", broken)
    monkeypatch.delenv(RUNTIME_ENV)
    assert create_embedder("resemblyzer", device="cpu").runtime == "torch"
    with pytest.raises(ModelError, match="exporter gone.*--runtime torch"):
        create_embedder("resemblyzer", device="cpu", runtime="onnx")
    monkeypatch.undo()

    # ONNX Runtime not installed: asked for -> a clear error; auto -> PyTorch
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    with pytest.raises(ModelError, match="pip install onnxruntime"):
        create_embedder("resemblyzer", device="cpu", runtime="onnx")
    assert create_embedder("resemblyzer", device="cpu").runtime == "torch"


@pytest.mark.an4
@pytest.mark.slow
def test_int8_stays_close_on_an4_windows(an4_windows, cache, torch_embedder):
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    q = ResemblyzerEmbedder(device="cpu", runtime="onnx-int8", onnx_cache=cache)  # quantising: ~10 s
    assert q.runtime == "onnx-int8" and q.identity != torch_embedder.identity  # not the same embeddings
    assert q.identity.version == torch_embedder.identity.version + "+int8"
    assert q._onnx.path.name.endswith("-int8.onnx") and q._onnx.path.is_file()
    cos = np.sum(q.embed(an4_windows) * torch_embedder.embed(an4_windows), axis=1)
    # on all 2991 AN4 windows: min 0.9985 (3 windows below 0.999), mean 0.9996
    assert cos.min() >= 0.998 and cos.mean() >= 0.9995, (cos.min(), cos.mean())
