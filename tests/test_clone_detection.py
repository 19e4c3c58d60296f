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
    assert a_clone.speaker == names[0] and a_clone.llr > 1.1 and a_clone.level in ("medium", "high")
    assert {"best_clone", "best_genuine", "centroid_score"} <= set(a_clone.evidence)
    assert a_clone.evidence["contributions"]["clone_margin"] == pytest.approx(a_clone.llr, abs=1e-3)
    assert a_clone.score == pytest.approx(1 / (1 + np.exp(-a_clone.llr)))
    # no known clone of names[1]: no evidence either way (LLR 0, level none), not a confident "genuine"
    assert a_other.speaker == names[1] and a_other.llr == 0.0 and a_other.level == "none"
    d = a_clone.as_dict()
    assert set(d) == {"score", "level", "speaker", "llr", "evidence"} and json.dumps(d)


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
    assert det.info["model"] == "lfcc-gmm" and "lfcc-cnn needs 20" in det.info["model_fallback"]  # a tiny store
    assert det.info["generated_clones"] == {f: SPEAKERS for f in ("vocoder", "convert", "espeak", "griffinlim")}
    for name, fusion in det.fusions.items():  # every evidence may only push towards "clone"
        assert (fusion.coef >= 0).all(), (name, fusion.coef)
        lo, mid, hi = det.utterance_edges[name]
        assert lo < mid < hi
        assert det.window_edges[name][0] < det.window_edges[name][2]
    assert "clone_margin" in det.fusions["known_clones"].features
    assert "clone_margin" not in det.fusions["no_known_clones"].features
    assert det.session.offset >= 0 and det.session.edges[0] < det.session.edges[2]
    assert set(det.speaker_stats) == set(names)  # every stored speaker has its genuine reference
    with SpeakerStore(path, readonly=True) as store:
        got_id, data, blob = store.latest_calibration()
        assert got_id == cid and data["marker"] == "kept" and blob == KEPT_BLOB  # calibration kept
        assert DETECTOR_KEY in data
        loaded = CloneDetector.for_store(store, thresholds_for(store))
    assert loaded.source == f"calibration #{cid}" and loaded.countermeasure is not None and loaded.available
    assert loaded.trained.utterance_edges == det.utterance_edges


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
    assert all("cm" in a.evidence["values"] and "cm_speaker" in a.evidence["values"] for a in out)
    for a in out:  # the LLR is the intercept plus the (non-negative weight) contributions
        assert a.llr == pytest.approx(a.evidence["intercept"] + sum(a.evidence["contributions"].values()), abs=0.01)
        assert a.score == pytest.approx(1 / (1 + np.exp(-a.llr)), abs=1e-6)
    g = np.array([a.llr for a in out[: len(genuine)]])
    c = np.array([a.llr for a in out[len(genuine):]])
    assert c.mean() > g.mean() + 0.3, (g.round(2), c.round(2))  # tiny training set (5 speakers, 8 components)
    assert (c > np.quantile(g, 0.9)).mean() >= 0.6
    no_audio = det.assess(res[-1], claimed[-1])  # without audio the countermeasure evidence is missing
    assert "cm" not in no_audio.evidence["values"] and "cm" not in no_audio.evidence["contributions"]
    window = audio[-1][:24000]  # a daemon-sized window: the window operating points
    w = det.assess(res[-1], claimed[-1], window, window=True)
    assert 0.0 <= w.score <= 1.0 and w.level in LEVELS


@pytest.mark.an4
def test_no_clones_and_no_detector_is_unavailable(built, embedder, tmp_path):
    """Without known clones or a trained detector there is no clone evidence: "unavailable", not "none"."""
    path, names, unseen = built
    copy = tmp_path / "s.db"
    shutil.copy(path, copy)
    with SpeakerStore(copy) as store:
        store.remove_speaker(names[0])  # the only speaker with known clones
        store.save_calibration({"thresholds": {"accept": 0.7}})  # newest calibration: no trained detector
        assert store.stats()["clone_samples"] == 0
        det = CloneDetector.for_store(store, thresholds_for(store))
        assert not det.available and "no known clones" in det.reason
        _, res = _search(store, embedder, [unseen[names[1]][0]])
        a = det.assess(res[0], names[1], unseen[names[1]][0])
    assert a.level == "unavailable" and a.score is None and a.llr is None
    assert a.as_dict()["score"] is None and json.dumps(a.as_dict())


