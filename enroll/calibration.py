"""Calibration: train a scoring backend on the enrolled speakers, measure score
distributions, derive thresholds, and assemble one calibration record for the store.

Trials are what the scorer decides on: **one utterance against a speaker model** (the
normalised mean of the speaker's genuine embeddings, as in the index):

* *same* — a genuine utterance against its own speaker's model built without it
  (leave-one-out; speakers need two genuine samples);
* *different* — a genuine utterance against every other speaker's model;
* *clone* — a known clone of a speaker against that speaker's model.

Scores come from backends **cross-fitted by speaker** (``folds`` groups: each group is
scored by a backend trained on the other groups, with the others as AS-norm cohort), so the
distributions — and thresholds — describe speakers the backend has not seen.  The stored
backend is then trained on every enrolled speaker.

:func:`calibrate` runs the steps in order (load -> train -> trials -> thresholds -> extras
-> record) and returns a :class:`CalibrationResult`; nothing touches the store until
:func:`save_calibration` writes the record and blob in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..backend import ScoreBackend, pack_arrays, parse_backend_name
from ..bands import BANDS, WIDE
from ..embedders.base import l2_normalise
from ..errors import VoxguardError
from ..llr import (SessionCalibration, TrialCalibration, calibrate_trials, eer_point, error_rates,  # noqa: F401
                   far_point, min_dcf)
from ..store import EmbeddingTable, Store
from .decision_trials import BandSamples, Trials, band_trials, merge_trials

DEFAULT_BACKEND = "wccn+asnorm"  # measured best on AN4 (see README: Calibration)
CALIBRATION_VERSION = 2
DECISIONS_VERSION = 1
DEFAULT_OPEN_SET_ALPHA = 0.02
DEFAULT_MODEL_UTTERANCES = 5
ASNORM_BOUND_PERCENTILE = 5.0
MIN_BIN_TARGETS = 30  # a trial length (session n, utterance window bin) is calibrated on its own
MIN_BIN_NONTARGETS = 300  # only with at least these many trials
MIN_CROSS_FIT_SPEAKERS = 6
MIN_TRAINED_BACKEND_SPEAKERS = 20  # below this, a trained backend (WCCN, AS-norm cohort) fits the few speakers


class CalibrationError(VoxguardError):
    """The store cannot be calibrated (too few speakers or samples, bad settings)."""


@dataclass(frozen=True)
class CalibrationConfig:
    backend: str = DEFAULT_BACKEND
    far_target: float = 0.01  # false-accept rate for the far threshold (and the clone band)
    accept_rule: str = "far"  # accept = the threshold at far_target ("far") or the EER point ("eer")
    shrinkage: float = 0.5  # within-class covariance shrinkage towards a scaled identity (lda, wccn)
    lda_dims: int | None = None  # default: n_speakers - 1
    whiten_floor: float = 1e-3  # eigenvalue floor of whitening, relative to the largest
    asnorm_top: int = 50  # AS-norm: cohort scores averaged per side
    cohort_max: int = 4000  # AS-norm: cohort rows kept (random subset beyond this)
    folds: int = 5  # speaker groups for cross-fitted trial scores
    seed: int = 0
    open_set_alpha: float = DEFAULT_OPEN_SET_ALPHA  # chance an unenrolled speaker is named (open-set identification)
    asnorm_bound: bool = True  # bound AS-norm statistics by the cohort's own (see voxguard.backend)
    # decision trials: speaker models of this many utterances (a typical enrollment; None = all)
    model_utterances: int | None = DEFAULT_MODEL_UTTERANCES

    def check(self) -> None:
        try:
            parse_backend_name(self.backend)
        except ValueError as e:
            raise CalibrationError(str(e)) from None
        if not 0 < self.far_target < 0.5:
            raise CalibrationError("the target false-accept rate must be between 0 and 0.5")
        if self.accept_rule not in ("far", "eer"):
            raise CalibrationError("the accept rule must be 'far' or 'eer'")
        if not 0 <= self.shrinkage <= 1:
            raise CalibrationError("shrinkage must be between 0 and 1")
        if self.lda_dims is not None and self.lda_dims < 1:
            raise CalibrationError("LDA dimensions must be at least 1")
        if self.asnorm_top < 2 or self.cohort_max < 2:
            raise CalibrationError("the AS-norm cohort needs at least 2 rows")
        if self.folds < 2:
            raise CalibrationError("cross-fitting needs at least 2 folds")
        if self.model_utterances is not None and self.model_utterances < 1:
            raise CalibrationError("speaker models need at least 1 utterance")
        if not 0 < self.open_set_alpha < 0.5:
            raise CalibrationError("the open-set false-identification rate must be between 0 and 0.5")

    def backend_params(self) -> dict:
        transform, asnorm = parse_backend_name(self.backend)
        p: dict = {}
        if transform in ("lda", "wccn"):
            p["shrinkage"] = self.shrinkage
        if transform == "lda":
            p["lda_dims"] = self.lda_dims
        if transform == "whiten":
            p["whiten_floor"] = self.whiten_floor
        if asnorm:
            p.update(asnorm_top=self.asnorm_top, cohort_max=self.cohort_max)
        return p


# -- backend training ---------------------------------------------------------------------
def _scatter(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global mean, within-class and between-class covariance (per sample)."""
    mu = x.mean(axis=0)
    d = x.shape[1]
    sw = np.zeros((d, d))
    sb = np.zeros((d, d))
    for c in np.unique(labels):
        xc = x[labels == c]
        mc = xc.mean(axis=0)
        r = xc - mc
        sw += r.T @ r
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    return mu, sw / len(x), sb / len(x)


