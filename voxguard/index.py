"""The vector index: FAISS inner product over L2-normalised embeddings (= cosine).

Two FAISS indexes are kept together in one file beside the store
(``<store>.faiss``): one row per enrolled speaker (the normalised mean of its
genuine embeddings — what identification ranks), and one row per sample, genuine
and clone (the nearest neighbours, used as clone evidence).  Beside them, each
speaker's centroid in every other band (:mod:`voxguard.bands`: the telephone-band
views of its samples), so telephone audio is scored against telephone-band models.  The file is replaced
atomically (temp file + fsync + rename) and records the store id and revision it
was built from, so a stale file is detected and rebuilt.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .bands import BANDS, WIDE
from .embedders.base import l2_normalise
from .errors import StoreError
from .store import INDEX_SUFFIX, Store

INDEX_FORMAT = 2


def index_path_for(store_path: str | Path) -> Path:
    return Path(str(store_path) + INDEX_SUFFIX)


@dataclass(frozen=True)
class Neighbor:
    speaker: str
    kind: str  # genuine | clone
    score: float
    sample_id: int


@dataclass(frozen=True)
class SpeakerScore:
    speaker: str
    score: float  # cosine to the speaker's genuine centroid
    best_genuine: float | None  # best cosine to one genuine sample (among the nearest)
    best_clone: float | None  # best cosine to a known clone of this speaker (among the nearest)
    llr: float | None = None  # the score's calibrated log-likelihood ratio (trial type of the search)
    cosine: float | None = None  # raw cosine to the speaker model of the band


@dataclass(frozen=True)
class SearchResult:
    speakers: list[SpeakerScore]  # best first
    neighbors: list[Neighbor]  # nearest samples, best first

    @property
    def best(self) -> SpeakerScore | None:
        return self.speakers[0] if self.speakers else None

    @property
    def margin(self) -> float | None:
        """Score gap between the best and the second-best speaker."""
        if len(self.speakers) >= 2:
            return self.speakers[0].score - self.speakers[1].score
        return None


def _serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(index)


# -- the index type, chosen by size -------------------------------------------------------------
# Measured with  nice -n 10 .venv/bin/python bench/bench_index_scale.py --sizes 10000,100000,1000000
# and  ... --sizes 50000,100000,1000000 --kinds flat,ivf --ivf-factor 1
# (256-d, batches of 64 queries as the daemon searches, 2 cores; figures in docs/scaling.md):
# exact search costs ~25 ns per stored vector per query, so below EXACT_MAX_ROWS it stays
# under ~0.5 ms a query (a tenth of embedding one window on a CPU core); above, IVF-Flat keeps
# recall@1 = 1.0 on the real AN4 queries at 100 k and 1 M, builds 10-16x faster than HNSW (1 M:
# 171 s vs 2697 s) and searches 3-5x faster.  A replica rebuilds its index on every reload, so
# the lists are ~sqrt(n), not 4 sqrt(n): 12x cheaper to train at 1 M (14 s vs 171 s, the
# training dominates a reload) for the same recall and about the same speed-up over exact search.
EXACT_MAX_ROWS = 20_000
IVF_NPROBE = 16  # lists searched per query
IVF_MAX_LISTS = 4096
IVF_TRAIN_PER_LIST = 64  # k-means training points per list (sampled, at most all rows)


def ivf_lists(n: int) -> int:
    """IVF lists for n rows: about sqrt(n), with at least 39 training points each (FAISS's minimum)."""
    return int(max(16, min(IVF_MAX_LISTS, round(np.sqrt(n)), n // 39)))


def ip_index(vectors: np.ndarray, dim: int) -> faiss.Index:
    """An inner-product index over ``vectors``: exact up to EXACT_MAX_ROWS rows, IVF-Flat above."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n <= EXACT_MAX_ROWS:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train = vectors
        if n > IVF_TRAIN_PER_LIST * nlist:
            train = vectors[np.random.default_rng(0).choice(n, IVF_TRAIN_PER_LIST * nlist, replace=False)]
        index.train(train)
        index.nprobe = min(nlist, IVF_NPROBE)
    if n:
        index.add(vectors)
    return index


def _vectors_of(index: faiss.Index) -> np.ndarray:
    """The stored vectors back (IVF lists need a direct map for that)."""
    if not index.ntotal:
        return np.zeros((0, index.d), np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


class SpeakerIndex:
    """Centroid and sample indexes of one store revision."""

    def __init__(self, speaker_names: list[str], centroids: np.ndarray, sample_ids: np.ndarray,
                 sample_speaker: np.ndarray, sample_kind: np.ndarray, sample_vectors: np.ndarray,
                 store_id: str, revision: int, embedder: dict | None, use_gpu: bool | None = None,
                 band_centroids: dict[str, np.ndarray] | None = None,
                 prebuilt: tuple[faiss.Index, faiss.Index] | None = None):
        self.speaker_names = list(speaker_names)
        self.sample_ids = sample_ids.astype(np.int64)
        self.sample_speaker = sample_speaker.astype(np.int32)
        self.sample_kind = sample_kind.astype(np.int8)  # 0 genuine, 1 clone
        self._nb_fields: tuple[list, list, list] | None = None  # per-sample name, kind, id (neighbor_lists)
        self.store_id = store_id
        self.revision = revision
        self.embedder = embedder
        n_samples = prebuilt[1].ntotal if prebuilt is not None else len(sample_vectors)
        self.dim = (int(centroids.shape[1]) if centroids.size else
                    int(prebuilt[1].d if prebuilt is not None else sample_vectors.shape[1]) if n_samples else 0)
        if prebuilt is not None:  # loaded from a file: already built
            self._centroids_cpu, self._samples_cpu = prebuilt
        else:
            self._centroids_cpu = ip_index(centroids, max(self.dim, 1))
            self._samples_cpu = ip_index(sample_vectors, max(self.dim, 1))
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        # band -> [n_speakers, d] models of that band (rows of speakers without views: wide)
        self.band_centroids = {WIDE: self.centroids}
        for band, c in (band_centroids or {}).items():
            if band != WIDE and c.shape == self.centroids.shape:
                self.band_centroids[band] = np.ascontiguousarray(c, dtype=np.float32)
        self.on_gpu = False
        self._centroids, self._samples = self._centroids_cpu, self._samples_cpu
        if use_gpu is None:
            use_gpu = _gpu_count() > 0
        if use_gpu and _gpu_count() > 0:
            res = faiss.StandardGpuResources()
            self._gpu_res = res
            self._centroids = faiss.index_cpu_to_gpu(res, 0, self._centroids_cpu)
            self._samples = faiss.index_cpu_to_gpu(res, 0, self._samples_cpu)
            self.on_gpu = True

    @property
    def kinds(self) -> dict[str, str]:
        """The FAISS index type of the speaker and sample indexes (chosen by size)."""
        return {"speakers": type(self._centroids_cpu).__name__, "samples": type(self._samples_cpu).__name__}

    # -- construction --------------------------------------------------------------
    @classmethod
    def build(cls, store: Store, use_gpu: bool | None = None) -> "SpeakerIndex":
        table = store.embeddings()
        names = sorted({s for s, k in zip(table.speakers, table.kinds) if k == "genuine"})
        genuine_names = set(names)
        all_names = names + sorted({s for s in table.speakers if s not in genuine_names})
        pos = {n: i for i, n in enumerate(all_names)}
        dim = table.vectors.shape[1]
        centroids = np.zeros((len(names), dim), dtype=np.float32)
        genuine = np.array([k == "genuine" for k in table.kinds], dtype=bool)
        owner = np.array([pos[s] for s in table.speakers], dtype=np.int64)
        np.add.at(centroids, owner[genuine], table.vectors[genuine])
        centroids = l2_normalise(centroids) if len(names) else centroids
        bands = {}
        for band in BANDS:
            if band == WIDE:
                continue
            view = store.views(band, kind="genuine")
            bc = centroids.copy()
            if len(view.ids):
                sums = np.zeros_like(centroids)
                rows = np.array([pos[s] for s in view.speakers], dtype=np.int64)
                np.add.at(sums, rows, view.utterances())
                have = np.linalg.norm(sums, axis=1) > 0
                bc[have] = l2_normalise(sums[have])
            bands[band] = bc
        ident = store.embedder
        return cls(all_names, centroids, table.ids,
                   np.array([pos[s] for s in table.speakers], dtype=np.int32),
                   np.array([1 if k == "clone" else 0 for k in table.kinds], dtype=np.int8),
                   table.vectors, store.store_id, store.revision, ident.as_dict() if ident else None,
                   use_gpu=use_gpu, band_centroids=bands)

    @property
    def n_speakers(self) -> int:
        """Speakers with at least one genuine sample (the ones identification ranks)."""
        return self._centroids_cpu.ntotal

    @property
    def n_samples(self) -> int:
        return self._samples_cpu.ntotal

    def is_current(self, store: Store) -> bool:
        return self.store_id == store.store_id and self.revision == store.revision

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never a mix."""
        path = Path(path)
        meta = {"format": INDEX_FORMAT, "store_id": self.store_id, "revision": self.revision,
                "embedder": self.embedder, "speakers": self.speaker_names}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 centroids=_serialize(self._centroids_cpu), samples=_serialize(self._samples_cpu),
                 sample_ids=self.sample_ids, sample_speaker=self.sample_speaker, sample_kind=self.sample_kind,
                 **{"band_" + b: c for b, c in self.band_centroids.items() if b != WIDE})
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | None = None) -> "SpeakerIndex":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                if meta.get("format") != INDEX_FORMAT:
                    raise StoreError(f"{path}: index format {meta.get('format')} is not {INDEX_FORMAT}")
                cent = faiss.deserialize_index(z["centroids"])
                samp = faiss.deserialize_index(z["samples"])
                ids, spk, kind = z["sample_ids"], z["sample_speaker"], z["sample_kind"]
                bands = {k[len("band_"):]: z[k] for k in z.files if k.startswith("band_")}
        except Exception as e:  # noqa: BLE001 — any damage (EOFError, BadZipFile, ...) means "rebuild"
            raise StoreError(f"cannot read index {path}: {e}") from None
        return cls(meta["speakers"], _vectors_of(cent), ids, spk, kind, np.zeros((0, samp.d), np.float32),
                   meta["store_id"], meta["revision"], meta["embedder"], use_gpu=use_gpu, band_centroids=bands,
                   prebuilt=(cent, samp))

    def save_beside(self, store: Store) -> None:
        """Save as the store's index file, when the store has one (a PostgreSQL store has none)."""
        if store.index_path is not None:
            self.save(store.index_path)

    @classmethod
    def for_store(cls, store: Store, use_gpu: bool | None = None, save: bool = True) -> "SpeakerIndex":
        """The store's index, loaded from beside it, or rebuilt (and saved) when missing or stale;
        built in memory for a store without an index file (PostgreSQL)."""
        path = store.index_path
        if path is None:
            return cls.build(store, use_gpu=use_gpu)
        if path.exists():
            try:
                idx = cls.load(path, use_gpu=use_gpu)
                if idx.is_current(store):
                    return idx
            except StoreError:
                pass
        idx = cls.build(store, use_gpu=use_gpu)
        if save:
            try:
                idx.save(path)
            except OSError:
                pass  # a read-only location still gets a working in-memory index
        return idx

    # -- search ---------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5, neighbors: int = 32) -> list[SearchResult]:
        """Rank enrolled speakers for each query vector (rows L2-normalised)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(q)
        if n == 0:
            return []
        k_spk = min(k, self.n_speakers)
        k_nb = min(max(neighbors, k), self.n_samples)
        if k_spk:
            dc, ic = self._centroids.search(q, k_spk)
        if k_nb:
            ds, is_ = self._samples.search(q, k_nb)
        results = []
        for r in range(n):
            nbs: list[Neighbor] = []
            best_g: dict[int, float] = {}
            best_c: dict[int, float] = {}
            for j in range(k_nb):
                row = int(is_[r, j])
                if row < 0:
                    continue
                spk = int(self.sample_speaker[row])
                kind = "clone" if self.sample_kind[row] else "genuine"
                score = float(ds[r, j])
                nbs.append(Neighbor(self.speaker_names[spk], kind, score, int(self.sample_ids[row])))
                target = best_c if kind == "clone" else best_g
                target.setdefault(spk, score)
            spks = []
            for j in range(k_spk):
                c = int(ic[r, j])
                if c < 0:
                    continue
                spks.append(SpeakerScore(self.speaker_names[c], float(dc[r, j]), best_g.get(c), best_c.get(c),
                                         cosine=float(dc[r, j])))
            results.append(SearchResult(spks, nbs))
        return results

    def neighbors(self, queries: np.ndarray, k: int = 32) -> list[list[Neighbor]]:
        """The ``k`` nearest stored samples (genuine and clone) of each query, best first."""
        return self.neighbor_lists(*self.neighbor_rows(queries, k))

    def neighbor_rows(self, queries: np.ndarray, k: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """FAISS output of :meth:`neighbors`: cosines ``[n, k']`` and sample rows ``[n, k']`` (-1: none)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k_nb = min(k, self.n_samples)
        if not k_nb or not len(q):
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        return self._samples.search(q, k_nb)

    def neighbor_lists(self, ds: np.ndarray, rows: np.ndarray) -> list[list[Neighbor]]:
        """:class:`Neighbor` lists of :meth:`neighbor_rows` output (per-sample fields looked up once)."""
        if self._nb_fields is None:
            names = self.speaker_names
            self._nb_fields = ([names[s] for s in self.sample_speaker.tolist()],
                               ["clone" if k else "genuine" for k in self.sample_kind.tolist()],
                               self.sample_ids.tolist())
        spk, kind, sid = self._nb_fields
        return [[Neighbor(spk[i], kind[i], d, sid[i]) for d, i in zip(dr, ir) if i >= 0]
                for dr, ir in zip(ds.tolist(), rows.tolist())]

    def models(self, band: str = WIDE) -> np.ndarray:
        """The speaker models (centroids) of ``band``, ``[n_speakers, d]``."""
        return self.band_centroids.get(band, self.centroids)

    def speaker_centroid(self, name: str, band: str = WIDE) -> np.ndarray | None:
        try:
            i = self.speaker_names.index(name)
        except ValueError:
            return None
        models = self.models(band)
        return models[i] if i < len(models) else None


def _gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0
