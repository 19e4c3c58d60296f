"""Do the embedder runtimes agree on audio unlike AN4's close-talk recordings?

Cosine of ``onnx`` and ``onnx-int8`` embeddings to PyTorch's, per 1.5 s window, on AN4
utterances as recorded and through the telephone simulation, held-out codecs (ffmpeg), noise
and reverberation (``voxguard.channels``).

    .venv/bin/python bench/bench_embedder_channels.py --speakers 10   # about 2 min
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4"))
CONDITIONS = ("clean", "telephone", "opus-8k-nb", "alaw-8k", "mp3-32k", "noise-brown-5db", "reverb-0.7s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--an4", type=Path, default=DEFAULT_AN4)
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--files", type=int, default=3, help="utterances per speaker")
    a = ap.parse_args()
    from voxguard.audio import load_audio
    from voxguard.bands import telephone_simulation
    from voxguard.channels import apply_chain
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder
    from voxguard.windows import speech_windows

    wav = a.an4 / "wav" / "an4_clstk"
    if not wav.is_dir():
        print(f"AN4 not found at {wav}", file=sys.stderr)
        return 2
    files = [f for d in sorted(wav.iterdir())[: a.speakers] for f in sorted(d.glob("*.wav"))[: a.files]]
    runtimes = {r: ResemblyzerEmbedder(device="cpu", runtime=r) for r in ("torch", "onnx", "onnx-int8")}
    for cond in CONDITIONS:
        windows = []
        for i, f in enumerate(files):
            x = load_audio(f).samples
            y = x if cond == "clean" else telephone_simulation(x) if cond == "telephone" else apply_chain(x, [cond], seed=i)
            windows += [w.samples for w in speech_windows(np.asarray(y, np.float32))]
        ref = runtimes["torch"].embed(windows)
        parts = []
        for r in ("onnx", "onnx-int8"):
            cos = np.sum(ref * runtimes[r].embed(windows), axis=1)
            parts.append(f"{r} cosine min {cos.min():.5f} mean {cos.mean():.5f} (< 0.999: {int((cos < 0.999).sum())})")
        print(f"{cond:16s} {len(windows):4d} windows  " + "  ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
