"""Benchmark: the one-voice gate of enrolling from a call (``--enroll-consistency``) on AN4.

    python bench/bench_voice_consistency.py [--speakers 18] [--offset 3]

For each of ``--speakers`` AN4 speakers (sorted names from ``--offset``), the held-out
utterances (all but the first 3) are embedded window by window (the daemon's windows) and
:func:`voxguard.daemon.speakers.window_consistency` is computed for one voice (the speaker
alone) and for two voices (the speaker's and the next speaker's utterances alternating).
Prints both ranges and how many two-voice calls each threshold refuses.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from voxguard.audio import load_audio
from voxguard.daemon.speakers import window_consistency
from voxguard.embedders import create_embedder
from voxguard.utterance import embed_window_sets

AN4 = Path(os.environ.get("VOXGUARD_AN4", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "an4"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speakers", type=int, default=18)
    ap.add_argument("--offset", type=int, default=3)
    a = ap.parse_args()
    root = AN4 / "wav" / "an4_clstk"
    names = sorted(d.name for d in root.iterdir() if d.is_dir())[a.offset:a.offset + a.speakers]
    emb = create_embedder("resemblyzer", device="cpu")
    per = {n: [embed_window_sets(emb, [load_audio(f).samples])[0] for f in sorted((root / n).glob("*.wav"))[3:]]
           for n in names}
    one = [window_consistency(np.concatenate(per[n])) for n in names]
    two = [window_consistency(np.concatenate([w for pair in zip(per[x], per[y]) for w in pair]))
           for x, y in zip(names, names[1:])]
    print(f"one voice  ({len(one)} calls): {min(one):.3f} .. {max(one):.3f}")
    print(f"two voices ({len(two)} calls): {min(two):.3f} .. {max(two):.3f}")
    for t in (0.80, 0.85, 0.86):
        print(f"threshold {t:.2f}: one voice refused {sum(v < t for v in one)}/{len(one)}, "
              f"two voices refused {sum(v < t for v in two)}/{len(two)}")


if __name__ == "__main__":
    main()
