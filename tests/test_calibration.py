"""Calibration on real AN4 speakers: thresholds, stored backend, figures, bad input."""

from __future__ import annotations

import functools
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from voxguard.backend import unpack_arrays
from voxguard.index import SpeakerIndex
from voxguard.scoring import SpeakerScorer, thresholds_for
from voxguard.store import SpeakerStore

pytestmark = pytest.mark.an4

N_SPEAKERS = 36
PER_SPEAKER = 8
CLONED = 3  # speakers given pitch-shifted "clones" in the clone store


@functools.lru_cache(maxsize=None)
def _build(kind: str, speakers_key: tuple, embedder_key: int) -> Path:
    """One AN4 store per test session (cached across test modules)."""
    from voxguard.audio import load_audio
    from voxguard.enroll.enrollment import Enroller

    speakers, embedder = _ARGS[embedder_key]
    folder = Path(tempfile.mkdtemp(prefix="voxguard-cal-"))
    path = folder / f"{kind}.db"
    if kind == "clones":  # the plain store plus clones: no genuine sample is embedded twice
        shutil.copy(_build("plain", speakers_key, embedder_key), path)
    with SpeakerStore(path) as store:
        enr = Enroller(store, embedder)
        if kind == "plain":
            for name, files in speakers:
                enr.enroll(name, files[:PER_SPEAKER])
        else:
            import librosa

            from voxguard.store import NewSample
            from voxguard.utterance import embed_utterances

            for name, files in speakers[:CLONED]:
                audio = [load_audio(f).samples for f in files[:PER_SPEAKER]]
                fakes = [librosa.effects.pitch_shift(a, sr=16000, n_steps=3.0).astype(np.float32) for a in audio]
                vecs = embed_utterances(embedder, fakes)
                store.add_samples(name, "clone", [NewSample(f"fake-{name}-{i}", v, len(a) / 16000)
                                                  for i, (v, a) in enumerate(zip(vecs, fakes))], embedder.identity)
        enr.refresh_index()
    return path


_ARGS: dict[int, tuple] = {}


def build_an4_store(an4_speakers, embedder, kind: str = "plain") -> Path:
    """Path of a session-wide AN4 store: the first 36 speakers, 8 utterances each
    (``kind="clones"`` adds pitch-shifted fakes of 3 speakers as known clones)."""
    speakers = tuple((n, tuple(f)) for n, f in list(an4_speakers.items())[:N_SPEAKERS])
    _ARGS[id(embedder)] = (speakers, embedder)
    return _build(kind, speakers, id(embedder))


@pytest.fixture
def store_path(an4_speakers, embedder, tmp_path) -> Path:
    """A private copy of the session's AN4 store (tests may calibrate it)."""
    src = build_an4_store(an4_speakers, embedder)
    dst = tmp_path / "an4.db"
    shutil.copy(src, dst)
    return dst


@pytest.fixture
def clone_store_path(an4_speakers, embedder, tmp_path) -> Path:
    src = build_an4_store(an4_speakers, embedder, "clones")
    dst = tmp_path / "an4-clones.db"
    shutil.copy(src, dst)
    return dst


def _rates(pos, neg, t):
    return float(np.mean(neg >= t)), float(np.mean(pos < t))


