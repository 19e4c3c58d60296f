"""Training the clone detector: the LFCC-GMM countermeasure and the evidence fusion.

:func:`train_clone_detector` works on a store's speakers:

1. **Data** — every genuine sample with stored audio is bona fide; spoofs are the store's
   known clones plus clones generated on the spot (``vocoder`` with small pitch/tempo
   perturbations, and ``convert`` from other speakers' recordings — and from espeak-ng
   speech when it is installed).  Generated clones are embedded but never stored.
2. **Countermeasure** — two diagonal GMMs over standardised LFCC frames of the voiced
   audio (:mod:`voxguard.countermeasure`).  Scores used to train the fusion are
   *cross-fitted*: speakers are split in two folds and each fold is scored by a model
   trained on the other, so the fusion never sees the countermeasure's training data.
   The stored countermeasure is then fitted on all speakers.
3. **Fusion** — logistic regression (scikit-learn) over the known-clone margin, the clone
   band and the centroid score (leave-one-out: a query never sees itself in the pools)
   and the countermeasure score.  Negatives are the speakers' own genuine samples *and*
   the same samples scored against the nearest other speaker (an unenrolled voice is
   not a clone).  A second fusion without the countermeasure serves callers that pass
   no audio.
4. **Operating points** — the level edges low / medium / high are the fused scores of
   10 % / 3 % / 1 % false alarms on the genuine queries.

:func:`save_clone_detector` stores the result (JSON, no pickles) in a new calibration
record that keeps the newest calibration's data and blob.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture

from ..clone_detection import (DETECTOR_KEY, FUSION_FEATURES, LinearFusion, TrainedDetector,
                               fusion_features)
from ..countermeasure import DiagGmm, LfccGmmCountermeasure, lfcc, voiced_audio
from ..embedders.base import l2_normalise
from ..errors import VoxguardError
from ..scoring import Thresholds, calibration_for
from ..store import Store
from ..utterance import embed_utterances
from .clone_convert import ConvertCloner, Source
from .clone_vocoder import VocoderCloner
from .cloning import Reference, TargetVoice, generate_clones

log = logging.getLogger(__name__)

FA_RATES = (0.10, 0.03, 0.01)
"""False-alarm rates on genuine audio at which the levels low, medium and high start."""
MAX_FRAMES = 40000
DEFAULT_CLONES_PER_BACKEND = 3
DEFAULT_COMPONENTS = 64
"""Defaults (also what ``voxguard calibrate`` uses), measured in ``bench/bench_clone_detection.py``."""
MIN_SPEAKERS = 4


@dataclass
class Item:
    """One recording in the training set."""

    speaker: str
    label: int  # 0 bona fide, 1 clone
    audio: np.ndarray = field(repr=False)
    embedding: np.ndarray = field(repr=False)
    sample_id: int | None = None  # stored samples only
    enrolled: bool = False  # a stored sample (in the index pools)
    origin: str = "genuine"  # genuine | known-clone | vocoder | convert
    cm: float = 0.0  # cross-fitted countermeasure score
    frames: np.ndarray | None = field(default=None, repr=False)  # LFCC of the voiced audio


def recording_frames(samples: np.ndarray) -> np.ndarray:
    """The LFCC frames the countermeasure sees for a recording: those of its voiced audio."""
    return lfcc(voiced_audio(samples))


def fit_countermeasure(bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], n_components: int = 64,
                       max_frames: int = MAX_FRAMES, seed: int = 0) -> LfccGmmCountermeasure:
    """Fit the bona fide and spoof GMMs on the LFCC frames of the voiced audio of recordings."""
    return fit_countermeasure_frames([recording_frames(r) for r in bona_fide],
                                     [recording_frames(r) for r in spoof], n_components, max_frames, seed)


def fit_countermeasure_frames(bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], n_components: int = 64,
                              max_frames: int = MAX_FRAMES, seed: int = 0) -> LfccGmmCountermeasure:
    """:func:`fit_countermeasure` on precomputed LFCC frames (``[frames, 60]`` per recording)."""
    rng = np.random.default_rng(seed)

    def pool(parts: Sequence[np.ndarray]) -> np.ndarray:
        f = np.concatenate(list(parts)) if len(parts) else np.zeros((0, 60), np.float32)
        return f[rng.choice(len(f), max_frames, replace=False)] if len(f) > max_frames else f

    fb, fs = pool(bona_fide), pool(spoof)
    if min(len(fb), len(fs)) < 4 * n_components:
        raise VoxguardError(f"too little audio to train the countermeasure ({len(fb)} bona fide and "
                            f"{len(fs)} spoof frames for {n_components} components)")
    both = np.concatenate([fb, fs])
    mean, std = both.mean(0), both.std(0) + 1e-6

    def gmm(x: np.ndarray) -> DiagGmm:
        g = GaussianMixture(n_components, covariance_type="diag", reg_covar=1e-3, max_iter=100,
                            init_params="k-means++", random_state=seed).fit((x - mean) / std)
        return DiagGmm(g.weights_, g.means_, g.covariances_)

    return LfccGmmCountermeasure(gmm(fb), gmm(fs), mean, std)


def _frames_score(cm: LfccGmmCountermeasure, frames: np.ndarray) -> float:
    llr = cm.frame_llr((frames - cm.feature_mean) / cm.feature_std)
    return float(llr.mean()) if len(llr) else 0.0


def equal_error_rate(bona_fide_scores: np.ndarray, spoof_scores: np.ndarray) -> float:
    """EER of scores where higher means spoof."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(len(bona_fide_scores)), np.ones(len(spoof_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[bona_fide_scores, spoof_scores])
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def generate_training_clones(targets: dict[str, TargetVoice], per_backend: int, embedder,
                             seed: int = 0, progress: Callable[[str], None] | None = None) -> list[Item]:
    """``per_backend`` vocoder and convert clones of every target, embedded (not stored)."""
    rng = np.random.default_rng(seed)
    names = sorted(targets)
    vocoder = VocoderCloner(pitch_range=0.06, tempo_range=0.08)
    use_espeak = shutil.which("espeak-ng") is not None
    items: list[Item] = []
    for n, spk in enumerate(names):
        if progress:
            progress(f"generating clones of {spk} ({n + 1}/{len(names)})")
        made = [("vocoder", c) for c in generate_clones(vocoder, targets[spk], per_backend, seed=seed + n)]
        others = [o for o in names if o != spk]
        picks = rng.choice(others, size=min(len(others), per_backend), replace=False)
        sources = [Source(o, r.label, r.audio) for o in picks
                   for r in [targets[o].references[int(rng.integers(len(targets[o].references)))]]]
        n_text = 1 if use_espeak and per_backend > 1 else 0
        if per_backend - n_text:
            conv = ConvertCloner(sources=sources)
            made += [("convert", c) for c in generate_clones(conv, targets[spk], per_backend - n_text, seed=seed + n)]
        if n_text:
            from .cloning import DEFAULT_TEXTS

            conv = ConvertCloner(texts=[DEFAULT_TEXTS[n % len(DEFAULT_TEXTS)]])
            made += [("convert", c) for c in generate_clones(conv, targets[spk], n_text, seed=seed + n)]
        vecs = embed_utterances(embedder, [c.audio for _, c in made])
        items += [Item(spk, 1, c.audio, v, origin=b) for (b, c), v in zip(made, vecs)]
    return items


