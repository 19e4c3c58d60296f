"""voxguard.index: the FAISS speaker index against numpy brute force, persistence,
atomic replacement and staleness."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from voxguard.embedders.base import EmbedderIdentity, l2_normalise
from voxguard.errors import StoreError
from voxguard.index import SpeakerIndex, index_path_for
from voxguard.store import NewSample, SpeakerStore

DIM = 16
IDENT = EmbedderIdentity("resemblyzer", DIM, "test-1")


def add(store: SpeakerStore, speaker: str, kind: str, vectors: np.ndarray, tag: str = "") -> None:
    samples = [NewSample(hashlib.sha256(f"{speaker}{kind}{tag}{i}".encode()).hexdigest(), v, 1.0)
               for i, v in enumerate(vectors)]
    store.add_samples(speaker, kind, samples, IDENT)


@pytest.fixture
def store(tmp_path):
    """Eight speakers around distinct directions, 3-6 genuine samples each, clones of two of
    them, and one speaker known only from a clone."""
    rng = np.random.default_rng(0)
    s = SpeakerStore(tmp_path / "s.db")
    for k in range(8):
        centre = rng.standard_normal(DIM)
        add(s, f"spk{k}", "genuine", l2_normalise(centre + 0.6 * rng.standard_normal((3 + k % 4, DIM))))
        if k in (2, 5):
            add(s, f"spk{k}", "clone", l2_normalise(centre + 0.8 * rng.standard_normal((2, DIM))))
    add(s, "only-clones", "clone", l2_normalise(rng.standard_normal((1, DIM))))
    yield s
    s.close()


def brute_force(store: SpeakerStore):
    table = store.embeddings()
    names = sorted({s for s, k in zip(table.speakers, table.kinds) if k == "genuine"})
    cents = np.stack([table.vectors[[i for i, (s, k) in enumerate(zip(table.speakers, table.kinds))
                                     if s == n and k == "genuine"]].mean(axis=0) for n in names])
    return table, names, l2_normalise(cents)


def test_build_and_search_match_brute_force(store):
    idx = SpeakerIndex.build(store, use_gpu=False)
    table, names, cents = brute_force(store)
    assert idx.n_speakers == 8 and idx.n_samples == len(table.ids) == 41
    assert idx.speaker_names[:8] == names and "only-clones" in idx.speaker_names
    np.testing.assert_allclose(idx.speaker_centroid("spk3"), cents[3], atol=1e-6)
    assert idx.speaker_centroid("only-clones") is None and idx.speaker_centroid("nobody") is None

    queries = l2_normalise(np.random.default_rng(1).standard_normal((20, DIM)))
    results = idx.search(queries, k=5, neighbors=10)
    assert len(results) == 20
    for q, res in zip(queries, results):
        scores = cents @ q
        order = np.argsort(-scores)[:5]
        assert [s.speaker for s in res.speakers] == [names[i] for i in order]
        np.testing.assert_allclose([s.score for s in res.speakers], scores[order], atol=1e-5)
        assert res.best.speaker == names[order[0]]
        assert res.margin == pytest.approx(scores[order[0]] - scores[order[1]], abs=1e-5)

        sims = table.vectors @ q
        nb = np.argsort(-sims)[:10]
        assert [n.sample_id for n in res.neighbors] == [int(table.ids[i]) for i in nb]
        assert [(n.speaker, n.kind) for n in res.neighbors] == [(table.speakers[i], table.kinds[i]) for i in nb]
        np.testing.assert_allclose([n.score for n in res.neighbors], sims[nb], atol=1e-5)
        for s in res.speakers:  # best genuine / clone cosines among the listed neighbours
            g = [sims[i] for i in nb if table.speakers[i] == s.speaker and table.kinds[i] == "genuine"]
            c = [sims[i] for i in nb if table.speakers[i] == s.speaker and table.kinds[i] == "clone"]
            assert s.best_genuine == (pytest.approx(max(g), abs=1e-5) if g else None)
            assert s.best_clone == (pytest.approx(max(c), abs=1e-5) if c else None)


def test_search_edge_cases(store, tmp_path):
    idx = SpeakerIndex.build(store, use_gpu=False)
    q = l2_normalise(np.ones(DIM))
    assert len(idx.search(q, k=100)[0].speakers) == 8  # k capped at the enrolled speakers
    assert idx.search(np.zeros((0, DIM)), k=3) == []
    with SpeakerStore(tmp_path / "empty.db") as empty:
        e = SpeakerIndex.build(empty, use_gpu=False)
        res = e.search(np.zeros((1, 0), np.float32), k=3)[0]
        assert res.speakers == [] and res.neighbors == [] and res.best is None and res.margin is None


def test_save_load_round_trip(store, tmp_path):
    idx = SpeakerIndex.build(store, use_gpu=False)
    path = tmp_path / "x.faiss"
    idx.save(path)
    back = SpeakerIndex.load(path, use_gpu=False)
    assert back.speaker_names == idx.speaker_names
    assert (back.store_id, back.revision, back.embedder) == (store.store_id, store.revision, IDENT.as_dict())
    assert back.is_current(store)
    q = l2_normalise(np.random.default_rng(2).standard_normal((5, DIM)))
    for a, b in zip(idx.search(q, k=4), back.search(q, k=4)):
        assert a == b


def test_save_replaces_atomically(store, tmp_path):
    path = tmp_path / "x.faiss"
    SpeakerIndex.build(store, use_gpu=False).save(path)
    old_bytes = path.read_bytes()
    with open(path, "rb") as reader:  # a reader holding the old file keeps reading the old index
        add(store, "newcomer", "genuine", l2_normalise(np.ones((1, DIM))))
        SpeakerIndex.build(store, use_gpu=False).save(path)
        assert reader.read() == old_bytes
    assert "newcomer" in SpeakerIndex.load(path, use_gpu=False).speaker_names
    assert sorted(p.name for p in tmp_path.iterdir() if "faiss" in p.name) == ["x.faiss"]


def test_failed_save_keeps_the_old_file(store, tmp_path, monkeypatch):
    path = tmp_path / "x.faiss"
    SpeakerIndex.build(store, use_gpu=False).save(path)
    old_bytes = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    add(store, "newcomer", "genuine", l2_normalise(np.ones((1, DIM))))
    with pytest.raises(OSError):
        SpeakerIndex.build(store, use_gpu=False).save(path)
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir() if "faiss" in p.name) == ["x.faiss"]


def test_for_store_detects_stale_and_broken_files(store, tmp_path):
    path = index_path_for(store.path)
    assert not path.exists()
    idx = SpeakerIndex.for_store(store, use_gpu=False)
    assert path.exists() and idx.is_current(store)
    mtime = path.stat().st_mtime_ns
    assert SpeakerIndex.for_store(store, use_gpu=False).is_current(store)
    assert path.stat().st_mtime_ns == mtime  # current: loaded, not rewritten

    add(store, "newcomer", "genuine", l2_normalise(np.ones((1, DIM))))
    assert not SpeakerIndex.load(path, use_gpu=False).is_current(store)
    fresh = SpeakerIndex.for_store(store, use_gpu=False)
    assert fresh.is_current(store) and "newcomer" in fresh.speaker_names
    assert SpeakerIndex.load(path, use_gpu=False).revision == store.revision

    # an index of another store with the same revision number is not taken
    with SpeakerStore(tmp_path / "other.db") as other:
        while other.revision < store.revision:
            add(other, "x", "genuine", l2_normalise(np.ones((1, DIM))), tag=str(other.revision))
        assert other.revision == store.revision
        SpeakerIndex.build(other, use_gpu=False).save(path)
        assert "newcomer" in SpeakerIndex.for_store(store, use_gpu=False).speaker_names

    path.write_bytes(b"garbage, not an index")
    with pytest.raises(StoreError, match="cannot read index"):
        SpeakerIndex.load(path, use_gpu=False)
    assert SpeakerIndex.for_store(store, use_gpu=False).is_current(store)
    assert SpeakerIndex.load(path, use_gpu=False).is_current(store)  # rewritten


def test_index_type_follows_size_and_survives_save_load(tmp_path, monkeypatch):
    """Above EXACT_MAX_ROWS rows an index is IVF-Flat (thresholds measured by
    bench/bench_index_scale.py); it finds what exact search finds and round-trips through
    the index file."""
    import voxguard.index as vi

    monkeypatch.setattr(vi, "EXACT_MAX_ROWS", 300)
    rng = np.random.default_rng(3)
    dim = 16
    with SpeakerStore(tmp_path / "big.db") as s:
        for i in range(120):  # 120 speakers x 4 samples: 120 centroid rows (exact), 480 sample rows (IVF)
            add(s, f"spk{i:03d}", "genuine", l2_normalise(rng.standard_normal((4, dim))), tag=str(i))
        idx = SpeakerIndex.build(s, use_gpu=False)
        assert idx.kinds == {"speakers": "IndexFlatIP", "samples": "IndexIVFFlat"}
        q = l2_normalise(rng.standard_normal((64, dim))).astype(np.float32)
        exact = faiss_exact_top1(s.embeddings().vectors, q)
        got = [r.neighbors[0].sample_id for r in idx.search(q, k=3, neighbors=8)]
        ids = s.embeddings().ids
        assert np.mean(np.array(got) == ids[exact]) >= 0.9
        path = tmp_path / "big.faiss"
        idx.save(path)
        back = SpeakerIndex.load(path, use_gpu=False)
        assert back.kinds == idx.kinds and back.dim == dim and back.n_samples == 480
        assert [r.neighbors[0].sample_id for r in back.search(q, k=3, neighbors=8)] == got
        np.testing.assert_allclose(back.centroids, idx.centroids, atol=1e-6)


def faiss_exact_top1(vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.argmax(q @ vectors.T, axis=1)
