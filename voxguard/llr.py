"""Calibrated log-likelihood ratios: what a score means, per trial type and band.

A scoring backend's score is only comparable with scores of the same *trial type*: a
1.5 s window against a speaker model, the mean of ``n`` window scores (a session), a
whole utterance against a model, or one utterance against another.  Each trial type (in
each band) gets its own :class:`TrialCalibration`:

* ``llr`` — a linear map score -> natural-log likelihood ratio
  ``ln p(score | same speaker) / p(score | different speakers)``, fitted by
  prior-weighted logistic regression (effective prior 0.5) on cross-fitted, speaker-
  disjoint trials — the standard calibration of speaker-recognition evaluations;
* ``accept_llr`` — the operating point: the lowest LLR whose false-accept rate on those
  trials is at most the target (default 1 %), and never below 0 (evidence for "different
  speakers" never accepts), with the FAR/FRR measured there;
* the upper tail of the non-target LLRs, so that **open-set identification** can ask
  "does the best of N enrolled speakers pass by chance?": with per-trial false-accept
  rate ``q``, the chance that any of N non-target trials passes is ``1 - (1 - q)**N``;
  :meth:`TrialCalibration.open_set_threshold` returns the LLR at which that chance is
  ``alpha``.  Beyond the measured tail an exponential tail (fitted to the top 1 % of
  non-target LLRs) extrapolates;
* quality figures: EER, minDCF (p_target 0.01), Cllr (bits; 0 perfect, 1 uninformative)
  and minimum Cllr (after an ideal monotone recalibration, via isotonic regression).

Decisions are made on LLRs, and every decision names the calibration it used
(:meth:`TrialCalibration.label`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

TRIAL_TYPES = ("window", "session", "utterance", "pair")
TRIAL_DESCRIPTIONS = {
    "window": "one analysis window (default 1.5 s) against a speaker model — the daemon's per-window decision",
    "session": "the mean of n window scores against a speaker model — the daemon's session verdict",
    "utterance": "a whole recording against a speaker model — identify, check",
    "pair": "one recording against another — verify A B",
}


def _log1pexp(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def cllr(target_llrs: np.ndarray, nontarget_llrs: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits (Brümmer): 0 is perfect, 1 an uninformative system."""
    t = np.asarray(target_llrs, dtype=np.float64)
    n = np.asarray(nontarget_llrs, dtype=np.float64)
    if not len(t) or not len(n):
        return float("nan")
    return float(0.5 / np.log(2) * (_log1pexp(-t).mean() + _log1pexp(n).mean()))


MIN_CLLR_MAX_TRIALS = 20000  # per class: min Cllr on a fixed random subset beyond this


def min_cllr(target_scores: np.ndarray, nontarget_scores: np.ndarray) -> float:
    """Cllr after the best monotone recalibration (PAV / isotonic regression)."""
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    t = np.asarray(target_scores, dtype=np.float64)
    n = np.asarray(nontarget_scores, dtype=np.float64)
    t = t if len(t) <= MIN_CLLR_MAX_TRIALS else rng.choice(t, MIN_CLLR_MAX_TRIALS, replace=False)
    n = n if len(n) <= MIN_CLLR_MAX_TRIALS else rng.choice(n, MIN_CLLR_MAX_TRIALS, replace=False)
    if not len(t) or not len(n):
        return float("nan")
    x = np.concatenate([t, n])
    y = np.concatenate([np.ones(len(t)), np.zeros(len(n))])
    w = np.concatenate([np.full(len(t), 0.5 / len(t)), np.full(len(n), 0.5 / len(n))])
    p = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y, sample_weight=w).predict(x)
    eps = 1e-12
    llr = np.log(np.clip(p, eps, 1 - eps)) - np.log(np.clip(1 - p, eps, 1 - eps))
    return cllr(llr[: len(t)], llr[len(t):])


@dataclass(frozen=True)
class LinearLLR:
    """``llr = a * score + b`` (natural log).  Never clipped: a decision compares it with a
    threshold of the same map, and a clipped value could meet a clipped threshold."""

    a: float
    b: float

    def __call__(self, scores):
        s = np.asarray(scores, dtype=np.float64)
        out = self.a * s + self.b
        return float(out) if out.ndim == 0 else out

    def score_at(self, llr: float) -> float:
        """The score whose LLR is ``llr`` (the inverse map)."""
        return (llr - self.b) / self.a


