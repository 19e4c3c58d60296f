"""Training the clone detector: a channel-robust countermeasure and a sign-constrained,
LLR-calibrated fusion.

:func:`train_clone_detector` = :func:`build_training_items` + :func:`fit_detector`:

1. **Data** (:func:`build_training_items`) — every stored genuine sample with audio is
   bona fide; spoofs are the store's known clones plus clones generated on the spot in
   several *families* (:data:`FAMILIES`): WORLD ``vocoder`` replays, classical
   ``convert`` voice conversion (from other speakers and from espeak-ng speech),
   ``espeak`` formant TTS and ``griffinlim`` mel-spectrogram resynthesis.  **Every**
   recording, bona fide or spoof, then goes through a random chain of channels from
   :data:`voxguard.channels.TRAIN_CHANNELS` (codecs, band limits, noise, reverberation,
   gain; clean now and then) drawn the same way whatever its label: the channel is no
   cue.  Each is embedded as the daemon would (utterance and 1.5 s windows).
2. **Countermeasure** — the LFCC-GMM baseline or the small LFCC CNN
   (``model=``, :mod:`voxguard.countermeasure`).  Speakers are split in two halves and
   the training channels in two groups; each half's recordings go through its own group
   only.  The countermeasure trained on one half scores the other: cross-fitted scores
   are on held-out speakers *and* held-out channels.  The stored model is then fitted on
   everything.
3. **Speaker statistics** — per speaker, the mean / std of the countermeasure score of its
   stored genuine audio (cross-fitted for training speakers) and of its samples' nearest
   genuine cosine; the evidence ``cm_speaker`` / ``emb_speaker`` are z-scores against them.
4. **Fusion** — for every query (channelled genuine and spoof recordings of a training
   speaker, and genuine ones against the nearest *other* speaker) the evidence of
   :func:`voxguard.clone_detection.evidence_values`, from the cross-fitted scores, against
   the stored samples without the query (the known-clone pool holds the clean versions of
   the speaker's other clones).  A logistic regression with every weight >= 0
   (``scipy.optimize`` L-BFGS-B, classes balanced: the output is an LLR) — one with the
   known-clone margin, one without.  The clone band is an input only if it separates
   (at most half of the genuine scores in it, at least twice as many clones as genuine).
5. **Operating points** — LLR edges low / medium / high at :data:`FA_RATES` false alarms on
   the cross-fitted genuine utterances and windows; the session CUSUM offset makes
   ``E[exp(w (llr - offset))] <= 1`` on the genuine windows
   (:class:`voxguard.clone_detection.SessionRule`).

:func:`save_clone_detector` stores the result (JSON, no pickles) in a new calibration
record that keeps the newest calibration's data and blob.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import minimize
from sklearn.mixture import GaussianMixture

from .. import SAMPLE_RATE
from ..channels import CHANNELS, TRAIN_CHANNELS, apply_chain, random_chain
from ..clone_detection import (DETECTOR_KEY, EVIDENCE, MIN_STD, SessionRule, SignedFusion, SpeakerScore,
                               SpeakerStats, TrainedDetector, embedding_stats, evidence_values, shrunk_std)
from ..countermeasure import DiagGmm, LfccGmmCountermeasure, lfcc, voiced_audio
from ..embedders.base import l2_normalise
from ..errors import VoxguardError
from ..scoring import Thresholds, calibration_for
from ..store import Store
from ..utterance import embed_window_sets, utterance_of
from .cloning import DEFAULT_TEXTS, Reference, TargetVoice, create_cloner, generate_clones

log = logging.getLogger(__name__)

FA_RATES = (0.05, 0.01, 0.002)
"""False-alarm rates on held-out genuine audio at which the levels low, medium and high start."""
FAMILIES = ("vocoder", "convert", "espeak", "griffinlim")
"""Spoof families generated for training (``nemo-tts`` and ``command`` clones enter as known clones)."""
MAX_FRAMES = 40000
DEFAULT_CLONES_PER_FAMILY = 2
DEFAULT_CLONES_PER_BACKEND = DEFAULT_CLONES_PER_FAMILY  # the old name
DEFAULT_COMPONENTS = 64
DEFAULT_MODEL = "lfcc-cnn"
MODELS = ("lfcc-gmm", "lfcc-cnn")
"""Defaults (also what ``voxguard calibrate`` uses), measured in ``bench/bench_clone_detection.py``: on 24
held-out AN4 speakers through the held-out channels the CNN detects 41 % of the spoofs at 1 % false alarm
(mean over families), the LFCC-GMM 33 %.  A store too small for the CNN (fewer than 20 bona fide or spoof
recordings in a cross-fitting half) falls back to the GMM, recorded as ``info["model_fallback"]``."""
MIN_SPEAKERS = 4
MIN_GENUINE_S = 30.0
"""Seconds of stored genuine audio (over the training speakers) below which training is refused."""
WINDOW_FRAMES = 148  # a 1.5 s window of LFCC frames
WINDOW_HOP_FRAMES = 50  # every 0.5 s
CLEAN_SHARE = 0.15
"""Share of the recordings left clean (no channel) in training."""


@dataclass
class Item:
    """One recording in the training set (as the detector will hear it: through a channel)."""

    speaker: str
    label: int  # 0 bona fide, 1 clone
    audio: np.ndarray = field(repr=False)  # channelled
    origin: str = "genuine"  # genuine | known-clone | <family>
    chain: tuple[str, ...] = ()
    fold: int = 0
    sample_id: int | None = None  # stored samples (genuine and known clones)
    key: int = -1  # index of the clean version in the pools
    source_sample: int | None = None  # generated clones: the stored sample they were made from
    embedding: np.ndarray | None = field(default=None, repr=False)
    windows: np.ndarray | None = field(default=None, repr=False)  # [w, d]
    frames: np.ndarray | None = field(default=None, repr=False)  # LFCC of the voiced audio
    cm: float = 0.0  # cross-fitted countermeasure score
    cm_windows: np.ndarray | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class TrainingSet:
    """What :func:`fit_detector` needs: the items, the clean pools and the store's speakers."""

    items: list[Item]
    pool_vectors: np.ndarray  # [p, d] clean embeddings (stored samples; generated clones)
    pool_speakers: list[str]
    pool_kinds: list[str]  # genuine | clone
    pool_sources: np.ndarray  # [p] stored sample a pooled clone was made from (-1: none)
    clean_frames: dict[int, np.ndarray]  # pool key -> LFCC of clean genuine audio (speaker statistics)
    speakers: list[str]  # the training speakers
    extra_speakers: dict[str, list[np.ndarray]]  # other stored speakers -> clean genuine frames
    emb_stats: dict[str, tuple[float, float]]
    embedder: dict | None
    channel_groups: tuple[tuple[str, ...], tuple[str, ...]]
    info: dict = field(default_factory=dict)