def _shrink(cov: np.ndarray, alpha: float) -> np.ndarray:
    d = cov.shape[0]
    return (1 - alpha) * cov + alpha * np.trace(cov) / d * np.eye(d)


def train_backend(vectors: np.ndarray, speakers: list[str] | np.ndarray, config: CalibrationConfig) -> ScoreBackend:
    """Train ``config.backend`` on genuine embeddings ``vectors`` of ``speakers``."""
    from scipy.linalg import eigh

    transform, asnorm = parse_backend_name(config.backend)
    x = np.asarray(vectors, dtype=np.float64)
    names = np.asarray(speakers)
    uniq, labels = np.unique(names, return_inverse=True)
    params = config.backend_params()
    mean = projection = None
    if transform != "cosine":
        mean = x.mean(axis=0)
    if transform == "whiten":
        if len(x) < 2:
            raise CalibrationError("whitening needs at least 2 genuine samples")
        w, v = np.linalg.eigh(np.cov((x - mean).T))
        w = np.maximum(w, config.whiten_floor * w.max())
        projection = v / np.sqrt(w)
    elif transform in ("lda", "wccn"):
        counts = np.bincount(labels)
        if (counts >= 2).sum() < 1 or (transform == "lda" and len(uniq) < 2):
            raise CalibrationError(f"{transform} needs at least 2 speakers and a speaker with 2 genuine samples")
        mean, sw, sb = _scatter(x, labels)
        sw = _shrink(sw, config.shrinkage)
        if transform == "wccn":
            w, v = np.linalg.eigh(sw)
            projection = v / np.sqrt(np.maximum(w, 1e-12))
        else:
            dims = min(config.lda_dims or len(uniq) - 1, len(uniq) - 1, x.shape[1])
            w, v = eigh(sb, sw)
            projection = v[:, ::-1][:, :dims]
            params["lda_dims"] = dims
    backend = ScoreBackend(transform, None if mean is None else mean.astype(np.float32),
                           None if projection is None else projection.astype(np.float32), params=params)
    if asnorm:
        if len(uniq) < 2:
            raise CalibrationError("AS-norm needs a cohort of at least 2 speakers")
        rows = np.arange(len(x))
        if len(rows) > config.cohort_max:
            rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.cohort_max, replace=False))
        backend.cohort = backend.transform_vectors(x[rows].astype(np.float32))
        backend.cohort_speakers = [str(s) for s in uniq]
        backend.cohort_labels = labels[rows].astype(np.int64)
        backend.asnorm_top = config.asnorm_top
        if config.asnorm_bound:
            # the cohort's own statistics (each row's speaker left out): their low percentiles bound
            # the statistics of any recording, however unlike the cohort it is
            mu, sd = backend.cohort_stats(backend.cohort, backend.cohort_labels)
            backend.std_floor = float(np.percentile(sd, ASNORM_BOUND_PERCENTILE))
            backend.mean_floor = float(np.percentile(mu, ASNORM_BOUND_PERCENTILE))
            backend.params.update(std_floor=backend.std_floor, mean_floor=backend.mean_floor)
    return backend


