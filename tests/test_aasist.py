"""AASIST (voxguard.countermeasures.aasist) against the published checkpoints in ../shared/models/aasist.

* every reference logit of ``reference_outputs.json`` (the authors' implementation) reproduced to
  1e-3 by each checkpoint, loaded strictly through the registry (``$VOXGUARD_MODELS``) and by path;
* bad input refused with one line and nothing loaded: a wrong sha256, a missing / extra key,
  another architecture's weights, a file that is not a checkpoint (API and CLI);
* the input convention (tiling, last ``nb_samp`` samples) and the calibration heads.

The forward passes run on one torch thread, the eight reference files in one batch per checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import REPO, run_cli
from voxguard import models
from voxguard.countermeasures import (CmOutput, Countermeasure, CountermeasureCalibration, CountermeasureError,
                                      CountermeasureIdentity)
from voxguard.countermeasures.aasist import NB_SAMP, AasistConfig, AasistCountermeasure, build_aasist
from voxguard.countermeasures.load import load_countermeasure
from voxguard.errors import ModelError, VoxguardError

SHARED = REPO.parent / "shared"
CKPTS = SHARED / "models" / "aasist"
TOL = 1e-3
CHECKPOINTS = [("aasist", "AASIST.pth"), ("aasist-l", "AASIST-L.pth"), ("aasist-asvspoof5", "AASIST-ASVspoof5.pth")]

needs_checkpoints = pytest.mark.skipif(not (CKPTS / "reference_outputs.json").is_file(),
                                       reason=f"AASIST checkpoints not found at {CKPTS}")


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def read_reference_input(path: Path) -> np.ndarray:
    """The README's input convention: mono float at 16 kHz (soxr from 8 kHz), first NB_SAMP samples,
    a shorter file tiled end to end and cut."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = data.mean(axis=1, dtype=np.float32)
    if rate != 16000:
        x = soxr.resample(x, rate, 16000).astype(np.float32)
    if len(x) < NB_SAMP:
        x = np.tile(x, NB_SAMP // len(x) + 1)
    return x[:NB_SAMP]


@pytest.fixture(scope="module")
def reference():
    if not (CKPTS / "reference_outputs.json").is_file():
        pytest.skip(f"AASIST checkpoints not found at {CKPTS}")
    return json.loads((CKPTS / "reference_outputs.json").read_text())


@pytest.fixture(scope="module")
def reference_inputs(reference) -> tuple[list[str], np.ndarray]:
    files = list(reference["AASIST.pth"])
    assert len(files) == 8 and all(list(v) == files for v in reference.values())
    return files, np.stack([read_reference_input(SHARED / f) for f in files])


def single_line(e: BaseException) -> str:
    assert isinstance(e, VoxguardError), type(e)
    msg = e.message
    assert msg == str(e) and msg.strip() and "\n" not in msg, msg
    return msg


def identity_of(name: str) -> CountermeasureIdentity:
    s = models.spec(name)
    return CountermeasureIdentity(s.name, s.architecture, s.sha256)


def config_of(name: str) -> AasistConfig:
    return AasistConfig.from_dict(models.spec(name).config)


# --- the published outputs --------------------------------------------------------------------------

def test_registry_filenames_are_the_shared_ones(reference):
    assert sorted(reference) == sorted(f for _, f in CHECKPOINTS)
    for name, filename in CHECKPOINTS:
        assert models.spec(name).filename == filename and (CKPTS / filename).is_file()


_torch_runs: dict[str, tuple] = {}


def torch_run(name: str, x: np.ndarray) -> tuple[AasistCountermeasure, CmOutput]:
    """``name`` loaded through the registry (``$VOXGUARD_MODELS`` = the shared folder) and its
    outputs on the eight reference inputs, one batch; once per module."""
    if name not in _torch_runs:
        mp = pytest.MonkeyPatch()
        try:
            mp.setenv(models.MODELS_ENV, str(CKPTS))
            cm = load_countermeasure(name, device="cpu", threads=1)  # the registry's file, verified, strict
        finally:
            mp.undo()
        _torch_runs[name] = (cm, cm.outputs(list(x)))
    return _torch_runs[name]


@needs_checkpoints
@pytest.mark.parametrize("name,filename", CHECKPOINTS)
def test_checkpoint_reproduces_every_reference_logit(name, filename, reference, reference_inputs):
    import torch

    files, x = reference_inputs
    cm, out = torch_run(name, x)
    assert isinstance(cm, AasistCountermeasure) and isinstance(cm, Countermeasure)
    assert cm.identity == identity_of(name)
    assert cm.context_samples == NB_SAMP and cm.min_samples == 32000
    hidden = torch.from_numpy(out.hidden)
    with torch.inference_mode():
        logits = cm.net.out_layer(hidden).numpy().astype(np.float64)  # the network's own last layer
    expected = np.array([reference[filename][f] for f in files])
    assert out.hidden.shape == (8, config_of(name).hidden_dim) and np.isfinite(out.hidden).all()
    err = np.abs(logits - expected)
    assert err.max() <= TOL, {f: e.tolist() for f, e in zip(files, err)}
    assert np.allclose(out.raw, logits[:, 0] - logits[:, 1], atol=1e-5)
    assert np.allclose(cm.logits(list(x[:2])), logits[:2], atol=1e-4)  # logits() is the same function
    # the reference files are not all alike: the outputs depend on the input
    assert np.ptp(expected[:, 1]) > 1.0 and np.ptp(out.raw) > 1.0


@needs_checkpoints
def test_load_by_path_and_through_the_registry_are_the_same_weights(monkeypatch):
    import torch

    by_path = load_countermeasure("aasist-l", device="cpu", path=CKPTS / "AASIST-L.pth")
    monkeypatch.setenv(models.MODELS_ENV, str(CKPTS))
    by_name = load_countermeasure("aasist-l", device="cpu")
    a, b = by_path.net.state_dict(), by_name.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(str(CKPTS / "AASIST-L.pth"), map_location="cpu", weights_only=True)
    assert a.keys() == state.keys() and len(a) > 100 and all(torch.equal(a[k], state[k]) for k in a)
    assert sum(v.numel() for v in by_path.net.parameters()) == models.spec("aasist-l").params


def test_read_reference_input_is_load_audio(reference):
    """load_audio resamples with soxr at the quality the README's convention uses (soxr's default, HQ)."""
    from voxguard.audio import load_audio

    for f in reference["AASIST.pth"]:
        ours = read_reference_input(SHARED / f)
        x = load_audio(SHARED / f).samples
        x = np.tile(x, NB_SAMP // len(x) + 1)[:NB_SAMP] if len(x) < NB_SAMP else x[:NB_SAMP]
        assert np.array_equal(ours, x), f


# --- refused input: one line, nothing loaded ------------------------------------------------------

@pytest.fixture
def flipped(tmp_path) -> Path:
    """AASIST.pth with one byte flipped (same size, another sha256)."""
    if not (CKPTS / "AASIST.pth").is_file():
        pytest.skip(f"AASIST checkpoints not found at {CKPTS}")
    data = bytearray((CKPTS / "AASIST.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    p = tmp_path / "models" / "AASIST.pth"
    p.parent.mkdir()
    p.write_bytes(bytes(data))
    return p


@pytest.fixture
def no_torch_load(monkeypatch):
    """Every torch.load call (the test asserts there is none)."""
    import torch

    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_wrong_sha256_is_refused_before_loading(flipped, monkeypatch, no_torch_load):
    s = models.spec("aasist")
    with pytest.raises(ModelError) as e:
        load_countermeasure("aasist", device="cpu", path=flipped)
    msg = single_line(e.value)
    assert str(flipped) in msg and s.sha256 in msg and "SHA-256" in msg
    monkeypatch.setenv(models.MODELS_ENV, str(flipped.parent))  # the registry's installed file
    with pytest.raises(ModelError) as e:
        load_countermeasure("aasist", device="cpu")
    msg = single_line(e.value)
    assert s.sha256 in msg and "voxguard models fetch aasist" in msg
    assert no_torch_load == []  # never unpickled


def test_a_good_checkpoint_of_another_model_is_refused_by_hash(no_torch_load):
    if not (CKPTS / "AASIST-L.pth").is_file():
        pytest.skip(f"AASIST checkpoints not found at {CKPTS}")
    with pytest.raises(ModelError) as e:
        load_countermeasure("aasist", device="cpu", path=CKPTS / "AASIST-L.pth")
    assert models.spec("aasist").sha256 in single_line(e.value)
    assert no_torch_load == []


@pytest.fixture(scope="module")
def aasist_state():
    import torch

    if not (CKPTS / "AASIST.pth").is_file():
        pytest.skip(f"AASIST checkpoints not found at {CKPTS}")
    return torch.load(str(CKPTS / "AASIST.pth"), map_location="cpu", weights_only=True)


def _save(state, path: Path) -> Path:
    import torch

    torch.save(state, str(path))
    return path


def test_missing_key_is_refused(aasist_state, tmp_path):
    state = dict(aasist_state)
    del state["HtrgGAT_layer_ST22.att_weightM"]
    p = _save(state, tmp_path / "missing.pth")
    with pytest.raises(CountermeasureError) as e:
        AasistCountermeasure.load(p, config_of("aasist"), identity_of("aasist"), device="cpu")
    msg = single_line(e.value)
    assert str(p) in msg and "Missing key" in msg and "HtrgGAT_layer_ST22.att_weightM" in msg


def test_unexpected_key_is_refused(aasist_state, tmp_path):
    import torch

    state = dict(aasist_state, **{"encoder.6.0.conv1.weight": torch.zeros(3)})
    p = _save(state, tmp_path / "extra.pth")
    with pytest.raises(CountermeasureError) as e:
        AasistCountermeasure.load(p, config_of("aasist"), identity_of("aasist"), device="cpu")
    msg = single_line(e.value)
    assert "Unexpected key" in msg and "encoder.6.0.conv1.weight" in msg


def test_wrapped_state_dict_loads(aasist_state, tmp_path):
    """``{"state_dict": ...}`` (a training checkpoint) is accepted: the same weights."""
    import torch

    p = _save({"state_dict": aasist_state, "epoch": 3}, tmp_path / "wrapped.pth")
    cm = AasistCountermeasure.load(p, config_of("aasist"), identity_of("aasist"), device="cpu")
    got = cm.net.state_dict()
    assert all(torch.equal(got[k], aasist_state[k]) for k in aasist_state)


def test_another_architecture_is_refused():
    if not (CKPTS / "AASIST-L.pth").is_file():
        pytest.skip(f"AASIST checkpoints not found at {CKPTS}")
    with pytest.raises(CountermeasureError) as e:
        AasistCountermeasure.load(CKPTS / "AASIST-L.pth", config_of("aasist"), identity_of("aasist"), device="cpu")
    msg = single_line(e.value)
    assert "size mismatch" in msg and "not an AASIST checkpoint of this configuration" in msg
    assert len(msg) < 500
    # and the other way round
    with pytest.raises(CountermeasureError) as e:
        AasistCountermeasure.load(CKPTS / "AASIST.pth", config_of("aasist-l"), identity_of("aasist-l"), device="cpu")
    assert "size mismatch" in single_line(e.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n" * 100, b"PK\x03\x04" + b"\0" * 64],
                         ids=["empty", "text", "broken-zip"])
def test_not_a_pytorch_checkpoint_is_refused(tmp_path, content):
    p = tmp_path / "AASIST.pth"
    p.write_bytes(content)
    with pytest.raises(CountermeasureError) as e:
        AasistCountermeasure.load(p, config_of("aasist"), identity_of("aasist"), device="cpu")
    msg = single_line(e.value)
    assert msg.startswith(f"{p}: not a PyTorch checkpoint")


def test_a_checkpoint_that_is_not_a_state_dict_is_refused(tmp_path):
    import torch

    for i, obj in enumerate(([torch.zeros(2)], {"a": 1.0}, torch.zeros(3))):
        p = _save(obj, tmp_path / f"odd{i}.pth")
        with pytest.raises(CountermeasureError) as e:
            AasistCountermeasure.load(p, config_of("aasist"), identity_of("aasist"), device="cpu")
        assert single_line(e.value) == f"{p}: not a state_dict of tensors"


def _cli_error_line(r) -> str:
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert err.startswith("voxguard: error: ") and "\n" not in err, err
    return err


def test_cli_fetch_refuses_a_bad_file_and_leaves_nothing(tmp_path, flipped):
    d = tmp_path / "cache"
    env = {models.MODELS_ENV: str(d)}
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint\n")
    for bad in (flipped, junk):
        r = run_cli("models", "fetch", "aasist", "--from", str(bad), env=env)
        err = _cli_error_line(r)
        assert str(bad) in err and models.spec("aasist").sha256 in err and r.stdout == b""
        assert not d.exists() or sorted(p.name for p in d.iterdir()) == []
    r = run_cli("models", "fetch", "aasist", "--from", str(tmp_path / "absent.pth"), env=env)
    assert "no such file" in _cli_error_line(r)
    assert not d.exists() or sorted(p.name for p in d.iterdir()) == []


# --- the input convention ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def untrained() -> AasistCountermeasure:
    """An untrained AASIST-L network: prepare() needs no weights (nor a checkpoint)."""
    net = build_aasist(config_of("aasist-l"))
    return AasistCountermeasure(net, CountermeasureIdentity("test", "aasist", "0" * 64), device="cpu", threads=1)


def test_prepare_tiles_short_and_cuts_long_contexts(untrained):
    cm = untrained
    short = np.arange(30000, dtype=np.float32)
    x = cm.prepare(short)
    assert x.shape == (NB_SAMP,) and x.dtype == np.float32
    assert np.array_equal(x[:30000], short) and np.array_equal(x[30000:60000], short)
    assert np.array_equal(x[60000:], short[: NB_SAMP - 60000])
    odd = np.arange(7, dtype=np.float64)  # any dtype, tiled to the sample
    assert np.array_equal(cm.prepare(odd), np.resize(odd, NB_SAMP).astype(np.float32))

    long = np.arange(100000, dtype=np.float32)
    assert np.array_equal(cm.prepare(long), long[-NB_SAMP:])
    exact = np.arange(NB_SAMP, dtype=np.float32)
    assert np.array_equal(cm.prepare(exact), exact)
    assert np.array_equal(cm.prepare(exact[:, None]), exact)  # [n, 1] flattened
    with pytest.raises(ValueError):
        cm.prepare(np.zeros(0, dtype=np.float32))


@needs_checkpoints
def test_outputs_apply_the_convention():
    """outputs() of a short / long context equals outputs() of the tiled / cut input: the batch
    sees what prepare() makes of each context, in order (AASIST-L, real speech)."""
    from voxguard.audio import load_audio

    cm = load_countermeasure("aasist-l", device="cpu", threads=1, path=CKPTS / "AASIST-L.pth")
    short = load_audio(SHARED / "datasets/an4/wav/an4_clstk/mblb/cen1-mblb-b.wav").samples  # 2.7 s
    long = load_audio(SHARED / "datasets/vits-vctk/wav/p249.flac").samples[:120000]  # 7.5 s
    assert len(short) < NB_SAMP < len(long)
    a = cm.outputs([short, long])
    b = cm.outputs([np.resize(short, NB_SAMP), long[-NB_SAMP:]])
    assert isinstance(a, CmOutput) and a.raw.shape == (2,) and a.hidden.shape == (2, 160)
    assert np.allclose(a.raw, b.raw, atol=1e-4) and np.allclose(a.hidden, b.hidden, atol=1e-4)
    assert abs(a.raw[0] - a.raw[1]) > 0.1  # two different inputs, two different scores
    c = cm.outputs([long[:NB_SAMP]])  # the *first* 4.04 s of the long context is another input
    assert abs(c.raw[0] - a.raw[1]) > 1e-3
    empty = cm.outputs([])
    assert empty.raw.shape == (0,) and empty.hidden.shape == (0, 160)


# --- calibration --------------------------------------------------------------------------------------

def _calibrations() -> tuple[CountermeasureCalibration, CountermeasureCalibration]:
    rng = np.random.default_rng(3)
    ident = identity_of("aasist")
    affine = CountermeasureCalibration(ident, {"type": "affine", "a": 0.75, "b": -1.25}, (0.5, 2.0, 4.0),
                                       info={"fa_rates": [0.1, 0.01, 0.001], "data": "test"})
    d = 160
    head = {"type": "linear-hidden", "mean": rng.normal(0, 1, d).tolist(),
            "scale": rng.uniform(0.5, 2.0, d).tolist(), "coef": rng.normal(0, 0.2, d).tolist(),
            "intercept": 0.3}
    hidden = CountermeasureCalibration(ident, head, (1.0, 3.0, 6.0), info={"fa_rates": [0.1, 0.01, 0.001]})
    return affine, hidden


def test_calibration_round_trips():
    for cal in _calibrations():
        d = json.loads(json.dumps(cal.as_dict()))  # through JSON, as shipped
        back = CountermeasureCalibration.from_dict(d)
        assert back == cal and back.as_dict() == cal.as_dict()
        assert back.name == f"aasist@{models.spec('aasist').sha256[:12]} shipped"
        assert CountermeasureCalibration.from_dict(d, source="adapted").name.endswith(" adapted")


def test_calibration_refuses_bad_dicts():
    affine, _ = _calibrations()
    d = affine.as_dict()
    with pytest.raises(CountermeasureError) as e:
        CountermeasureCalibration.from_dict({**d, "format": 99})
    assert "format" in single_line(e.value)
    with pytest.raises(CountermeasureError) as e:
        CountermeasureCalibration.from_dict({**d, "head": {"type": "quadratic"}})
    assert "quadratic" in single_line(e.value)


def test_calibration_check_refuses_another_checkpoint():
    affine, hidden = _calibrations()
    affine.check(identity_of("aasist"))  # its own checkpoint: accepted
    for other in ("aasist-l", "aasist-asvspoof5"):
        for cal in (affine, hidden):
            with pytest.raises(CountermeasureError) as e:
                cal.check(identity_of(other))
            msg = single_line(e.value)
            assert models.spec(other).sha256[:12] in msg and models.spec("aasist").sha256[:12] in msg
    # the same name with another sha256 (a retrained file) is another checkpoint too
    with pytest.raises(CountermeasureError):
        affine.check(CountermeasureIdentity("aasist", "aasist", "f" * 64))


def test_calibration_llr_is_the_formula():
    affine, hidden = _calibrations()
    rng = np.random.default_rng(4)
    raw = np.array([-3.0, 0.0, 2.5, 100.0, -100.0])
    h = rng.normal(0, 1, (5, 160)).astype(np.float32)
    out = CmOutput(raw, h)
    assert np.allclose(affine.llr(out), np.clip(0.75 * raw - 1.25, -30, 30))
    assert affine.llr(out)[3] == 30.0 and affine.llr(out)[4] == -30.0
    hd = hidden.head
    z = (h.astype(np.float64) - np.array(hd["mean"])) / np.array(hd["scale"])
    expected = np.clip(z @ np.array(hd["coef"]) + hd["intercept"], -30, 30)
    got = hidden.llr(out)
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-12)
    for i in range(5):  # element by element
        v = sum((float(h[i, j]) - hd["mean"][j]) / hd["scale"][j] * hd["coef"][j] for j in range(160))
        assert got[i] == pytest.approx(max(-30.0, min(30.0, v + hd["intercept"])), abs=1e-9)
    assert not np.allclose(got, affine.llr(out))  # the head in use matters
    assert [affine.level(v) for v in (0.0, 0.5, 1.9, 2.0, 4.0, 30.0)] == ["none", "low", "low", "medium",
                                                                           "high", "high"]


# --- ONNX Runtime ---------------------------------------------------------------------------------------

def _onnx(cm, directory):
    from voxguard.countermeasures.aasist_onnx import AasistOnnxCountermeasure

    return AasistOnnxCountermeasure(cm, threads=1, directory=directory)


@needs_checkpoints
@pytest.mark.parametrize("name,filename", CHECKPOINTS)
def test_onnx_matches_torch_and_the_reference(name, filename, reference, reference_inputs, tmp_path):
    pytest.importorskip("onnxruntime")
    files, x = reference_inputs
    cm, ref_out = torch_run(name, x)
    ox = _onnx(cm, tmp_path)
    assert ox.path.parent == tmp_path and ox.path.is_file() and models.spec(name).sha256[:32] in ox.path.name
    assert (ox.identity, ox.context_samples, ox.min_samples) == (cm.identity, cm.context_samples, cm.min_samples)
    assert isinstance(ox, Countermeasure) and ox.device == "cpu" and ox.runtime == "onnx"
    out = ox.outputs(list(x))  # batch 8 (exported at 2, checked at 3)
    assert out.hidden.shape == ref_out.hidden.shape and out.raw.shape == (8,)
    assert np.abs(out.hidden - ref_out.hidden).max() <= TOL
    assert np.abs(out.raw - ref_out.raw).max() <= TOL
    expected = np.array([reference[filename][f] for f in files])
    assert np.abs(ox.logits(list(x)) - expected).max() <= TOL
    one = ox.outputs([x[4]])  # batch 1
    assert abs(one.raw[0] - ref_out.raw[4]) <= TOL
    assert ox.outputs([]).hidden.shape == (0, config_of(name).hidden_dim)


@needs_checkpoints
def test_onnx_cache_is_reused_rechecked_and_replaced(reference_inputs, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from voxguard.countermeasures.aasist_onnx import AasistOnnxCountermeasure

    cm = load_countermeasure("aasist-l", device="cpu", threads=1, path=CKPTS / "AASIST-L.pth")
    first = _onnx(cm, tmp_path)
    other = _onnx(load_countermeasure("aasist", device="cpu", threads=1, path=CKPTS / "AASIST.pth"), tmp_path)
    good = first.path.read_bytes()
    real_export = AasistOnnxCountermeasure._export
    exports = []
    monkeypatch.setattr(AasistOnnxCountermeasure, "_export", lambda self: exports.append(1) or real_export(self))

    again = _onnx(cm, tmp_path)  # from the cache, no export
    assert exports == [] and again.path == first.path
    x = reference_inputs[1][:2]
    assert np.array_equal(again.outputs(list(x)).raw, first.outputs(list(x)).raw)

    first.path.write_bytes(good[: len(good) // 2])  # damaged: exported again, cache rewritten
    assert _onnx(cm, tmp_path).outputs(list(x)).raw == pytest.approx(first.outputs(list(x)).raw, abs=1e-6)
    assert exports == [1] and first.path.read_bytes() == good

    # a readable export of other weights (the AASIST checkpoint's) under this name: the check against
    # the PyTorch network catches it and the file is replaced
    first.path.write_bytes(other.path.read_bytes())
    _onnx(cm, tmp_path)
    assert exports == [1, 1] and first.path.read_bytes() == good

    # an export that does not reproduce the network is refused with one line
    monkeypatch.setattr(AasistOnnxCountermeasure, "_export", lambda self: other.path.read_bytes())
    first.path.unlink()
    with pytest.raises(CountermeasureError) as e:
        _onnx(cm, tmp_path)
    assert "does not reproduce" in single_line(e.value) and not first.path.exists()


@needs_checkpoints
def test_onnx_without_a_writable_cache_still_runs(tmp_path):
    pytest.importorskip("onnxruntime")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    cm = load_countermeasure("aasist-l", device="cpu", threads=1, path=CKPTS / "AASIST-L.pth")
    ox = _onnx(cm, blocker / "onnx")
    assert not ox.path.exists()
    x = (0.1 * np.sin(np.arange(30000) / 9.0)).astype(np.float32)
    assert abs(ox.outputs([x]).raw[0] - cm.outputs([x]).raw[0]) <= TOL