@pytest.mark.an4
@pytest.mark.slow
def test_detector_for_another_embedder_or_version_is_refused(built, trained, tmp_path):
    det, _ = trained
    path, names, _ = built
    for change, message in (({"embedder": {"name": "titanet", "dim": 192, "version": "x"}}, "trained for embedder titanet"),
                            ({"feature_version": 1}, "feature version 1"),
                            ({"format": 999}, "format 999")):
        copy = tmp_path / f"s{len(message)}.db"
        shutil.copy(path, copy)
        with SpeakerStore(copy) as store:
            store.save_calibration({"thresholds": {"accept": 0.7}, DETECTOR_KEY: {**det.as_dict(), **change}})
            loaded = CloneDetector.for_store(store, thresholds_for(store))
        assert not loaded.available and message in loaded.reason and "voxguard calibrate" in loaded.reason


@pytest.mark.an4
def test_training_needs_enough_speakers(built, embedder, tmp_path):
    path, names, _ = built
    with SpeakerStore(path, readonly=True) as store:
        with pytest.raises(VoxguardError, match="at least 4 speakers"):
            train_clone_detector(store, embedder, speakers=names[:2], n_components=8)
        with pytest.raises(VoxguardError, match=r"needs at least 500 s of stored genuine audio; the 5 speakers have "
                                                r"\d+\.\d s: enroll about \d+ s more"):
            train_clone_detector(store, embedder, n_components=8, min_genuine_s=500)


