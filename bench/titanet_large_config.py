"""Build a TitaNet ``.nemo`` with random weights for speed and memory benchmarks.

    python bench/titanet_large_config.py OUT.nemo            # full TitaNet-large (192-d, ~25 M parameters)
    python bench/titanet_large_config.py OUT.nemo --tiny     # the miniature the tests use (32-d)

The architecture is NeMo's ``examples/speaker_tasks/recognition/conf/titanet-large.yaml``
(built by :func:`tests.tiny_nemo.titanet_config`, the single definition both the tests and
the benchmarks use).  Random weights embed as fast as trained ones; the embeddings mean
nothing.  Needs ``pip install 'voxguard[nemo]'``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_nemo import TINY, build_speaker_model, titanet_config  # noqa: E402

__all__ = ["titanet_config", "build_titanet_large", "save_model"]


def build_titanet_large(seed: int = 0):
    """TitaNet-large (filters 1024, 3 repeats, kernels 3/7/11/15, 3072 -> 192) with random weights."""
    return build_speaker_model(seed, estimate_bn=False)


def save_model(out: Path, tiny: bool = False, seed: int = 0) -> Path:
    model = build_speaker_model(seed, **TINY) if tiny else build_titanet_large(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="where to write the .nemo file")
    ap.add_argument("--tiny", action="store_true", help="the tests' miniature instead of TitaNet-large")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    save_model(a.out, a.tiny, a.seed)
    print(f"wrote {a.out} ({a.out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