def recording_frames(samples: np.ndarray) -> np.ndarray:
    """The LFCC frames the countermeasure sees for a recording: those of its voiced audio."""
    return lfcc(voiced_audio(samples))


def window_chunks(frames: np.ndarray) -> list[np.ndarray]:
    """1.5 s chunks of frames every 0.5 s (at least one: the whole recording when shorter)."""
    n = len(frames)
    if n <= WINDOW_FRAMES:
        return [frames]
    return [frames[s: s + WINDOW_FRAMES] for s in range(0, n - WINDOW_FRAMES + 1, WINDOW_HOP_FRAMES)]


def fit_countermeasure(bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], n_components: int = 64,
                       max_frames: int = MAX_FRAMES, seed: int = 0) -> LfccGmmCountermeasure:
    """Fit the bona fide and spoof GMMs on the LFCC frames of the voiced audio of recordings."""
    return fit_countermeasure_frames([recording_frames(r) for r in bona_fide],
                                     [recording_frames(r) for r in spoof], n_components, max_frames, seed)


def _too_little(what: str, have_frames: int, need_frames: int) -> VoxguardError:
    more = (need_frames - have_frames) * 0.01
    return VoxguardError(f"too little audio to train the countermeasure: {have_frames * 0.01:.1f} s of voiced "
                         f"{what} audio, {need_frames * 0.01:.1f} s needed: add about {more:.1f} s more "
                         f"(more enrolled speech, or fewer GMM components)")


