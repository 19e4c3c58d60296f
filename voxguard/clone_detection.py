"""Clone suspicion for one embedded window or utterance, as a log-likelihood ratio.

Evidence (every value is oriented so that *larger means more clone-like*):

* ``cm`` — the synthetic-speech countermeasure on the audio itself
  (:mod:`voxguard.countermeasure`; trained with bona fide and spoof audio through the
  same random channel chains, so the channel is no cue).
* ``cm_speaker`` — the countermeasure score relative to *that speaker's* genuine audio:
  ``(cm - mean) / std`` over the speaker's stored genuine recordings.
* ``emb_speaker`` — how far the recording is from the speaker's genuine samples in
  embedding space, relative to how far they are from each other:
  ``(mean - best_genuine) / std`` where ``best_genuine`` is the cosine to the nearest
  genuine sample of the speaker and ``mean`` / ``std`` are those of the speaker's own
  samples to their nearest other sample (leave-one-out).
* ``clone_margin`` — with known clones of the speaker among the nearest stored samples:
  best clone cosine minus best genuine cosine.
* ``in_band`` — the speaker score lies in ``[accept, clone_upper)``; used only when it
  separated clones from genuine audio in training (else dropped, see ``info``).

A trained detector (``data["clone_detector"]`` of the newest calibration, written by
:func:`voxguard.enroll.clone_training.train_clone_detector`) fuses them with a
*sign-constrained* logistic regression: every weight is >= 0, so each evidence can only
push towards "clone" in its own direction.  The fused value is a log-likelihood ratio
``log p(evidence | clone) / p(evidence | genuine)`` calibrated on held-out speakers and
held-out channels; a missing evidence (no audio, no known clones, a speaker without
statistics) contributes 0.  ``score`` is ``sigmoid(llr)``, the posterior at even prior
odds.  Levels low / medium / high start at the LLRs of the false-alarm rates
:data:`voxguard.enroll.clone_training.FA_RATES` on held-out genuine audio.

Without a trained detector, a store with known clones gets the documented default:
``llr = (best_clone - best_genuine) / 0.01`` (uncalibrated) when the speaker has a known clone among the
neighbours, else no evidence (LLR 0); levels none < 0.5 <= low < 1.1 <= medium < 2.2 <=
high (posterior 0.62 / 0.75 / 0.9).  A store with neither known clones nor a trained
detector, or whose detector was trained for another embedder or feature version, reports
the level ``unavailable`` with score and LLR ``null``: no evidence is not evidence of
genuineness.

Sessions (the daemon) accumulate window LLRs with a CUSUM — see :class:`SessionRule`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .blas import single_threaded_blas
from .countermeasure import FEATURE_VERSION as CM_FEATURE_VERSION
from .countermeasure import countermeasure_from_dict
from .index import SearchResult, SpeakerScore
from .scoring import Thresholds

log = logging.getLogger(__name__)

LEVELS = ("none", "low", "medium", "high")
UNAVAILABLE = "unavailable"
DEFAULT_LEVEL_EDGES = (0.5, 1.1, 2.2)
"""LLR edges of low / medium / high of the untrained default (posterior 0.62 / 0.75 / 0.9)."""
DEFAULT_MARGIN_SCALE = 0.01
DETECTOR_KEY = "clone_detector"
"""Key of the trained detector in a calibration record's data."""
DETECTOR_FORMAT = 2
FEATURE_VERSION = 2
"""Version of the evidence definitions (and, through the countermeasure, of its features)."""
EVIDENCE = ("cm", "cm_speaker", "emb_speaker", "clone_margin", "in_band")
LLR_CLIP = 30.0
MIN_STD = {"cm": 0.05, "emb": 0.01}
PCM_SPEAKER_WEIGHT = 0.5
"""Weight of the countermeasure LLR relative to the speaker's own genuine recordings (a z-score; only its
clone-ward part counts: a recording more genuine-looking than the speaker's own adds nothing)."""


