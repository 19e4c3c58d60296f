"""Decision thresholds: calibrated ones from the store when ``voxguard calibrate`` has
run, else documented per-embedder defaults.

The defaults were measured on AN4 (948 utterances, 74 speakers) with utterance
embeddings: the cosine at the equal-error point of same- vs different-speaker pairs
(resemblyzer: EER 12.7 % at 0.69).  They are a starting point only; run
``voxguard calibrate`` on your own speakers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .store import SpeakerStore

DEFAULT_ACCEPT = {"resemblyzer": 0.70, "titanet": 0.60}
FALLBACK_ACCEPT = 0.70


@dataclass(frozen=True)
class Thresholds:
    accept: float  # same speaker when the score is >= accept
    source: str  # "default" or "calibration #<id>"
    # clone band (from calibration): scores between clone_upper and accept are suspicious
    clone_upper: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_thresholds(embedder_name: str | None) -> Thresholds:
    return Thresholds(DEFAULT_ACCEPT.get(embedder_name or "", FALLBACK_ACCEPT), "default")


def thresholds_for(store: SpeakerStore | None, embedder_name: str | None = None) -> Thresholds:
    """The newest calibration's thresholds for the store's embedder, else the defaults."""
    if store is not None:
        cal = store.latest_calibration()
        if cal is not None:
            cid, data, _ = cal
            th = data.get("thresholds", {})
            if "accept" in th:
                return Thresholds(float(th["accept"]), f"calibration #{cid}", th.get("clone_upper"))
        if embedder_name is None and store.embedder is not None:
            embedder_name = store.embedder.name
    return default_thresholds(embedder_name)


class SpeakerScorer:
    """Scores query embeddings against the enrolled speakers of one index.

    Today: raw cosine against genuine centroids (``SpeakerIndex.search``).  The
    calibration step may store a trained scoring backend (whitening / LDA / AS-norm);
    ``for_store`` then loads it, and ``search`` returns the backend's scores in the
    same :class:`~voxguard.index.SearchResult` shape, so callers never change.
    """

    def __init__(self, index, thresholds: Thresholds, backend=None):
        self.index = index
        self.thresholds = thresholds
        self.backend = backend

    @classmethod
    def for_store(cls, store: SpeakerStore, index) -> "SpeakerScorer":
        return cls(index, thresholds_for(store))

    @property
    def name(self) -> str:
        return "cosine" if self.backend is None else getattr(self.backend, "name", "backend")

    def search(self, queries, k: int = 5, neighbors: int = 32):
        """Rank enrolled speakers for each row of ``queries`` (L2-normalised embeddings)."""
        return self.index.search(queries, k=k, neighbors=neighbors)
