"""Benchmark: identifying telephone audio (8 kHz G.711 µ-law, as Twilio sends it) against
wide-band enrollment, and against enrollment that also holds telephone copies.

    python bench/bench_telephone_enrollment.py [--an4 ../shared/datasets/an4] [--speakers 10] [--enroll 3]

For the first ``--speakers`` AN4 speakers: a model per speaker (the normalised mean of its
1.5 s window embeddings, as the daemon's index builds it) from ``--enroll`` utterances,
either as recorded (``wide``) or as recorded plus the same utterances through 8 kHz µ-law
(``wide+tel``); then every 1.5 s window of the speaker's next 3 utterances, as recorded and
through 8 kHz µ-law, is scored against every model (cosine) and counted right when its own
speaker ranks first.  Resemblyzer embedder, CPU.  This is the closed-set window-level
figure behind the enrollment in ``tests/test_telephony.py``.  A third model set is what
voxguard itself does (``voxguard.bands``): telephone audio scored against *telephone-band*
models, made from the telephone simulation of the wide-band enrollment — no extra enrollment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from voxguard.audio import float_to_g711, load_audio, pcm_to_float, resample  # noqa: E402
from voxguard.bands import telephone_simulation  # noqa: E402
from voxguard.embedders import create_embedder  # noqa: E402
from voxguard.windows import speech_windows  # noqa: E402


def telephone(x: np.ndarray) -> np.ndarray:
    """16 kHz -> 8 kHz µ-law (libsndfile) -> decoded -> 16 kHz, as the daemon hears a Twilio call."""
    coded = float_to_g711(resample(x, 16000, 8000), "pcm_mulaw")
    return resample(pcm_to_float(coded, "pcm_mulaw", 1)[:, 0], 8000, 16000)


def windows(emb, x: np.ndarray) -> np.ndarray:
    ws = [w.samples if hasattr(w, "samples") else w for w in speech_windows(x)]
    if not ws:
        return np.zeros((0, emb.dim), np.float32)
    v = np.asarray(emb.embed(ws), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def model(vecs: np.ndarray) -> np.ndarray:
    m = vecs.mean(axis=0)
    return m / np.linalg.norm(m)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--an4", type=Path, default=REPO.parent / "shared" / "datasets" / "an4")
    ap.add_argument("--speakers", type=int, default=10)
    ap.add_argument("--enroll", type=int, default=3)
    args = ap.parse_args()
    root = args.an4 / "wav" / "an4_clstk"
    spk = {d.name: sorted(d.glob("*.wav")) for d in sorted(root.iterdir()) if d.is_dir()}
    names = sorted(spk)[: args.speakers]
    emb = create_embedder("resemblyzer", device="cpu")
    # "band": what voxguard does — each recording is scored against the models of its own band
    # (telephone audio against the telephone-band models made from the enrollment's telephone views)
    models = {"wide": [], "wide+tel": [], "telephone band": []}
    tests = {"wide": [], "tel": []}
    for name in names:
        audio = [load_audio(p).samples for p in spk[name][: args.enroll]]
        wide = np.concatenate([windows(emb, a) for a in audio])
        tel = np.concatenate([windows(emb, telephone(a)) for a in audio])
        band = np.concatenate([windows(emb, telephone_simulation(a)) for a in audio])
        models["wide"].append(model(wide))
        models["wide+tel"].append(model(np.concatenate([wide, tel])))
        models["telephone band"].append(model(band))
        held = np.concatenate([load_audio(p).samples for p in spk[name][args.enroll: args.enroll + 3]])
        tests["wide"].append(windows(emb, held))
        tests["tel"].append(windows(emb, telephone(held)))
    rows = {}
    for m_name, ms in models.items():
        M = np.stack(ms)
        for t_name, ts in tests.items():
            if m_name == "telephone band" and t_name != "tel":
                continue
            right = sum(int((t @ M.T).argmax(axis=1).__eq__(i).sum()) for i, t in enumerate(ts))
            total = sum(len(t) for t in ts)
            rows[f"{t_name} audio vs {m_name} enrollment"] = {"top1": round(right / total, 4), "windows": total}
    print(json.dumps({"speakers": len(names), "enroll_utterances": args.enroll, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
