"""The store-derived state the daemon scores against — index, scorer, calibration and
clone detector of one store revision — loaded together and swapped as one object on
reload.  A stream keeps the snapshot it started with until it ends (its scores, running
means and thresholds stay in one set of units); a reload applies to streams started
after it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from voxguard.bands import WIDE
from voxguard.clone_detection import CloneDetector
from voxguard.embedders.base import EmbedderIdentity
from voxguard.index import SpeakerIndex
from voxguard.llr import TrialCalibration
from voxguard.errors import StoreMissing, StoreReadOnly
from voxguard.scoring import Calibration, SpeakerScorer, Thresholds, load_calibration
from voxguard.store import StoreLocation, parse_store_location

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ScoringSnapshot:
    thresholds: Thresholds
    detector: CloneDetector
    scorer: SpeakerScorer | None = None  # None: no store, or no enrolled speaker yet
    calibration: Calibration | None = None
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

    def trial(self, trial: str, band: str = WIDE) -> TrialCalibration | None:
        return None if self.calibration is None else self.calibration.trial(trial, band)

    def session(self, windows: int, band: str = WIDE) -> TrialCalibration | None:
        return None if self.calibration is None else self.calibration.session(windows, band)

    def open_set_llr(self, trial: str, band: str = WIDE, windows: int | None = None) -> float | None:
        """The LLR the best of the enrolled speakers must reach to be named (open set)."""
        cal = self.session(windows, band) if trial == "session" else self.trial(trial, band)
        if cal is None:
            return None
        return cal.open_set_threshold(max(1, self.enrolled), self.calibration.open_set_alpha)

    def info(self) -> dict:
        return {"enrolled_speakers": self.enrolled, "samples": self.samples, "revision": self.revision,
                "store_id": self.store_id, "store": self.store_path,
                "scorer": self.scorer.name if self.scorer else None,
                "on_gpu": bool(self.scorer and getattr(self.scorer.index, "on_gpu", False))}

    def column(self, speaker: str) -> int | None:
        return self._rows.get(speaker)


def load_snapshot(location: StoreLocation | str | Path, identity: EmbedderIdentity,
                  use_gpu: bool | None = None) -> ScoringSnapshot:
    """Read the store at ``location`` (and its index: the file beside an SQLite store,
    rebuilt if stale; built in memory from a PostgreSQL store), in one consistent read.

    A missing store gives an empty snapshot (no enrolled speakers yet).  A store made with
    another embedder raises :class:`~voxguard.errors.EmbedderMismatch`; an unreachable
    database :class:`~voxguard.errors.StoreError`.
    """
    location = parse_store_location(location)
    try:
        try:
            store = location.open(create=False, readonly=location.engine != "sqlite")
        except StoreReadOnly as e:  # a store on a read-only mount is served as it is
            log.info("%s", e.message)
            store = location.open(create=False, readonly=True)
    except StoreMissing:
        log.warning("no store at %s yet: serving with no enrolled speakers", location)
        cal = load_calibration(None, identity)
        th = cal.thresholds or Thresholds(float("inf"), cal.source)
        return ScoringSnapshot(th, CloneDetector.unavailable(th, "no store"), calibration=cal, store_path=str(location))
    with store, store.consistent_read():
        store.check_embedder(identity)
        index = SpeakerIndex.for_store(store, use_gpu=use_gpu)
        cal = load_calibration(store, identity)
        if cal.notice:
            log.warning("%s", cal.notice)
        scorer = SpeakerScorer(index, cal.thresholds, cal.backend, cal)
        detector = CloneDetector.for_store(store, scorer.thresholds)
        rows = {name: i for i, name in enumerate(index.speaker_names[: index.n_speakers])}
        return ScoringSnapshot(scorer.thresholds, detector, scorer if index.n_speakers else None, cal, str(location),
                               store.store_id, store.revision, index.n_samples, rows)
