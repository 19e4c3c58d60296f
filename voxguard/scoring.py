"""Decision thresholds and speaker scoring: calibrated ones from the store when
``voxguard calibrate`` has run, else documented per-embedder defaults with raw cosine.

The defaults were measured on AN4 (948 utterances, 74 speakers) with utterance
embeddings: the cosine at the equal-error point of same- vs different-speaker pairs
(resemblyzer: EER 12.7 % at 0.69).  They are a starting point only; run
``voxguard calibrate`` on your own speakers.

A calibration stores a trained scoring backend (see :mod:`voxguard.backend`) and
thresholds in that backend's score units; :class:`SpeakerScorer` applies both, so
``SpeakerScore.score`` and :class:`Thresholds` always agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .backend import ScoreBackend, backend_from_calibration
from .index import Neighbor, SearchResult, SpeakerScore
from .store import SpeakerStore

DEFAULT_ACCEPT = {"resemblyzer": 0.70, "titanet": 0.60}
FALLBACK_ACCEPT = 0.70


@dataclass(frozen=True)
class Thresholds:
    accept: float  # same speaker when the score is >= accept
    source: str  # "default" or "calibration #<id>"
    # Clone band (from calibration, when the store had clones): a speaker score in
    # [accept, clone_upper) is accepted but lies where known clones of the speaker still
    # score — at or above clone_upper at most the target rate of clones reach.
    clone_upper: float | None = None
    backend: str = "cosine"  # the score units: the scoring backend the thresholds were set for
    eer_threshold: float | None = None  # same/different-speaker equal-error point (calibrated)

    def as_dict(self) -> dict:
        return asdict(self)


def default_thresholds(embedder_name: str | None) -> Thresholds:
    return Thresholds(DEFAULT_ACCEPT.get(embedder_name or "", FALLBACK_ACCEPT), "default")


def thresholds_from_calibration(cid: int, data: dict) -> Thresholds | None:
    th = data.get("thresholds", {})
    if "accept" not in th:
        return None
    clone_upper = th.get("clone_upper")
    eer_t = th.get("eer_threshold")
    return Thresholds(float(th["accept"]), f"calibration #{cid}",
                      None if clone_upper is None else float(clone_upper),
                      str(th.get("backend", "cosine")), None if eer_t is None else float(eer_t))


def calibration_for(store: SpeakerStore | None, embedder_name: str | None = None
                    ) -> tuple[Thresholds, ScoreBackend | None]:
    """The newest calibration's thresholds and scoring backend, else the defaults (raw cosine)."""
    if store is not None:
        cal = store.latest_calibration()
        if cal is not None:
            cid, data, blob = cal
            th = thresholds_from_calibration(cid, data)
            if th is not None:
                return th, backend_from_calibration(blob)
        if embedder_name is None and store.embedder is not None:
            embedder_name = store.embedder.name
    return default_thresholds(embedder_name), None


def thresholds_for(store: SpeakerStore | None, embedder_name: str | None = None) -> Thresholds:
    """The newest calibration's thresholds for the store's embedder, else the defaults.

    Calibrated thresholds are in the units of the calibrated backend: compare them with
    :class:`SpeakerScorer` scores (or :func:`pair_score`), not with raw cosines.
    """
    return calibration_for(store, embedder_name)[0]


def pair_score(a: np.ndarray, b: np.ndarray, backend: ScoreBackend | None = None,
               speaker: str | None = None) -> float:
    """Score of embedding ``a`` against embedding ``b`` (e.g. a file against a speaker centroid;
    ``speaker`` names that speaker, whose cohort rows AS-norm then leaves out)."""
    if backend is None:
        return float(np.dot(a, b))
    return float(backend.score_pairs(np.atleast_2d(a), np.atleast_2d(b), None if speaker is None else [speaker])[0])


class SpeakerScorer:
    """Scores query embeddings against the enrolled speakers of one index.

    Without a calibration: raw cosine against genuine centroids (``SpeakerIndex.search``).
    With one, its backend transforms the queries and the index's genuine centroids,
    scores them (AS-normalised against its cohort when trained so) and ranks speakers by
    that score; ``best_genuine``/``best_clone`` and the neighbours stay raw cosines to
    the nearest stored samples (evidence, independent of the backend).
    """

    def __init__(self, index, thresholds: Thresholds, backend: ScoreBackend | None = None):
        self.index = index
        self.thresholds = thresholds
        self.backend = backend
        self._models = None
        if backend is not None and index.n_speakers:
            names = index.speaker_names[: index.n_speakers]
            self._models = backend.prepare_models(index.centroids[: index.n_speakers], names)

    @classmethod
    def for_store(cls, store: SpeakerStore, index) -> "SpeakerScorer":
        th, backend = calibration_for(store)
        return cls(index, th, backend)

    @property
    def name(self) -> str:
        return "cosine" if self.backend is None else self.backend.name

    def score_all(self, queries) -> np.ndarray:
        """Scores of every query against every enrolled speaker, ``[n, n_speakers]``
        (columns in ``index.speaker_names`` order)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if self.backend is None:
            return q @ self.index.centroids[: self.index.n_speakers].T
        return self.backend.score(q, self._models)

    def speaker_score(self, query, speaker: str) -> float | None:
        """One query's score against one enrolled speaker (e.g. a claimed speaker outside
        the top-k), in the same units as ``search``; ``None`` for an unknown speaker."""
        try:
            col = self.index.speaker_names.index(speaker)
        except ValueError:
            return None
        if col >= self.index.n_speakers:
            return None
        return float(self.score_all(query)[0, col])

    def search(self, queries, k: int = 5, neighbors: int = 32) -> list[SearchResult]:
        """Rank enrolled speakers for each row of ``queries`` (L2-normalised embeddings)."""
        if self.backend is None or self._models is None:
            return self.index.search(queries, k=k, neighbors=neighbors)
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(q) == 0:
            return []
        raw = self.index.search(q, k=1, neighbors=neighbors)
        scores = self.score_all(q)
        k_spk = min(k, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k_spk]
        names = self.index.speaker_names
        out = []
        for r, res in enumerate(raw):
            best_g, best_c = _best_by_speaker(res.neighbors)
            spks = [SpeakerScore(names[c], float(scores[r, c]), best_g.get(names[c]), best_c.get(names[c]))
                    for c in top[r]]
            out.append(SearchResult(spks, res.neighbors))
        return out


def _best_by_speaker(neighbors: list[Neighbor]) -> tuple[dict[str, float], dict[str, float]]:
    best_g: dict[str, float] = {}
    best_c: dict[str, float] = {}
    for nb in neighbors:  # best first
        (best_c if nb.kind == "clone" else best_g).setdefault(nb.speaker, nb.score)
    return best_g, best_c