@pytest.mark.an4
def test_cli_check_json(built, trained, tmp_path, capsys):
    from voxguard.cli import main

    path, names, unseen = built
    wav = tmp_path / "call.wav"
    sf.write(wav, unseen[names[2]][0], 16000)
    capsys.readouterr()
    assert main(["check", str(wav), "--claimed", names[2], "--json", "--store", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d) == {"file", "duration", "speaker", "band", "identity", "claimed", "clone", "detector",
                      "detector_available"}
    assert set(d["identity"]) >= {"speaker", "decision", "best", "llr", "score", "cosine", "margin", "threshold_llr",
                                  "calibration"}
    assert d["claimed"]["speaker"] == names[2] and d["claimed"]["decision"] in ("accept", "reject")
    assert set(d["clone"]) == {"score", "level", "speaker", "llr", "evidence"}
    assert d["clone"]["speaker"] == names[2] and d["clone"]["level"] in LEVELS
    ev = d["clone"]["evidence"]
    assert "cm" in ev["values"] and set(ev["contributions"]) <= set(ev["values"]) and d["detector"].startswith("calibration #")
    capsys.readouterr()
    assert main(["check", str(wav), "--claimed", names[2], "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert "LLR" in text and "base (intercept)" in text and "cm_speaker" in text


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


def _assessment(llr: float, level: str = "none"):
    from voxguard.clone_detection import DEFAULT_SESSION_RULE, sigmoid

    return CloneAssessment(sigmoid(llr), level, "a", {}, llr, DEFAULT_SESSION_RULE)


def test_session_rule_edges_follow_the_stated_false_alarm_rates():
    from voxguard.clone_detection import SessionRule

    r = SessionRule.for_targets(1 / 3, 0.5, window_s=1.5, hours_per_false_alarm=(1, 20, 100))
    assert r.windows_per_hour == 2400
    assert np.allclose(np.exp(r.edges), [2400, 48000, 240000])
    assert r.step(0.0, -5.0) == 0.0 and r.step(1.0, 3.5) == pytest.approx(2.0)
    assert r.level(None) == "unavailable" and r.level(0.0) == "none" and r.level(r.edges[1]) == "medium"
    assert SessionRule.from_dict(r.as_dict()) == r


def test_clone_tracker_accumulates_evidence_instead_of_the_worst_window():
    from voxguard.daemon.decisions import CloneTracker

    # genuine-looking call: negative LLRs with one odd suspicious window never raise the session
    t = CloneTracker()
    seq = [-2.0] * 20 + [6.0] + [-2.0] * 20
    reports = [t.update(_assessment(x, "high" if x > 0 else "none")) for x in seq]
    assert t.level == "none" and t.max_level in ("none", "low") and t.alarms == 0
    assert sum(reports) == 2  # the odd window and the one that clears it
    # a clone: steady positive evidence accumulates to high within a few seconds
    t = CloneTracker()
    levels = []
    for _ in range(30):
        t.update(_assessment(2.0, "medium"))
        levels.append(t.level)
    assert levels[0] == "none" and levels[-1] == "high" and t.alarms == 1
    assert levels.index("high") == int(np.ceil(t.rule.edges[2] / (2.0 / 3))) - 1
    d = t.as_dict()
    assert d["level"] == "high" and d["llr"] == pytest.approx(20.0) and d["suspicious_windows"] == 30
    assert d["hours_per_false_alarm"] == {"low": 1.0, "medium": 20.0, "high": 100.0}
    # windows without a detector leave the session unavailable
    u = CloneTracker()
    assert u.update(CloneAssessment(None, "unavailable", None, {})) is False
    assert u.as_dict()["level"] == "unavailable" and u.as_dict()["llr"] is None


def test_signed_fusion_has_no_negative_weight():
    from voxguard.clone_detection import SignedFusion
    from voxguard.enroll.clone_training import fit_signed_logistic

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(300), np.ones(300)].astype(int)
    good = rng.normal(0, 1, 600) + 2.0 * y  # evidence pointing the right way
    wrong = rng.normal(0, 1, 600) - 1.5 * y  # "evidence" that points the other way
    X = np.c_[good, wrong, np.where(rng.random(600) < 0.3, np.nan, good)]
    f = fit_signed_logistic(X, y, ["good", "wrong", "sometimes"])
    assert f.coef[0] > 0.5 and f.coef[1] == 0.0 and (f.coef >= 0).all()
    llr = f.llr_matrix(X)
    assert llr[y == 1].mean() > 1.0 > -1.0 > llr[y == 0].mean()
    assert f.llr({"good": 1.0}) == pytest.approx(f.intercept + f.coef[0] * (1.0 - f.mean[0]) / f.scale[0])
    with pytest.raises(ValueError):
        SignedFusion(("a",), np.zeros(1), np.ones(1), np.array([-1.0]), 0.0)


@pytest.mark.an4
@pytest.mark.slow
def test_cli_evaluate_clones_report(built, trained, tmp_path, capsys):
    from voxguard.cli import main

    path, names, _ = built
    capsys.readouterr()
    assert main(["evaluate-clones", "--heldout", "1", "--enroll", "2", "--clones-per-family", "1", "--test-clones", "1",
                 "--components", "8", "--no-lofo", "--long-hours", "1", "--figures", str(tmp_path / "fig"),
                 "--channels", "opus-8k-nb", "noise-brown-5db",
                 "--json", "--store", str(path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["speakers"] == {"train": 4, "heldout": 1} and r["best_model"] == "lfcc-gmm"
    m = r["models"]["lfcc-gmm"]
    assert set(m["utterances"]["per_family"]) == {"vocoder", "convert", "espeak", "griffinlim"}
    assert r["channels"]["heldout"] == ["opus-8k-nb", "noise-brown-5db"]
    assert set(m["utterances"]["per_channel_detection_at_1pct_fa"]) == {"clean", "opus-8k-nb", "noise-brown-5db"}
    assert m["sessions"]["genuine_hours"] > 0 and r["long_streams"]["hours"] >= 0.9
    for stem in ("clone_llr_by_family", "clone_llr_by_channel"):
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 1000 and (tmp_path / "fig" / f"{stem}.svg").exists()
    with SpeakerStore(path, readonly=True) as store:  # the store is only read
        assert store.latest_calibration()[0] == trained[1]


def _assert_same_assessments(batch, serial):
    assert len(batch) == len(serial)
    for b, s in zip(batch, serial):
        assert (b.level, b.speaker) == (s.level, s.speaker)
        assert b.llr == pytest.approx(s.llr, abs=1e-5) and b.score == pytest.approx(s.score, abs=1e-5)
        assert set(b.evidence) == set(s.evidence)
        for key in ("values", "contributions"):
            assert b.evidence[key].keys() == s.evidence[key].keys()
            for k in s.evidence[key]:
                assert b.evidence[key][k] == pytest.approx(s.evidence[key][k], abs=1e-3 if key == "contributions"
                                                           else 1e-4)  # both rounded; the raw values agree to 1e-5
        assert {k: v for k, v in b.evidence.items() if k not in ("values", "contributions")} == \
            {k: v for k, v in s.evidence.items() if k not in ("values", "contributions")}


@pytest.mark.an4
@pytest.mark.slow
def test_batched_window_assessment_equals_serial(built, trained, embedder, monkeypatch):
    """The daemon's path — ``assess_batch(window=True)`` on real AN4 windows — equals ``assess``
    window by window, with the trained detector's GMM and with a trained CNN countermeasure,
    and runs no VAD (daemon windows are voiced already)."""
    import dataclasses

    from scipy.signal import butter, sosfilt

    import voxguard.countermeasure as cm_module
    from voxguard.countermeasure import voiced_audio
    from voxguard.enroll.clone_training import recording_frames
    from voxguard.enroll.cnn_training import fit_cnn_countermeasure

    path, names, unseen = built
    windows, claimed = [], []
    for k, n in enumerate(names):
        for x in unseen[n]:
            v = voiced_audio(x)
            for s in range(0, max(1, len(v) - 16000), 8000):
                windows.append(v[s: s + 24000])  # the last window of a recording may be shorter
                claimed.append([n, None, names[(k + 1) % len(names)]][len(windows) % 3])
    windows.append(windows[0][:300])  # too short for one LFCC frame
    claimed.append(names[0])
    with SpeakerStore(path, readonly=True) as store:
        det = CloneDetector.for_store(store, thresholds_for(store))
        idx = SpeakerIndex.for_store(store, use_gpu=False)
        scorer = SpeakerScorer.for_store(store, idx)
        res = scorer.search(embedder.embed(windows), k=3, trial="window")
    assert det.trained is not None and len(windows) > 30 and len(set(map(len, windows))) > 3
    sos = butter(6, 3000, fs=16000, output="sos")  # a stand-in spoof condition: band-limited speech
    genuine = [x for n in names for x in unseen[n]] + [x for x in windows[:10]]
    cnn = fit_cnn_countermeasure([recording_frames(x) for x in genuine],
                                 [recording_frames(sosfilt(sos, x).astype(np.float32)) for x in genuine],
                                 seed=0, epochs=1)
    with_cnn = CloneDetector(det.thresholds, dataclasses.replace(det.trained, countermeasure=cnn), det.source,
                             emb_stats={s: (st.emb_mean, st.emb_std) for s, st in det._stats.items()
                                        if st.emb_mean is not None})
    for d in (det, with_cnn):
        serial = [d.assess(r, c, w, window=True) for r, c, w in zip(res, claimed, windows)]
        monkeypatch.setattr(cm_module, "VoiceActivityDetector", None)  # the window path runs no VAD
        batch = d.assess_batch(res, claimed, windows, window=True)
        monkeypatch.undo()
        assert all("cm" in a.evidence["values"] for a in batch[:-1])
        _assert_same_assessments(batch, serial)
    # recordings (window=False) keep their VAD and agree too
    recs = [x for n in names for x in unseen[n]][:6]
    with SpeakerStore(path, readonly=True) as store:
        _, rres = _search(store, embedder, recs)
    _assert_same_assessments(with_cnn.assess_batch(rres, [None] * 6, recs),
                             [with_cnn.assess(r, None, x) for r, x in zip(rres, recs)])