@dataclass(frozen=True)
class SessionRule:
    """How a session accumulates window LLRs: a one-sided CUSUM (Page's test).

    ``S_0 = 0``, ``S_t = max(0, S_{t-1} + weight * (llr_t - offset))``.  ``weight`` is
    hop / window length (overlapping windows share audio: each second counts once) and
    ``offset`` makes ``E[exp(weight * (llr - offset))] <= 1`` on held-out genuine windows,
    the condition under which ``exp(S)`` cannot grow on genuine audio.  Lorden's bound then
    gives at most one false alarm every ``exp(h)`` independent windows for an edge ``h``:
    ``edges[i] = ln(windows_per_hour * hours_per_false_alarm[i])``.
    """

    weight: float = 1.0 / 3.0
    offset: float = 0.0
    edges: tuple[float, float, float] = (7.8, 10.8, 12.4)
    hours_per_false_alarm: tuple[float, float, float] = (1.0, 20.0, 100.0)
    windows_per_hour: float = 2400.0

    @classmethod
    def for_targets(cls, weight: float, offset: float, window_s: float = 1.5,
                    hours_per_false_alarm: tuple[float, float, float] = (1.0, 20.0, 100.0)) -> "SessionRule":
        wph = 3600.0 / window_s
        return cls(weight, offset, tuple(float(math.log(wph * h)) for h in hours_per_false_alarm),
                   tuple(hours_per_false_alarm), wph)

    def step(self, s: float, llr: float) -> float:
        return max(0.0, s + self.weight * (llr - self.offset))

    def level(self, s: float | None) -> str:
        if s is None:
            return UNAVAILABLE
        return LEVELS[sum(s >= e for e in self.edges)]

    def as_dict(self) -> dict:
        return {"weight": self.weight, "offset": self.offset, "edges": list(self.edges),
                "hours_per_false_alarm": list(self.hours_per_false_alarm), "windows_per_hour": self.windows_per_hour}

    @classmethod
    def from_dict(cls, d: dict) -> "SessionRule":
        return cls(float(d["weight"]), float(d["offset"]), tuple(d["edges"]), tuple(d["hours_per_false_alarm"]),
                   float(d["windows_per_hour"]))


DEFAULT_SESSION_RULE = SessionRule.for_targets(1.0 / 3.0, 0.0)


@dataclass(frozen=True)
class CloneAssessment:
    score: float | None  # sigmoid(llr) in [0, 1]; None when unavailable
    level: str  # none | low | medium | high | unavailable
    speaker: str | None  # the speaker the evidence is about
    evidence: dict = field(default_factory=dict)
    llr: float | None = None
    session: SessionRule | None = field(default=None, repr=False, compare=False)

    @property
    def available(self) -> bool:
        return self.level != UNAVAILABLE

    def as_dict(self) -> dict:
        return {"score": None if self.score is None else round(self.score, 4), "level": self.level,
                "speaker": self.speaker, "llr": None if self.llr is None else round(self.llr, 3),
                "evidence": self.evidence}


def level_for(llr: float, edges: tuple[float, float, float] = DEFAULT_LEVEL_EDGES) -> str:
    return LEVELS[sum(llr >= e for e in edges)]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


@dataclass(frozen=True)
class SpeakerStats:
    """A speaker's genuine reference: countermeasure scores and nearest-genuine cosines."""

    cm_mean: float | None = None
    cm_std: float | None = None
    emb_mean: float | None = None
    emb_std: float | None = None

    def as_dict(self) -> dict:
        return {"cm": None if self.cm_mean is None else [self.cm_mean, self.cm_std],
                "emb": None if self.emb_mean is None else [self.emb_mean, self.emb_std]}

    @classmethod
    def from_dict(cls, d: dict) -> "SpeakerStats":
        cm, emb = d.get("cm"), d.get("emb")
        return cls(*(cm or (None, None)), *(emb or (None, None)))


