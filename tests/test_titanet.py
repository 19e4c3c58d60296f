"""The TitaNet path end to end, on a tiny TitaNet-architecture ``.nemo`` model with random
weights (built from the real NeMo classes by :mod:`tiny_nemo`), loaded through exactly the
code a user runs: ``create_embedder`` and ``voxguard --embedder titanet --model FILE ...``."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli, speech_like

pytestmark = [
    pytest.mark.nemo,
    pytest.mark.skipif(importlib.util.find_spec("nemo") is None,
                       reason="NVIDIA NeMo is not installed (pip install 'voxguard[nemo]')"),
]

TINY_DIM = 32


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def tiny_nemo(tmp_path_factory):
    from tiny_nemo import save_tiny_titanet

    return save_tiny_titanet(tmp_path_factory.mktemp("nemo") / "tiny_titanet.nemo")


@pytest.fixture(scope="session")
def titanet(tiny_nemo):
    from voxguard.embedders import create_embedder

    return create_embedder("titanet", device="cpu", model=str(tiny_nemo))


def titanet_args(model) -> list[str]:
    return ["--embedder", "titanet", "--model", str(model)]


# -- in process ------------------------------------------------------------------------------

def test_embedder_shapes_and_normalisation(titanet):
    assert titanet.name == "titanet" and titanet.dim == TINY_DIM and titanet.device == "cpu"
    ident = titanet.identity
    assert (ident.name, ident.dim) == ("titanet", TINY_DIM) and ident.version.startswith("nemo-weights:")
    windows = [speech_like(1.5, seed=i) for i in range(5)] + [speech_like(0.8, seed=9)]
    v = titanet.embed(windows)
    assert v.shape == (6, TINY_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(v).all()
    # a window's embedding does not depend on its batch, and different audio differs
    np.testing.assert_allclose(titanet.embed(windows[2:3])[0], v[2], atol=1e-5)
    assert float(v[0] @ v[1]) < 0.99
    assert titanet.embed([]).shape == (0, TINY_DIM)


def test_matches_nemo_own_inference(titanet):
    """Our batched forward gives NeMo's ``infer_segment`` embedding (normalised)."""
    x = speech_like(1.5, seed=4)
    emb, _ = titanet._model.infer_segment(x)
    ref = emb[0].detach().cpu().numpy()
    np.testing.assert_allclose(titanet.embed([x])[0], ref / np.linalg.norm(ref), atol=1e-5)


def test_identity_follows_weights_not_file_name(tiny_nemo, titanet, tmp_path):
    from tiny_nemo import save_tiny_titanet

    from voxguard.embedders import create_embedder

    renamed = tmp_path / "renamed.nemo"
    shutil.copy(tiny_nemo, renamed)
    assert create_embedder("titanet", device="cpu", model=str(renamed)).identity == titanet.identity
    other = save_tiny_titanet(tmp_path / "other.nemo", seed=1)
    assert create_embedder("titanet", device="cpu", model=str(other)).identity != titanet.identity


def test_model_errors_in_process(tmp_path):
    from voxguard.embedders import create_embedder
    from voxguard.errors import ModelError

    with pytest.raises(ModelError, match="not found"):
        create_embedder("titanet", device="cpu", model=str(tmp_path / "missing.nemo"))
    with pytest.raises(ModelError, match="not a file"):
        create_embedder("titanet", device="cpu", model=str(tmp_path))
    junk = tmp_path / "junk.nemo"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="cannot load TitaNet model"):
        create_embedder("titanet", device="cpu", model=str(junk))
    with pytest.raises(ModelError, match="--model is for titanet"):
        create_embedder("resemblyzer", model=str(junk))


# -- the CLI, as a user runs it ---------------------------------------------------------------

@pytest.fixture(scope="module")
def titanet_store(tmp_path_factory, tiny_nemo, an4_speakers):
    """A store enrolled through the CLI with the tiny model: two AN4 speakers, three files each."""
    base = tmp_path_factory.mktemp("titanet")
    store = base / "voxguard.db"
    r = run_cli(*titanet_args(tiny_nemo), "enroll", "add", "fash", *map(str, an4_speakers["fash"][:3]), store=store)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().startswith("fash: added 3 genuine sample(s)")
    # the second speaker through `enroll import` (one folder per speaker)
    (base / "data" / "mgah").mkdir(parents=True)
    for f in an4_speakers["mgah"][:3]:
        (base / "data" / "mgah" / f.name).symlink_to(f)
    r = run_cli(*titanet_args(tiny_nemo), "enroll", "import", str(base / "data"), "--layout", "folders", "--json",
                store=store)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["added"] == 3
    return store


