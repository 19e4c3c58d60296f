"""Benchmark: ``calibrate`` on all of AN4 (948 utterances, 74 speakers), and the
speaker-disjoint evaluation of every backend (train 54 speakers, test 20).

    python bench/bench_calibrate.py [--store PATH] [--seeds 3] [--backends wccn+asnorm,...]

Without ``--store`` it embeds AN4 (``$VOXGUARD_AN4`` or ../shared/datasets/an4) into a
temporary store first (about 20 s of CPU with Resemblyzer); with a path that does not
exist yet it builds the store there, so later runs reuse it.  Prints the calibrate time
(target: under 60 s) and, per backend, EERs / top-1 side by side with raw cosine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from voxguard.enroll.calibration import CalibrationConfig, calibrate, save_calibration
from voxguard.enroll.evaluation import evaluate
from voxguard.store import SpeakerStore

REPO = Path(__file__).resolve().parents[1]
AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4"))


def build_store(path: Path) -> None:
    from voxguard.embedders import create_embedder
    from voxguard.enroll.enrollment import Enroller
    from voxguard.enroll.importers import iter_layout

    embedder = create_embedder("resemblyzer", device="cpu")
    t0 = time.perf_counter()
    with SpeakerStore(path) as store:
        enr = Enroller(store, embedder)
        for speaker, files in iter_layout("an4", AN4):
            enr.enroll(speaker, files, strict=False)
        enr.refresh_index()
        n = store.stats()["genuine_samples"]
    print(f"built {path}: {n} utterances embedded in {time.perf_counter() - t0:.1f} s")


def ensure_store(path: Path | None) -> Path | None:
    """``path`` (a temporary file when ``None``), with AN4 embedded into it if it does not exist;
    ``None`` when AN4 is not available."""
    path = path or Path(tempfile.mkdtemp(prefix="voxguard-bench-")) / "an4.db"
    if not path.exists():
        if not (AN4 / "wav" / "an4_clstk").is_dir():
            print(f"AN4 not found at {AN4} (set VOXGUARD_AN4)", file=sys.stderr)
            return None
        build_store(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="AN4 store to reuse (built there when missing)")
    ap.add_argument("--seeds", type=int, default=3, help="evaluation splits (seeds 0..N-1)")
    ap.add_argument("--backends", default="cosine+asnorm,center+asnorm,whiten+asnorm,lda+asnorm,wccn,wccn+asnorm")
    a = ap.parse_args()
    path = ensure_store(a.store)
    if path is None:
        return 1
    backends = [b for b in a.backends.split(",") if b]
    with SpeakerStore(path, readonly=True) as store:
        stats = store.stats()
        print(f"store: {stats['speakers']} speakers, {stats['genuine_samples']} genuine, {stats['clone_samples']} clones")
        for b in backends:
            t0 = time.perf_counter()
            result = calibrate(store, CalibrationConfig(backend=b))
            blob = result.blob()
            dt = time.perf_counter() - t0
            th = result.thresholds
            print(f"calibrate {b:<15} {dt:6.2f} s (target < 60 s, {60 / dt:5.1f}x margin)  "
                  f"cross-fitted EER {100 * th['eer']:5.2f} % vs cosine {100 * result.data['cosine_reference']['eer']:5.2f} %"
                  f"  blob {len(blob) / 1e6:.1f} MB")
    # the save itself, on a throwaway copy
    with tempfile.TemporaryDirectory() as tmp:
        import shutil

        copy = Path(tmp) / "an4.db"
        shutil.copy(path, copy)
        with SpeakerStore(copy) as store:
            t0 = time.perf_counter()
            save_calibration(store, calibrate(store))
            print(f"calibrate + save (default backend): {time.perf_counter() - t0:.2f} s")
    print(f"\nspeaker-disjoint evaluation: 20 test speakers, 5 enrollment utterances, seeds 0..{a.seeds - 1}")
    print(f"{'backend':<15} {'pair EER':>9} {'cos EER':>8} {'rel.':>7} {'minDCF':>7} {'top-1':>7} {'cos top-1':>9} "
          f"{'FAR@acc':>8} {'FRR@acc':>8}")
    with SpeakerStore(path, readonly=True) as store:
        for b in backends:
            rows = []
            for seed in range(a.seeds):
                r = evaluate(store, 20, seed, 5, CalibrationConfig(backend=b, seed=seed))
                cos, new = (x.summary for x in r.results)
                rows.append([cos["pair_eer"], new["pair_eer"], new["pair_min_dcf"], new["top1"], cos["top1"],
                             new["at_accept"]["far"], new["at_accept"]["frr"]])
            m = np.mean(rows, axis=0)
            print(f"{b:<15} {100 * m[1]:8.2f}% {100 * m[0]:7.2f}% {100 * (1 - m[1] / m[0]):6.1f}% {m[2]:7.3f} "
                  f"{100 * m[3]:6.2f}% {100 * m[4]:8.2f}% {100 * m[5]:7.2f}% {100 * m[6]:7.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
