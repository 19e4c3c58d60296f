"""Where one daemon batch of windows spends its time: embed vs score vs search vs clone assessment.

Runs, in one process, what ``daemon.batcher.Batcher.process`` does for one batch of
``--batch`` real 1.5 s AN4 windows (voiced audio, as the daemon cuts them) against a store
(``bench/bench_daemon.py`` builds and caches both deployments' stores under its ``--work``),
and times each step (median of ``--reps``):

* ``embed`` — ``embedder.embed``;
* ``score_all`` — every window against every enrolled speaker (backend: AS-norm when calibrated);
* ``search`` — ranking, LLRs, nearest stored samples (FAISS), with ``neighbors`` alone;
* ``assess`` — ``CloneDetector.assess_batch(..., window=True)``, and the serial per-window
  ``assess`` loop it replaced, for comparison.

    .venv/bin/python bench/bench_window_batch.py --store bench/results/daemon/an4-resemblyzer-recommended.db
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4")) / "wav" / "an4_clstk"


def windows(n: int, speakers: list[str]) -> tuple[list[np.ndarray], list[str]]:
    from voxguard.audio import load_audio
    from voxguard.countermeasure import voiced_audio

    out, claimed, k = [], [], 0
    while len(out) < n:
        spk = speakers[k % len(speakers)]
        files = sorted((AN4 / spk).glob("*.wav"))
        v = voiced_audio(load_audio(files[-1 - (k // len(speakers)) % len(files)]).samples)
        if len(v) >= 24000:
            out.append(v[:24000])
            claimed.append(spk)
        k += 1
    return out, claimed


def timed(fn, reps: int) -> tuple[float, object]:
    ts, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--serial", action="store_true", help="also time the per-window assess loop")
    ap.add_argument("--no-blas-limit", action="store_true",
                    help="leave BLAS multi-threaded (what the hot path did before voxguard.blas)")
    args = ap.parse_args()
    if args.no_blas_limit:
        import voxguard.blas

        voxguard.blas._unavailable = True
    from voxguard.clone_detection import CloneDetector
    from voxguard.embedders import create_embedder
    from voxguard.index import SpeakerIndex
    from voxguard.scoring import SpeakerScorer
    from voxguard.store import SpeakerStore

    with SpeakerStore(args.store, readonly=True) as store:
        emb = create_embedder(store.embedder.name, device=args.device)
        idx = SpeakerIndex.for_store(store, use_gpu=False)
        scorer = SpeakerScorer.for_store(store, idx)
        det = CloneDetector.for_store(store, scorer.thresholds)
        speakers = idx.speaker_names[: idx.n_speakers]
    wins, claimed = windows(args.batch, speakers)
    emb.embed(wins[:8])
    out = {"store": str(args.store), "batch": len(wins), "speakers": idx.n_speakers, "backend": scorer.name,
           "detector": det.source, "countermeasure": getattr(det.countermeasure, "name", None)}
    t, vecs = timed(lambda: emb.embed(wins), args.reps)
    out["embed_ms"] = t
    scorer.score_all(vecs[:2], "wide")
    t, scores = timed(lambda: scorer.score_all(vecs, "wide"), args.reps)
    out["score_all_ms"] = t
    out["neighbors_ms"] = timed(lambda: idx.neighbors(vecs, 32), args.reps)[0]
    t, found = timed(lambda: scorer.search(vecs, k=5, trial="window", band="wide", scores=scores), args.reps)
    out["search_ms"] = t
    out["assess_batch_ms"] = timed(lambda: det.assess_batch(found, claimed, wins, window=True), args.reps)[0]
    if args.serial:
        out["assess_serial_ms"] = timed(lambda: [det.assess(r, c, w, window=True)
                                                 for r, c, w in zip(found, claimed, wins)], args.reps)[0]
    out = {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