# -- trials -------------------------------------------------------------------------------------
@dataclass
class TrialScores:
    """Scores of utterance-vs-speaker-model trials (see the module docstring)."""

    same: np.ndarray
    different: np.ndarray
    clone: np.ndarray

    @classmethod
    def concat(cls, parts: list["TrialScores"]) -> "TrialScores":
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        return cls(cat([p.same for p in parts]), cat([p.different for p in parts]), cat([p.clone for p in parts]))

    def as_arrays(self, prefix: str = "scores.") -> dict[str, np.ndarray]:
        return {prefix + k: getattr(self, k).astype(np.float64) for k in ("same", "different", "clone")}


def speaker_models(vectors: np.ndarray, speakers: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Speaker names (sorted) and their models: the normalised mean of their embeddings."""
    names, inv = np.unique(speakers, return_inverse=True)
    sums = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inv, vectors)
    return [str(n) for n in names], l2_normalise(sums)


def model_trials(backend: ScoreBackend | None, gen_x: np.ndarray, gen_spk: np.ndarray,
                 clone_x: np.ndarray | None = None, clone_spk: np.ndarray | None = None) -> TrialScores:
    """Same / different / clone trial scores among the given speakers (``backend=None``: cosine)."""
    be = backend or ScoreBackend("cosine")
    names, models = speaker_models(gen_x, gen_spk)
    pos = {n: i for i, n in enumerate(names)}
    own = np.array([pos[s] for s in gen_spk])
    full = be.score(gen_x, models, names)  # [n, m]
    other = np.ones_like(full, dtype=bool)
    other[np.arange(len(own)), own] = False
    different = full[other]
    # leave-one-out models for the same-speaker trials
    counts = np.bincount(own, minlength=len(names))
    ok = counts[own] >= 2
    sums = np.zeros((len(names), gen_x.shape[1]), dtype=np.float64)
    np.add.at(sums, own, gen_x)
    loo = l2_normalise(sums[own[ok]] - gen_x[ok])
    same = be.score_pairs(gen_x[ok], loo, [names[i] for i in own[ok]])
    clone = np.zeros(0)
    if clone_x is not None and len(clone_x):
        keep = np.array([s in pos for s in clone_spk], dtype=bool)
        if keep.any():
            targets = [str(s) for s in np.asarray(clone_spk)[keep]]
            clone = be.score_pairs(clone_x[keep], models[[pos[t] for t in targets]], targets)
    return TrialScores(np.asarray(same, np.float64), np.asarray(different, np.float64), np.asarray(clone, np.float64))


def speaker_folds(names: list[str], folds: int, seed: int) -> list[list[str]]:
    order = list(np.random.default_rng(seed).permutation(sorted(names)))
    return [sorted(str(n) for n in order[f::folds]) for f in range(folds)]


def _training_rows(inp: "CalibrationInput", speakers: set[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Genuine utterance embeddings of every band (a speaker's band views are its own
    samples too, so the backend learns that a band change is no speaker change)."""
    xs, ss = [], []
    for b in inp.bands.values():
        keep = np.ones(len(b.spk), dtype=bool) if speakers is None else np.isin(b.spk, sorted(speakers))
        xs.append(b.utt[keep])
        ss.append(b.spk[keep])
    return np.concatenate(xs), np.concatenate(ss)


def cross_fitted_trials(config: CalibrationConfig, inp: "CalibrationInput") -> tuple[TrialScores, dict[str, Trials], int]:
    """Trial scores of each speaker group under a backend trained without that group:
    the utterance/clone trials of the wide band (thresholds, figures) and every decision
    trial type of every band.

    Returns both and the number of folds used (1 = in-sample, for few speakers or a
    backend that needs no training)."""
    names = sorted(set(inp.gen_spk.tolist()))
    transform, asnorm = parse_backend_name(config.backend)
    rng = np.random.default_rng(config.seed)

    def score_group(backend: ScoreBackend | None, group: set[str] | None) -> tuple[TrialScores, dict[str, Trials]]:
        sel = (lambda spk: np.ones(len(spk), bool)) if group is None else (lambda spk: np.isin(spk, sorted(group)))
        held = sel(inp.gen_spk)
        cheld = sel(inp.clone_spk) if len(inp.clone_spk) else np.zeros(0, dtype=bool)
        legacy = model_trials(backend, inp.gen_x[held], inp.gen_spk[held], inp.clone_x[cheld], inp.clone_spk[cheld])
        be = backend or ScoreBackend("cosine")
        per_band = {band: band_trials(be, b.select(sel(b.spk)), rng, model_utterances=config.model_utterances)
                    for band, b in inp.bands.items()}
        return legacy, per_band

    if transform == "cosine" and not asnorm:
        legacy, per_band = score_group(None, None)
        return legacy, per_band, 1
    if len(names) < MIN_CROSS_FIT_SPEAKERS:
        return (*score_group(train_backend(*_training_rows(inp), config), None), 1)
    k = min(config.folds, len(names) // 2)
    legacy_parts, band_parts = [], {band: [] for band in inp.bands}
    for group in speaker_folds(names, k, config.seed):
        rest = set(names) - set(group)
        backend = train_backend(*_training_rows(inp, rest), config)
        legacy, per_band = score_group(backend, set(group))
        legacy_parts.append(legacy)
        for band, t in per_band.items():
            band_parts[band].append(t)
    return TrialScores.concat(legacy_parts), {b: merge_trials(p) for b, p in band_parts.items()}, k


def decision_calibrations(trials: dict[str, Trials], config: CalibrationConfig) -> dict:
    """One :class:`~voxguard.llr.TrialCalibration` per trial type and band (a trial type
    with too few trials, e.g. pairs of single-sample speakers, is left out)."""
    out: dict = {"version": DECISIONS_VERSION, "far_target": config.far_target,
                 "open_set_alpha": config.open_set_alpha, "bands": {}}
    for band, bt in trials.items():
        entry: dict = {}
        by_windows: dict[str, list] = {"session": [], "utterance_by_windows": []}
        for key, (tar, non) in bt.items():
            trial, sep, n = key.replace("@", ":@").partition(":")
            if sep and (len(tar) < MIN_BIN_TARGETS or len(non) < MIN_BIN_NONTARGETS):
                continue  # too few trials to calibrate this length on its own
            try:
                cal = calibrate_trials(trial, band, tar, non, config.far_target,
                                       int(n.lstrip("@")) if n else None)
            except ValueError:
                continue
            if n.startswith("@"):
                by_windows["utterance_by_windows"].append(cal)
            elif n:
                by_windows["session"].append(cal)
            else:
                entry[trial] = cal.to_dict()
        for name, cals in by_windows.items():
            if cals:
                entry[name] = SessionCalibration(band, tuple(sorted(cals, key=lambda c: c.windows))).to_list()
        out["bands"][band] = entry
    return out


# -- error rates and thresholds ---------------------------------------------------------
def summarise(scores: np.ndarray) -> dict | None:
    if len(scores) == 0:
        return None
    q = np.percentile(scores, [1, 5, 25, 50, 75, 95, 99])
    return {"n": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "min": float(scores.min()), "max": float(scores.max()),
            "percentiles": {str(p): float(v) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q)}}


def derive_thresholds(trials: TrialScores, config: CalibrationConfig, backend_name: str) -> dict:
    """Speaker-match and clone thresholds, each with its error rates."""
    eer = eer_point(trials.same, trials.different)
    far = far_point(trials.same, trials.different, config.far_target)
    th = {"backend": backend_name, "accept_rule": config.accept_rule,
          "accept": far["threshold"] if config.accept_rule == "far" else eer["threshold"],
          "eer_threshold": eer["threshold"], "eer": eer["eer"], "eer_far": eer["far"], "eer_frr": eer["frr"],
          "far_target": config.far_target, "far_threshold": far["threshold"], "far_at_far_threshold": far["far"],
          "frr_at_far_threshold": far["frr"],
          "min_dcf": min_dcf(trials.same, trials.different)}
    f, r = error_rates(trials.same, trials.different, [th["accept"]])
    th.update(accept_far=float(f[0]), accept_frr=float(r[0]))
    if len(trials.clone):
        ce = eer_point(trials.same, trials.clone)
        cu = far_point(trials.same, trials.clone, config.far_target)
        cf, _ = error_rates(trials.same, trials.clone, [th["accept"]])
        th.update(clone_eer_threshold=ce["threshold"], clone_eer=ce["eer"],
                  clone_upper=cu["threshold"], clone_accept_at_clone_upper=cu["far"],
                  genuine_frr_at_clone_upper=cu["frr"], clone_accept_at_accept=float(cf[0]))
    else:
        th["clone_upper"] = None
    return th


# -- the calibration ---------------------------------------------------------------------------
@dataclass
class CalibrationResult:
    data: dict  # the JSON record saved in the store
    backend: ScoreBackend
    trials: TrialScores  # backend scores behind the thresholds
    cosine_trials: TrialScores  # raw-cosine reference trials
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # added to the blob by later steps

    @property
    def thresholds(self) -> dict:
        return self.data["thresholds"]

    def blob(self) -> bytes:
        arrays = {"backend." + k: v for k, v in self.backend.to_arrays().items()}
        arrays.update(self.trials.as_arrays("scores."))
        arrays.update(self.cosine_trials.as_arrays("cosine_scores."))
        arrays.update(self.extra_arrays)
        return pack_arrays(arrays)


@dataclass
class CalibrationInput:
    """Genuine and clone embeddings of a store (or of a split of it)."""

    gen_x: np.ndarray  # wide-band utterance embeddings of genuine samples
    gen_spk: np.ndarray
    clone_x: np.ndarray
    clone_spk: np.ndarray
    # genuine samples per band, with window embeddings where the store has them
    bands: dict[str, BandSamples] = field(default_factory=dict)

    def __post_init__(self):
        if WIDE not in self.bands:
            self.bands = {WIDE: BandSamples(self.gen_x, self.gen_spk), **self.bands}

    @classmethod
    def from_table(cls, table: EmbeddingTable, speakers: set[str] | None = None,
                   views: dict | None = None) -> "CalibrationInput":
        """From a store's embeddings and (optionally) its band views (``store.views(band)``
        per band): a band's window embeddings are used when every genuine sample has them."""
        spk = np.asarray(table.speakers, dtype=object).astype(str)
        kinds = np.asarray(table.kinds)
        sel = np.ones(len(spk), dtype=bool) if speakers is None else np.isin(spk, sorted(speakers))
        g, c = sel & (kinds == "genuine"), sel & (kinds == "clone")
        gen_x = table.vectors[g].astype(np.float64)
        bands: dict[str, BandSamples] = {}
        for band, view in (views or {}).items():
            pos = {int(i): n for n, i in enumerate(view.ids)}
            rows = [pos.get(int(i)) for i in table.ids[g]]
            if not rows or any(r is None for r in rows):
                continue  # this band is not complete for these samples: leave it out
            windows = [view.windows[r] for r in rows]
            utt = gen_x if band == WIDE else l2_normalise(np.stack([w.mean(axis=0) for w in windows]))
            bands[band] = BandSamples(np.asarray(utt, np.float64), spk[g], windows)
        return cls(gen_x, spk[g], table.vectors[c].astype(np.float64), spk[c], bands)

    def check(self) -> None:
        names, counts = np.unique(self.gen_spk, return_counts=True)
        if len(self.gen_x) == 0:
            raise CalibrationError("the store holds no genuine samples: nothing to calibrate "
                                   "(enroll speakers first)")
        if len(names) < 2:
            raise CalibrationError(f"calibration needs at least 2 speakers with genuine samples; "
                                   f"the store has {len(names)} ({names[0]})")
        if (counts >= 2).sum() == 0:
            raise CalibrationError("every speaker has a single genuine sample: same-speaker scores need "
                                   "speakers with at least 2 samples")


def calibrate_input(inp: CalibrationInput, config: CalibrationConfig) -> CalibrationResult:
    """Steps 2-5 of :func:`calibrate` on in-memory embeddings (also used by evaluation)."""
    config.check()
    inp.check()
    t0 = time.perf_counter()
    # step 2: the backend to store, trained on every enrolled speaker (all bands)
    backend = train_backend(*_training_rows(inp), config)
    # step 3: trial scores — cross-fitted backend, and raw cosine for reference
    trials, per_band, folds = cross_fitted_trials(config, inp)
    cosine = model_trials(None, inp.gen_x, inp.gen_spk, inp.clone_x, inp.clone_spk)
    # step 4: thresholds, and a calibrated LLR per trial type and band
    thresholds = derive_thresholds(trials, config, backend.name)
    decisions = decision_calibrations(per_band, config)
    cos_eer = eer_point(cosine.same, cosine.different)
    names, counts = np.unique(inp.gen_spk, return_counts=True)
    # step 5: the record (later steps, e.g. a clone countermeasure, add to data / extra_arrays)
    data = {
        "version": CALIBRATION_VERSION,
        "created_by": "voxguard calibrate",
        "backend": {"name": backend.name, "params": backend.params, "out_dim": backend.out_dim,
                    "cohort_size": 0 if backend.cohort is None else int(len(backend.cohort))},
        "trials": {"kind": "utterance vs speaker model (normalised mean of genuine embeddings; "
                           "leave-one-out for the same speaker)",
                   "cross_fit_folds": folds, "seed": config.seed},
        "thresholds": thresholds,
        "decisions": {**decisions, "model_utterances": config.model_utterances},
        "distributions": {"same": summarise(trials.same), "different": summarise(trials.different),
                          "clone": summarise(trials.clone)},
        "cosine_reference": {"eer": cos_eer["eer"], "eer_threshold": cos_eer["threshold"],
                             "min_dcf": min_dcf(cosine.same, cosine.different),
                             "distributions": {"same": summarise(cosine.same),
                                               "different": summarise(cosine.different),
                                               "clone": summarise(cosine.clone)}},
        "warnings": calibration_warnings(len(names), folds, backend.name),
        "speakers": int(len(names)),
        "speakers_single_sample": int((counts < 2).sum()),
        "genuine_samples": int(len(inp.gen_x)),
        "clone_samples": int(len(inp.clone_x)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return CalibrationResult(data, backend, trials, cosine)


def calibration_warnings(speakers: int, folds: int, backend: str) -> list[str]:
    """What a user should know about how far this calibration's stated figures can be trusted."""
    out = []
    if folds == 1 and backend != "cosine":
        out.append(f"calibrated in-sample: cross-fitting needs at least {MIN_CROSS_FIT_SPEAKERS} speakers and the "
                   f"store has {speakers}, so the stated FAR/FRR are optimistic")
    if backend != "cosine" and speakers < MIN_TRAINED_BACKEND_SPEAKERS:
        out.append(f"the {backend} backend is trained on only {speakers} speakers (fewer than "
                   f"{MIN_TRAINED_BACKEND_SPEAKERS}): it may fit them rather than speakers in general; enroll more "
                   f"speakers, or calibrate with --backend cosine")
    return out


def band_views(store: Store, embedder=None, save: bool = True) -> dict:
    """Every band's window embeddings of the store's samples.  Samples enrolled before band
    views existed (store schema 1) get them from their stored audio with ``embedder`` —
    stored in one transaction when ``save`` — or, without an embedder or audio, keep
    only what the store has (a band missing for a genuine sample is then left out)."""
    if embedder is not None:
        from ..utterance import embed_band_views

        for band in BANDS:
            missing = store.samples_without_view(band)
            if not missing:
                continue
            audio = {sid: store.sample_audio(sid) for sid in missing}
            have = [sid for sid, a in audio.items() if a is not None and len(a)]
            views = {}
            for s in range(0, len(have), 32):
                part = have[s: s + 32]
                for sid, v in zip(part, embed_band_views(embedder, [audio[i] for i in part], bands=(band,))):
                    views[sid] = v[band]
            if views and save:
                store.add_views(band, views)
            elif views:
                return {b: _with_views(store.views(b), views if b == band else {}) for b in BANDS}
    return {band: store.views(band) for band in BANDS}


def _with_views(table, extra: dict):
    """``table`` (a ViewTable) plus in-memory views of more samples, in sample id order."""
    if not extra:
        return table
    from ..store import ViewTable

    info = {}
    for i, s, k, w in zip(table.ids, table.speakers, table.kinds, table.windows):
        info[int(i)] = (s, k, w)
    return ViewTable(table.band, np.array(sorted(set(info) | set(extra)), dtype=np.int64), [], [],
                     [info[i][2] if i in info else extra[i] for i in sorted(set(info) | set(extra))])


def calibrate(store: Store, config: CalibrationConfig | None = None, embedder=None,
              save_views: bool = True) -> CalibrationResult:
    """Compute a calibration of ``store`` (nothing is written but missing band views —
    see :func:`band_views`; the calibration itself is saved by :func:`save_calibration`)."""
    config = config or CalibrationConfig()
    config.check()
    # step 1: every stored embedding — no re-embedding needed
    if store.embedder is None:
        raise CalibrationError(f"{store.location} is empty: nothing to calibrate (enroll speakers first)")
    views = band_views(store, embedder, save_views)
    table = store.embeddings()
    result = calibrate_input(CalibrationInput.from_table(table, views=views), config)
    result.data.update(embedder=store.embedder.as_dict(), store_id=store.store_id,
                       store_revision=store.revision)
    return result


def save_calibration(store: Store, result: CalibrationResult) -> int:
    """Write the record and its blob in one transaction; returns the calibration id."""
    return store.save_calibration(result.data, result.blob())


def with_backend(config: CalibrationConfig, backend: str) -> CalibrationConfig:
    return replace(config, backend=backend)