def test_cli_enroll_records_titanet_identity(titanet_store, titanet):
    r = run_cli("enroll", "stats", "--json", store=titanet_store)
    assert r.returncode == 0, r.stderr.decode()
    stats = json.loads(r.stdout)
    assert stats["embedder"] == titanet.identity.as_dict()
    assert stats["speakers"] == 2 and stats["genuine_samples"] == 6


def test_cli_identify_and_verify(titanet_store, tiny_nemo, an4_speakers, titanet):
    from voxguard.audio import load_audio
    from voxguard.utterance import embed_utterance

    # identify: a titanet store needs no --embedder; the model may come from $VOXGUARD_TITANET_MODEL
    probe = an4_speakers["mgah"][6]
    r = run_cli("identify", str(probe), "--json", store=titanet_store, env={"VOXGUARD_TITANET_MODEL": str(tiny_nemo)})
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)  # stdout holds only the JSON document (NeMo's logs go to stderr)
    assert {s["speaker"] for s in out["speakers"]} == {"fash", "mgah"}
    # no default calibration ships for TitaNet: scores, but no decision until `voxguard calibrate`
    assert out["calibration"] == "uncalibrated" and out["decision"] == "uncalibrated" and out["speaker"] is None

    # verify FILE SPEAKER: the score is the in-process cosine to the speaker's centroid
    fash = np.stack([embed_utterance(titanet, load_audio(p).samples) for p in an4_speakers["fash"][:3]])
    centroid = fash.mean(axis=0) / np.linalg.norm(fash.mean(axis=0))
    expected = float(embed_utterance(titanet, load_audio(probe).samples) @ centroid)
    assert next(s["score"] for s in out["speakers"] if s["speaker"] == "fash") == pytest.approx(expected, abs=2e-3)
    r = run_cli(*titanet_args(tiny_nemo), "verify", str(probe), "fash", "--json", store=titanet_store)
    assert r.returncode == 0, r.stderr.decode()  # undecided is no rejection
    got = json.loads(r.stdout)
    assert got["score"] == pytest.approx(expected, abs=2e-3) and got["cosine"] == pytest.approx(expected, abs=2e-3)
    assert got["decision"] == "uncalibrated" and got["llr"] is None


def test_cli_refuses_mixing_embedders(titanet_store, tiny_nemo, an4_speakers, tmp_path):
    probe = str(an4_speakers["fbbh"][0])
    # resemblyzer into the titanet store
    before = sha(titanet_store)
    r = run_cli("--embedder", "resemblyzer", "enroll", "add", "fbbh", probe, store=titanet_store)
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("voxguard: error: ") and len(err.strip().splitlines()) == 1
    assert "holds embeddings from titanet" in err and "--embedder titanet" in err
    assert sha(titanet_store) == before

    # titanet into a resemblyzer store (both enrollment and identification are refused)
    rstore = tmp_path / "resemblyzer.db"
    assert run_cli("enroll", "add", "fbbh", probe, store=rstore).returncode == 0
    before = sha(rstore)
    r = run_cli(*titanet_args(tiny_nemo), "enroll", "add", "fbbh", str(an4_speakers["fbbh"][1]), store=rstore)
    err = r.stderr.decode()
    assert r.returncode != 0 and "holds embeddings from resemblyzer" in err, err
    assert err.startswith("voxguard: error: ") and "Traceback" not in err
    assert sha(rstore) == before


@pytest.mark.parametrize("what", ["missing", "garbage"])
def test_cli_bad_model_file(what, tmp_path, an4_speakers):
    model = tmp_path / "model.nemo"
    if what == "garbage":
        model.write_text("this is not a NeMo model\n")
    store = tmp_path / "voxguard.db"
    r = run_cli(*titanet_args(model), "enroll", "add", "fash", str(an4_speakers["fash"][0]), store=store)
    err = r.stderr.decode()
    assert r.returncode != 0 and err.startswith("voxguard: error: ") and "Traceback" not in err
    assert str(model) in err
    assert ("not found" if what == "missing" else "cannot load TitaNet model") in err
    assert not store.exists()  # a model that cannot load creates no store
