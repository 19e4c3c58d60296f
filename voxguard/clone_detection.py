"""Clone suspicion for one embedded window or utterance.

Evidence available without calibration (documented defaults):

* **known clones** — among the nearest stored samples, the best score to a known clone
  of the identified (or claimed) speaker versus the best score to one of its genuine
  samples.  A clone nearer than every genuine sample is strong evidence.
* **clone band** (after ``voxguard calibrate``) — the centroid score falls between
  the calibrated clone threshold and the speaker-accept threshold.

The default clone score is ``sigmoid((best_clone - best_genuine) / 0.05)`` when the
speaker has known clones among the neighbours, else 0; levels are
none < 0.25 <= low < 0.5 <= medium < 0.75 <= high.  Calibration replaces this with a
trained fusion (see :class:`CloneDetector`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .index import SearchResult
from .scoring import Thresholds

LEVELS = ("none", "low", "medium", "high")
DEFAULT_LEVEL_EDGES = (0.25, 0.5, 0.75)
DEFAULT_MARGIN_SCALE = 0.05


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


class CloneDetector:
    """Turns search results (and optionally the window audio) into a clone assessment."""

    def __init__(self, thresholds: Thresholds, level_edges=DEFAULT_LEVEL_EDGES,
                 margin_scale: float = DEFAULT_MARGIN_SCALE):
        self.thresholds = thresholds
        self.level_edges = tuple(level_edges)
        self.margin_scale = margin_scale

    @classmethod
    def for_store(cls, store, thresholds: Thresholds) -> "CloneDetector":
        return cls(thresholds)

    def assess(self, result: SearchResult, claimed: str | None = None,
               audio: np.ndarray | None = None) -> CloneAssessment:
        target = None
        if claimed is not None:
            target = next((s for s in result.speakers if s.speaker == claimed), None)
        if target is None:
            target = result.best
        if target is None:
            return CloneAssessment(0.0, "none", None, {})
        evidence: dict = {"centroid_score": round(target.score, 4)}
        score = 0.0
        if target.best_clone is not None:
            genuine = target.best_genuine if target.best_genuine is not None else target.score
            margin = target.best_clone - genuine
            evidence.update(best_clone=round(target.best_clone, 4), best_genuine=round(genuine, 4),
                            clone_margin=round(margin, 4))
            score = 1.0 / (1.0 + math.exp(-margin / self.margin_scale))
        upper = self.thresholds.clone_upper
        if upper is not None:
            evidence["in_clone_band"] = bool(upper <= target.score < self.thresholds.accept)
        return CloneAssessment(score, level_for(score, self.level_edges), target.speaker, evidence)

    def assess_batch(self, results: list[SearchResult], claimed: list[str | None],
                     audio: list[np.ndarray] | None = None) -> list[CloneAssessment]:
        audio = audio or [None] * len(results)
        return [self.assess(r, c, a) for r, c, a in zip(results, claimed, audio)]
