"""Scoring backends: training, AS-norm arithmetic, serialisation, and the scorer applying them."""

from __future__ import annotations

import numpy as np
import pytest

from voxguard.backend import BACKEND_NAMES, ScoreBackend, backend_from_calibration, parse_backend_name
from voxguard.embedders.base import l2_normalise
from voxguard.enroll.calibration import (CalibrationConfig, CalibrationError, CalibrationInput,
                                         calibrate_input, error_rates, train_backend)
from voxguard.index import SpeakerIndex
from voxguard.scoring import SpeakerScorer, Thresholds


def _speakers(n_spk=12, per=10, dim=32, seed=0, spread=0.5):
    """Clustered unit vectors: per-speaker means plus a shared nuisance direction."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_spk, dim))
    nuisance = rng.standard_normal((1, dim)) * 3
    x = np.repeat(centers, per, axis=0) + spread * rng.standard_normal((n_spk * per, dim)) \
        + rng.standard_normal((n_spk * per, 1)) * nuisance
    names = np.repeat([f"s{i:02d}" for i in range(n_spk)], per)
    return l2_normalise(x).astype(np.float64), names


def test_backend_names_parse():
    assert parse_backend_name("lda+asnorm") == ("lda", True)
    assert parse_backend_name("wccn") == ("wccn", False)
    assert len(BACKEND_NAMES) == 10
    with pytest.raises(ValueError, match="unknown scoring backend"):
        parse_backend_name("plda")


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_trained_state_round_trips_and_scores_identically(name):
    x, names = _speakers()
    backend = train_backend(x, names, CalibrationConfig(backend=name, lda_dims=8, asnorm_top=10))
    assert backend.name == name
    again = ScoreBackend.from_bytes(backend.to_bytes())
    q, m = x[::7], x[3::11]
    np.testing.assert_array_equal(backend.score(q, m, list(names[3::11])), again.score(q, m, list(names[3::11])))
    if name.startswith("lda"):
        assert backend.out_dim == 8


def test_asnorm_matches_an_independent_computation():
    x, names = _speakers(seed=1)
    train, test = names < "s08", names >= "s08"
    be = train_backend(x[train], names[train], CalibrationConfig(backend="center+asnorm", asnorm_top=7,
                                                                 asnorm_bound=False))
    a, b = x[test][:9], x[test][9:20]
    # by hand: centre, normalise, cosine; z-normalise each side by its 7 best cohort scores
    mu = x[train].mean(axis=0)
    t = lambda v: (v - mu) / np.linalg.norm(v - mu, axis=1, keepdims=True)  # noqa: E731
    coh = t(x[train])
    s = t(a) @ t(b).T
    top_a = np.sort(t(a) @ coh.T, axis=1)[:, -7:]
    top_b = np.sort(t(b) @ coh.T, axis=1)[:, -7:]
    want = 0.5 * ((s - top_a.mean(1)[:, None]) / top_a.std(1)[:, None]
                  + (s - top_b.mean(1)[None, :]) / top_b.std(1)[None, :])
    np.testing.assert_allclose(be.score(a, b), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(be.score_pairs(a[:5], b[:5]), np.diag(want)[:5], rtol=1e-4, atol=1e-4)


def test_asnorm_leaves_out_the_scored_speakers_cohort_rows():
    x, names = _speakers(seed=2)
    be = train_backend(x, names, CalibrationConfig(backend="cosine+asnorm", asnorm_top=5, asnorm_bound=False))
    model = l2_normalise(x[names == "s03"].sum(axis=0, keepdims=True))
    q = x[names == "s03"][:2]
    got = be.score(q, model, ["s03"])
    keep = names != "s03"
    top_q = np.sort(q @ x[keep].T, axis=1)[:, -5:]
    top_m = np.sort(model @ x[keep].T, axis=1)[:, -5:]
    s = q @ model.T
    want = 0.5 * ((s - top_m.mean()) / top_m.std() + (s - top_q.mean(1)[:, None]) / top_q.std(1)[:, None])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(be.score(q, model), got)  # without the name the own rows count


def test_bounded_asnorm_does_not_inflate_recordings_unlike_the_cohort():
    """Two recordings from a domain the cohort never saw (here: a subspace no cohort row
    touches) score near each other but far from the cohort: unbounded AS-norm divides by
    their tiny cohort spread and calls them a certain match; the bounded one does not."""
    x, names = _speakers(seed=3)
    x = np.asarray(x, np.float64)
    x[:, 24:] = 0
    x = l2_normalise(x)
    rng = np.random.default_rng(3)
    base = np.zeros(x.shape[1])
    base[24:] = rng.standard_normal(x.shape[1] - 24)
    a = l2_normalise(np.stack([base + 0.9 * np.r_[np.zeros(24), rng.standard_normal(x.shape[1] - 24)]
                               for _ in range(2)]) + 0.05 * x[:2])
    cfg = dict(backend="cosine+asnorm", asnorm_top=10)
    unbounded = train_backend(x, names, CalibrationConfig(**cfg, asnorm_bound=False))
    bounded = train_backend(x, names, CalibrationConfig(**cfg))
    genuine = bounded.score_pairs(x[names == "s01"][:1], x[names == "s01"][1:2])[0]
    assert bounded.std_floor > 0 and bounded.mean_floor > -1
    assert unbounded.score_pairs(a[:1], a[1:])[0] > 3 * genuine  # inflated far past any genuine trial
    assert bounded.score_pairs(a[:1], a[1:])[0] < unbounded.score_pairs(a[:1], a[1:])[0] / 3
    again = ScoreBackend.from_bytes(bounded.to_bytes())
    assert (again.std_floor, again.mean_floor) == (bounded.std_floor, bounded.mean_floor)


def test_wccn_asnorm_separates_better_than_cosine_on_held_out_speakers():
    x, names = _speakers(n_spk=30, per=8, dim=48, seed=3, spread=0.9)
    train, test = names < "s20", names >= "s20"
    for name in ("cosine", "wccn+asnorm"):
        be = train_backend(x[train], names[train], CalibrationConfig(backend=name, asnorm_top=20))
        s = be.score(x[test], x[test])
        iu = np.triu_indices(test.sum(), 1)
        same = (names[test][:, None] == names[test][None, :])[iu]
        far, frr = error_rates(s[iu][same], s[iu][~same], [np.median(s[iu][same])])
        if name == "cosine":
            cos_far = far[0]
        else:
            assert far[0] < cos_far  # fewer false accepts at the same genuine acceptance


def _calibrated_index(seed: int, clone_every: int = 0, first_id: int = 0):
    """Synthetic speakers, a wccn+asnorm calibration of them and their index (with every
    ``clone_every``-th sample, from the 4th, marked a known clone)."""
    x, names = _speakers(seed=seed)
    inp = CalibrationInput(x, names, np.zeros((0, x.shape[1])), np.zeros(0, dtype=str))
    cal = calibrate_input(inp, CalibrationConfig(backend="wccn+asnorm", asnorm_top=10))
    spk = sorted(set(names))
    pos = {n: i for i, n in enumerate(spk)}
    cent = np.zeros((len(spk), x.shape[1]))
    np.add.at(cent, [pos[n] for n in names], x)
    kinds = ((np.arange(len(x)) % clone_every == 3) if clone_every else np.zeros(len(x), bool)).astype(np.int8)
    idx = SpeakerIndex(spk, l2_normalise(cent), np.arange(len(x)) + first_id, np.array([pos[n] for n in names]),
                       kinds, x.astype(np.float32), "id", 1, None, use_gpu=False)
    return x, names, cal, idx


def test_scorer_ranks_by_backend_and_keeps_raw_neighbour_evidence():
    x, names, cal, idx = _calibrated_index(seed=4)
    pos = {n: i for i, n in enumerate(sorted(set(names)))}
    th = Thresholds(cal.thresholds["accept"], "test", None, cal.backend.name)
    scorer = SpeakerScorer(idx, th, cal.backend)
    assert scorer.name == "wccn+asnorm"
    q = x[[0, 25, 77]]
    res = scorer.search(q, k=4, neighbors=8)
    raw = idx.search(q, k=4, neighbors=8)
    full = scorer.score_all(q)
    for r, rr, row in zip(res, raw, full):
        assert [s.score for s in r.speakers] == sorted(row, reverse=True)[:4]
        assert r.neighbors == rr.neighbors
        for s in r.speakers:
            nb = [n.score for n in rr.neighbors if n.speaker == s.speaker and n.kind == "genuine"]
            assert s.best_genuine == (nb[0] if nb else None)
    assert scorer.speaker_score(q[1], "s02") == pytest.approx(full[1, pos["s02"]])
    assert scorer.speaker_score(q[1], "nobody") is None
    assert backend_from_calibration(cal.blob()).to_bytes() == cal.backend.to_bytes()
    for got, want in zip(SpeakerScorer(idx, th, None).search(q, k=4, neighbors=8), raw):
        assert got.neighbors == want.neighbors  # raw cosine: the same ranking as the FAISS centroid search
        assert [s.speaker for s in got.speakers] == [s.speaker for s in want.speakers]
        assert [s.score for s in got.speakers] == pytest.approx([s.score for s in want.speakers], abs=1e-5)


def test_training_needs_enough_speakers():
    x, names = _speakers(n_spk=1)
    with pytest.raises(CalibrationError, match="at least 2 speakers"):
        train_backend(x, names, CalibrationConfig(backend="lda"))
    with pytest.raises(CalibrationError, match="unknown scoring backend"):
        CalibrationConfig(backend="nope").check()


def test_batched_search_equals_the_per_window_reference():
    """``SpeakerScorer.search`` builds a batch's results from arrays (best neighbour per speaker
    and kind, LLRs, cosines); equal to the per-window loop it replaced, with clones among the samples."""
    from voxguard.index import SearchResult, SpeakerScore
    from voxguard.llr import LinearLLR, TrialCalibration
    from voxguard.scoring import Calibration, _best_by_speaker

    x, names, cal, idx = _calibrated_index(seed=5, clone_every=7, first_id=100)  # every 7th sample a known clone
    spk = sorted(set(names))
    trial = TrialCalibration.__new__(TrialCalibration)
    object.__setattr__(trial, "llr", LinearLLR(1.7, -0.3))
    calibration = Calibration("test", cal.backend, {("window", "wide"): trial})
    q = l2_normalise(x[:64] + 0.3 * np.random.default_rng(0).standard_normal(x[:64].shape)).astype(np.float32)
    for backend in (cal.backend, None):
        scorer = SpeakerScorer(idx, Thresholds(0.5, "test"), backend,
                               Calibration("test", backend, {("window", "wide"): trial}))
        got = scorer.search(q, k=5, neighbors=16, trial="window")
        scores = scorer.score_all(q)
        cosines = q @ idx.models()[: idx.n_speakers].T
        for r, res in enumerate(got):
            nbs = idx.neighbors(q[r:r + 1], 16)[0]
            best_g, best_c = _best_by_speaker(nbs)
            order = np.argsort(-scores[r], kind="stable")[:5]
            want = SearchResult([SpeakerScore(spk[c], float(scores[r, c]), best_g.get(spk[c]), best_c.get(spk[c]),
                                              float(trial.llr(scores[r, c])), float(cosines[r, c]))
                                 for c in order], nbs)
            assert res.neighbors == want.neighbors
            assert [s.speaker for s in res.speakers] == [s.speaker for s in want.speakers]
            for a, b in zip(res.speakers, want.speakers):
                assert (a.best_genuine, a.best_clone) == (b.best_genuine, b.best_clone)
                assert a.score == pytest.approx(b.score, abs=1e-9) and a.llr == pytest.approx(b.llr, abs=1e-9)
                assert a.cosine == pytest.approx(b.cosine, abs=1e-6)
        assert any(s.best_clone is not None for res in got for s in res.speakers)
    assert calibration.trial("window") is trial


def test_single_threaded_blas_nests_and_restores():
    from threadpoolctl import threadpool_info

    from voxguard.blas import single_threaded

    def blas_threads():
        return [m["num_threads"] for m in threadpool_info() if m["user_api"] == "blas"]

    before = blas_threads()
    with single_threaded():
        assert all(n == 1 for n in blas_threads())
        with single_threaded():
            assert all(n == 1 for n in blas_threads())
        assert all(n == 1 for n in blas_threads())  # the outer block still holds the limit
    assert blas_threads() == before
