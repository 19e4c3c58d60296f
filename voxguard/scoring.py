"""Speaker scoring and the calibration every decision reads.

A :class:`Calibration` holds the scoring backend (:mod:`voxguard.backend`) and one
calibrated LLR map per trial type and band (:mod:`voxguard.llr`): a 1.5 s window, a
session of ``n`` windows, an utterance against a speaker model, an utterance against an
utterance — each in the wide and the telephone band.  It comes from the store's newest
calibration (``voxguard calibrate``) or, for a store never calibrated, from the default
shipped in the package for the bundled model (:data:`DEFAULT_CALIBRATIONS`, made by
``scripts/make_default_calibration.sh`` on the AN4 training split with raw cosine), and
says which in :attr:`Calibration.source` and :attr:`Calibration.notice`.  An embedder
with neither gets :meth:`Calibration.uncalibrated`: scores, but no decision.

:class:`SpeakerScorer` ranks enrolled speakers for query embeddings of one trial type
and band and attaches each score's LLR and the raw cosine to the band's speaker model.

:class:`Thresholds` keeps the utterance-level operating point and clone band in backend
score units for the clone detector (:mod:`voxguard.clone_detection`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np

from .backend import ScoreBackend, backend_from_calibration
from .bands import WIDE
from .blas import single_threaded_blas
from .errors import StoreError
from .index import Neighbor, SearchResult, SpeakerScore
from .llr import SessionCalibration, TrialCalibration
from .store import SpeakerStore

DEFAULT_CALIBRATIONS = {"resemblyzer": "default_calibration_resemblyzer.json"}
"""Shipped default calibrations (package data in ``voxguard/data``), per embedder name;
each file records the exact embedder identity it was measured with."""


@dataclass(frozen=True)
class Thresholds:
    accept: float  # utterance vs speaker model: same speaker when the backend score is >= accept
    source: str  # "default ..." or "calibration #<id>"
    # Clone band (from calibration, when the store had clones): a speaker score in
    # [accept, clone_upper) is accepted but lies where known clones of the speaker still
    # score — at or above clone_upper at most the target rate of clones reach.
    clone_upper: float | None = None
    backend: str = "cosine"  # the score units: the scoring backend the thresholds were set for
    eer_threshold: float | None = None  # same/different-speaker equal-error point (calibrated)

    def as_dict(self) -> dict:
        return asdict(self)


def thresholds_from_calibration(cid: int, data: dict) -> Thresholds | None:
    th = data.get("thresholds", {})
    if "accept" not in th:
        return None
    clone_upper = th.get("clone_upper")
    eer_t = th.get("eer_threshold")
    return Thresholds(float(th["accept"]), f"calibration #{cid}",
                      None if clone_upper is None else float(clone_upper),
                      str(th.get("backend", "cosine")), None if eer_t is None else float(eer_t))


@dataclass(frozen=True)
class Calibration:
    """What decisions read: backend, LLR maps per (trial type, band), open-set rate."""

    source: str  # "calibration #12", "default (...)" or "uncalibrated"
    backend: ScoreBackend | None = None  # None: raw cosine
    trials: dict = field(default_factory=dict)  # (trial, band) -> TrialCalibration
    sessions: dict = field(default_factory=dict)  # band -> SessionCalibration
    open_set_alpha: float = 0.02
    utterance_bins: dict = field(default_factory=dict)  # band -> utterance calibrations by window count
    thresholds: Thresholds | None = None
    notice: str | None = None  # why this calibration (and not the store's own) is in use

    @property
    def available(self) -> bool:
        return bool(self.trials)

    @property
    def backend_name(self) -> str:
        return "cosine" if self.backend is None else self.backend.name

    @classmethod
    def from_record(cls, source: str, data: dict, backend: ScoreBackend | None,
                    thresholds: Thresholds | None = None, notice: str | None = None) -> "Calibration":
        dec = data.get("decisions") or {}
        trials, sessions, bins = {}, {}, {}
        for band, entry in dec.get("bands", {}).items():
            for trial, d in entry.items():
                if trial == "session":
                    sessions[band] = SessionCalibration.from_list(band, d, source)
                elif trial == "utterance_by_windows":
                    bins[band] = SessionCalibration.from_list(band, d, source)
                else:
                    trials[(trial, band)] = TrialCalibration.from_dict(d, source)
        return cls(source, backend, trials, sessions, float(dec.get("open_set_alpha", 0.02)), bins, thresholds,
                   notice)

    @classmethod
    def uncalibrated(cls, embedder_name: str | None, notice: str) -> "Calibration":
        th = Thresholds(float("inf"), "uncalibrated")
        return cls("uncalibrated", None, {}, {}, 0.02, {}, th, notice)

    def trial(self, trial: str, band: str = WIDE, windows: int | None = None) -> TrialCalibration | None:
        """The calibration of ``trial`` in ``band`` — for an ``utterance`` of ``windows``
        windows, the one calibrated for recordings of that length when there is one; the
        wide band's when the band was not calibrated (its label says so).  ``None`` when
        uncalibrated."""
        if trial == "session":
            raise ValueError("use session(band, windows) for session trials")
        if trial == "utterance" and windows is not None:
            bins = self.utterance_bins.get(band) or (self.utterance_bins.get(WIDE) if (trial, band) not in
                                                     self.trials else None)
            if bins is not None and bins.by_windows:
                return bins.for_windows(windows)
        return self.trials.get((trial, band)) or self.trials.get((trial, WIDE))

    def session(self, windows: int, band: str = WIDE) -> TrialCalibration | None:
        """Session calibration for the mean of ``windows`` window scores; falls back to the
        window calibration when sessions were not calibrated."""
        sc = self.sessions.get(band) or self.sessions.get(WIDE)
        if sc is None or not sc.by_windows:
            return self.trial("window", band)
        return sc.for_windows(windows)

    def summary(self) -> dict:
        """What a client is told about the calibration in use."""
        out = {"source": self.source, "backend": self.backend_name, "open_set_alpha": self.open_set_alpha,
               "available": self.available, "notice": self.notice}
        out["trials"] = {f"{t}/{b}": {"accept_llr": round(c.accept_llr, 4), "far": round(c.far, 4),
                                      "frr": round(c.frr, 4), "eer": round(c.eer, 4), "cllr": round(c.cllr, 4)}
                         for (t, b), c in sorted(self.trials.items())}
        return out


def shipped_default(identity) -> tuple[dict | None, str]:
    """The shipped default record for ``identity`` (an EmbedderIdentity or its dict), or
    ``None`` and why not."""
    ident = identity.as_dict() if hasattr(identity, "as_dict") else dict(identity or {})
    name = ident.get("name")
    fname = DEFAULT_CALIBRATIONS.get(name or "")
    if fname is None:
        return None, f"no default calibration is shipped for the {name} embedder"
    try:
        record = json.loads(resources.files("voxguard.data").joinpath(fname).read_text())
    except (OSError, ValueError) as e:
        return None, f"the shipped default calibration {fname} is unreadable ({e})"
    if record.get("embedder") != ident:
        return None, (f"the shipped default calibration was measured with {record.get('embedder')}, "
                      f"not {ident}")
    return record, ""


def default_calibration(identity, why: str) -> Calibration:
    """The shipped default for ``identity``, else :meth:`Calibration.uncalibrated`."""
    record, missing = shipped_default(identity)
    name = (identity.as_dict() if hasattr(identity, "as_dict") else dict(identity or {})).get("name")
    if record is None:
        return Calibration.uncalibrated(name, f"{why}; {missing}: decisions need 'voxguard calibrate'")
    src = f"default:{name}"
    th = record["thresholds"]
    return Calibration.from_record(src, record, None,
                                   Thresholds(float(th["accept"]), src, None, "cosine", th.get("eer_threshold")),
                                   f"{why}: using the default calibration shipped for {name} "
                                   f"({record.get('created_from', 'measured on AN4')})")


def load_calibration(store: SpeakerStore | None, identity=None) -> Calibration:
    """The store's newest calibration for its embedder, else the shipped default."""
    if store is not None and store.embedder is not None:
        identity = store.embedder
        cal = store.latest_calibration()
        if cal is not None:
            cid, data, blob = cal
            th = thresholds_from_calibration(cid, data)
            if data.get("decisions"):
                return Calibration.from_record(f"calibration #{cid}", data, backend_from_calibration(blob), th)
            return default_calibration(identity, f"calibration #{cid} predates per-trial calibration "
                                                 f"(run 'voxguard calibrate' again)")
        return default_calibration(identity, "the store was never calibrated")
    if identity is None:
        raise StoreError("no store and no embedder: nothing to calibrate against")
    return default_calibration(identity, "no store")