def fit_countermeasure_frames(bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], n_components: int = 64,
                              max_frames: int = MAX_FRAMES, seed: int = 0) -> LfccGmmCountermeasure:
    """:func:`fit_countermeasure` on precomputed LFCC frames (``[frames, 60]`` per recording)."""
    rng = np.random.default_rng(seed)

    def pool(parts: Sequence[np.ndarray]) -> np.ndarray:
        f = np.concatenate(list(parts)) if len(parts) else np.zeros((0, 60), np.float32)
        return f[rng.choice(len(f), max_frames, replace=False)] if len(f) > max_frames else f

    fb, fs = pool(bona_fide), pool(spoof)
    need = 4 * n_components
    if len(fb) < need:
        raise _too_little("bona fide", len(fb), need)
    if len(fs) < need:
        raise _too_little("spoof", len(fs), need)
    both = np.concatenate([fb, fs])
    mean, std = both.mean(0), both.std(0) + 1e-6

    def gmm(x: np.ndarray) -> DiagGmm:
        g = GaussianMixture(n_components, covariance_type="diag", reg_covar=1e-3, max_iter=100,
                            init_params="k-means++", random_state=seed).fit((x - mean) / std)
        return DiagGmm(g.weights_, g.means_, g.covariances_)

    return LfccGmmCountermeasure(gmm(fb), gmm(fs), mean, std)


def fit_model(model: str, bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], n_components: int,
              seed: int, progress: Callable[[str], None] | None = None):
    """Fit the countermeasure ``model`` (``lfcc-gmm`` or ``lfcc-cnn``) on LFCC frames."""
    if model == "lfcc-gmm":
        return fit_countermeasure_frames(bona_fide, spoof, n_components, seed=seed)
    if model == "lfcc-cnn":
        from .cnn_training import fit_cnn_countermeasure

        return fit_cnn_countermeasure(bona_fide, spoof, seed=seed, progress=progress)
    raise VoxguardError(f"unknown countermeasure model {model!r} (choose from {', '.join(MODELS)})")


def frames_score(cm, frames: np.ndarray) -> float:
    """The countermeasure's score of precomputed LFCC frames (as ``cm.score`` on the audio)."""
    return float(cm.score_frames(frames))


def equal_error_rate(bona_fide_scores: np.ndarray, spoof_scores: np.ndarray) -> float:
    """EER of scores where higher means spoof."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.zeros(len(bona_fide_scores)), np.ones(len(spoof_scores))]
    fpr, tpr, _ = roc_curve(y, np.r_[bona_fide_scores, spoof_scores])
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def detection_at_fa(genuine: np.ndarray, spoof: np.ndarray, fa: float = 0.01) -> float:
    """Share of ``spoof`` above the score ``fa`` of ``genuine`` exceed."""
    if not len(genuine) or not len(spoof):
        return float("nan")
    return float((np.asarray(spoof) > np.quantile(genuine, 1 - fa)).mean())


def channel_groups(channels: Sequence[str], seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Two groups of channels, each family split between them where it can be."""
    rng = np.random.default_rng(seed)
    by_family: dict[str, list[str]] = {}
    for c in channels:
        by_family.setdefault(CHANNELS[c].family, []).append(c)
    a: list[str] = []
    b: list[str] = []
    for fam in sorted(by_family):
        names = [str(x) for x in rng.permutation(by_family[fam])]
        for n in names:
            (a if len(a) <= len(b) else b).append(n)
    return tuple(sorted(a)), tuple(sorted(b))