def shrunk_std(values: np.ndarray, pooled: float, floor: float, prior_n: int = 5) -> float:
    """Std of a few values shrunk towards the pooled std (``prior_n`` pseudo-observations)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    var = float(v.var(ddof=1)) if n > 1 else 0.0
    return max(floor, math.sqrt(((n - 1) * var + prior_n * pooled ** 2) / max(1, n - 1 + prior_n)))


def evidence_values(target: SpeakerScore, stats: SpeakerStats | None, band: tuple[float, float] | None,
                    cm: float | None) -> dict[str, float]:
    """The evidence about ``target`` (training and inference share this); missing ones are absent."""
    v: dict[str, float] = {}
    if cm is not None:
        v["cm"] = float(np.clip(cm, -LLR_CLIP, LLR_CLIP))
        if stats is not None and stats.cm_mean is not None:
            v["cm_speaker"] = float(np.clip((cm - stats.cm_mean) / stats.cm_std, -LLR_CLIP, LLR_CLIP))
    if stats is not None and stats.emb_mean is not None and target.best_genuine is not None:
        v["emb_speaker"] = float(np.clip((stats.emb_mean - target.best_genuine) / stats.emb_std, -LLR_CLIP, LLR_CLIP))
    if target.best_clone is not None:
        genuine = target.best_genuine if target.best_genuine is not None else target.score
        v["clone_margin"] = float(target.best_clone - genuine)
    if band is not None:
        v["in_band"] = float(band[0] <= target.score < band[1])
    return v


@dataclass(frozen=True)
class SignedFusion:
    """``llr = intercept + sum_j coef_j * (x_j - mean_j) / scale_j`` with every ``coef_j >= 0``.

    A missing evidence contributes 0 (it sits at the training mean).
    """

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def __post_init__(self):
        if (np.asarray(self.coef) < 0).any():
            raise ValueError("a sign-constrained fusion has no negative weight")

    def contributions(self, values: dict[str, float]) -> dict[str, float]:
        return {f: float(self.coef[j] * (values[f] - self.mean[j]) / self.scale[j])
                for j, f in enumerate(self.features) if f in values and self.coef[j] > 0}

    def llr(self, values: dict[str, float]) -> float:
        return float(np.clip(self.intercept + sum(self.contributions(values).values()), -LLR_CLIP, LLR_CLIP))

    def llr_matrix(self, X: np.ndarray) -> np.ndarray:
        """LLRs of rows of ``X`` (columns = ``features``; NaN = missing)."""
        Z = np.nan_to_num((X - self.mean) / self.scale, nan=0.0)
        return np.clip(self.intercept + Z @ self.coef, -LLR_CLIP, LLR_CLIP)

    def as_dict(self) -> dict:
        return {"features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "SignedFusion":
        return cls(tuple(d["features"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float),
                   np.asarray(d["coef"], float), float(d["intercept"]))


@dataclass(frozen=True)
class TrainedDetector:
    """What ``train_clone_detector`` stores (JSON, no pickles)."""

    countermeasure: object | None  # LfccGmmCountermeasure | CnnCountermeasure
    fusions: dict[str, SignedFusion]  # "known_clones" / "no_known_clones"
    utterance_edges: dict[str, tuple[float, float, float]]  # LLR edges of low / medium / high per fusion
    window_edges: dict[str, tuple[float, float, float]]
    session: SessionRule
    band: tuple[float, float] | None  # the clone band, when it separated in training
    speaker_stats: dict[str, SpeakerStats]
    embedder: dict | None  # the embedder identity the detector was trained with
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"format": DETECTOR_FORMAT, "feature_version": FEATURE_VERSION,
                "cm_feature_version": CM_FEATURE_VERSION, "embedder": self.embedder,
                "countermeasure": self.countermeasure.as_dict() if self.countermeasure else None,
                "fusions": {k: f.as_dict() for k, f in self.fusions.items()},
                "utterance_edges": {k: list(e) for k, e in self.utterance_edges.items()},
                "window_edges": {k: list(e) for k, e in self.window_edges.items()},
                "session": self.session.as_dict(), "band": None if self.band is None else list(self.band),
                "speaker_stats": {k: s.as_dict() for k, s in self.speaker_stats.items()}, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainedDetector":
        """Raises :class:`DetectorRefused` for another format or feature version."""
        if d.get("format") != DETECTOR_FORMAT:
            raise DetectorRefused(f"the clone detector has format {d.get('format')!r}, this voxguard reads format "
                                  f"{DETECTOR_FORMAT}: re-run `voxguard calibrate` to train it again")
        if d.get("feature_version") != FEATURE_VERSION or d.get("cm_feature_version") != CM_FEATURE_VERSION:
            raise DetectorRefused(
                f"the clone detector was trained on feature version {d.get('feature_version')!r} / countermeasure "
                f"features {d.get('cm_feature_version')!r}, this voxguard computes {FEATURE_VERSION} / "
                f"{CM_FEATURE_VERSION}: re-run `voxguard calibrate` to train it again")
        cm = d.get("countermeasure")
        return cls(countermeasure_from_dict(cm) if cm else None,
                   {k: SignedFusion.from_dict(f) for k, f in d["fusions"].items()},
                   {k: tuple(e) for k, e in d["utterance_edges"].items()},
                   {k: tuple(e) for k, e in d["window_edges"].items()},
                   SessionRule.from_dict(d["session"]), None if d.get("band") is None else tuple(d["band"]),
                   {k: SpeakerStats.from_dict(s) for k, s in d.get("speaker_stats", {}).items()},
                   d.get("embedder"), d.get("info", {}))


class DetectorRefused(ValueError):
    """A stored detector this voxguard / this store's embedder cannot use."""


