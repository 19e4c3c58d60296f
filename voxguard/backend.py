"""Scoring backends, inference side: what ``voxguard calibrate`` trains and the scorer applies.

A backend maps L2-normalised embeddings into a space where cosine separates speakers
better, then optionally normalises each score against a cohort:

* ``cosine`` — the identity (raw cosine);
* ``center`` — subtract the training mean, re-normalise;
* ``whiten`` — PCA-whitening of the training embeddings (eigenvalues floored), re-normalise;
* ``lda`` — shrinkage LDA to at most ``n_speakers - 1`` dimensions, length-normalised;
* ``wccn`` — within-class covariance normalisation: centre, then whiten the (shrunk)
  within-speaker covariance, re-normalise (LDA without discarding dimensions);
* ``<any>+asnorm`` — adaptive symmetric score normalisation (AS-norm): each side of a
  trial is z-normalised by the mean and deviation of its ``top`` best scores against a
  cohort of training embeddings, and the two are averaged.  Cohort rows of the speaker a
  trial is scored against are left out of both sides' statistics, so a cohort that
  contains the enrolled speakers themselves does not penalise their genuine trials.
  The statistics are *bounded* by what the cohort itself shows (``std_floor``, ``mean_floor``:
  low percentiles of the cohort's own top-score deviations and means): a recording unlike
  every cohort member — another channel, another corpus — has a small, low top-score
  spread, and dividing by it would inflate its scores far beyond anything calibrated.

Training lives in :mod:`voxguard.enroll.calibration`; this module only holds the trained
state, applies it, and (de)serialises it as plain arrays (``.npz`` bytes, no pickle).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from .embedders.base import l2_normalise
from .errors import StoreError

TRANSFORMS = ("cosine", "center", "whiten", "lda", "wccn")
ASNORM_SUFFIX = "+asnorm"
BACKEND_NAMES = tuple(t for t in TRANSFORMS) + tuple(t + ASNORM_SUFFIX for t in TRANSFORMS)
BACKEND_FORMAT = 1
_MAX_PAIR_CELLS = 4_000_000  # bound on the [queries, models, candidates] mask AS-norm builds at once


def parse_backend_name(name: str) -> tuple[str, bool]:
    """``"lda+asnorm"`` -> ``("lda", True)``; raises ``ValueError`` for an unknown name."""
    asnorm = name.endswith(ASNORM_SUFFIX)
    transform = name[: -len(ASNORM_SUFFIX)] if asnorm else name
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown scoring backend {name!r} (choose from {', '.join(BACKEND_NAMES)})")
    return transform, asnorm


@dataclass
class ScoreBackend:
    """A trained scoring backend.  ``score`` gives scores in the units thresholds use."""

    transform: str = "cosine"
    mean: np.ndarray | None = None  # [d] subtracted before projecting
    projection: np.ndarray | None = None  # [d, d'] applied after centring
    cohort: np.ndarray | None = None  # [n_c, d'] transformed, L2-normalised cohort embeddings
    cohort_speakers: list[str] = field(default_factory=list)  # names behind cohort_labels
    cohort_labels: np.ndarray | None = None  # [n_c] index into cohort_speakers
    asnorm_top: int = 50
    params: dict = field(default_factory=dict)  # training settings, for the record
    std_floor: float = 0.0  # AS-norm: lower bound of a side's cohort deviation
    mean_floor: float = -1.0  # AS-norm: lower bound of a side's cohort mean

    @property
    def asnorm(self) -> bool:
        return self.cohort is not None and len(self.cohort) > 0

    @property
    def name(self) -> str:
        return self.transform + (ASNORM_SUFFIX if self.asnorm else "")

    @property
    def out_dim(self) -> int | None:
        return None if self.projection is None else int(self.projection.shape[1])

    # -- applying -------------------------------------------------------------------
    def transform_vectors(self, x: np.ndarray) -> np.ndarray:
        """Embeddings ``[n, d]`` -> backend space ``[n, d']``, rows L2-normalised."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if self.mean is not None:
            x = x - self.mean
        if self.projection is not None:
            x = x @ self.projection
        return l2_normalise(x)

    def cohort_stats(self, tx: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and deviation of each row's top cohort scores, ``[n]`` each.

        ``tx`` is already transformed.  ``exclude[i]`` is a cohort label left out for row
        ``i`` (-1: none).
        """
        ex = None if exclude is None else exclude[:, None]
        mu, sd = self._stats(tx, ex)
        return mu[:, 0], sd[:, 0]

    def bound(self, mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cohort statistics held within what the cohort itself shows (see the module docstring)."""
        return np.maximum(mu, self.mean_floor), np.maximum(sd, self.std_floor)

    def _stats(self, tx: np.ndarray, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``asnorm_top`` cohort statistics of ``tx`` rows for each label in ``exclude``
        (``[n, m]``, -1 = keep all) -> mean, std ``[n, m]``."""
        c = tx @ self.cohort.T  # [n, n_c]
        labels = self.cohort_labels
        n_c = c.shape[1]
        top = min(self.asnorm_top, n_c)
        if exclude is None:
            exclude = np.full((len(tx), 1), -1, dtype=np.int64)
        largest = int(np.bincount(labels).max()) if n_c else 0
        width = min(n_c, top + largest)  # enough candidates to still have `top` after exclusion
        part = np.argpartition(-c, width - 1, axis=1)[:, :width] if width < n_c else np.tile(np.arange(n_c), (len(c), 1))
        vals = np.take_along_axis(c, part, axis=1)
        order = np.argsort(-vals, axis=1)
        vals = np.take_along_axis(vals, order, axis=1).astype(np.float64)  # [n, w] best first
        labs = labels[np.take_along_axis(part, order, axis=1)]  # [n, w]
        n, m = exclude.shape
        mu = np.empty((n, m), dtype=np.float64)
        sd = np.empty((n, m), dtype=np.float64)
        step = max(1, _MAX_PAIR_CELLS // max(1, n * width))
        for s in range(0, m, step):
            ex = exclude[:, s: s + step]  # [n, b]
            keep = labs[:, None, :] != ex[:, :, None]  # [n, b, w]
            keep &= np.cumsum(keep, axis=2) <= top
            cnt = np.maximum(keep.sum(axis=2), 1)
            v = vals[:, None, :]
            m1 = (v * keep).sum(axis=2) / cnt
            var = (((v - m1[:, :, None]) ** 2) * keep).sum(axis=2) / cnt
            mu[:, s: s + step] = m1
            sd[:, s: s + step] = np.sqrt(np.maximum(var, 1e-12))
        return mu, sd

    def model_labels(self, speakers: list[str] | None, n: int) -> np.ndarray:
        """Cohort label of each model's speaker (-1 when it is not in the cohort)."""
        if speakers is None:
            return np.full(n, -1, dtype=np.int64)
        pos = {s: i for i, s in enumerate(self.cohort_speakers)}
        return np.array([pos.get(s, -1) for s in speakers], dtype=np.int64)

    def prepare_models(self, models: np.ndarray, speakers: list[str] | None = None) -> "PreparedModels":
        """Transform speaker models (e.g. centroids) once, with their cohort statistics."""
        tm = self.transform_vectors(models)
        labels = self.model_labels(speakers, len(tm))
        if self.asnorm:
            mu, sd = self.bound(*self.cohort_stats(tm, labels))
        else:
            mu = sd = None
        return PreparedModels(tm, labels, mu, sd)

    def score(self, queries: np.ndarray, models: "np.ndarray | PreparedModels",
              speakers: list[str] | None = None) -> np.ndarray:
        """Backend scores ``[n_queries, n_models]``.

        ``models`` are raw embeddings (or :meth:`prepare_models` output); ``speakers``
        names each model's speaker so its cohort rows are excluded from AS-norm statistics.
        """
        pm = models if isinstance(models, PreparedModels) else self.prepare_models(models, speakers)
        tq = self.transform_vectors(queries)
        s = (tq @ pm.vectors.T).astype(np.float64)
        if not self.asnorm:
            return s
        qmu, qsd = self.bound(*self._stats(tq, np.broadcast_to(pm.labels, (len(tq), len(pm.labels)))))
        return 0.5 * ((s - pm.mean[None, :]) / pm.std[None, :] + (s - qmu) / qsd)

    def score_pairs(self, a: np.ndarray, b: np.ndarray, b_speakers: list[str] | None = None) -> np.ndarray:
        """Scores of row ``i`` of ``a`` against row ``i`` of ``b`` (``[n]``); ``b_speakers``
        names the speaker of each ``b`` row (its cohort rows are excluded, as in :meth:`score`)."""
        ta, tb = self.transform_vectors(a), self.transform_vectors(b)
        s = np.einsum("ij,ij->i", ta, tb).astype(np.float64)
        if not self.asnorm:
            return s
        labels = self.model_labels(b_speakers, len(tb))
        amu, asd = self.bound(*self.cohort_stats(ta, labels))
        bmu, bsd = self.bound(*self.cohort_stats(tb, labels))
        return 0.5 * ((s - amu) / asd + (s - bmu) / bsd)

    def pair_matrix(self, x: np.ndarray) -> np.ndarray:
        """Scores of every row of ``x`` against every other, ``[n, n]`` — each row's cohort
        statistics computed once (what :meth:`score_pairs` gives for any pair, without names)."""
        tx = self.transform_vectors(x)
        s = (tx @ tx.T).astype(np.float64)
        if not self.asnorm:
            return s
        mu, sd = self.bound(*self.cohort_stats(tx))
        return 0.5 * ((s - mu[:, None]) / sd[:, None] + (s - mu[None, :]) / sd[None, :])

    # -- persistence ------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"format": BACKEND_FORMAT, "transform": self.transform, "asnorm_top": self.asnorm_top,
                "cohort_speakers": self.cohort_speakers, "params": self.params,
                "std_floor": self.std_floor, "mean_floor": self.mean_floor}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for key in ("mean", "projection", "cohort", "cohort_labels"):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ScoreBackend":
        try:
            meta = json.loads(bytes(arrays["meta"]).decode())
        except (KeyError, ValueError) as e:
            raise StoreError(f"calibration holds no readable scoring backend ({e})") from None
        if meta.get("format") != BACKEND_FORMAT:
            raise StoreError(f"scoring backend format {meta.get('format')} is not {BACKEND_FORMAT}; "
                             "run 'voxguard calibrate' again")
        parse_backend_name(meta["transform"])
        get = arrays.get
        return cls(meta["transform"], _f32(get("mean")), _f32(get("projection")), _f32(get("cohort")),
                   list(meta.get("cohort_speakers", [])),
                   None if get("cohort_labels") is None else np.asarray(get("cohort_labels"), dtype=np.int64),
                   int(meta.get("asnorm_top", 50)), dict(meta.get("params", {})),
                   float(meta.get("std_floor", 0.0)), float(meta.get("mean_floor", -1.0)))

    def to_bytes(self) -> bytes:
        return pack_arrays(self.to_arrays())

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ScoreBackend":
        return cls.from_arrays(unpack_arrays(blob))


@dataclass(frozen=True)
class PreparedModels:
    vectors: np.ndarray  # [m, d'] transformed
    labels: np.ndarray  # [m] cohort label of each model's speaker, -1 if none
    mean: np.ndarray | None  # [m] AS-norm statistics (None without AS-norm)
    std: np.ndarray | None


def _f32(a) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float32)


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays -> ``.npz`` bytes (no pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise StoreError(f"calibration data is not readable ({e}); run 'voxguard calibrate' again") from None


def backend_from_calibration(blob: bytes | None, prefix: str = "backend.") -> ScoreBackend | None:
    """The scoring backend stored in a calibration blob (``None`` for raw cosine)."""
    if not blob:
        return None
    arrays = {k[len(prefix):]: v for k, v in unpack_arrays(blob).items() if k.startswith(prefix)}
    if not arrays:
        return None
    backend = ScoreBackend.from_arrays(arrays)
    return None if backend.name == "cosine" else backend
