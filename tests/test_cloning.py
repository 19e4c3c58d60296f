"""Cloning backends (vocoder, convert, command, nemo-tts) and ``voxguard clone``."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import pyworld as pw
import soundfile as sf

from voxguard.audio import load_audio
from voxguard.embedders.base import l2_normalise
from voxguard.enroll.clone_convert import Source
from voxguard.enroll.cloning import (CloningError, Reference, TargetVoice, create_cloner, generate_clones,
                                     target_voice)
from voxguard.errors import UnknownSpeaker
from voxguard.utterance import embed_utterances

from conftest import run_cli

N_FILES = 4


def _median_f0(x: np.ndarray) -> float:
    f0, t = pw.dio(x.astype(np.float64), 16000)
    f0 = pw.stonemask(x.astype(np.float64), f0, t, 16000)
    return float(np.median(f0[f0 > 0]))


@pytest.fixture(scope="module")
def voices(an4_speakers) -> dict[str, TargetVoice]:
    """Two female and one male AN4 speaker (AN4 names start with the speaker's sex)."""
    f = [n for n in sorted(an4_speakers) if n.startswith("f")][:2]
    m = [n for n in sorted(an4_speakers) if n.startswith("m")][:1]
    out = {}
    for n in f + m:
        audio = [load_audio(p).samples for p in an4_speakers[n][:N_FILES]]
        out[n] = TargetVoice(n, tuple(Reference(i, a, str(p)) for i, (a, p) in
                                      enumerate(zip(audio, an4_speakers[n]))))
    return out


@pytest.fixture(scope="module")
def centroids(voices, embedder) -> dict[str, np.ndarray]:
    return {n: l2_normalise(embed_utterances(embedder, [r.audio for r in v.references]).mean(0))
            for n, v in voices.items()}


@pytest.mark.an4
def test_vocoder_clones_are_16k_same_length_and_sound_like_the_target(voices, centroids, embedder):
    name = sorted(voices)[0]
    target = voices[name]
    clones = generate_clones(create_cloner("vocoder"), target, 3, seed=1)
    by_label = {r.label: r for r in target.references}
    for c in clones:
        assert c.audio.dtype == np.float32 and c.audio.ndim == 1
        ref = by_label[c.source]
        assert abs(len(c.audio) - len(ref.audio)) <= 0.01 * 16000  # same timing, within a frame or two
        assert not np.allclose(c.audio[: len(ref.audio)], ref.audio[: len(c.audio)], atol=1e-3)  # resynthesised
    vecs = embed_utterances(embedder, [c.audio for c in clones])
    for v in vecs:
        scores = {n: float(v @ cen) for n, cen in centroids.items()}
        assert max(scores, key=scores.get) == name
        assert scores[name] > 0.75


@pytest.mark.an4
def test_vocoder_perturbation_changes_pitch_and_timing(voices):
    target = voices[sorted(voices)[0]]
    ref = target.references[0]
    cloner = create_cloner("vocoder", pitch_range=0.3, tempo_range=0.3)
    c = generate_clones(cloner, TargetVoice(target.speaker, (ref,)), 1, seed=3)[0]
    pf, tf = c.params["pitch_factor"], c.params["tempo_factor"]
    assert len(c.audio) / len(ref.audio) == pytest.approx(tf, rel=0.03)
    assert _median_f0(c.audio) / _median_f0(ref.audio) == pytest.approx(pf, rel=0.08)
    assert cloner.params()["pitch_range"] == 0.3


@pytest.mark.an4
def test_convert_moves_pitch_towards_the_target(voices):
    female = [n for n in voices if n.startswith("f")][0]
    male = [n for n in voices if n.startswith("m")][0]
    src = [Source(male, r.label, r.audio) for r in voices[male].references]
    clones = generate_clones(create_cloner("convert", sources=src), voices[female], 2, seed=0)
    f_t = np.median([_median_f0(r.audio) for r in voices[female].references])
    f_s = np.median([_median_f0(r.audio) for r in voices[male].references])
    for c in clones:
        assert c.source.startswith("sample #") and c.params["source_group"] == male
        f_c = _median_f0(c.audio)
        assert abs(np.log(f_c / f_t)) < abs(np.log(f_c / f_s))


@pytest.mark.an4
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian package espeak-ng)")
def test_convert_from_text_with_espeak(voices):
    target = voices[sorted(voices)[0]]
    clones = generate_clones(create_cloner("convert", text=["Hello there, this is a test."]), target, 2, seed=0)
    for c in clones:
        assert c.source == "text: Hello there, this is a test."
        assert 0.8 < c.duration < 5.0
    assert not np.array_equal(clones[0].audio[:8000], clones[1].audio[:8000])  # rate/pitch varied


