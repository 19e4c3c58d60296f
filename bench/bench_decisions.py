"""Benchmark: do decisions hold on held-out speakers, telephone audio and unseen channels?

    python bench/bench_decisions.py [--store PATH] [--seeds 3] [--backend wccn+asnorm] [--conditions ...]

Runs :func:`voxguard.enroll.decision_evaluation.evaluate_decisions` on the AN4 store (built
at ``--store`` when missing, from ``$VOXGUARD_AN4`` or ../shared/datasets/an4): for each
seed, 54 training speakers calibrate, 10 held-out speakers are enrolled (5 utterances
each), 10 held-out speakers stay unenrolled, and distractor speakers bring the store to 90+.
Prints, per condition (clean, 8 kHz µ-law telephone files, held-out codecs / noise /
reverberation / gain), the unenrolled-named rate and the enrolled identification rates,
plus held-out Cllr / EER and the real FAR/FRR at the calibrated operating point per trial
type, averaged over seeds; writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_calibrate import ensure_store
from voxguard.embedders import create_embedder
from voxguard.enroll.calibration import CalibrationConfig
from voxguard.enroll.decision_evaluation import evaluate_decisions
from voxguard.store import SpeakerStore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="AN4 store to reuse (built there when missing)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--backend", default="wccn+asnorm")
    ap.add_argument("--open-set-rate", type=float, default=None)
    ap.add_argument("--conditions", help="comma-separated (default: clean, telephone and every held-out channel)")
    ap.add_argument("--out", type=Path, default=Path("bench_decisions.json"))
    a = ap.parse_args()
    path = ensure_store(a.store)
    if path is None:
        return 1
    embedder = create_embedder("resemblyzer", device="cpu")
    cfg = CalibrationConfig(backend=a.backend)
    if a.open_set_rate is not None:
        cfg = CalibrationConfig(backend=a.backend, open_set_alpha=a.open_set_rate)
    conds = tuple(c for c in a.conditions.split(",") if c) if a.conditions else None
    reports = []
    t0 = time.perf_counter()
    with SpeakerStore(path, readonly=True) as store:
        for seed in range(a.seeds):
            reports.append(evaluate_decisions(store, embedder, 20, 5, seed, cfg, conditions=conds))
            print(f"seed {seed} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    split = reports[0]["split"]
    print(f"backend {a.backend}, open-set rate {reports[0]['calibration']['open_set_alpha']}; per seed: "
          f"{split['train_speakers']} training speakers, {len(split['enrolled_test_speakers'])} enrolled + "
          f"{len(split['unenrolled_test_speakers'])} unenrolled held-out speakers, "
          f"{split['enrolled_speakers']} enrolled in all; mean of {a.seeds} seeds")
    print(f"{'condition':<20}{'unenrolled named':>18}{'enrolled correct':>18}{'unknown':>9}{'wrong':>8}{'top-1':>8}")
    pct = lambda v: f"{100 * v:6.2f} %"  # noqa: E731
    conditions = list(reports[0]["conditions"])
    table = {}
    for c in conditions:
        m = {k: float(np.mean([r["conditions"][c][k] for r in reports]))
             for k in ("unenrolled_named", "enrolled_correct", "enrolled_unknown", "enrolled_wrong", "top1")}
        table[c] = m
        print(f"{c:<20}{pct(m['unenrolled_named']):>18}{pct(m['enrolled_correct']):>18}"
              f"{pct(m['enrolled_unknown']):>9}{pct(m['enrolled_wrong']):>8}{pct(m['top1']):>8}")
    print(f"\n{'held-out trials':<28}{'Cllr':>7}{'EER':>9}{'minDCF':>8}{'FAR':>9}{'(stated)':>10}{'FRR':>9}{'(stated)':>10}")
    for cond in reports[0]["trials"]:
        for trial in ("utterance", "pair"):
            rows = [r["trials"][cond][trial] for r in reports if r["trials"][cond].get(trial)]
            if not rows:
                continue
            m = {k: float(np.mean([x[k] for x in rows])) for k in ("cllr", "eer", "min_dcf", "far", "stated_far",
                                                                  "frr", "stated_frr")}
            print(f"{cond + ' ' + trial:<28}{m['cllr']:7.3f}{pct(m['eer']):>9}{m['min_dcf']:8.3f}{pct(m['far']):>9}"
                  f"{pct(m['stated_far']):>10}{pct(m['frr']):>9}{pct(m['stated_frr']):>10}")
    a.out.write_text(json.dumps({"mean": table, "reports": reports}, indent=1))
    print(f"\nwritten {a.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
