"""Clone detection: known-clone evidence, the trained countermeasure + fusion, ``voxguard check``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from voxguard.audio import load_audio
from voxguard.backend import pack_arrays
from voxguard.clone_detection import DETECTOR_KEY, LEVELS, CloneAssessment, CloneDetector
from voxguard.enroll.clone_training import save_clone_detector, train_clone_detector
from voxguard.enroll.cloning import create_cloner, generate_clones, target_voice
from voxguard.errors import VoxguardError
from voxguard.index import SpeakerIndex
from voxguard.scoring import SpeakerScorer, thresholds_for
from voxguard.store import SpeakerStore
from voxguard.utterance import embed_utterances

SPEAKERS = 5
ENROLLED = 4
KEPT_BLOB = pack_arrays({"other.marker": np.arange(3, dtype=np.float32)})


@pytest.fixture(scope="module")
def built(an4_speakers, embedder, tmp_path_factory):
    """A store of 6 AN4 speakers (5 utterances each) with 2 known vocoder clones of the first;
    the remaining utterances of each speaker are returned as unseen genuine recordings."""
    from voxguard.enroll.cloning import enroll_clones, write_clones
    from voxguard.enroll.enrollment import Enroller

    tmp = tmp_path_factory.mktemp("detect")
    names = sorted(an4_speakers)[1::14][:SPEAKERS]
    path = tmp / "store.db"
    with SpeakerStore(path) as store:
        enr = Enroller(store, embedder)
        for n in names:
            enr.enroll(n, an4_speakers[n][:ENROLLED])
        cloner = create_cloner("vocoder")
        clones = generate_clones(cloner, target_voice(store, names[0]), 2, seed=0)
        write_clones(clones, tmp / "known", names[0], "vocoder")
        enroll_clones(enr, names[0], cloner, clones)
        enr.refresh_index()
    unseen = {n: [load_audio(f).samples for f in an4_speakers[n][ENROLLED: ENROLLED + 3]] for n in names}
    return path, names, unseen


def _search(store, embedder, recordings):
    idx = SpeakerIndex.for_store(store, use_gpu=False)
    scorer = SpeakerScorer.for_store(store, idx)
    return scorer, scorer.search(embed_utterances(embedder, recordings), k=idx.n_speakers)


@pytest.mark.an4
def test_default_detector_uses_known_clones(built, embedder):
    path, names, unseen = built
    with SpeakerStore(path, readonly=True) as store:
        scorer, _ = _search(store, embedder, [unseen[names[0]][0]])
        det = CloneDetector.for_store(store, scorer.thresholds)
        assert det.trained is None and det.source == "default"
        # a new vocoder replay of the same recordings the known clones came from
        replay = generate_clones(create_cloner("vocoder"), target_voice(store, names[0]), 2, seed=0)
        _, res = _search(store, embedder, [c.audio for c in replay] + [unseen[names[1]][0]])
    a_clone, _, a_other = det.assess_batch(res, [names[0], names[0], None])
    assert a_clone.speaker == names[0] and a_clone.score > 0.5 and a_clone.level in ("medium", "high")
    assert {"best_clone", "best_genuine", "clone_margin", "centroid_score"} <= set(a_clone.evidence)
    assert a_other.speaker == names[1] and a_other.score == 0.0 and a_other.level == "none"
    d = a_clone.as_dict()
    assert set(d) == {"score", "level", "speaker", "evidence"} and json.dumps(d)


@pytest.fixture(scope="module")
def trained(built, embedder):
    path, _, _ = built
    with SpeakerStore(path) as store:
        store.save_calibration({"thresholds": {"accept": 0.7}, "marker": "kept"}, KEPT_BLOB)
        det = train_clone_detector(store, embedder, clones_per_backend=1, n_components=8, seed=0)
        cid = save_clone_detector(store, det)
    return det, cid


@pytest.mark.an4
@pytest.mark.slow
def test_trained_detector_is_stored_and_loaded(built, trained, embedder):
    det, cid = trained
    path, names, _ = built
    assert det.info["speakers"] == SPEAKERS and det.info["known_clones"] == 2
    assert det.info["generated_clones"] == SPEAKERS * 2  # one vocoder, one convert
    lo, mid, hi = det.level_edges
    assert 0.0 < lo < mid < hi < 1.0
    with SpeakerStore(path, readonly=True) as store:
        got_id, data, blob = store.latest_calibration()
        assert got_id == cid and data["marker"] == "kept" and blob == KEPT_BLOB  # calibration kept
        assert DETECTOR_KEY in data
        loaded = CloneDetector.for_store(store, thresholds_for(store))
    assert loaded.source == f"calibration #{cid}" and loaded.countermeasure is not None
    assert loaded.level_edges == det.level_edges


@pytest.mark.an4
@pytest.mark.slow
def test_trained_detector_scores_clones_above_genuine(built, trained, embedder):
    path, names, unseen = built
    with SpeakerStore(path, readonly=True) as store:
        det = CloneDetector.for_store(store, thresholds_for(store))
        genuine = [(n, x) for n in names for x in unseen[n]]
        cloner = create_cloner("vocoder", pitch_range=0.03)
        clones = [(n, c.audio) for k, n in enumerate(names)
                  for c in generate_clones(cloner, target_voice(store, n), 2, seed=100 + k)]
        scorer, res = _search(store, embedder, [x for _, x in genuine + clones])
    claimed = [n for n, _ in genuine + clones]
    audio = [x for _, x in genuine + clones]
    out = det.assess_batch(res, claimed, audio)
    assert all(isinstance(a, CloneAssessment) and 0.0 <= a.score <= 1.0 and a.level in LEVELS for a in out)
    assert all("countermeasure_llr" in a.evidence for a in out)
    g = np.array([a.score for a in out[: len(genuine)]])
    c = np.array([a.score for a in out[len(genuine):]])
    assert c.mean() > g.mean() + 0.3, (g.round(2), c.round(2))
    assert (c > np.quantile(g, 0.9)).mean() >= 0.6
    no_audio = det.assess(res[-1], claimed[-1])  # without audio: the fusion without the countermeasure
    assert "countermeasure_llr" not in no_audio.evidence and 0.0 <= no_audio.score <= 1.0
    window = audio[-1][:24000]  # a daemon-sized window works the same way
    assert 0.0 <= det.assess(res[-1], claimed[-1], window).score <= 1.0


@pytest.mark.an4
def test_unreadable_detector_falls_back_to_default(built, tmp_path):
    path, _, _ = built
    copy = tmp_path / "s.db"
    shutil.copy(path, copy)
    with SpeakerStore(copy) as store:
        store.save_calibration({"thresholds": {"accept": 0.7}, DETECTOR_KEY: {"format": 999}})
        det = CloneDetector.for_store(store, thresholds_for(store))
    assert det.trained is None and det.source == "default"


@pytest.mark.an4
def test_training_needs_enough_speakers(built, embedder, tmp_path):
    path, names, _ = built
    with SpeakerStore(path, readonly=True) as store:
        with pytest.raises(VoxguardError, match="at least 4 speakers"):
            train_clone_detector(store, embedder, speakers=names[:2], n_components=8)


@pytest.mark.an4
def test_cli_check_json(built, trained, tmp_path, capsys):
    from voxguard.cli import main

    path, names, unseen = built
    wav = tmp_path / "call.wav"
    sf.write(wav, unseen[names[2]][0], 16000)
    capsys.readouterr()
    assert main(["check", str(wav), "--claimed", names[2], "--json", "--store", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) == {"file", "duration", "speaker", "band", "identity", "claimed", "clone", "detector"}
    assert set(d["identity"]) >= {"speaker", "decision", "best", "llr", "score", "cosine", "margin", "threshold_llr",
                                  "calibration"}
    assert d["claimed"]["speaker"] == names[2] and d["claimed"]["decision"] in ("accept", "reject")
    assert set(d["clone"]) == {"score", "level", "speaker", "evidence"}
    assert d["clone"]["speaker"] == names[2] and d["clone"]["level"] in LEVELS
    assert "countermeasure_llr" in d["clone"]["evidence"] and d["detector"].startswith("calibration #")


@pytest.mark.an4
def test_cli_check_bad_input(built, tmp_path, capsys):
    from voxguard.cli import main

    path, names, _ = built
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32) + 0.01, 16000)
    for args, message in ((["check", str(wav), "--claimed", "nobody"], "unknown speaker 'nobody'"),
                          (["check", str(tmp_path / "missing.wav")], "no such file")):
        capsys.readouterr()
        assert main([*args, "--store", str(path)]) != 0
        assert message in capsys.readouterr().err