def test_calibrate_saves_thresholds_that_match_the_stored_scores(store_path):
    r = run_cli("calibrate", "--json", store=store_path)
    assert r.returncode == 0, r.stderr.decode()
    with SpeakerStore(store_path, readonly=True) as store:
        cid, data, blob = store.latest_calibration()
        revision = store.revision
    th = data["thresholds"]
    assert th["backend"] == "wccn+asnorm" and data["speakers"] == N_SPEAKERS
    assert data["genuine_samples"] == N_SPEAKERS * PER_SPEAKER and data["clone_samples"] == 0
    assert data["store_revision"] == revision - 1  # the save itself bumps the revision
    arrays = unpack_arrays(blob)
    same, diff = arrays["scores.same"], arrays["scores.different"]
    assert len(same) == N_SPEAKERS * PER_SPEAKER and len(diff) > 0
    # recompute every reported error rate from the raw scores, independently
    far, frr = _rates(same, diff, th["accept"])
    assert far == pytest.approx(th["accept_far"]) and frr == pytest.approx(th["accept_frr"])
    assert far <= th["far_target"]
    lower = np.unique(np.r_[same, diff])
    lower = lower[lower < th["accept"]]
    assert np.mean(diff >= lower.max()) > th["far_target"]  # accept is the lowest score value meeting the target
    far_e, frr_e = _rates(same, diff, th["eer_threshold"])
    assert (far_e + frr_e) / 2 == pytest.approx(th["eer"])
    grid = np.unique(np.r_[same, diff])
    gaps = [abs(np.mean(diff >= t) - np.mean(same < t)) for t in grid]
    assert abs(far_e - frr_e) == pytest.approx(min(gaps))
    # the backend beats raw cosine on these (cross-fitted) trials, and the thresholds reach the scorer
    assert th["eer"] < data["cosine_reference"]["eer"]
    assert th["clone_upper"] is None
    with SpeakerStore(store_path, readonly=True) as store:
        t = thresholds_for(store)
    assert (t.accept, t.backend, t.source) == (th["accept"], "wccn+asnorm", f"calibration #{cid}")
    assert data["warnings"] == []  # 36 speakers, cross-fitted: nothing to warn about


def test_calibration_warns_when_its_figures_cannot_be_trusted():
    from voxguard.enroll.calibration import calibration_warnings

    assert calibration_warnings(36, 5, "wccn+asnorm") == []
    assert calibration_warnings(4, 1, "cosine") == []  # raw cosine needs no training
    few = calibration_warnings(8, 4, "wccn+asnorm")
    assert len(few) == 1 and "only 8 speakers" in few[0] and "--backend cosine" in few[0]
    tiny = calibration_warnings(4, 1, "wccn+asnorm")
    assert len(tiny) == 2 and "in-sample" in tiny[0]


def test_backend_round_trips_through_the_store(store_path):
    from voxguard.enroll.calibration import CalibrationConfig, calibrate, save_calibration

    for backend in ("lda+asnorm", "whiten"):
        with SpeakerStore(store_path) as store:
            result = calibrate(store, CalibrationConfig(backend=backend, lda_dims=20))
            save_calibration(store, result)
            table = store.embeddings()
            idx = SpeakerIndex.build(store, use_gpu=False)
            scorer = SpeakerScorer.for_store(store, idx)
        assert scorer.name == backend and scorer.thresholds.accept == result.thresholds["accept"]
        names = idx.speaker_names[: idx.n_speakers]
        expected = result.backend.score(table.vectors[:40], idx.centroids[: idx.n_speakers], names)
        np.testing.assert_array_equal(scorer.score_all(table.vectors[:40]), expected)
        res = scorer.search(table.vectors[:5], k=3)
        for row, r in enumerate(res):
            order = np.argsort(-expected[row])[:3]
            assert [s.speaker for s in r.speakers] == [names[i] for i in order]
            assert r.speakers[0].score == pytest.approx(expected[row, order[0]])
    if backend == "whiten":
        assert result.backend.cohort is None