def make_family_clones(family: str, target: TargetVoice, count: int, others: dict[str, TargetVoice],
                       rng: np.random.Generator, seed: int) -> list:
    """``count`` clones of ``target`` by one family (other speakers' audio feeds ``convert``)."""
    from .clone_convert import Source

    if family == "vocoder":
        cloner = create_cloner("vocoder", pitch_range=0.06, tempo_range=0.08)
    elif family == "griffinlim":
        cloner = create_cloner("griffinlim", gl_iterations=16, tempo_range=0.06)
    elif family == "espeak":
        cloner = create_cloner("espeak")
    elif family == "convert":
        names = sorted(others)
        if not names or rng.random() < 0.25 and shutil.which("espeak-ng"):
            cloner = create_cloner("convert", sources=[],
                                   text=[DEFAULT_TEXTS[int(rng.integers(len(DEFAULT_TEXTS)))]])
        else:
            picks = rng.choice(names, size=min(len(names), count), replace=False)
            srcs = [Source(o, r.label, r.audio) for o in picks
                    for r in [others[o].references[int(rng.integers(len(others[o].references)))]]]
            cloner = create_cloner("convert", sources=srcs)
    else:
        raise VoxguardError(f"unknown spoof family {family!r} (choose from {', '.join(FAMILIES)})")
    return generate_clones(cloner, target, count, seed=seed)


