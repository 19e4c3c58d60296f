"""Clone detection on AN4, speaker- and channel-disjoint (the targets of issue 11).

    nice -n 10 python bench/bench_clone_detection.py [--an4 DIR] [--heldout 24] [--models lfcc-gmm lfcc-cnn]
        [--cache /tmp/voxguard-clone-bench.pkl] [--figures /tmp/voxguard-clone-figures] [--json FILE]

1. Enroll every AN4 utterance of the 74 speakers.  ``--known-speakers`` of the held-out
   speakers also get ``--known-clones`` WORLD-vocoder clones enrolled as known clones
   (``enroll add-clone``): the "known system".
2. :func:`voxguard.enroll.clone_evaluation.evaluate_clones`: held-out speakers keep
   ``--enroll`` utterances as references, the rest are genuine test recordings; the
   detector trains on the other speakers through :data:`~voxguard.channels.TRAIN_CHANNELS`
   only; tests are clean and through each of :data:`~voxguard.channels.HELDOUT_CHANNELS`:
   genuine speech, clones of every family, and new clones of the known system.
3. Prints the report (JSON) with the targets checked; ``--cache`` keeps the built
   training and test data so another ``--models`` run only refits.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from voxguard.enroll.clone_training import DEFAULT_CLONES_PER_FAMILY, DEFAULT_COMPONENTS, FAMILIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--an4", default=os.environ.get("VOXGUARD_AN4", str(REPO.parent / "shared" / "datasets" / "an4")))
    ap.add_argument("--heldout", type=int, default=24, help="held-out speakers (default 24 of 74)")
    ap.add_argument("--enroll", type=int, default=6, help="enrolled utterances per held-out speaker")
    ap.add_argument("--train-clones", type=int, default=DEFAULT_CLONES_PER_FAMILY, help="clones per family per training speaker")
    ap.add_argument("--test-clones", type=int, default=2, help="clones per family per held-out speaker")
    ap.add_argument("--known-speakers", type=int, default=12, help="held-out speakers with known clones enrolled")
    ap.add_argument("--known-clones", type=int, default=3, help="known clones enrolled per such speaker")
    ap.add_argument("--components", type=int, default=DEFAULT_COMPONENTS)
    ap.add_argument("--models", nargs="+", default=["lfcc-gmm"], help="countermeasure models to compare")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--no-lofo", action="store_true", help="skip leave-one-family-out")
    ap.add_argument("--long-hours", type=float, default=100.0, help="hours of resampled genuine calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", metavar="FILE", help="reuse / write the built training and test data")
    ap.add_argument("--figures", default=str(Path(tempfile.gettempdir()) / "voxguard-clone-figures"))
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    a = ap.parse_args()

    try:
        import torch

        torch.set_num_threads(a.threads)
    except ImportError:
        pass
    from voxguard.embedders import create_embedder
    from voxguard.enroll.clone_evaluation import (build_test_set, evaluate_clones, split_speakers)
    from voxguard.enroll.clone_training import build_training_items
    from voxguard.enroll.cloning import create_cloner, enroll_clones, generate_clones, write_clones
    from voxguard.enroll.cloning import Reference, TargetVoice
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    wav = Path(a.an4) / "wav" / "an4_clstk"
    if not wav.is_dir():
        print(f"AN4 not found at {wav}", file=sys.stderr)
        return 2
    speakers = {d.name: sorted(d.glob("*.wav")) for d in sorted(wav.iterdir()) if d.is_dir()}
    tmp = Path(tempfile.mkdtemp(prefix="voxguard-bench-clone-"))
    t0 = time.perf_counter()
    emb = create_embedder("resemblyzer", device="cpu")
    store = SpeakerStore(tmp / "store.db")
    enr = Enroller(store, emb)
    for n, files in speakers.items():
        enr.enroll(n, files)
    enr.refresh_index()
    _, held, test_ids = split_speakers(store, a.heldout, a.enroll, a.seed)
    known = held[: a.known_speakers]
    cloner = create_cloner("vocoder", pitch_range=0.04, tempo_range=0.06)
    known_system: dict[str, list[np.ndarray]] = {}
    for k, n in enumerate(known):
        refs = tuple(Reference(i.id, store.sample_audio(i.id)) for i in store.samples(n, "genuine")
                     if i.id not in test_ids)
        target = TargetVoice(n, refs)
        clones = generate_clones(cloner, target, a.known_clones, seed=500 + k)
        write_clones(clones, tmp / "known", n, "vocoder")
        enroll_clones(enr, n, cloner, clones)
        known_system[n] = [c.audio for c in generate_clones(cloner, target, 2, seed=900 + k)]  # new clones, same system
    enr.refresh_index()
    print(f"enrolled {len(speakers)} speakers, {len(known)} with {a.known_clones} known clones, in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    prepared = None
    if a.cache and Path(a.cache).exists():
        with open(a.cache, "rb") as f:
            prepared = pickle.load(f)
        print(f"reusing {a.cache}", flush=True)
    elif a.cache:
        train = [n for n in speakers if n not in held]
        t1 = time.perf_counter()
        ts = build_training_items(store, emb, train, a.train_clones, a.families, seed=a.seed,
                                  progress=lambda m: print(m, flush=True), exclude_samples=test_ids)
        for it in ts.items:
            it.audio = np.zeros(0, np.float32)  # fitting needs frames and embeddings only
        test = build_test_set(store, emb, held, test_ids, a.test_clones, a.families,
                              extra_clones={"known-system": known_system}, seed=a.seed,
                              progress=lambda m: print(m, flush=True))
        prepared = (ts, test)
        with open(a.cache, "wb") as f:
            pickle.dump(prepared, f, protocol=pickle.HIGHEST_PROTOCOL)
        print(f"built and cached data in {time.perf_counter() - t1:.0f} s", flush=True)
    report = evaluate_clones(store, emb, held, a.enroll, a.seed, a.train_clones, a.test_clones, a.components,
                             a.models, not a.no_lofo, a.families, extra_clones={"known-system": known_system},
                             figures=a.figures, long_hours=a.long_hours, progress=lambda m: print(m, flush=True),
                             prepared=prepared)
    best = report["models"][report["best_model"]]
    u = best["utterances"]
    report["targets"] = {
        "genuine_heldout_channels_false_alarm_medium_or_high": {"value": u["false_alarm_medium_or_high"], "target": "<= 0.01"},
        "genuine_stream_alarms_per_10_hours": {"observed": best["sessions"]["genuine_alarms_per_10_hours"],
                                               "observed_hours": best["sessions"]["genuine_hours"],
                                               "resampled": report["long_streams"], "target": "<= 1"},
        "leave_one_family_out_detected_medium_or_high": {
            "value": {f: v["detected_medium_or_high"] for f, v in report.get("leave_one_family_out", {}).items()},
            "target": ">= 0.80 each"},
        "known_system_clones_detected_medium_or_high": {
            "value": u["per_family"].get("known-system", {}).get("detected_medium_or_high"), "target": ">= 0.95"},
    }
    print(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
