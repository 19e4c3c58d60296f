"""FAISS index types at scale: exact inner product (IndexFlatIP) vs HNSW vs IVF-Flat, with
256-d voiceprints at 10 k, 100 k and 1 M.

The database is N - 74 random unit vectors plus the 74 real AN4 speakers' voiceprints (the
normalised mean of 5 enrollment utterances, embedded with the bundled Resemblyzer model).
Two query sets, searched in batches of 64 as the daemon searches:

- ``an4``: every held-out AN4 utterance (not among the 5 enrolled) — the realistic case;
  recall@1 = the approximate index returns the same top-1 as exact search, and ``top1`` =
  the top-1 is the utterance's own speaker;
- ``random``: 1024 random unit vectors — the worst case for an approximate index (nothing
  in the database is near them; in 256 dimensions every cosine is about 0).

Per index and size: build time (train + add), memory (serialised index bytes, and the
growth of the process's RSS while building), batch-64 search latency (median and p95 per
batch, and per query) and recall@1 against exact search for both query sets.

    nice -n 10 .venv/bin/python bench/bench_index_scale.py --sizes 10000,100000,1000000 --json /tmp/index_scale.json

The AN4 embeddings are cached in ``--work`` (default /tmp/voxguard-bench).  The figures and the
thresholds taken from them are in docs/scaling.md and voxguard/index.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4")) / "wav" / "an4_clstk"
ENROLL = 5
DIM = 256
BATCH = 64


def an4_embeddings(work: Path) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(speaker voiceprints [74, 256], names, held-out query embeddings, their speaker rows)."""
    cache = work / "an4-resemblyzer-utterances.npz"
    if not cache.exists():
        from voxguard.audio import load_audio
        from voxguard.embedders import create_embedder
        from voxguard.utterance import embed_utterances

        emb = create_embedder("resemblyzer", device="cpu")
        names, vecs, owners = [], [], []
        t0 = time.perf_counter()
        for d in sorted(p for p in AN4.iterdir() if p.is_dir()):
            files = sorted(d.glob("*.wav"))
            v = embed_utterances(emb, [load_audio(f).samples for f in files])
            names.append(d.name)
            vecs.append(v)
            owners += [len(names) - 1] * len(v)
        print(f"embedded {len(owners)} AN4 utterances in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=np.concatenate(vecs), owners=np.array(owners), names=np.array(names))
    z = np.load(cache)
    vectors, owners, names = z["vectors"], z["owners"], list(z["names"])
    prints, queries, qown = [], [], []
    for i in range(len(names)):
        rows = np.flatnonzero(owners == i)
        c = vectors[rows[:ENROLL]].mean(axis=0)
        prints.append(c / np.linalg.norm(c))
        queries.append(vectors[rows[ENROLL:]])
        qown += [i] * len(rows[ENROLL:])
    return (np.stack(prints).astype(np.float32), names, np.concatenate(queries).astype(np.float32),
            np.array(qown))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.empty((n, DIM), dtype=np.float32)
    for s in range(0, n, 100_000):  # bounded temporaries at 1 M
        x = rng.standard_normal((min(100_000, n - s), DIM), dtype=np.float32)
        out[s: s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss() -> int:
    return psutil.Process().memory_info().rss


def make(kind: str, n: int, db: np.ndarray, args) -> tuple[faiss.Index, dict]:
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(DIM)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.hnsw.efSearch = args.ef_search
        params = {"M": args.hnsw_m, "efConstruction": args.ef_construction, "efSearch": args.ef_search}
    elif kind == "ivf":
        nlist = int(min(args.ivf_max_lists, max(16, round(args.ivf_factor * np.sqrt(n)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nlist, args.nprobe)
        params = {"nlist": nlist, "nprobe": index.nprobe}
    else:
        raise ValueError(kind)
    if not index.is_trained:
        train = db[np.random.default_rng(1).choice(n, size=min(n, 64 * params["nlist"]), replace=False)]
        index.train(train)
    index.add(db)
    return index, params


def search_batches(index: faiss.Index, q: np.ndarray) -> tuple[np.ndarray, list[float]]:
    top, times = np.empty(len(q), dtype=np.int64), []
    for s in range(0, len(q), BATCH):
        t0 = time.perf_counter()
        _, i = index.search(q[s: s + BATCH], 1)
        times.append(time.perf_counter() - t0)
        top[s: s + BATCH] = i[:, 0]
    return top, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--kinds", default="flat,hnsw,ivf")
    ap.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: FAISS's default)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--ivf-factor", type=float, default=4.0, help="IVF lists = factor x sqrt(n)")
    ap.add_argument("--ivf-max-lists", type=int, default=4096)
    ap.add_argument("--random-queries", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=Path("/tmp/voxguard-bench"))
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args(argv)
    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    prints, names, q_an4, q_owner = an4_embeddings(args.work)
    rng = np.random.default_rng(0)
    q_rand = unit(rng, args.random_queries)
    results = []
    print(f"{len(names)} AN4 speakers, {len(q_an4)} held-out AN4 queries, {len(q_rand)} random queries; "
          f"FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP thread(s)", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        db = unit(np.random.default_rng(n), n)
        rows = np.random.default_rng(n + 1).choice(n, size=len(names), replace=False)
        db[rows] = prints  # the AN4 speakers at random positions
        exact_an4 = exact_rand = None
        for kind in args.kinds.split(","):
            r0 = rss()
            t0 = time.perf_counter()
            index, params = make(kind, n, db, args)
            build = time.perf_counter() - t0
            grown = rss() - r0
            size = len(faiss.serialize_index(index))
            top_an4, t_an4 = search_batches(index, q_an4)
            top_rand, t_rand = search_batches(index, q_rand)
            if kind == "flat":
                exact_an4, exact_rand = top_an4, top_rand
            times = np.array(t_an4 + t_rand) * 1000
            row = {
                "n": n, "index": kind, "params": params, "build_s": round(build, 2),
                "index_bytes": size, "bytes_per_vector": round(size / n, 1), "rss_growth_bytes": int(grown),
                "batch64_ms_p50": round(float(np.median(times)), 3),
                "batch64_ms_p95": round(float(np.percentile(times, 95)), 3),
                "per_query_us": round(float(np.median(times)) * 1000 / BATCH, 1),
                "recall1_an4": round(float(np.mean(top_an4 == exact_an4)), 4) if exact_an4 is not None else None,
                "recall1_random": round(float(np.mean(top_rand == exact_rand)), 4) if exact_rand is not None else None,
                "top1_an4_speaker": round(float(np.mean(top_an4 == rows[q_owner])), 4),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            del index
        del db
    if args.json:
        args.json.write_text(json.dumps({"faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