@pytest.mark.an4
def test_griffinlim_clones_replay_the_target_through_a_mel_spectrogram(voices, centroids, embedder):
    name = sorted(voices)[0]
    target = voices[name]
    cloner = create_cloner("griffinlim", gl_iterations=16, tempo_range=0.05)
    clones = generate_clones(cloner, target, 2, seed=0)
    by_label = {r.label: r for r in target.references}
    for c in clones:
        ref = by_label[c.source]
        assert abs(c.duration - len(ref.audio) / 16000 * c.params["tempo_factor"]) < 0.02
        assert 0.94 <= c.params["tempo_factor"] <= 1.06
        assert not np.allclose(c.audio[: len(ref.audio)][:8000], ref.audio[:8000], atol=1e-3)  # resynthesised
    vecs = embed_utterances(embedder, [c.audio for c in clones])
    sims = {n: float(np.mean(vecs @ cen)) for n, cen in centroids.items()}
    assert max(sims, key=sims.get) == name, sims  # still the target's voice
    assert cloner.params()["n_mels"] == 80
    with pytest.raises(CloningError, match="does not take --pitch-range"):
        create_cloner("griffinlim", pitch_range=0.1)


@pytest.mark.an4
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian package espeak-ng)")
def test_espeak_clones_say_the_text_near_the_target_pitch(voices):
    female = [n for n in sorted(voices) if n.startswith("f")][0]
    male = [n for n in sorted(voices) if n.startswith("m")][0]
    got = {}
    for n in (female, male):
        clones = generate_clones(create_cloner("espeak"), voices[n], 2, texts=["Hello there, this is a test."], seed=0)
        for c in clones:
            assert c.source == "text: Hello there, this is a test." and 0.8 < c.duration < 5.0
        got[n] = np.mean([c.params["pitch"] for c in clones])
    assert got[female] > got[male]  # espeak's pitch follows the target's register


def test_convert_needs_source_speech():
    with pytest.raises(CloningError, match="needs source speech"):
        create_cloner("convert")


def test_unknown_backend_and_foreign_options():
    with pytest.raises(CloningError, match="unknown cloning backend 'xtts'"):
        create_cloner("xtts")
    with pytest.raises(CloningError, match="does not take --command"):
        create_cloner("vocoder", command="tool {out}")


# -- command backend ------------------------------------------------------------------------

COPY_REF = [sys.executable, "-c",
            "import sys, soundfile as sf; x, r = sf.read(sys.argv[1]); sf.write(sys.argv[2], x[::-1], r)"]


def _target() -> TargetVoice:
    from conftest import speech_like

    return TargetVoice("t", (Reference(1, speech_like(1.0)), Reference(2, speech_like(1.2, seed=1))))


def test_command_backend_runs_a_real_tool():
    template = shlex.join(COPY_REF + ["{ref}", "{out}"]) + " --say {text}"
    cloner = create_cloner("command", command=template)
    clones = generate_clones(cloner, _target(), 3, texts=["a b"], seed=0)
    refs = {r.label: r.audio for r in _target().references}
    for c in clones:
        assert np.allclose(c.audio, refs[c.source][::-1], atol=2e-4)  # the tool's output, decoded
        assert c.params == {"text": "a b"}
    assert cloner.params()["command"] == template