def _embed(embedder, audios: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    sets = embed_window_sets(embedder, audios)
    return np.stack([utterance_of(w) for w in sets]), [np.asarray(w, np.float32) for w in sets]


def build_training_items(store: Store, embedder, speakers: Sequence[str] | None = None,
                         clones_per_family: int = DEFAULT_CLONES_PER_FAMILY,
                         families: Sequence[str] = FAMILIES, channels: Sequence[str] = TRAIN_CHANNELS,
                         seed: int = 0, min_genuine_s: float = MIN_GENUINE_S,
                         progress: Callable[[str], None] | None = None,
                         exclude_samples: frozenset[int] | set[int] = frozenset()) -> TrainingSet:
    """Step 1: the channelled, embedded training recordings of ``speakers`` (default: all).

    ``exclude_samples`` (ids) are ignored altogether — an evaluation's test recordings.
    """
    store.check_embedder(embedder.identity)
    rng = np.random.default_rng(seed)
    if "espeak" in families and not shutil.which("espeak-ng"):
        families = [f for f in families if f != "espeak"]
    wanted = set(speakers) if speakers is not None else {s.name for s in store.speakers()}
    table = store.embeddings()
    if exclude_samples:
        keep = np.array([int(i) not in exclude_samples for i in table.ids], dtype=bool)
        table = type(table)(table.ids[keep], [s for s, k in zip(table.speakers, keep) if k],
                            [s for s, k in zip(table.kinds, keep) if k], table.vectors[keep])
    vec = {int(i): v for i, v in zip(table.ids, table.vectors)}
    pool_v: list[np.ndarray] = []
    pool_s: list[str] = []
    pool_k: list[str] = []
    clean_frames: dict[int, np.ndarray] = {}
    targets: dict[str, TargetVoice] = {}
    stored: list[tuple[str, int, np.ndarray, int, int]] = []  # speaker, label, audio, sample id, pool key
    extra: dict[str, list[np.ndarray]] = {}
    for info in store.samples():
        if info.id in exclude_samples:
            continue
        if info.speaker not in wanted:
            if info.kind == "genuine":
                audio = store.sample_audio(info.id)
                if audio is not None:
                    extra.setdefault(info.speaker, []).append(recording_frames(audio))
            continue
        audio = store.sample_audio(info.id)
        key = len(pool_v)
        pool_v.append(vec[info.id])
        pool_s.append(info.speaker)
        pool_k.append("clone" if info.kind == "clone" else "genuine")
        if audio is None:
            continue
        stored.append((info.speaker, int(info.kind == "clone"), audio, info.id, key))
        if info.kind != "clone":
            clean_frames[key] = recording_frames(audio)
    for name in sorted(wanted):
        refs = tuple(Reference(sid, a) for s, lab, a, sid, _ in stored if s == name and lab == 0)
        if len(refs) >= 2:
            targets[name] = TargetVoice(name, refs)
    if len(targets) < MIN_SPEAKERS:
        raise VoxguardError(f"training the clone detector needs at least {MIN_SPEAKERS} speakers with two or "
                            f"more genuine recordings with stored audio; the store has {len(targets)}: enroll "
                            f"{MIN_SPEAKERS - len(targets)} more")
    genuine_s = sum(len(a) for s, lab, a, _, _ in stored if lab == 0 and s in targets) / SAMPLE_RATE
    if genuine_s < min_genuine_s:
        raise VoxguardError(f"training the clone detector needs at least {min_genuine_s:.0f} s of stored genuine "
                            f"audio; the {len(targets)} speakers have {genuine_s:.1f} s: enroll about "
                            f"{min_genuine_s - genuine_s:.0f} s more")
    names = sorted(targets)
    fold = {s: k % 2 for k, s in enumerate(rng.permutation(names).tolist())}
    groups = channel_groups(channels, seed)

    def chain_for(f: int) -> tuple[str, ...]:
        if rng.random() < CLEAN_SHARE or not groups[f]:
            return ()
        return random_chain(rng, groups[f], max_len=2)

    items: list[Item] = []
    for s, lab, audio, sid, key in stored:
        if s in targets:
            items.append(Item(s, lab, audio, "known-clone" if lab else "genuine", sample_id=sid, key=key))
    gen_clean: list[np.ndarray] = []
    for n, spk in enumerate(names):
        if progress:
            progress(f"generating clones of {spk} ({n + 1}/{len(names)})")
        others = {o: targets[o] for o in names if o != spk}
        for fam in families:
            for c in make_family_clones(fam, targets[spk], clones_per_family, others, rng, seed * 7919 + n * 31 +
                                        FAMILIES.index(fam)):
                key = len(pool_v) + len(gen_clean)
                gen_clean.append(c.audio)
                pool_s.append(spk)
                pool_k.append("clone")
                src = int(c.source.split("#")[1]) if c.source.startswith("sample #") else None
                items.append(Item(spk, 1, c.audio, fam, key=key, source_sample=src))
    t0 = time.perf_counter()
    for i, it in enumerate(items):
        it.fold = fold[it.speaker]
        it.chain = chain_for(it.fold)
        if it.chain:
            it.audio = apply_chain(it.audio, it.chain, seed=seed * 100003 + i)
    if progress:
        progress(f"channels applied to {len(items)} recordings in {time.perf_counter() - t0:.0f} s; embedding")
    if gen_clean:
        gv, _ = _embed(embedder, gen_clean)
        pool_v.extend(gv)
    emb, wins = _embed(embedder, [it.audio for it in items])
    for it, e, w in zip(items, emb, wins):
        it.embedding, it.windows = e, w
        it.frames = recording_frames(it.audio)
    info = {"families": list(families), "channels": list(channels), "channel_groups": [list(g) for g in groups],
            "clones_per_family": clones_per_family, "genuine_seconds": round(genuine_s, 1)}
    sources = np.full(len(pool_s), -1, dtype=np.int64)
    for it in items:
        if it.source_sample is not None:
            sources[it.key] = it.source_sample
    return TrainingSet(items, l2_normalise(np.asarray(pool_v, np.float64)), pool_s, pool_k, sources, clean_frames,
                       names,
                       extra, embedding_stats(table), store.embedder.as_dict() if store.embedder else None,
                       groups, info)


def _score_items(cm, items: list[Item]) -> None:
    for it in items:
        it.cm = frames_score(cm, it.frames)
        it.cm_windows = np.array([frames_score(cm, c) for c in window_chunks(it.frames)])


def _speaker_cm_stats(per: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    vals = {s: np.asarray(v, np.float64) for s, v in per.items() if len(v) >= 2}
    if not vals:
        return {}
    pooled = float(np.sqrt(np.mean([v.var(ddof=1) for v in vals.values()])))
    return {s: (float(v.mean()), shrunk_std(v, pooled, MIN_STD["cm"])) for s, v in vals.items()}


def _pairs(ts: TrainingSet, items: list[Item], stats: dict[str, SpeakerStats], backend, band,
           windows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Item]]:
    """Evidence rows (columns :data:`EVIDENCE`, NaN = missing) for every query, with labels,
    whether the target is the query's own speaker, and the query items."""
    P = ts.pool_vectors
    spk = np.asarray(ts.pool_speakers)
    kind = np.asarray(ts.pool_kinds)
    speakers = sorted(set(ts.speakers))
    gmask = {s: (spk == s) & (kind == "genuine") for s in speakers}
    cmask = {s: (spk == s) & (kind == "clone") for s in speakers}
    centroids = l2_normalise(np.stack([P[gmask[s]].mean(0) for s in speakers]))
    queries, targets, labels, own, who = [], [], [], [], []
    for it in items:
        qs = it.windows if windows else it.embedding[None, :]
        cms = it.cm_windows if windows else np.array([it.cm])
        for q, c in zip(qs, cms):
            queries.append((q, c, it.key, it.sample_id))
            targets.append(it.speaker)
            labels.append(it.label)
            own.append(True)
            who.append(it)
            if it.label == 0 and len(speakers) > 1:
                sims = centroids @ q
                sims[speakers.index(it.speaker)] = -np.inf
                queries.append((q, c, it.key, it.sample_id))
                targets.append(speakers[int(np.argmax(sims))])
                labels.append(0)
                own.append(False)
                who.append(it)
    Q = l2_normalise(np.stack([q[0] for q in queries]).astype(np.float64))
    sims = Q @ P.T
    keys = np.array([q[2] for q in queries])
    sims[np.arange(len(Q))[keys >= 0], keys[keys >= 0]] = -np.inf  # a query never sees itself ...
    sids = np.array([-2 if q[3] is None else q[3] for q in queries])
    sims[sids[:, None] == ts.pool_sources[None, :]] = -np.inf  # ... nor clones made from it
    models = []
    for r, t in enumerate(targets):
        m = gmask[t].copy()
        if keys[r] >= 0:
            m[keys[r]] = False
        models.append(l2_normalise(P[m].mean(0)))
    models = np.stack(models)
    if backend is None:
        scores = np.einsum("ij,ij->i", Q, models)
    else:
        scores = backend.score_pairs(Q.astype(np.float32), models.astype(np.float32), targets)
    rows = np.full((len(Q), len(EVIDENCE)), np.nan)
    for r, (t, (_, c, _, _)) in enumerate(zip(targets, queries)):
        g = sims[r, gmask[t]]
        cl = sims[r, cmask[t]]
        best_g = float(g.max()) if len(g) and np.isfinite(g.max()) else None
        best_c = float(cl.max()) if len(cl) and np.isfinite(cl.max()) else None
        v = evidence_values(SpeakerScore(t, float(scores[r]), best_g, best_c), stats.get(t), band, float(c))
        for j, name in enumerate(EVIDENCE):
            if name in v:
                rows[r, j] = v[name]
    return rows, np.asarray(labels), np.asarray(own), who


def fit_signed_logistic(X: np.ndarray, y: np.ndarray, names: Sequence[str], l2: float = 1e-3) -> SignedFusion:
    """Logistic regression with every weight >= 0, classes balanced (so the output is an LLR).

    Missing values (NaN) sit at the feature's mean: they contribute nothing.
    """
    mean = np.nanmean(X, axis=0)
    scale = np.nanstd(X, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-9), scale, 1.0)
    Z = np.nan_to_num((X - mean) / scale, nan=0.0)
    w = np.where(y == 1, 0.5 / max(1, (y == 1).sum()), 0.5 / max(1, (y == 0).sum()))
    t = np.where(y == 1, 1.0, -1.0)

    def loss(p):
        a = Z @ p[:-1] + p[-1]
        m = -t * a
        lo = np.logaddexp(0.0, m)
        sig = 0.5 * (1 + np.tanh(0.5 * m))  # d/dm log(1 + e^m)
        g = -(w * sig * t)
        return float(w @ lo + l2 * p[:-1] @ p[:-1]), np.r_[Z.T @ g + 2 * l2 * p[:-1], g.sum()]

    d = Z.shape[1]
    res = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * d + [(None, None)])
    coef = np.maximum(res.x[:-1], 0.0)
    return SignedFusion(tuple(names), mean, scale, coef, float(res.x[-1]))


