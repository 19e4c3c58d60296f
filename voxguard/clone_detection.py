"""Clone suspicion for one embedded window or utterance: one score in [0, 1] from three
kinds of evidence.

* **known clones** — among the nearest stored samples, the best score to a known clone
  of the identified (or claimed) speaker versus the best score to one of its genuine
  samples.  A clone nearer than every genuine sample is strong evidence.
* **clone band** — the score against the speaker's genuine model is accepted but lies
  in ``[accept, clone_upper)``, where known clones of the speaker still score (the
  calibrated ``Thresholds.clone_upper``, else the edge the trained detector estimated:
  the score 1 % of its training clones reach).
* **countermeasure** — an LFCC-GMM synthetic-speech detector
  (:mod:`voxguard.countermeasure`) on the audio itself, which needs no known clone.

With a trained detector in the newest calibration record (``data["clone_detector"]``,
written by :func:`voxguard.enroll.clone_training.train_clone_detector`), a logistic
regression fuses these into the clone score, and the levels low / medium / high start
at the fused scores of 10 % / 3 % / 1 % false alarms on the training speakers' genuine
audio.  Without one, the documented default applies: the score is
``sigmoid((best_clone - best_genuine) / 0.05)`` when the speaker has known clones among
the neighbours, else 0; levels none < 0.25 <= low < 0.5 <= medium < 0.75 <= high.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .countermeasure import LfccGmmCountermeasure
from .index import SearchResult, SpeakerScore
from .scoring import Thresholds

log = logging.getLogger(__name__)

LEVELS = ("none", "low", "medium", "high")
DEFAULT_LEVEL_EDGES = (0.25, 0.5, 0.75)
DEFAULT_MARGIN_SCALE = 0.05
DETECTOR_KEY = "clone_detector"
"""Key of the trained detector in a calibration record's data."""
DETECTOR_FORMAT = 1
FUSION_FEATURES = ("centroid_score", "in_band", "has_clone", "clone_margin", "cm_llr")
"""Inputs of the fusion; the ``no_audio`` fusion uses all but ``cm_llr``."""
CM_CLIP = 30.0


@dataclass(frozen=True)
class CloneAssessment:
    score: float  # in [0, 1]
    level: str  # none | low | medium | high
    speaker: str | None  # the speaker the evidence is about
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"score": round(self.score, 4), "level": self.level, "speaker": self.speaker,
                "evidence": self.evidence}


def level_for(score: float, edges: tuple[float, float, float] = DEFAULT_LEVEL_EDGES) -> str:
    return LEVELS[sum(score >= e for e in edges)]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


def fusion_features(centroid_score: float, best_genuine: float | None, best_clone: float | None,
                    band: tuple[float, float] | None, cm_llr: float | None) -> dict[str, float]:
    """The fusion's inputs for one target speaker (training and inference share this)."""
    genuine = best_genuine if best_genuine is not None else centroid_score
    has_clone = best_clone is not None
    f = {"centroid_score": float(centroid_score),
         "in_band": float(band is not None and band[0] <= centroid_score < band[1]),
         "has_clone": float(has_clone),
         "clone_margin": float(best_clone - genuine) if has_clone else 0.0}
    if cm_llr is not None:
        f["cm_llr"] = float(np.clip(cm_llr, -CM_CLIP, CM_CLIP))
    return f


