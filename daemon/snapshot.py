"""The store-derived state the daemon scores against — index, scorer, thresholds and
clone detector of one store revision — loaded together and swapped as one object on
reload, so a batch is always scored against a single consistent revision."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
import numpy as np

from voxguard.clone_detection import CloneDetector
from voxguard.embedders.base import EmbedderIdentity
from voxguard.index import SearchResult, SpeakerIndex
from voxguard.scoring import SpeakerScorer, Thresholds, default_thresholds
from voxguard.errors import StoreMissing
from voxguard.store import StoreLocation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringSnapshot:
    thresholds: Thresholds
    detector: CloneDetector
    scorer: SpeakerScorer | None = None  # None: no store, or no enrolled speaker yet
    store_path: str = ""
    store_id: str | None = None
    revision: int = 0
    samples: int = 0
    _rows: dict = field(default_factory=dict, repr=False)  # speaker -> centroid row

    @property
    def speakers(self) -> frozenset[str]:
        return frozenset(self._rows)

    @property
    def enrolled(self) -> int:
        return len(self._rows)

    def info(self) -> dict:
        return {"enrolled_speakers": self.enrolled, "samples": self.samples, "revision": self.revision,
                "store_id": self.store_id, "store": self.store_path,
                "scorer": self.scorer.name if self.scorer else None,
                "on_gpu": bool(self.scorer and getattr(self.scorer.index, "on_gpu", False))}

    def search(self, vectors: np.ndarray, k: int) -> list[SearchResult]:
        if self.scorer is None:
            return [SearchResult([], []) for _ in range(len(vectors))]
        return self.scorer.search(vectors, k=k)

    def claimed_score(self, vector: np.ndarray, result: SearchResult, claimed: str) -> float | None:
        """The claimed speaker's score: from the ranking when it made the top-k, else the
        scorer's score for that one speaker (same units as the ranking)."""
        for s in result.speakers:
            if s.speaker == claimed:
                return s.score
        row = self._rows.get(claimed)
        if row is None or self.scorer is None:
            return None
        if hasattr(self.scorer, "speaker_score"):
            return self.scorer.speaker_score(vector, claimed)
        return float(np.dot(self.scorer.index.centroids[row], vector))  # the cosine scorer's score


def empty_snapshot(location: StoreLocation, identity: EmbedderIdentity) -> ScoringSnapshot:
    th = default_thresholds(identity.name)
    return ScoringSnapshot(th, CloneDetector(th), store_path=str(location))


def load_snapshot(location: StoreLocation, identity: EmbedderIdentity, use_gpu: bool | None = None) -> ScoringSnapshot:
    """Read the store at ``location`` (and its index: the file beside an SQLite store,
    rebuilt if stale; built in memory from a PostgreSQL store).

    A missing store gives an empty snapshot (no enrolled speakers yet).  A store made with
    another embedder raises :class:`~voxguard.errors.EmbedderMismatch`; an unreachable
    database :class:`~voxguard.errors.StoreError`.
    """
    try:
        store = location.open(create=False, readonly=location.engine != "sqlite")
    except StoreMissing:
        log.warning("no store at %s yet: serving with no enrolled speakers", location)
        return empty_snapshot(location, identity)
    with store, store.consistent_read():
        store.check_embedder(identity)
        index = SpeakerIndex.for_store(store, use_gpu=use_gpu)
        scorer = SpeakerScorer.for_store(store, index)
        detector = CloneDetector.for_store(store, scorer.thresholds)
        rows = {name: i for i, name in enumerate(index.speaker_names[: index.n_speakers])}
        return ScoringSnapshot(scorer.thresholds, detector, scorer if index.n_speakers else None, str(location),
                               store.store_id, store.revision, index.n_samples, rows)