def _edges(genuine_llr: np.ndarray) -> tuple[float, float, float]:
    e = [float(np.quantile(genuine_llr, 1 - fa)) for fa in FA_RATES]
    for i in range(1, 3):
        e[i] = max(e[i], e[i - 1] + 1e-6)
    return tuple(e)


def fit_detector(ts: TrainingSet, n_components: int = DEFAULT_COMPONENTS, seed: int = 0,
                 thresholds: Thresholds | None = None, backend=None, model: str = DEFAULT_MODEL,
                 exclude_families: Sequence[str] = (), progress: Callable[[str], None] | None = None
                 ) -> TrainedDetector:
    """Steps 2-5 on a :class:`TrainingSet` (``exclude_families``: leave those spoofs out)."""
    t_start = time.perf_counter()
    items = [it for it in ts.items if it.origin not in exclude_families]
    fallback = None
    if model == "lfcc-cnn":
        from .cnn_training import MIN_RECORDINGS

        small = min(sum(1 for it in items if it.fold != k and it.label == lab) for k in (0, 1) for lab in (0, 1))
        if small < MIN_RECORDINGS:
            fallback = (f"lfcc-cnn needs {MIN_RECORDINGS} bona fide and spoof recordings per cross-fitting half, "
                        f"the smallest has {small}: lfcc-gmm used")
            log.warning("%s", fallback)
            model = "lfcc-gmm"
    if thresholds is None:
        thresholds = Thresholds(accept=0.0, source="none")
    # 2. countermeasure, cross-fitted over (speaker half, channel group), then on everything
    for k in (0, 1):
        if progress:
            progress(f"countermeasure fold {k + 1}/2 ({model})")
        train = [it for it in items if it.fold != k]
        cm = fit_model(model, [it.frames for it in train if it.label == 0],
                       [it.frames for it in train if it.label == 1], n_components, seed, progress)
        _score_items(cm, [it for it in items if it.fold == k])
        # 3. speaker statistics of the training speakers of this fold, on their clean genuine audio
        if k == 0:
            cm_per: dict[str, list[float]] = {}
        spk = np.asarray(ts.pool_speakers)
        fold_of = {it.speaker: it.fold for it in items}
        for key, fr in ts.clean_frames.items():
            if fold_of.get(spk[key]) == k:
                cm_per.setdefault(str(spk[key]), []).append(frames_score(cm, fr))
    if progress:
        progress(f"countermeasure on all {len(ts.speakers)} speakers ({model})")
    final = fit_model(model, [it.frames for it in items if it.label == 0],
                      [it.frames for it in items if it.label == 1], n_components, seed, progress)
    for s, frs in ts.extra_speakers.items():  # stored speakers outside training: the final model
        cm_per[s] = [frames_score(final, fr) for fr in frs]
    cm_stats = _speaker_cm_stats(cm_per)
    stats = {s: SpeakerStats(*cm_stats.get(s, (None, None)), *ts.emb_stats.get(s, (None, None)))
             for s in set(cm_stats) | set(ts.emb_stats)}

    # the clone band: an input only where it separates
    band = None
    band_info: dict = {"used": False, "why_not": "no calibrated clone_upper"}
    upper = thresholds.clone_upper
    cand = (thresholds.accept, upper) if upper is not None and upper > thresholds.accept else None
    if cand is not None:
        rows_b, yb, ownb, _ = _pairs(ts, items, stats, backend, cand, windows=False)
        inb = rows_b[:, EVIDENCE.index("in_band")]
        g_cov = float(np.mean(inb[(yb == 0) & ownb])) if ((yb == 0) & ownb).any() else 1.0
        c_cov = float(np.mean(inb[yb == 1])) if (yb == 1).any() else 0.0
        band_info = {"candidate": [round(x, 4) for x in cand], "genuine_in_band": round(g_cov, 4),
                     "clones_in_band": round(c_cov, 4)}
        if g_cov <= 0.5 and c_cov >= 2 * g_cov:
            band = cand
            band_info["used"] = True
        else:
            band_info["used"] = False
            band_info["why_not"] = "it does not separate clones from genuine audio on the training speakers"

    # 4. fusions on utterances
    rows, y, own, who = _pairs(ts, items, stats, backend, band, windows=False)
    names_kc = [e for e in EVIDENCE if e != "in_band" or band is not None]
    names_nc = [e for e in names_kc if e != "clone_margin"]
    cols = lambda names: [EVIDENCE.index(n) for n in names]  # noqa: E731
    fusions = {"known_clones": fit_signed_logistic(rows[:, cols(names_kc)], y, names_kc),
               "no_known_clones": fit_signed_logistic(rows[:, cols(names_nc)], y, names_nc)}
    # 5. operating points on cross-fitted genuine utterances and windows of the speaker itself
    wrows, wy, wown, wwho = _pairs(ts, items, stats, backend, band, windows=True)
    utt_edges, win_edges, offsets, per_family = {}, {}, [], {}
    weight = 1.0 / 3.0
    for name, f in fusions.items():
        names = list(f.features)
        llr = f.llr_matrix(rows[:, cols(names)])
        wllr = f.llr_matrix(wrows[:, cols(names)])
        g, gw = llr[(y == 0) & own], wllr[(wy == 0) & wown]
        utt_edges[name] = _edges(g)
        win_edges[name] = _edges(gw)
        m = float(np.max(weight * gw))
        offsets.append(max(0.0, (m + np.log(np.mean(np.exp(weight * gw - m)))) / weight))
        fams = sorted({w.origin for w in who if w.label == 1})
        per_family[name] = {fam: round(detection_at_fa(g, llr[np.array([w.origin == fam for w in who])]), 4)
                            for fam in fams}
    session = SessionRule.for_targets(weight, max(offsets))
    cm_g = np.array([it.cm for it in items if it.label == 0])
    info = {**ts.info, "model": model, **({"model_fallback": fallback} if fallback else {}),
            "speakers": len(ts.speakers),
            "genuine": int(sum(it.label == 0 for it in items)),
            "known_clones": int(sum(it.origin == "known-clone" for it in items)),
            "generated_clones": {f: int(sum(it.origin == f for it in items)) for f in ts.info["families"]
                                 if f not in exclude_families},
            "excluded_families": list(exclude_families), "gmm_components": n_components,
            "crossfit_cm_eer": {f: round(equal_error_rate(cm_g, np.array([it.cm for it in items if it.origin == f])), 4)
                                for f in sorted({it.origin for it in items if it.label == 1})},
            "crossfit_detection_at_1pct_fa": per_family["no_known_clones"],
            "fa_rates": list(FA_RATES), "band": band_info,
            "weights": {n: dict(zip(f.features, np.round(f.coef, 4).tolist())) for n, f in fusions.items()},
            "thresholds": thresholds.as_dict(), "train_s": round(time.perf_counter() - t_start, 1)}
    return TrainedDetector(final, fusions, utt_edges, win_edges, session, band, stats, ts.embedder, info)


