"""voxguard.llr: calibrated log-likelihood ratios, Cllr, open-set thresholds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxguard.llr import (SessionCalibration, TrialCalibration, calibrate_trials, cllr,
                          fit_linear_llr, min_cllr)


def gaussian_trials(seed=0, n_t=3000, n_n=60000, mu=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, n_t), rng.normal(-mu, 1.0, n_n)


def test_linear_llr_recovers_the_true_likelihood_ratio():
    # N(+2, 1) vs N(-2, 1): the exact LLR is 4 s
    t, n = gaussian_trials()
    lin = fit_linear_llr(t, n)
    assert lin.a == pytest.approx(4.0, rel=0.08) and abs(lin.b) < 0.2
    assert lin.score_at(lin(0.7)) == pytest.approx(0.7)
    # far outside the data the map is still monotone (no clipping that a threshold could collide with)
    assert lin(1e3) > lin(1e2) > 0 > lin(-1e2) > lin(-1e3)


def test_cllr_bounds_and_min_cllr():
    t, n = gaussian_trials()
    lin = fit_linear_llr(t, n)
    good = cllr(lin(t), lin(n))
    assert 0 < good < 0.2
    assert cllr(np.zeros(10), np.zeros(10)) == pytest.approx(1.0)  # uninformative
    assert cllr(lin(t) * 3, lin(n) * 3) > good  # overconfident costs more
    assert min_cllr(t, n) <= good + 1e-6
    with pytest.raises(ValueError, match="do not separate"):
        fit_linear_llr(n[:100], t[:100])


def test_separable_trials_keep_a_usable_operating_point():
    # long sessions on clean speech separate perfectly: the fitted slope is steep, and the
    # operating point must still split the non-target tail from the targets
    rng = np.random.default_rng(2)
    t, n = rng.normal(3.0, 0.3, 1000), rng.normal(-6.0, 0.3, 10000)
    c = calibrate_trials("session", "wide", t, n, windows=16)
    assert c.far <= 0.01 and c.frr == 0
    assert (c.llr(n) >= c.accept_llr).mean() <= 0.01 and (c.llr(t) >= c.accept_llr).all()
    assert c.llr(-5.0) < c.accept_llr  # an impostor session far below the targets is no accept


def test_trial_calibration_operating_point_and_open_set_threshold():
    t, n = gaussian_trials()
    c = calibrate_trials("window", "wide", t, n, far_target=0.01)
    assert c.far <= 0.01 and 0 < c.frr < 0.2
    assert 0 < c.eer < 0.05 and c.cllr < 0.2 and c.n_target == len(t)
    # the open-set threshold grows with the number of enrolled speakers and never goes below accept
    th = [c.open_set_threshold(n_spk, 0.05) for n_spk in (1, 10, 100, 1000, 100000)]
    assert th == sorted(th) and th[0] >= c.accept_llr
    # at that threshold, the best of N non-target trials passes about alpha of the time
    rng = np.random.default_rng(1)
    for n_spk in (10, 100):
        thr = c.open_set_threshold(n_spk, 0.05)
        best = c.llr(rng.normal(-2.0, 1.0, (4000, n_spk))).max(axis=1)
        assert 0.02 < (best >= thr).mean() < 0.09
    # extrapolation past the measured tail is monotone
    assert c.threshold_for_rate(1e-9) > c.threshold_for_rate(1e-6) > c.threshold_for_rate(1e-3)
    assert c.nontarget_rate(c.threshold_for_rate(1e-3)) == pytest.approx(1e-3, rel=0.05)


def test_calibrations_round_trip_through_json_and_name_themselves():
    t, n = gaussian_trials(n_n=5000)
    c = calibrate_trials("utterance", "telephone", t, n)
    back = TrialCalibration.from_dict(json.loads(json.dumps(c.to_dict())), "calibration #7")
    assert back.label() == "calibration #7:utterance/telephone"
    assert back.llr(0.3) == pytest.approx(c.llr(0.3)) and back.tail == c.tail
    s = SessionCalibration("wide", tuple(calibrate_trials("session", "wide", t, n, windows=w) for w in (1, 4, 16)))
    again = SessionCalibration.from_list("wide", json.loads(json.dumps(s.to_list())), "x")
    assert [again.for_windows(k).windows for k in (1, 3, 4, 15, 16, 500)] == [1, 1, 4, 4, 16, 16]
    assert again.for_windows(4).label() == "x:session[n=4]/wide"
    with pytest.raises(ValueError, match="unknown trial type"):
        calibrate_trials("paragraph", "wide", t, n)
