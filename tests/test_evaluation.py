"""Speaker-disjoint evaluation on real AN4 speakers."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from conftest import run_cli
from test_calibration import PER_SPEAKER, build_an4_store
from voxguard.embedders.base import l2_normalise
from voxguard.enroll.calibration import CalibrationConfig, CalibrationError
from voxguard.enroll.evaluation import evaluate
from voxguard.store import SpeakerStore

pytestmark = pytest.mark.an4

TEST_SPEAKERS = 12
ENROLL = 3


@pytest.fixture(scope="module")
def evaluation(an4_speakers, embedder):
    with SpeakerStore(build_an4_store(an4_speakers, embedder, "clones"), readonly=True) as store:
        table = store.embeddings()
        result = evaluate(store, TEST_SPEAKERS, seed=1, enroll=ENROLL)
    return result, table


def test_reported_error_rates_hold_on_independently_recomputed_scores(evaluation):
    result, table = evaluation
    test = result.split["test_speakers"]
    assert len(test) == TEST_SPEAKERS and [r.backend for r in result.results] == ["cosine", "wccn+asnorm"]
    spk, kinds = np.array(table.speakers), np.array(table.kinds)
    for r in result.results:
        be = r.trained
        assert not set(be.cohort_speakers) & set(test)  # nothing of the held-out speakers was trained on
        # identification trials, rebuilt by hand: models = mean of the enrollment utterances
        scores, truth = r.model_scores, r.model_truth
        assert scores.shape == (TEST_SPEAKERS * (PER_SPEAKER - ENROLL), TEST_SPEAKERS)
        pos, neg = scores[np.arange(len(truth)), truth], scores.copy()
        neg[np.arange(len(truth)), truth] = np.nan
        neg = neg[~np.isnan(neg)]
        th = r.thresholds["accept"]
        s = r.summary
        assert np.mean(neg >= th) == pytest.approx(s["at_accept"]["far"])
        assert np.mean(pos < th) == pytest.approx(s["at_accept"]["frr"])
        assert np.mean(scores.argmax(axis=1) == truth) == pytest.approx(s["top1"])
        # single-utterance pairs: recompute the scores from the embeddings and the trained state
        g = np.isin(spk, test) & (kinds == "genuine")
        x = table.vectors[g].astype(np.float64)
        if be.mean is not None:
            x = x - be.mean
        if be.projection is not None:
            x = x @ be.projection
        x = l2_normalise(x)
        raw = x @ x.T
        if be.cohort is not None:
            top = np.sort(x @ be.cohort.T.astype(np.float64), axis=1)[:, -be.asnorm_top:]
            # bounded AS-norm: each side's statistics held at the cohort's own low percentiles
            m, sd = np.maximum(top.mean(1), be.mean_floor), np.maximum(top.std(1), be.std_floor)
            assert be.std_floor > 0
            raw = 0.5 * ((raw - m[:, None]) / sd[:, None] + (raw - m[None, :]) / sd[None, :])
        iu = np.triu_indices(len(x), 1)
        np.testing.assert_allclose(raw[iu], r.pair_scores, rtol=1e-3, atol=1e-3)
        same = (spk[g][:, None] == spk[g][None, :])[iu]
        t = s["pair_eer_threshold"]
        far, frr = np.mean(raw[iu][~same] >= t), np.mean(raw[iu][same] < t)
        assert (far + frr) / 2 == pytest.approx(s["pair_eer"], abs=2e-3)
    cos, best = (r.summary for r in result.results)
    assert best["pair_eer"] < cos["pair_eer"]
    assert result.summary()["relative_eer_reduction"] == pytest.approx(1 - best["pair_eer"] / cos["pair_eer"])


def test_clone_rates_and_per_speaker_breakdown(evaluation):
    result, _ = evaluation
    for r in result.results:
        assert len(r.per_speaker) == TEST_SPEAKERS
        assert sum(p["test_utterances"] for p in r.per_speaker) == len(r.model_truth)
        held_clones = result.split["held_out_clones"]
        if held_clones:
            c = r.summary["clones"]
            assert c["n"] == held_clones == len(r.clone_scores)
            assert c["rejected_at_accept"] == pytest.approx(np.mean(r.clone_scores < r.thresholds["accept"]))
        else:
            assert "clones" not in r.summary


def test_cli_writes_reports_and_leaves_the_store_alone(an4_speakers, embedder, tmp_path):
    path = build_an4_store(an4_speakers, embedder)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "report"
    r = run_cli("evaluate", "--test-speakers", "10", "--enroll", "4", "--backend", "lda+asnorm",
                "--report", str(out), "--json", store=path)
    assert r.returncode == 0, r.stderr.decode()
    summary = json.loads(r.stdout)
    assert set(summary["backends"]) == {"cosine", "lda+asnorm"}
    assert len(summary["split"]["test_speakers"]) == 10
    full = json.loads((out / "evaluation.json").read_text())
    assert len(full["per_speaker"]["lda+asnorm"]) == 10
    md = (out / "evaluation.md").read_text()
    assert "| lda+asnorm |" in md and "## Per speaker" in md
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with SpeakerStore(path, readonly=True) as store:
        assert store.latest_calibration() is None


def test_bad_splits_are_refused(an4_speakers, embedder, tmp_path):
    path = build_an4_store(an4_speakers, embedder)
    with SpeakerStore(path, readonly=True) as store:
        with pytest.raises(CalibrationError, match="only 36 speakers"):
            evaluate(store, 40)
        with pytest.raises(CalibrationError, match="need more than 8"):
            evaluate(store, [store.speakers()[0].name, store.speakers()[1].name], enroll=8)
        with pytest.raises(CalibrationError, match="at least 2 training"):
            evaluate(store, 35, config=CalibrationConfig(backend="cosine"))
    r = run_cli("evaluate", "--test-speakers", "nobody,else", store=path)
    assert r.returncode != 0 and r.stderr.startswith(b"voxguard: error: unknown test speaker")
    blocker = tmp_path / "f"
    blocker.write_text("x")
    r = run_cli("evaluate", "--report", str(blocker / "r"), store=path)
    assert r.returncode != 0 and b"cannot write" in r.stderr