def calibration_for(store: SpeakerStore | None, embedder_name: str | None = None
                    ) -> tuple[Thresholds, ScoreBackend | None]:
    """Utterance thresholds (backend score units) and backend of the calibration in use."""
    if store is None or store.embedder is None:
        cal = Calibration.uncalibrated(embedder_name, "no store")
    else:
        cal = load_calibration(store)
    return cal.thresholds or Thresholds(float("inf"), cal.source), cal.backend


def thresholds_for(store: SpeakerStore | None, embedder_name: str | None = None) -> Thresholds:
    """The utterance thresholds of the calibration in use (backend score units)."""
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

    The backend of the calibration transforms the queries and the band's speaker
    models, scores them (AS-normalised against its cohort when trained so) and ranks
    speakers by that score; each :class:`SpeakerScore` also carries the score's LLR
    under the trial type's calibration and the raw cosine to the speaker model.
    ``best_genuine``/``best_clone`` and the neighbours are raw cosines to the nearest
    stored samples (evidence, independent of the backend).
    """

    def __init__(self, index, thresholds: Thresholds | None = None, backend: ScoreBackend | None = None,
                 calibration: Calibration | None = None):
        self.index = index
        if calibration is None:
            calibration = Calibration("explicit", backend, thresholds=thresholds)
        self.calibration = calibration
        self.backend = calibration.backend
        self.thresholds = thresholds or calibration.thresholds or Thresholds(float("inf"), calibration.source)
        self._models: dict[str, object] = {}

    @classmethod
    def for_store(cls, store: SpeakerStore, index) -> "SpeakerScorer":
        cal = load_calibration(store)
        return cls(index, cal.thresholds, cal.backend, cal)

    @property
    def name(self) -> str:
        return "cosine" if self.backend is None else self.backend.name

    @property
    def n_speakers(self) -> int:
        return self.index.n_speakers

    def _prepared(self, band: str):
        if band not in self._models:
            names = self.index.speaker_names[: self.index.n_speakers]
            models = self.index.models(band)[: self.index.n_speakers]
            self._models[band] = models if self.backend is None else self.backend.prepare_models(models, names)
        return self._models[band]

    @single_threaded_blas
    def score_all(self, queries, band: str = WIDE) -> np.ndarray:
        """Scores of every query against every enrolled speaker, ``[n, n_speakers]``
        (columns in ``index.speaker_names`` order)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if self.index.n_speakers == 0:
            return np.zeros((len(q), 0))
        if self.backend is None:
            return q @ self._prepared(band).T
        return self.backend.score(q, self._prepared(band))

    @single_threaded_blas
    def speaker_score(self, query, speaker: str, band: str = WIDE) -> float | None:
        """One query's score against one enrolled speaker (e.g. a claimed speaker outside
        the top-k), in the same units as ``search``; ``None`` for an unknown speaker."""
        col = self.column(speaker)
        if col is None:
            return None
        q = np.atleast_2d(np.asarray(query, dtype=np.float32))
        model = self.index.models(band)[col: col + 1]
        if self.backend is None:
            return float((q @ model.T)[0, 0])
        return float(self.backend.score(q, model, [speaker])[0, 0])

    def column(self, speaker: str) -> int | None:
        try:
            col = self.index.speaker_names.index(speaker)
        except ValueError:
            return None
        return col if col < self.index.n_speakers else None

    def llr(self, scores, trial: str = "utterance", band: str = WIDE, windows: int | None = None):
        cal = self.calibration.trial(trial, band, windows)
        return None if cal is None else cal.llr(scores)

    @single_threaded_blas
    def search(self, queries, k: int = 5, neighbors: int = 32, trial: str = "utterance",
               band: str = WIDE, scores: np.ndarray | None = None, windows: int | None = None) -> list[SearchResult]:
        """Rank enrolled speakers for each row of ``queries`` (L2-normalised embeddings)
        by backend score; ``scores`` may pass :meth:`score_all` output already computed."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(q) == 0:
            return []
        ds, rows = self.index.neighbor_rows(q, neighbors)
        nbs = self.index.neighbor_lists(ds, rows)
        if self.index.n_speakers == 0:
            return [SearchResult([], nb) for nb in nbs]
        if scores is None:
            scores = self.score_all(q, band)
        cosines = scores if self.backend is None else q @ self.index.models(band)[: self.index.n_speakers].T
        cal = self.calibration.trial(trial, band, windows)
        k_spk = min(k, scores.shape[1])
        part = np.argpartition(-scores, k_spk - 1, axis=1)[:, :k_spk] if k_spk < scores.shape[1] else \
            np.tile(np.arange(scores.shape[1]), (len(q), 1))
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1,
                                                    kind="stable"), axis=1)
        # everything per (window, ranked speaker) as arrays, then plain lists: no per-window numpy calls
        best_g, best_c = _best_by_speaker_rows(self.index, ds, rows)
        top = np.take_along_axis(scores, order, axis=1)
        g = _none_for_nan(np.take_along_axis(best_g, order, axis=1).tolist())
        c = _none_for_nan(np.take_along_axis(best_c, order, axis=1).tolist())
        llrs = cal.llr(top).tolist() if cal is not None else [[None] * k_spk] * len(q)
        cos = np.take_along_axis(np.asarray(cosines), order, axis=1).tolist()
        names = self.index.speaker_names
        spk = [[names[j] for j in row] for row in order.tolist()]
        return [SearchResult([SpeakerScore(spk[r][j], v, g[r][j], c[r][j], llrs[r][j], cos[r][j])
                              for j, v in enumerate(row)], nbs[r])
                for r, row in enumerate(top.tolist())]


def _best_by_speaker_rows(index, ds: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window and speaker, the cosine to its nearest genuine / clone sample among the
    neighbours ``[n, n_names]`` each, NaN where none is among them (vectorised
    :func:`_best_by_speaker`: the first, i.e. best, neighbour of a speaker and kind wins)."""
    n, k = rows.shape
    best = np.full((2, n, max(len(index.speaker_names), 1)), np.nan)
    r_all = np.arange(n)
    for j in range(k - 1, -1, -1):  # worst first: the best neighbour is written last
        ok = rows[:, j] >= 0
        sample = rows[ok, j]
        best[index.sample_kind[sample].astype(np.intp), r_all[ok], index.sample_speaker[sample]] = ds[ok, j]
    return best[0], best[1]


def _none_for_nan(rows: list[list[float]]) -> list[list[float | None]]:
    return [[None if v != v else v for v in row] for row in rows]


def _best_by_speaker(neighbors: list[Neighbor]) -> tuple[dict[str, float], dict[str, float]]:
    best_g: dict[str, float] = {}
    best_c: dict[str, float] = {}
    for nb in neighbors:  # best first
        (best_c if nb.kind == "clone" else best_g).setdefault(nb.speaker, nb.score)
    return best_g, best_c
