"""Decisions about whole recordings, for ``identify``, ``verify`` and ``check``.

A :class:`Recognizer` is built once per command (embedder, index, calibration) and then
decides about any number of recordings:

* each recording is assigned its band (:func:`voxguard.bands.detect_band`) and embedded
  as an utterance (many recordings per embedder call);
* :meth:`Recognizer.identify` — open-set identification: the best enrolled speaker is
  named only when its LLR passes the calibration's open-set threshold for the number of
  enrolled speakers; otherwise the decision is ``unknown`` (speaker ``None``);
* :meth:`Recognizer.verify_speaker` — the recording against one enrolled speaker's model
  (trial type ``utterance``);
* :meth:`Recognizer.verify_pair` — one recording against another (trial type ``pair``);
  when either is telephone band, both are compared in the telephone band.

Every result names the calibration (trial type and band) its decision used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import Audio
from .bands import TELEPHONE, WIDE, detect_band, telephone_simulation
from .errors import StoreError, UnknownSpeaker
from .index import SearchResult, SpeakerIndex
from .scoring import Calibration, SpeakerScorer, load_calibration
from .utterance import embed_window_sets, utterance_of

EMBED_FILES_PER_CALL = 16


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


@dataclass
class Embedded:
    """One recording's utterance embedding, band and number of analysis windows."""

    audio: Audio
    band: str
    vector: np.ndarray
    windows: int = 1


class Recognizer:
    def __init__(self, embedder, index: SpeakerIndex | None, calibration: Calibration):
        self.embedder = embedder
        self.index = index
        self.calibration = calibration
        self.scorer = SpeakerScorer(index, calibration.thresholds, calibration.backend, calibration) \
            if index is not None else None

    @classmethod
    def for_store(cls, store, embedder, need_speakers: bool = True) -> "Recognizer":
        index = None
        if store is not None and store.embedder is not None:
            store.check_embedder(embedder.identity)
            index = SpeakerIndex.for_store(store, use_gpu=False)
            if need_speakers and index.n_speakers == 0:
                raise StoreError(f"{store.location} has no enrolled speakers")
        elif need_speakers:
            raise StoreError("the store has no enrolled speakers (enroll speakers first)")
        return cls(embedder, index, load_calibration(store if index is not None else None, embedder.identity))

    # -- embedding ---------------------------------------------------------------------------
    def embed(self, audios: list[Audio], band: str | None = None) -> list[Embedded]:
        """Utterance embeddings of ``audios``, each in its detected band (or ``band``)."""
        out: list[Embedded] = []
        for s in range(0, len(audios), EMBED_FILES_PER_CALL):
            part = audios[s: s + EMBED_FILES_PER_CALL]
            sets = embed_window_sets(self.embedder, [a.samples for a in part])
            for a, w in zip(part, sets):
                out.append(Embedded(a, band or detect_band(a.samples, a.source_rate), utterance_of(w), len(w)))
        return out

    def as_band(self, e: Embedded, band: str) -> Embedded:
        """The same recording embedded in ``band`` (wide audio through the telephone simulation)."""
        if e.band == band or band == WIDE:
            return e
        w = embed_window_sets(self.embedder, [telephone_simulation(e.audio.samples)])[0]
        return Embedded(e.audio, band, utterance_of(w), len(w))

    # -- decisions --------------------------------------------------------------------------
    def _calibrated(self, trial: str, band: str, windows: int | None = None):
        cal = self.calibration.trial(trial, band, windows)
        return cal, (cal.label() if cal is not None else self.calibration.source)

    def search(self, e: Embedded, k: int) -> SearchResult:
        return self.scorer.search(e.vector[None, :], k=k, neighbors=max(16, 4 * k), trial="utterance",
                                  band=e.band, windows=e.windows)[0]

    def identify(self, e: Embedded, k: int = 5, result: SearchResult | None = None) -> dict:
        """Open-set identification of one recording."""
        res = result or self.search(e, k)
        best = res.best
        cal, label = self._calibrated("utterance", e.band, e.windows)
        n = self.index.n_speakers
        threshold = None if cal is None else cal.open_set_threshold(n, self.calibration.open_set_alpha)
        named = best is not None and cal is not None and best.llr >= threshold
        return {
            "speaker": best.speaker if named else None,
            "decision": "identified" if named else ("unknown" if cal is not None else "uncalibrated"),
            "best": None if best is None else best.speaker,
            "llr": None if best is None else _r(best.llr), "score": None if best is None else _r(best.score),
            "cosine": None if best is None else _r(best.cosine),
            "margin": _r(res.margin), "threshold_llr": _r(threshold), "enrolled_speakers": n,
            "open_set_rate": self.calibration.open_set_alpha, "band": e.band, "calibration": label,
            "speakers": [{"speaker": s.speaker, "llr": _r(s.llr), "score": _r(s.score), "cosine": _r(s.cosine),
                          "best_genuine": _r(s.best_genuine), "best_clone": _r(s.best_clone)}
                         for s in res.speakers[:k]],
            "nearest": [{"speaker": nb.speaker, "kind": nb.kind, "cosine": _r(nb.score), "sample_id": nb.sample_id}
                        for nb in res.neighbors[: 2 * k]],
        }

    def verify_speaker(self, e: Embedded, speaker: str) -> dict:
        """The recording against one enrolled speaker's model."""
        if self.scorer is None or self.scorer.column(speaker) is None:
            raise UnknownSpeaker(speaker)
        score = self.scorer.speaker_score(e.vector, speaker, e.band)
        cosine = float(np.dot(self.index.speaker_centroid(speaker, e.band), e.vector))
        return self._verdict("utterance", e.band, score, cosine, e.windows)

    def verify_pair(self, a: Embedded, b: Embedded) -> dict:
        """One recording against another."""
        band = TELEPHONE if TELEPHONE in (a.band, b.band) else WIDE
        a, b = self.as_band(a, band), self.as_band(b, band)
        be = self.calibration.backend
        score = float(np.dot(a.vector, b.vector)) if be is None else float(be.score_pairs(a.vector[None], b.vector[None])[0])
        return self._verdict("pair", band, score, float(np.dot(a.vector, b.vector)))

    def _verdict(self, trial: str, band: str, score: float, cosine: float, windows: int | None = None) -> dict:
        cal, label = self._calibrated(trial, band, windows)
        llr = None if cal is None else float(cal.llr(score))
        decision = "uncalibrated" if cal is None else ("accept" if llr >= cal.accept_llr else "reject")
        return {"decision": decision, "llr": _r(llr), "score": _r(score), "cosine": _r(cosine),
                "threshold_llr": None if cal is None else _r(cal.accept_llr), "band": band, "trial": trial,
                "calibration": label,
                "calibrated_far": None if cal is None else _r(cal.far), "calibrated_frr": None if cal is None else _r(cal.frr)}