def test_command_that_hangs_is_killed():
    cloner = create_cloner("command", command=f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(60)' {{out}}",
                           timeout=1)
    with pytest.raises(CloningError, match="did not finish within 1 s"):
        generate_clones(cloner, _target(), 1)


def test_command_failing_or_writing_nothing():
    py = shlex.quote(sys.executable)
    fail = create_cloner("command", command=f"{py} -c 'import sys; sys.stderr.write(\"model exploded\"); sys.exit(3)' {{out}}")
    with pytest.raises(CloningError, match="exited with status 3: model exploded"):
        generate_clones(fail, _target(), 1)
    nothing = create_cloner("command", command=f"{py} -c 'pass' {{out}}")
    with pytest.raises(CloningError, match="wrote no audio"):
        generate_clones(nothing, _target(), 1)
    garbage = create_cloner("command", command=f"{py} -c 'import sys; open(sys.argv[1], \"w\").write(\"no\")' {{out}}")
    with pytest.raises(CloningError, match="unusable audio"):
        generate_clones(garbage, _target(), 1)
    with pytest.raises(CloningError, match="command not found"):
        generate_clones(create_cloner("command", command="no-such-cloner-tool {out}"), _target(), 1)
    with pytest.raises(CloningError, match=r"must contain \{out\}"):
        create_cloner("command", command="tool {ref}")


# -- nemo-tts -------------------------------------------------------------------------------

def test_nemo_tts_missing_checkpoint(tmp_path):
    with pytest.raises(CloningError, match="FastPitch checkpoint not found"):
        create_cloner("nemo-tts", fastpitch=str(tmp_path / "fp.nemo"), hifigan=str(tmp_path / "hg.nemo"))
    with pytest.raises(CloningError, match="needs --hifigan"):
        (tmp_path / "fp.nemo").write_bytes(b"x")
        create_cloner("nemo-tts", fastpitch=str(tmp_path / "fp.nemo"))


@pytest.fixture(scope="module")
def tiny_tts(tmp_path_factory):
    pytest.importorskip("nemo.collections.tts.models", reason="needs the voxguard[nemo] extra")
    from tiny_nemo_tts import save_tiny_tts

    return save_tiny_tts(tmp_path_factory.mktemp("tts"), n_speakers=3)


@pytest.mark.nemo
@pytest.mark.slow
def test_nemo_tts_backend_loads_real_checkpoints(tiny_tts):
    import torch

    fp, hg = tiny_tts
    cloner = create_cloner("nemo-tts", fastpitch=str(fp), hifigan=str(hg), tts_speaker=2, device="cpu")
    assert cloner.params()["tts_speaker"] == 2 and cloner.sample_rate == 22050
    text = "the quick brown fox jumps over the lazy dog " * 2
    clones = generate_clones(cloner, _target(), 2, texts=[text], seed=0)
    with torch.inference_mode():  # the same models, driven directly: the expected length at 22.05 kHz
        spec = cloner.fastpitch.generate_spectrogram(tokens=cloner.fastpitch.parse(text), speaker=2)
    expected = spec.shape[-1] * 256 * 16000 / 22050
    for c in clones:
        assert c.audio.dtype == np.float32 and np.isfinite(c.audio).all()
        assert abs(len(c.audio) - expected) <= 2
        assert c.source == f"text: {text}"
    with pytest.raises(CloningError, match="--tts-speaker 0..2"):
        create_cloner("nemo-tts", fastpitch=str(fp), hifigan=str(hg), device="cpu")
    with pytest.raises(CloningError, match="out of range"):
        create_cloner("nemo-tts", fastpitch=str(fp), hifigan=str(hg), tts_speaker=3, device="cpu")
    from voxguard.errors import ModelError

    with pytest.raises(ModelError, match="cannot load FastPitch"):
        create_cloner("nemo-tts", fastpitch=str(hg), hifigan=str(hg), device="cpu")