def _pool_features(items: list[Item], band: tuple[float, float] | None, with_cm: bool,
                   backend=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out fusion features: (X, y, is_genuine_target) for every query.

    A query is scored against its target's model built without it (in the units of the
    store's scoring ``backend``, as at run time); the known-clone evidence is the raw
    cosine to the target's other genuine samples and known clones.
    """
    speakers = sorted({it.speaker for it in items if it.label == 0 and it.enrolled})
    gen = {s: [i for i, it in enumerate(items) if it.speaker == s and it.enrolled and it.label == 0] for s in speakers}
    cln = {s: [i for i, it in enumerate(items) if it.speaker == s and it.enrolled and it.label == 1] for s in speakers}
    E = np.stack([it.embedding for it in items]).astype(np.float64)
    sims = E @ E.T
    centroids = l2_normalise(np.stack([E[gen[s]].mean(0) for s in speakers]))
    pairs: list[tuple[int, str, int]] = []  # (query, target speaker, label)
    for q, it in enumerate(items):
        if it.speaker not in gen:
            continue
        if [j for j in gen[it.speaker] if j != q]:
            pairs.append((q, it.speaker, it.label))
        if it.label == 0 and len(speakers) > 1:  # the same voice against the nearest other speaker
            others = [k for k, s in enumerate(speakers) if s != it.speaker]
            pairs.append((q, speakers[others[int(np.argmax(centroids[others] @ E[q]))]], 2))
    models = np.stack([l2_normalise(E[[j for j in gen[t] if j != q]].mean(0)) for q, t, _ in pairs])
    queries = E[[q for q, _, _ in pairs]]
    if backend is None:
        scores = np.einsum("ij,ij->i", queries, models)
    else:
        scores = backend.score_pairs(queries.astype(np.float32), models.astype(np.float32), [t for _, t, _ in pairs])
    rows = []
    for (q, t, _), score in zip(pairs, scores):
        g = [j for j in gen[t] if j != q]
        c = [j for j in cln[t] if j != q]
        f = fusion_features(float(score), float(sims[q, g].max()), float(sims[q, c].max()) if c else None,
                            band, items[q].cm if with_cm else None)
        rows.append([f[k] for k in FUSION_FEATURES if k in f])
    labels = np.array([1 if lab == 1 else 0 for _, _, lab in pairs])
    target_genuine = np.array([lab == 0 for _, _, lab in pairs])
    return np.array(rows), labels, target_genuine


def _clone_target_scores(items: list[Item], backend=None) -> np.ndarray:
    """Scores of the clones against their target's genuine model (for the fallback clone band)."""
    models, queries, names = [], [], []
    for it in items:
        if it.label == 1:
            g = [o.embedding for o in items if o.speaker == it.speaker and o.enrolled and o.label == 0]
            models.append(l2_normalise(np.mean(g, 0)))
            queries.append(it.embedding)
            names.append(it.speaker)
    a, b = np.asarray(queries, np.float32), np.asarray(models, np.float32)
    return np.einsum("ij,ij->i", a, b) if backend is None else backend.score_pairs(a, b, names)


def _fit_fusion(X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> LinearFusion:
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-9] = 1.0
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit((X - mean) / scale, y)
    return LinearFusion(tuple(names), mean, scale, lr.coef_[0].astype(float), float(lr.intercept_[0]))


def train_clone_detector(store: Store, embedder, speakers: Sequence[str] | None = None,
                         clones_per_backend: int = DEFAULT_CLONES_PER_BACKEND,
                         n_components: int = DEFAULT_COMPONENTS, seed: int = 0,
                         thresholds: Thresholds | None = None, backend=None,
                         progress: Callable[[str], None] | None = None) -> TrainedDetector:
    """Train the countermeasure and the fusion on ``speakers`` (default: all) of ``store``.

    ``embedder`` must be the store's embedder (it embeds the generated clones).  The
    fusion learns speaker scores in the units of ``thresholds`` and ``backend`` (a
    calibration being made); by default those of the store's newest calibration.
    """
    store.check_embedder(embedder.identity)
    if thresholds is None:
        thresholds, backend = calibration_for(store)
    wanted = set(speakers) if speakers is not None else {s.name for s in store.speakers()}
    table = store.embeddings()
    vec = {int(i): v for i, v in zip(table.ids, table.vectors)}
    items: list[Item] = []
    targets: dict[str, TargetVoice] = {}
    for name in sorted(wanted):
        refs = []
        for info in store.samples(name):
            audio = store.sample_audio(info.id)
            if audio is None:
                continue
            label = int(info.kind == "clone")
            items.append(Item(name, label, audio, vec[info.id], info.id, True,
                              "known-clone" if label else "genuine"))
            if not label:
                refs.append(Reference(info.id, audio, info.source_path))
        if len(refs) >= 2:
            targets[name] = TargetVoice(name, tuple(refs))
    if len(targets) < MIN_SPEAKERS:
        raise VoxguardError(f"training the clone detector needs at least {MIN_SPEAKERS} speakers with two or "
                            f"more genuine recordings with stored audio; the store has {len(targets)}")
    items = [it for it in items if it.speaker in targets]
    items += generate_training_clones(targets, clones_per_backend, embedder, seed, progress)

    # Countermeasure: cross-fitted scores for the fusion, then the final model on everything.
    names = sorted(targets)
    fold = {s: k % 2 for k, s in enumerate(np.random.default_rng(seed).permutation(names))}
    for it in items:
        it.frames = recording_frames(it.audio)
    for k in (0, 1):
        if progress:
            progress(f"countermeasure fold {k + 1}/2")
        train = [it for it in items if fold[it.speaker] != k]
        cm = fit_countermeasure_frames([it.frames for it in train if it.label == 0],
                                       [it.frames for it in train if it.label == 1], n_components, seed=seed)
        for it in items:
            if fold[it.speaker] == k:
                it.cm = _frames_score(cm, it.frames)
    bona = np.array([it.cm for it in items if it.label == 0])
    spoof = np.array([it.cm for it in items if it.label == 1])
    cm_eer = equal_error_rate(bona, spoof)
    if progress:
        progress("countermeasure on all speakers")
    final_cm = fit_countermeasure_frames([it.frames for it in items if it.label == 0],
                                         [it.frames for it in items if it.label == 1], n_components, seed=seed)

    # The clone band [accept, upper): calibrated, else the score 1 % of the training clones reach.
    band_upper = thresholds.clone_upper
    if band_upper is None:
        band_upper = float(np.quantile(_clone_target_scores(items, backend), 0.99))
    band = (thresholds.accept, band_upper) if band_upper > thresholds.accept else None

    X, y, genuine_target = _pool_features(items, band, with_cm=True, backend=backend)
    fusion = _fit_fusion(X, y, FUSION_FEATURES)
    X_na, y_na, _ = _pool_features(items, band, with_cm=False, backend=backend)
    fusion_na = _fit_fusion(X_na, y_na, [f for f in FUSION_FEATURES if f != "cm_llr"])
    fused_genuine = np.array([fusion.score(dict(zip(FUSION_FEATURES, row))) for row in X[genuine_target]])
    fused_clone = np.array([fusion.score(dict(zip(FUSION_FEATURES, row))) for row in X[y == 1]])
    edges = [float(np.quantile(fused_genuine, 1 - fa)) for fa in FA_RATES]
    for i in range(1, 3):  # strictly increasing, whatever the data
        edges[i] = max(edges[i], edges[i - 1] + 1e-6)
    info = {
        "speakers": len(names), "genuine": int(sum(it.label == 0 for it in items)),
        "known_clones": int(sum(it.origin == "known-clone" for it in items)),
        "generated_clones": int(sum(it.origin in ("vocoder", "convert") for it in items)),
        "clones_per_backend": clones_per_backend, "gmm_components": n_components,
        "crossfit_cm_eer": round(cm_eer, 4),
        "training_detection_at_1pct_fa": round(float((fused_clone >= edges[2]).mean()), 4),
        "fa_rates": list(FA_RATES), "band": None if band is None else [round(b, 4) for b in band],
        "band_source": "calibration" if thresholds.clone_upper is not None else "training clones (99th percentile)",
        "thresholds": thresholds.as_dict(),
    }
    return TrainedDetector(final_cm, fusion, fusion_na, tuple(edges),
                           None if thresholds.clone_upper is not None or band is None else band[1], info)


def save_clone_detector(store: Store, detector: TrainedDetector) -> int:
    """Store ``detector`` in a new calibration record that keeps the newest one's data and blob."""
    latest = store.latest_calibration()
    data, blob = ({}, None) if latest is None else (dict(latest[1]), latest[2])
    data[DETECTOR_KEY] = detector.as_dict()
    return store.save_calibration(data, blob)


def add_clone_detector(store: Store, embedder, result, progress: Callable[[str], None] | None = None
                       ) -> TrainedDetector | None:
    """The ``voxguard calibrate`` step: train on ``store`` with the thresholds and backend of the
    calibration ``result`` being made, and put the detector in ``result.data``.

    A store the detector cannot be trained on (too few speakers or audio) is not an error
    for calibration: the reason is recorded as ``clone_detector_skipped`` instead.
    """
    from ..backend import backend_from_calibration
    from ..scoring import thresholds_from_calibration

    thresholds = thresholds_from_calibration(0, result.data)
    try:
        if thresholds is None:
            raise VoxguardError("the calibration has no thresholds")
        det = train_clone_detector(store, embedder, thresholds=thresholds,
                                   backend=backend_from_calibration(result.blob()), progress=progress)
    except VoxguardError as e:
        log.warning("clone detector not trained: %s", e.message)
        result.data["clone_detector_skipped"] = e.message
        return None
    result.data[DETECTOR_KEY] = det.as_dict()
    return det