def embedding_stats(table) -> dict[str, tuple[float, float]]:
    """Per speaker: mean and (shrunk) std of its genuine samples' cosine to their nearest other
    genuine sample of the same speaker (leave-one-out)."""
    from .embedders.base import l2_normalise

    if table is None or not len(table.ids):
        return {}
    kinds = np.asarray(table.kinds)
    speakers = np.asarray(table.speakers)
    E = l2_normalise(np.asarray(table.vectors, dtype=np.float64))
    per: dict[str, np.ndarray] = {}
    for s in sorted(set(speakers[kinds == "genuine"].tolist())):
        idx = np.flatnonzero((speakers == s) & (kinds == "genuine"))
        if len(idx) < 2:
            continue
        sims = E[idx] @ E[idx].T
        np.fill_diagonal(sims, -np.inf)
        per[s] = sims.max(1)
    if not per:
        return {}
    pooled = float(np.sqrt(np.mean([v.var(ddof=1) if len(v) > 1 else 0.0 for v in per.values()])))
    return {s: (float(v.mean()), shrunk_std(v, pooled, MIN_STD["emb"])) for s, v in per.items()}


class CloneDetector:
    """Turns search results (and the window audio) into a clone assessment."""

    def __init__(self, thresholds: Thresholds, trained: TrainedDetector | None = None, source: str = "default",
                 available: bool = True, reason: str | None = None,
                 emb_stats: dict[str, tuple[float, float]] | None = None,
                 margin_scale: float = DEFAULT_MARGIN_SCALE, pretrained=None):
        self.thresholds = thresholds
        self.pretrained = pretrained  # an InstalledCountermeasure (voxguard.countermeasures.load), or None
        self._pcm_stats: dict[str, tuple[float, float] | None] = {}
        self._speaker_audio = None  # speaker -> its stored genuine recordings (for countermeasure_speaker)
        self._no_window_evidence = False  # available on the pretrained countermeasure alone
        self.trained = trained
        self.source = source
        self.available = available
        self.reason = reason
        self.margin_scale = margin_scale
        self.session = trained.session if trained else DEFAULT_SESSION_RULE
        self._stats: dict[str, SpeakerStats] = dict(trained.speaker_stats) if trained else {}
        for s, (m, sd) in (emb_stats or {}).items():
            old = self._stats.get(s, SpeakerStats())
            self._stats[s] = SpeakerStats(old.cm_mean, old.cm_std, m, sd)

    @classmethod
    def unavailable(cls, thresholds: Thresholds, reason: str, source: str = "none") -> "CloneDetector":
        return cls(thresholds, source=source, available=False, reason=reason)

    def with_countermeasure(self, pretrained, speaker_audio=None) -> "CloneDetector":
        """This detector with a pretrained countermeasure fused in (utterances: ``check``).  An
        unavailable detector becomes available on the countermeasure alone; ``speaker_audio(name)``
        returns a speaker's stored genuine recordings, for the speaker-relative evidence."""
        if pretrained is None:
            return self
        if not self.available and self.trained is None:
            d = CloneDetector(self.thresholds, source=f"countermeasure {pretrained.name}", pretrained=pretrained)
            d._no_window_evidence = True
        else:
            d = CloneDetector(self.thresholds, self.trained, self.source, self.available, self.reason,
                              margin_scale=self.margin_scale, pretrained=pretrained)
            d._stats, d.session = self._stats, self.session
        d._speaker_audio = speaker_audio
        return d

    # -- the pretrained countermeasure (utterances) ----------------------------------------------------
    def pcm_llr(self, audio: np.ndarray) -> float | None:
        """The pretrained countermeasure's calibrated LLR of a recording: the mean over up to four
        contexts of its voiced audio (None: less voiced audio than the model's minimum)."""
        from .countermeasure import voiced_audio
        from .countermeasures import segments

        cm = self.pretrained
        x = voiced_audio(np.asarray(audio, dtype=np.float32))
        if len(x) < cm.model.min_samples:
            return None
        ctx = segments(x, cm.model.context_samples)
        return float(np.mean(cm.calibration.llr(cm.model.outputs(ctx))))

    def pcm_speaker_stats(self, speaker: str) -> tuple[float, float] | None:
        """Mean and (shrunk) std of the countermeasure LLR of the speaker's own stored genuine audio
        (computed once per speaker): its recordings' voiced parts joined, cut into up to 8 contexts
        (at least the model's minimum each, as a call's voiced audio is); None under 2 contexts."""
        if speaker in self._pcm_stats:
            return self._pcm_stats[speaker]
        from .countermeasure import voiced_audio

        stats = None
        cm = self.pretrained
        if self._speaker_audio is not None:
            parts = [voiced_audio(np.asarray(a, dtype=np.float32)) for a in self._speaker_audio(speaker)]
            x = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
            n = max(cm.model.min_samples, min(cm.model.context_samples, len(x) // 2))
            ctx = [x[i: i + n] for i in range(0, len(x) - n + 1, n)][:8]
            if len(ctx) >= 2:
                vals = cm.calibration.llr(cm.model.outputs(ctx))
                stats = (float(np.mean(vals)), shrunk_std(np.asarray(vals), 1.0, 0.25))
        self._pcm_stats[speaker] = stats
        return stats

    @classmethod
    def for_store(cls, store, thresholds: Thresholds) -> "CloneDetector":
        """The trained detector of the store's newest calibration; else the known-clone default when
        the store holds known clones; else an unavailable detector (with the reason)."""
        if store is None:
            return cls.unavailable(thresholds, "no store")
        cal = store.latest_calibration()
        if cal is not None:
            cid, data, _ = cal
            raw = data.get(DETECTOR_KEY)
            if raw:
                source = f"calibration #{cid}"
                try:
                    trained = TrainedDetector.from_dict(raw)
                    ident = store.embedder
                    if trained.embedder is not None and ident is not None and trained.embedder != ident.as_dict():
                        raise DetectorRefused(
                            f"the clone detector of calibration #{cid} was trained for embedder "
                            f"{trained.embedder.get('name')} ({trained.embedder.get('version')}), the store holds "
                            f"{ident.name} ({ident.version}) embeddings: re-run `voxguard calibrate`")
                    return cls(thresholds, trained=trained, source=source,
                               emb_stats=embedding_stats(store.embeddings()))
                except DetectorRefused as e:
                    log.error("clone detector refused: %s", e)
                    return cls.unavailable(thresholds, str(e), source)
                except (KeyError, TypeError, ValueError) as e:
                    log.error("unreadable clone detector in calibration #%s: %s", cid, e)
                    return cls.unavailable(thresholds, f"the clone detector of calibration #{cid} is unreadable "
                                                       f"({e}): re-run `voxguard calibrate`", source)
        if store.stats().get("clone_samples", 0) > 0:
            return cls(thresholds)
        return cls.unavailable(thresholds, "the store has no known clones and no trained clone detector: add known "
                                           "clones (`voxguard clone ... --enroll` or `enroll add-clone`) and run "
                                           "`voxguard calibrate`")

    @property
    def countermeasure(self):
        return self.trained.countermeasure if self.trained else None

    @property
    def level_edges(self) -> tuple[float, float, float]:
        if self.trained is None:
            return DEFAULT_LEVEL_EDGES
        return self.trained.utterance_edges["no_known_clones"]

    def band(self) -> tuple[float, float] | None:
        return self.trained.band if self.trained else None

    def stats_for(self, speaker: str) -> SpeakerStats | None:
        return self._stats.get(speaker)

    def _target(self, result: SearchResult, claimed: str | None) -> SpeakerScore | None:
        target = None
        if claimed is not None:
            target = next((s for s in result.speakers if s.speaker == claimed), None)
        return target if target is not None else result.best

    def assess(self, result: SearchResult, claimed: str | None = None, audio: np.ndarray | None = None,
               window: bool = False, cm_score: float | None = None) -> CloneAssessment:
        """Assess one utterance (``window=False``: the audio is a whole recording, scored on its
        voiced part) or one daemon window (``window=True``: window operating points)."""
        target = self._target(result, claimed)
        if self.pretrained is not None and not window:
            return self._assess_with_pretrained(result, target, audio)
        if not self.available:
            return CloneAssessment(None, UNAVAILABLE, target.speaker if target else None,
                                   {"detector": self.source, "reason": self.reason}, None, self.session)
        if target is None:
            return CloneAssessment(None, UNAVAILABLE, None, {"detector": self.source,
                                                             "reason": "no enrolled speaker"}, None, self.session)
        evidence: dict = {"centroid_score": round(target.score, 4)}
        if target.best_genuine is not None:
            evidence["best_genuine"] = round(target.best_genuine, 4)
        if target.best_clone is not None:
            evidence["best_clone"] = round(target.best_clone, 4)
        if self.trained is None:
            llr = 0.0
            if target.best_clone is not None:
                genuine = target.best_genuine if target.best_genuine is not None else target.score
                margin = target.best_clone - genuine
                llr = float(np.clip(margin / self.margin_scale, -LLR_CLIP, LLR_CLIP))
                evidence["values"] = {"clone_margin": round(margin, 4)}
                evidence["contributions"] = {"clone_margin": round(llr, 3)}
            evidence["detector"] = self.source
            return CloneAssessment(sigmoid(llr), level_for(llr, DEFAULT_LEVEL_EDGES), target.speaker, evidence,
                                   llr, self.session)
        cm = cm_score
        if cm is None and audio is not None and self.countermeasure is not None and len(audio):
            cm = self.countermeasure.score(audio) if window else self.countermeasure.score_recording(audio)
        values = evidence_values(target, self.stats_for(target.speaker), self.band(), cm)
        name = "known_clones" if "clone_margin" in values else "no_known_clones"
        fusion = self.trained.fusions[name]
        contrib = fusion.contributions(values)
        llr = fusion.llr(values)
        edges = (self.trained.window_edges if window else self.trained.utterance_edges)[name]
        evidence.update(values={k: round(v, 4) for k, v in values.items()},
                        contributions={k: round(v, 3) for k, v in contrib.items()},
                        intercept=round(fusion.intercept, 3), fusion=name, detector=self.source)
        return CloneAssessment(sigmoid(llr), level_for(llr, edges), target.speaker, evidence, llr, self.session)

    def _assess_with_pretrained(self, result: SearchResult, target: SpeakerScore | None,
                                audio: np.ndarray | None) -> CloneAssessment:
        """Fusion with the pretrained countermeasure: a sum of non-negative-weighted evidence LLRs
        (each term can only push towards "clone" in its own direction):

        * ``countermeasure`` — its calibrated LLR on the recording (weight 1);
        * ``countermeasure_speaker`` — the same relative to the speaker's own stored genuine
          recordings, ``(llr - mean) / std`` (weight :data:`PCM_SPEAKER_WEIGHT`);
        * the store's own evidence — the trained detector's fused LLR, or the known-clone margin
          default — as one term ``store_detector`` (weight 1).

        Levels: the countermeasure calibration's edges (its false-alarm rates on genuine audio)."""
        cm = self.pretrained
        evidence: dict = {"detector": self.source, "countermeasure": cm.name}
        pcm = self.pcm_llr(audio) if audio is not None and len(audio) else None
        if pcm is None:
            evidence["reason"] = (f"less voiced audio than the countermeasure's minimum "
                                  f"({cm.model.min_samples / 16000:g} s): no verdict")
        values: dict[str, float] = {}
        contrib: dict[str, float] = {}
        if pcm is not None:
            values["countermeasure"] = round(pcm, 4)
            contrib["countermeasure"] = round(pcm, 3)
        if target is not None and pcm is not None:
            st = self.pcm_speaker_stats(target.speaker)
            if st is not None:
                z = float(np.clip((pcm - st[0]) / st[1], -LLR_CLIP, LLR_CLIP))
                values["countermeasure_speaker"] = round(z, 4)
                contrib["countermeasure_speaker"] = round(max(0.0, PCM_SPEAKER_WEIGHT * z), 3)
        store_part = None
        if target is not None and not getattr(self, "_no_window_evidence", False) and self.available:
            base = CloneDetector(self.thresholds, self.trained, self.source, True, margin_scale=self.margin_scale)
            base._stats = self._stats
            a = base.assess(result, target.speaker, audio, window=False)
            store_part = a
            if a.llr is not None and (self.trained is not None or a.evidence.get("contributions")):
                contrib["store_detector"] = round(a.llr, 3)
                evidence["store_detector"] = {k: a.evidence[k] for k in ("values", "contributions", "fusion")
                                              if k in a.evidence}
        if not contrib:
            return CloneAssessment(None, UNAVAILABLE, target.speaker if target else None, evidence, None,
                                   self.session)
        llr = float(np.clip(sum(contrib.values()), -LLR_CLIP, LLR_CLIP))
        if target is not None:
            evidence["centroid_score"] = round(target.score, 4)
        evidence.update(values=values, contributions=contrib)
        level = cm.calibration.level(llr) if pcm is not None else (store_part.level if store_part else UNAVAILABLE)
        return CloneAssessment(sigmoid(llr), level, target.speaker if target else None, evidence, llr, self.session)

    @single_threaded_blas
    def assess_batch(self, results: list[SearchResult], claimed: list[str | None],
                     audio: list[np.ndarray] | None = None, window: bool = False) -> list[CloneAssessment]:
        """:meth:`assess` of each result, batched: the countermeasure scores every audio in one
        vectorised call (``window=True``: daemon windows, already voiced — no VAD; ``window=False``:
        recordings, on their voiced part) and each fusion maps all its rows with one
        :meth:`SignedFusion.llr_matrix`.  Equal to the serial :meth:`assess` (to float rounding)."""
        n = len(results)
        audio = list(audio) if audio is not None else [None] * n
        if not self.available or self.trained is None or (self.pretrained is not None and not window):
            return [self.assess(r, c, a, window) for r, c, a in zip(results, claimed, audio)]
        targets = [self._target(r, c) for r, c in zip(results, claimed)]
        cms: list[float | None] = [None] * n
        cm_model = self.countermeasure
        todo = [i for i in range(n) if targets[i] is not None and audio[i] is not None and len(audio[i])]
        if cm_model is not None and todo:
            from .countermeasure import voiced_audio

            clips = [audio[i] if window else voiced_audio(audio[i]) for i in todo]
            for i, v in zip(todo, cm_model.score_batch(clips)):
                cms[i] = float(v)
        out: list[CloneAssessment | None] = [None] * n
        by_fusion: dict[str, list[tuple[int, dict]]] = {}
        for i, target in enumerate(targets):
            if target is None:
                out[i] = self.assess(results[i], claimed[i])  # unavailable: no enrolled speaker
                continue
            values = evidence_values(target, self.stats_for(target.speaker), self.band(), cms[i])
            by_fusion.setdefault("known_clones" if "clone_margin" in values else "no_known_clones", []).append(
                (i, values))
        for name, rows in by_fusion.items():
            fusion = self.trained.fusions[name]
            X = np.array([[v.get(f, np.nan) for f in fusion.features] for _, v in rows], dtype=np.float64)
            llrs = fusion.llr_matrix(X)
            Z = (X - fusion.mean) / fusion.scale * fusion.coef
            used = [j for j, f in enumerate(fusion.features) if fusion.coef[j] > 0]
            edges = (self.trained.window_edges if window else self.trained.utterance_edges)[name]
            for (i, values), llr, z in zip(rows, llrs.tolist(), Z):
                target = targets[i]
                evidence: dict = {"centroid_score": round(target.score, 4)}
                if target.best_genuine is not None:
                    evidence["best_genuine"] = round(target.best_genuine, 4)
                if target.best_clone is not None:
                    evidence["best_clone"] = round(target.best_clone, 4)
                contrib = {fusion.features[j]: round(float(z[j]), 3) for j in used if fusion.features[j] in values}
                evidence.update(values={k: round(v, 4) for k, v in values.items()}, contributions=contrib,
                                intercept=round(fusion.intercept, 3), fusion=name, detector=self.source)
                out[i] = CloneAssessment(sigmoid(llr), level_for(llr, edges), target.speaker, evidence, llr,
                                         self.session)
        return out