def test_calibrate_with_clones_sets_a_clone_band_and_writes_figures(clone_store_path, tmp_path):
    out = tmp_path / "figs"
    r = run_cli("calibrate", "--out", str(out), "--tsne-speakers", "5", "--json", store=clone_store_path)
    assert r.returncode == 0, r.stderr.decode()
    with SpeakerStore(clone_store_path, readonly=True) as store:
        _, data, blob = store.latest_calibration()
    th = data["thresholds"]
    arrays = unpack_arrays(blob)
    same, clone = arrays["scores.same"], arrays["scores.clone"]
    assert len(clone) == CLONED * PER_SPEAKER and th["clone_upper"] is not None
    assert np.mean(clone >= th["clone_upper"]) == pytest.approx(th["clone_accept_at_clone_upper"])
    assert np.mean(same < th["clone_upper"]) == pytest.approx(th["genuine_frr_at_clone_upper"])
    assert np.mean(clone >= th["clone_upper"]) <= th["far_target"]
    for stem in ("distributions", "distributions_cosine", "tsne", "det"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    assert sorted(data["figures"]) == ["det", "distributions", "distributions_cosine", "tsne", "tsne_speakers"]
    assert len(data["figures"]["tsne_speakers"]) == 5
    assert not list(out.glob(".*"))  # no temporary files left behind
    # the clone detector (countermeasure + fusion) is trained into the same record
    from voxguard.clone_detection import DETECTOR_KEY, CloneDetector
    from voxguard.scoring import thresholds_for

    assert DETECTOR_KEY in data, data.get("clone_detector_skipped")
    with SpeakerStore(clone_store_path, readonly=True) as store:
        assert CloneDetector.for_store(store, thresholds_for(store)).trained is not None


def test_no_clone_detector_keeps_the_clone_band(clone_store_path):
    r = run_cli("calibrate", "--no-clone-detector", "--json", store=clone_store_path)
    assert r.returncode == 0, r.stderr.decode()
    with SpeakerStore(clone_store_path, readonly=True) as store:
        _, data, _ = store.latest_calibration()
    from voxguard.clone_detection import DETECTOR_KEY

    assert DETECTOR_KEY not in data and data["thresholds"]["clone_upper"] is not None


def test_tsne_legend_has_one_entry_per_speaker_plus_clones(an4_speakers, embedder):
    from voxguard.enroll.figures import pick_speakers, tsne_figure

    with SpeakerStore(build_an4_store(an4_speakers, embedder, "clones"), readonly=True) as store:
        table = store.embeddings()
    names = sorted(set(table.speakers))
    chosen = pick_speakers(names, 11, seed=3)
    assert len(chosen) == 11 and chosen == pick_speakers(names, 11, seed=3)
    chosen = sorted(set(chosen) | set(names[:1]))[:11]  # include a cloned speaker
    fig = tsne_figure(table, chosen, seed=0)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[:-1] == chosen and labels[-1].startswith("clones")
    colors = {tuple(np.round(h.get_facecolor()[0][:3], 3)) for h in fig.axes[0].get_legend().legend_handles[:-1]}
    assert len(colors) == 11  # one distinct colour per speaker


def test_unwritable_output_dir_fails_and_saves_nothing(store_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run_cli("calibrate", "--out", str(blocker / "figs"), store=store_path)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert err.startswith("voxguard: error: cannot write figures") and err.count("\n") == 1
    with SpeakerStore(store_path, readonly=True) as store:
        assert store.latest_calibration() is None


def test_dry_run_saves_nothing(store_path):
    r = run_cli("calibrate", "--dry-run", "--backend", "cosine", store=store_path)
    assert r.returncode == 0 and b"dry run" in r.stdout
    with SpeakerStore(store_path, readonly=True) as store:
        assert store.latest_calibration() is None


def test_bad_stores_get_clear_errors_and_no_calibration(an4_speakers, embedder, tmp_path):
    from voxguard.enroll.enrollment import Enroller

    r = run_cli("calibrate", store=tmp_path / "missing.db")
    assert r.returncode != 0 and b"no store" in r.stderr
    empty = tmp_path / "empty.db"
    SpeakerStore(empty).close()
    r = run_cli("calibrate", store=empty)
    assert r.returncode != 0 and b"nothing to calibrate" in r.stderr
    names = list(an4_speakers)[:3]
    one = tmp_path / "one.db"
    singles = tmp_path / "singles.db"
    with SpeakerStore(one) as s1, SpeakerStore(singles) as s2:
        Enroller(s1, embedder).enroll(names[0], an4_speakers[names[0]][:3])
        for n in names:
            Enroller(s2, embedder).enroll(n, an4_speakers[n][:1])
    for path, msg in ((one, b"at least 2 speakers"), (singles, b"single genuine sample")):
        r = run_cli("calibrate", store=path)
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert r.stderr.startswith(b"voxguard: error: ")
        with SpeakerStore(path, readonly=True) as store:
            assert store.latest_calibration() is None
    r = run_cli("calibrate", "--far", "0.9", store=singles)
    assert r.returncode != 0 and b"false-accept rate" in r.stderr
