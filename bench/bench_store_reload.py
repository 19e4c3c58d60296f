"""What one replica's reload costs the store, and what a store costs in memory: a store of N
speakers x S samples with realistic rows (256-d utterance embedding, W window embeddings per
band for the wide and telephone bands, no audio), then a daemon's full reload from it —
``daemon.snapshot.load_snapshot``, exactly what a replica runs when the revision changes.

Per engine: time to write the store (one transaction per speaker, as enrollment does), the
store's size, the reload's wall time, the bytes it reads (the columns its queries select),
the reloading process's RSS growth and the index types chosen.

    nice -n 10 .venv/bin/python bench/bench_store_reload.py --speakers 10000 --samples 5 --windows 6

Without ``--postgres URL`` it starts a throwaway PostgreSQL server (tests/pg_support.py; needs
the Debian package ``postgresql``).  The SQLite store goes to ``--work``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from voxguard.bands import BANDS  # noqa: E402
from voxguard.embedders.base import EmbedderIdentity, l2_normalise  # noqa: E402
from voxguard.store import NewSample, open_store  # noqa: E402

IDENT = EmbedderIdentity("resemblyzer", 256, "bench-store-reload")


def populate(location: str, speakers: int, samples: int, windows: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    with open_store(location) as store:
        for i in range(speakers):
            batch = []
            for j in range(samples):
                views = {b: l2_normalise(rng.standard_normal((windows, IDENT.dim))).astype(np.float32) for b in BANDS}
                emb = l2_normalise(views["wide"].mean(axis=0, keepdims=True))[0]
                batch.append(NewSample(hashlib.sha256(f"{i}/{j}".encode()).hexdigest(), emb, 3.0,
                                       f"/bench/{i}/{j}.wav", views=views))
            store.add_samples(f"spk{i:07d}", "genuine", batch, IDENT)
    return time.perf_counter() - t0


def reload_bytes(store) -> int:
    """Bytes of the columns a reload selects (embeddings of all samples, non-wide views of genuine ones)."""
    q = ("SELECT (SELECT COALESCE(SUM(length(embedding)), 0) FROM samples) + "
         "(SELECT COALESCE(SUM(length(v.windows)), 0) FROM sample_views v JOIN samples s ON s.id = v.sample_id "
         "WHERE v.band <> 'wide' AND s.kind = 'genuine')")
    return int(store._execute(q).fetchone()[0])


def measure(location: str, args) -> dict:
    from voxguard.daemon.snapshot import load_snapshot
    from voxguard.store import parse_store_location

    write_s = populate(location, args.speakers, args.samples, args.windows)
    with open_store(location, readonly=True) as s:
        size = s.stats()["size_bytes"]
        read = reload_bytes(s)
    loc = parse_store_location(location)
    if loc.index_path is not None and loc.index_path.exists():
        loc.index_path.unlink()  # a replica without the index file: rebuilt, as from PostgreSQL
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    snap = load_snapshot(loc, IDENT, use_gpu=False)
    took = time.perf_counter() - t0
    gc.collect()
    grown = psutil.Process().memory_info().rss - rss0
    t0 = time.perf_counter()
    again = load_snapshot(loc, IDENT, use_gpu=False)
    second = time.perf_counter() - t0
    n = args.speakers * args.samples
    return {"engine": loc.engine, "speakers": args.speakers, "samples": n, "windows_per_band": args.windows,
            "write_s": round(write_s, 1), "write_speakers_per_s": round(args.speakers / write_s, 1),
            "store_bytes": size, "store_bytes_per_sample": round(size / n),
            "reload_s": round(took, 2), "reload_again_s": round(second, 2), "reload_read_bytes": read,
            "reload_rss_growth_bytes": int(grown), "rss_bytes_per_speaker": round(grown / args.speakers),
            "index": snap.scorer.index.kinds if snap.scorer else None,
            "enrolled": again.enrolled}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speakers", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=5, help="genuine samples per speaker")
    ap.add_argument("--windows", type=int, default=6, help="window embeddings per sample and band (3.5 s: 6)")
    ap.add_argument("--engines", default="postgresql,sqlite")
    ap.add_argument("--postgres", metavar="URL", help="an empty database (default: a throwaway server)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/voxguard-bench"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results, cluster = [], None
    try:
        for engine in args.engines.split(","):
            if engine == "postgresql":
                url = args.postgres
                if url is None:
                    from pg_support import MISSING, PgCluster, pg_bindir

                    if pg_bindir() is None:
                        sys.exit(MISSING)
                    cluster = PgCluster(pg_bindir())
                    url = cluster.new_database()
                results.append(measure(url, args))
            else:
                args.work.mkdir(parents=True, exist_ok=True)
                path = args.work / f"reload-{os.getpid()}.db"
                try:
                    results.append(measure(str(path), args))
                finally:
                    for p in args.work.glob(path.name + "*"):
                        p.unlink()
            print(json.dumps(results[-1]), flush=True)
    finally:
        if cluster is not None:
            cluster.destroy()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