@dataclass(frozen=True)
class LinearFusion:
    """Logistic regression over standardised features (inference side)."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def score(self, values: dict[str, float]) -> float:
        x = np.array([values[f] for f in self.features], dtype=np.float64)
        return sigmoid(float(((x - self.mean) / self.scale) @ self.coef + self.intercept))

    def as_dict(self) -> dict:
        return {"features": list(self.features), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, d: dict) -> "LinearFusion":
        return cls(tuple(d["features"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float),
                   np.asarray(d["coef"], float), float(d["intercept"]))


@dataclass(frozen=True)
class TrainedDetector:
    """What ``train_clone_detector`` stores: countermeasure, fusions, band edge, levels."""

    countermeasure: LfccGmmCountermeasure | None
    fusion: LinearFusion  # with audio (cm_llr)
    fusion_no_audio: LinearFusion
    level_edges: tuple[float, float, float]
    band_upper: float | None  # used when the thresholds carry no calibrated clone_upper
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"format": DETECTOR_FORMAT,
                "countermeasure": self.countermeasure.as_dict() if self.countermeasure else None,
                "fusion": self.fusion.as_dict(), "fusion_no_audio": self.fusion_no_audio.as_dict(),
                "level_edges": list(self.level_edges), "band_upper": self.band_upper, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainedDetector":
        if d.get("format") != DETECTOR_FORMAT:
            raise ValueError(f"clone detector format {d.get('format')!r} is not {DETECTOR_FORMAT}")
        cm = d.get("countermeasure")
        return cls(LfccGmmCountermeasure.from_dict(cm) if cm else None, LinearFusion.from_dict(d["fusion"]),
                   LinearFusion.from_dict(d["fusion_no_audio"]), tuple(d["level_edges"]), d.get("band_upper"),
                   d.get("info", {}))


class CloneDetector:
    """Turns search results (and optionally the window audio) into a clone assessment."""

    def __init__(self, thresholds: Thresholds, level_edges=DEFAULT_LEVEL_EDGES,
                 margin_scale: float = DEFAULT_MARGIN_SCALE, trained: TrainedDetector | None = None,
                 source: str = "default"):
        self.thresholds = thresholds
        self.trained = trained
        self.level_edges = tuple(trained.level_edges if trained else level_edges)
        self.margin_scale = margin_scale
        self.source = source

    @classmethod
    def for_store(cls, store, thresholds: Thresholds) -> "CloneDetector":
        """The trained detector of the store's newest calibration, else the documented default."""
        cal = store.latest_calibration() if store is not None else None
        if cal is not None:
            cid, data, _ = cal
            raw = data.get(DETECTOR_KEY)
            if raw:
                try:
                    return cls(thresholds, trained=TrainedDetector.from_dict(raw), source=f"calibration #{cid}")
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("ignoring unreadable clone detector in calibration #%s: %s", cid, e)
        return cls(thresholds)

    @property
    def countermeasure(self) -> LfccGmmCountermeasure | None:
        return self.trained.countermeasure if self.trained else None

    def band(self) -> tuple[float, float] | None:
        """``[accept, clone_upper)``: accepted scores where clones of the speaker still score."""
        upper = self.thresholds.clone_upper
        if upper is None and self.trained is not None:
            upper = self.trained.band_upper
        if upper is None or upper <= self.thresholds.accept:
            return None
        return float(self.thresholds.accept), float(upper)

    def assess(self, result: SearchResult, claimed: str | None = None,
               audio: np.ndarray | None = None) -> CloneAssessment:
        target: SpeakerScore | None = None
        if claimed is not None:
            target = next((s for s in result.speakers if s.speaker == claimed), None)
        if target is None:
            target = result.best
        if target is None:
            return CloneAssessment(0.0, "none", None, {})
        evidence: dict = {"centroid_score": round(target.score, 4)}
        genuine = target.best_genuine if target.best_genuine is not None else target.score
        if target.best_clone is not None:
            evidence.update(best_clone=round(target.best_clone, 4), best_genuine=round(genuine, 4),
                            clone_margin=round(target.best_clone - genuine, 4))
        band = self.band()
        if band is not None:
            evidence["in_clone_band"] = bool(band[0] <= target.score < band[1])
        if self.trained is None:
            score = 0.0
            if target.best_clone is not None:
                score = sigmoid((target.best_clone - genuine) / self.margin_scale)
            evidence["detector"] = self.source
            return CloneAssessment(score, level_for(score, self.level_edges), target.speaker, evidence)
        cm_llr = None
        if audio is not None and self.countermeasure is not None and len(audio):
            cm_llr = self.countermeasure.score_recording(audio)
            evidence["countermeasure_llr"] = round(cm_llr, 3)
        feats = fusion_features(target.score, target.best_genuine, target.best_clone, band, cm_llr)
        fusion = self.trained.fusion if cm_llr is not None else self.trained.fusion_no_audio
        score = fusion.score(feats)
        evidence["detector"] = self.source
        return CloneAssessment(score, level_for(score, self.level_edges), target.speaker, evidence)

    def assess_batch(self, results: list[SearchResult], claimed: list[str | None],
                     audio: list[np.ndarray] | None = None) -> list[CloneAssessment]:
        audio = audio or [None] * len(results)
        return [self.assess(r, c, a) for r, c, a in zip(results, claimed, audio)]