def train_clone_detector(store: Store, embedder, speakers: Sequence[str] | None = None,
                         clones_per_family: int = DEFAULT_CLONES_PER_FAMILY,
                         n_components: int = DEFAULT_COMPONENTS, seed: int = 0,
                         thresholds: Thresholds | None = None, backend=None, model: str = DEFAULT_MODEL,
                         families: Sequence[str] = FAMILIES, channels: Sequence[str] = TRAIN_CHANNELS,
                         min_genuine_s: float = MIN_GENUINE_S,
                         progress: Callable[[str], None] | None = None, **legacy) -> TrainedDetector:
    """Train the countermeasure and the fusion on ``speakers`` (default: all) of ``store``.

    ``embedder`` must be the store's embedder (it embeds the generated clones).  The
    fusion learns speaker scores in the units of ``thresholds`` and ``backend`` (a
    calibration being made); by default those of the store's newest calibration.
    """
    if "clones_per_backend" in legacy:
        clones_per_family = legacy.pop("clones_per_backend")
    if legacy:
        raise TypeError(f"unexpected arguments {sorted(legacy)}")
    if model not in MODELS:
        raise VoxguardError(f"unknown countermeasure model {model!r} (choose from {', '.join(MODELS)})")
    if thresholds is None:
        thresholds, backend = calibration_for(store)
    ts = build_training_items(store, embedder, speakers, clones_per_family, families, channels, seed,
                              min_genuine_s, progress)
    return fit_detector(ts, n_components, seed, thresholds, backend, model, progress=progress)


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
    for calibration: the reason is recorded as ``clone_detector_skipped`` instead (and the
    detector then reports ``unavailable`` unless the store holds known clones).
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