# -- store and CLI ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_path(tmp_path_factory, voices, embedder):
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    path = tmp_path_factory.mktemp("clone-store") / "store.db"
    with SpeakerStore(path) as store:
        enr = Enroller(store, embedder)
        for n, v in voices.items():
            enr.enroll(n, [r.source_path for r in v.references])
        enr.refresh_index()
    return path


def _copy_store(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / "store.db"
    shutil.copy(src, dst)
    return dst


@pytest.mark.an4
def test_target_voice_errors(store_path, embedder, tmp_path):
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    path = _copy_store(store_path, tmp_path)
    with SpeakerStore(path) as store:
        with pytest.raises(UnknownSpeaker):
            target_voice(store, "nobody")
        wav = tmp_path / "fake.wav"
        sf.write(wav, store.sample_audio(1), 16000)
        Enroller(store, embedder).enroll("only-clones", [wav], kind="clone")
        with pytest.raises(CloningError, match="has no genuine samples"):
            target_voice(store, "only-clones")
        assert len(target_voice(store, sorted(n.name for n in store.speakers() if n.genuine)[0]).references) == N_FILES


@pytest.mark.an4
def test_cli_clone_enroll_then_show(store_path, voices, tmp_path, capsys):
    from voxguard.cli import main

    path = _copy_store(store_path, tmp_path)
    speaker = sorted(voices)[0]
    out = tmp_path / "clones"
    r = run_cli("clone", speaker, "--backend", "vocoder", "--count", "2", "--pitch-range", "0.05",
                "--out", str(out), "--enroll", "--json", store=path)
    assert r.returncode == 0, r.stderr.decode()
    data = json.loads(r.stdout)
    assert data["enrolled"] == 2 and len(data["files"]) == 2
    for f in data["files"]:
        info = sf.info(f["path"])
        assert info.samplerate == 16000 and info.channels == 1
    capsys.readouterr()
    assert main(["enroll", "show", speaker, "--json", "--store", str(path)]) == 0
    show = json.loads(capsys.readouterr().out)
    clones = [s for s in show["samples"] if s["kind"] == "clone"]
    assert show["clones"] == 2 and len(clones) == 2
    for s in clones:
        prov = s["provenance"]
        assert prov["backend"] == "vocoder" and prov["source"].startswith("sample #")
        assert prov["params"]["pitch_range"] == 0.05 and "pitch_factor" in prov["params"]
        assert Path(s["source_path"]).parent == out.resolve()


@pytest.mark.an4
def test_cli_clone_bad_input_leaves_the_store_alone(store_path, tmp_path, capsys):
    from voxguard.store import SpeakerStore

    path = _copy_store(store_path, tmp_path)
    with SpeakerStore(path, readonly=True) as store:
        before = store.revision
        speaker = store.speakers()[0].name
    py = shlex.quote(sys.executable)
    cases = [
        (["clone", "nobody"], "unknown speaker 'nobody'"),
        (["clone", speaker, "--backend", "xtts"], "unknown cloning backend 'xtts'"),
        (["clone", speaker, "--backend", "nemo-tts", "--fastpitch", str(tmp_path / "no.nemo"),
          "--hifigan", str(tmp_path / "no.nemo")], "FastPitch checkpoint not found"),
        (["clone", speaker, "--backend", "command", "--count", "2",
          "--command", f"{py} -c 'import sys; sys.exit(4)' {{out}}"], "exited with status 4"),
        (["clone", speaker, "--backend", "command", "--timeout", "1",
          "--command", f"{py} -c 'import time; time.sleep(30)' {{out}}"], "did not finish within 1 s"),
        (["clone", speaker, "--count", "0"], "--count must be at least 1"),
    ]
    from voxguard.cli import main

    for args, message in cases:  # in-process: the same entry point as the installed command
        capsys.readouterr()
        code = main([*args, "--enroll", "--out", str(tmp_path / "out"), "--store", str(path)])
        err = capsys.readouterr().err
        assert code != 0 and "voxguard: error: " in err and message in err, (args, err)
    with SpeakerStore(path, readonly=True) as store:
        assert store.revision == before and store.stats()["clone_samples"] == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