def fit_linear_llr(target_scores: np.ndarray, nontarget_scores: np.ndarray, prior: float = 0.5) -> LinearLLR:
    """Prior-weighted linear logistic regression of targets vs non-targets."""
    from scipy.optimize import minimize
    from scipy.special import expit

    t = np.asarray(target_scores, dtype=np.float64)
    n = np.asarray(nontarget_scores, dtype=np.float64)
    if len(t) < 2 or len(n) < 2:
        raise ValueError("calibration needs at least 2 target and 2 non-target trials")
    scale = max(np.std(np.concatenate([t, n])), 1e-9)
    centre = 0.5 * (t.mean() + n.mean())
    logit_p = np.log(prior / (1 - prior))
    ts, ns = (t - centre) / scale, (n - centre) / scale

    def cost(w):
        a, b = w
        lt = a * ts + b + logit_p
        ln = a * ns + b + logit_p
        f = prior * _log1pexp(-lt).mean() + (1 - prior) * _log1pexp(ln).mean()
        st = -prior * expit(-lt)
        sn = (1 - prior) * expit(ln)
        g = np.array([(st * ts).mean() + (sn * ns).mean(), st.mean() + sn.mean()])
        return f, g

    res = minimize(cost, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = res.x
    if a <= 0:
        raise ValueError("scores do not separate targets from non-targets (calibration slope is not positive)")
    return LinearLLR(float(a / scale), float(b - a * centre / scale))


def _rates_at(target: np.ndarray, nontarget: np.ndarray, t: float) -> tuple[float, float]:
    far = float((nontarget >= t).mean()) if len(nontarget) else float("nan")
    frr = float((target < t).mean()) if len(target) else float("nan")
    return far, frr


# -- error rates of raw scores --------------------------------------------------------------
def error_rates(positives: np.ndarray, negatives: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-accept (negatives >= t) and false-reject (positives < t) rates at each threshold."""
    p, n = np.sort(positives), np.sort(negatives)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    far = (len(n) - np.searchsorted(n, t, side="left")) / max(len(n), 1)
    frr = np.searchsorted(p, t, side="left") / max(len(p), 1)
    return far, frr


def eer_point(positives: np.ndarray, negatives: np.ndarray) -> dict:
    """The threshold (a score value) where false accepts and false rejects are closest."""
    cand = np.unique(np.concatenate([positives, negatives]))
    far, frr = error_rates(positives, negatives, cand)
    i = int(np.argmin(np.abs(far - frr)))
    return {"threshold": float(cand[i]), "eer": float((far[i] + frr[i]) / 2), "far": float(far[i]), "frr": float(frr[i])}


def far_point(positives: np.ndarray, negatives: np.ndarray, target: float) -> dict:
    """The lowest threshold (a score value) whose false-accept rate is at most ``target``."""
    cand = np.unique(np.concatenate([positives, negatives, [np.max(negatives) + 1e-6]]))
    far, frr = error_rates(positives, negatives, cand)
    i = int(np.argmax(far <= target))
    return {"threshold": float(cand[i]), "far": float(far[i]), "frr": float(frr[i]), "target": target}


def min_dcf(positives: np.ndarray, negatives: np.ndarray, p_target: float = 0.01,
            c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised minimum detection cost over all thresholds."""
    cand = np.unique(np.concatenate([positives, negatives, [np.max(negatives) + 1e-6]]))
    far, frr = error_rates(positives, negatives, cand)
    dcf = c_miss * frr * p_target + c_fa * far * (1 - p_target)
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def _far_threshold(nontarget: np.ndarray, target_far: float) -> float:
    """The lowest value whose share of ``nontarget`` at or above it is at most ``target_far``."""
    n = np.sort(nontarget)[::-1]
    k = int(np.floor(target_far * len(n)))  # at most k non-targets may pass
    if k >= len(n):
        return float(n[-1])
    return float(np.nextafter(n[k], np.inf))  # just above the (k+1)-th largest


@dataclass(frozen=True)
class TrialCalibration:
    trial: str  # one of TRIAL_TYPES
    band: str  # voxguard.bands
    llr: LinearLLR
    accept_llr: float  # decide "same speaker" at or above this LLR
    far_target: float
    far: float  # on the calibration trials, at accept_llr
    frr: float
    eer: float
    min_dcf: float
    cllr: float
    min_cllr: float
    n_target: int
    n_nontarget: int
    # non-target LLR tail: (per-trial false-accept rate, LLR) pairs, rates decreasing
    tail: tuple[tuple[float, float], ...] = ()
    tail_exp: tuple[float, float, float] = (0.01, 0.0, 1.0)  # (p0, x0, beta): P(LLR >= x) = p0 exp(-(x-x0)/beta)
    windows: int | None = None  # session trials: windows per session
    source: str = ""  # which calibration this is (set when loaded)

    def label(self) -> str:
        n = f"[n={self.windows}]" if self.windows else ""
        return f"{self.source}:{self.trial}{n}/{self.band}" if self.source else f"{self.trial}{n}/{self.band}"

    def llrs(self, scores):
        return self.llr(scores)

    def nontarget_rate(self, llr: float) -> float:
        """Per-trial false-accept rate of the threshold ``llr`` (from the tail, extrapolated)."""
        rates = [r for r, _ in self.tail]
        xs = [x for _, x in self.tail]
        if xs and llr <= xs[-1]:
            return float(np.exp(np.interp(llr, xs, np.log(rates))))
        p0, x0, beta = self.tail_exp
        return float(p0 * np.exp(-(llr - x0) / beta))

    def threshold_for_rate(self, rate: float) -> float:
        """The LLR whose per-trial false-accept rate is ``rate``."""
        rate = float(np.clip(rate, 1e-300, 1.0))
        if self.tail and rate >= self.tail[-1][0]:
            rates = np.log([r for r, _ in self.tail])[::-1]  # increasing
            xs = np.array([x for _, x in self.tail])[::-1]
            return float(np.interp(np.log(rate), rates, xs))
        p0, x0, beta = self.tail_exp
        return float(x0 + beta * np.log(p0 / rate))

    def open_set_threshold(self, n_speakers: int, alpha: float) -> float:
        """LLR the best of ``n_speakers`` must reach so that a speaker who is none of them is
        named with probability at most ``alpha`` (and never below :attr:`accept_llr`)."""
        n = max(1, int(n_speakers))
        per_trial = -np.expm1(np.log1p(-alpha) / n)  # 1 - (1 - alpha) ** (1 / n)
        return max(self.accept_llr, self.threshold_for_rate(per_trial))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["llr"] = {"a": self.llr.a, "b": self.llr.b}
        d["tail"] = [list(p) for p in self.tail]
        d["tail_exp"] = list(self.tail_exp)
        d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "TrialCalibration":
        d = dict(d)
        d["llr"] = LinearLLR(float(d["llr"]["a"]), float(d["llr"]["b"]))
        d["tail"] = tuple((float(r), float(x)) for r, x in d.get("tail", ()))
        d["tail_exp"] = tuple(float(v) for v in d.get("tail_exp", (0.01, 0.0, 1.0)))
        d["source"] = source
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def calibrate_trials(trial: str, band: str, target_scores: np.ndarray, nontarget_scores: np.ndarray,
                     far_target: float = 0.01, windows: int | None = None) -> TrialCalibration:
    """Fit one trial type's LLR map and measure it (see the module docstring)."""
    if trial not in TRIAL_TYPES:
        raise ValueError(f"unknown trial type {trial!r}")
    t = np.asarray(target_scores, dtype=np.float64)
    n = np.asarray(nontarget_scores, dtype=np.float64)
    lin = fit_linear_llr(t, n)
    lt, ln = lin(t), lin(n)
    # never accept on evidence that favours "different speakers" (LLR < 0): when targets and
    # non-targets separate completely (long sessions of clean speech), the target-FAR point
    # alone would sit just above the non-target bulk, far from every target
    accept = max(_far_threshold(ln, far_target), 0.0)
    far, frr = _rates_at(lt, ln, accept)
    # the upper tail of non-target LLRs, log-spaced rates down to ~10 exceedances
    srt = np.sort(ln)[::-1]
    lowest = max(10.0 / len(srt), 1e-6)
    rates = np.unique(np.geomspace(0.5, lowest, 48))[::-1] if lowest < 0.5 else np.array([0.5])
    tail = tuple((float(r), float(srt[min(len(srt) - 1, int(np.floor(r * len(srt))))])) for r in rates)
    top = srt[: max(5, int(0.01 * len(srt)))]
    x0 = float(top[-1])
    beta = float(max(np.mean(top - x0), 1e-3))
    return TrialCalibration(trial, band, lin, accept, far_target, far, frr, eer_point(t, n)["eer"], min_dcf(t, n),
                            cllr(lt, ln), min_cllr(t, n), int(len(t)), int(len(n)), tail,
                            (float(len(top) / len(srt)), x0, beta), windows)


@dataclass(frozen=True)
class SessionCalibration:
    """Session trials of a band for a grid of window counts; a session of ``n`` windows uses
    the calibration of the largest calibrated count not above ``n`` (fewer windows claim
    less evidence, so this errs towards "undecided")."""

    band: str
    by_windows: tuple[TrialCalibration, ...] = field(default_factory=tuple)  # ascending windows

    def for_windows(self, n: int) -> TrialCalibration:
        best = self.by_windows[0]
        for c in self.by_windows:
            if c.windows <= n:
                best = c
        return best

    def to_list(self) -> list[dict]:
        return [c.to_dict() for c in self.by_windows]

    @classmethod
    def from_list(cls, band: str, items: list[dict], source: str = "") -> "SessionCalibration":
        cals = sorted((TrialCalibration.from_dict(d, source) for d in items), key=lambda c: c.windows or 0)
        return cls(band, tuple(cals))
