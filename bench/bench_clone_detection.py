"""Clone detection on AN4, speaker-disjoint: clones of held-out speakers, detectors trained
only on the other speakers.

    python bench/bench_clone_detection.py [--an4 DIR] [--heldout 24] [--figures /tmp/voxguard-clone-figures]

1. Split the 74 AN4 speakers (seeded) into training and held-out speakers.  Every
   training utterance is enrolled; held-out speakers get ``--enroll-per-speaker``
   utterances enrolled, the rest are their genuine test recordings.
2. Train the countermeasure + fusion on the training speakers only
   (``train_clone_detector``; clones generated there are never stored).
3. Make clones of each held-out speaker from its enrolled recordings: ``vocoder`` (WORLD
   resynthesis, pitch/tempo perturbed) and ``convert`` (other held-out speakers'
   test recordings and espeak-ng speech, converted towards the target).
4. Assess every test recording with ``CloneDetector.assess`` exactly as ``voxguard check``
   does (claimed = the target), per utterance and per 1.5 s window (the daemon's unit).

Reports detection at 1 % false alarm on held-out genuine audio, detection / false alarm
at the trained "high" level, the countermeasure's EER, per-window cost, and writes the
distributions and t-SNE figures (with clones) when ``voxguard.enroll.figures`` is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rate_at_fa(genuine: np.ndarray, clones: np.ndarray, fa: float) -> tuple[float, float]:
    """(threshold, detection rate) with the threshold at ``fa`` false alarms on genuine."""
    thr = float(np.quantile(genuine, 1 - fa))
    return thr, float((clones > thr).mean())


def main() -> int:
    from voxguard.enroll.clone_training import DEFAULT_CLONES_PER_BACKEND, DEFAULT_COMPONENTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--an4", default=os.environ.get("VOXGUARD_AN4", str(REPO.parent / "shared" / "datasets" / "an4")))
    ap.add_argument("--heldout", type=int, default=24, help="held-out speakers (default 24 of 74)")
    ap.add_argument("--enroll-per-speaker", type=int, default=6, help="enrolled utterances per held-out speaker")
    ap.add_argument("--train-clones", type=int, default=DEFAULT_CLONES_PER_BACKEND,
                    help="clones per backend per training speaker (default: the library's)")
    ap.add_argument("--test-clones", type=int, default=4, help="clones per backend per held-out speaker")
    ap.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help="GMM components (default: the library's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", default=str(Path(tempfile.gettempdir()) / "voxguard-clone-figures"))
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()

    from voxguard.audio import load_audio
    from voxguard.clone_detection import CloneDetector
    from voxguard.embedders import create_embedder
    from voxguard.enroll.clone_convert import ConvertCloner, Source
    from voxguard.enroll.clone_training import equal_error_rate, save_clone_detector, train_clone_detector
    from voxguard.enroll.clone_vocoder import VocoderCloner
    from voxguard.enroll.cloning import DEFAULT_TEXTS, Reference, TargetVoice, generate_clones
    from voxguard.enroll.enrollment import Enroller
    from voxguard.index import SpeakerIndex
    from voxguard.scoring import SpeakerScorer
    from voxguard.store import SpeakerStore
    from voxguard.utterance import embed_utterances
    from voxguard.windows import speech_windows

    wav = Path(a.an4) / "wav" / "an4_clstk"
    if not wav.is_dir():
        print(f"AN4 not found at {wav}", file=sys.stderr)
        return 2
    speakers = {d.name: sorted(d.glob("*.wav")) for d in sorted(wav.iterdir()) if d.is_dir()}
    rng = np.random.default_rng(a.seed)
    names = sorted(speakers)
    heldout = sorted(rng.choice(names, a.heldout, replace=False).tolist())
    train = [n for n in names if n not in heldout]
    tmp = Path(tempfile.mkdtemp(prefix="voxguard-bench-clone-"))
    t0 = time.perf_counter()
    emb = create_embedder("resemblyzer", device="cpu")
    store = SpeakerStore(tmp / "store.db")
    enr = Enroller(store, emb)
    test_genuine: dict[str, list[np.ndarray]] = {}
    for n in names:
        files = speakers[n]
        if n in heldout:
            enr.enroll(n, files[: a.enroll_per_speaker])
            test_genuine[n] = [load_audio(f).samples for f in files[a.enroll_per_speaker:]]
        else:
            enr.enroll(n, files)
    enr.refresh_index()
    t_enroll = time.perf_counter() - t0
    print(f"enrolled {len(train)} training + {len(heldout)} held-out speakers "
          f"({store.stats()['genuine_samples']} samples) in {t_enroll:.0f} s", flush=True)

    t0 = time.perf_counter()
    det = train_clone_detector(store, emb, speakers=train, clones_per_backend=a.train_clones,
                               n_components=a.components, seed=a.seed)
    t_train = time.perf_counter() - t0
    cid = save_clone_detector(store, det)
    print(f"trained on {len(train)} speakers in {t_train:.0f} s: {json.dumps(det.info)}", flush=True)

    # Held-out clones.
    t0 = time.perf_counter()
    vocoder = VocoderCloner(pitch_range=0.04, tempo_range=0.06)
    test_clones: dict[str, list[tuple[str, str, np.ndarray]]] = {n: [] for n in heldout}
    for k, n in enumerate(heldout):
        refs = tuple(Reference(i.id, store.sample_audio(i.id)) for i in store.samples(n, "genuine"))
        target = TargetVoice(n, refs)
        for c in generate_clones(vocoder, target, a.test_clones, seed=1000 + k):
            test_clones[n].append(("vocoder", c.source, c.audio))
        others = [o for o in heldout if o != n]
        srcs = [Source(o, f"{o} test #{j}", test_genuine[o][j % len(test_genuine[o])])
                for j, o in enumerate(rng.choice(others, max(1, a.test_clones - 1), replace=False))]
        for c in generate_clones(ConvertCloner(sources=srcs), target, len(srcs), seed=1000 + k):
            test_clones[n].append(("convert", c.source, c.audio))
        if shutil.which("espeak-ng"):
            conv = ConvertCloner(texts=[DEFAULT_TEXTS[(k + 5) % len(DEFAULT_TEXTS)]])
            for c in generate_clones(conv, target, 1, seed=1000 + k):
                test_clones[n].append(("convert", c.source, c.audio))
    t_clone = time.perf_counter() - t0

    # Assess utterances and windows.
    idx = SpeakerIndex.for_store(store, use_gpu=False)
    scorer = SpeakerScorer.for_store(store, idx)
    detector = CloneDetector.for_store(store, scorer.thresholds)
    assert detector.trained is not None and detector.source == f"calibration #{cid}"
    recs = [(n, "genuine", x) for n in heldout for x in test_genuine[n]]
    recs += [(n, b, x) for n in heldout for b, _, x in test_clones[n]]
    vecs = embed_utterances(emb, [x for _, _, x in recs])
    results = scorer.search(vecs, k=idx.n_speakers)
    utt = [detector.assess(r, n, x) for r, (n, _, x) in zip(results, recs)]
    kinds = np.array([k for _, k, _ in recs])
    fused = np.array([u.score for u in utt])
    cm = np.array([u.evidence.get("countermeasure_llr", 0.0) for u in utt])
    win_recs, win_audio = [], []
    for n, k, x in recs:
        for w in speech_windows(x):
            win_recs.append((n, k))
            win_audio.append(w.samples)
    wvecs = emb.embed(win_audio)
    wres = scorer.search(wvecs, k=idx.n_speakers)
    t0 = time.perf_counter()
    wass = detector.assess_batch(wres, [n for n, _ in win_recs], win_audio)
    per_window_ms = (time.perf_counter() - t0) / len(win_audio) * 1000
    t0 = time.perf_counter()
    for x in win_audio[:200]:
        detector.countermeasure.score_recording(x)
    cm_ms = (time.perf_counter() - t0) / min(200, len(win_audio)) * 1000
    wkinds = np.array([k for _, k in win_recs])
    wfused = np.array([w.score for w in wass])

    high = det.level_edges[2]
    report: dict = {"speakers": {"train": len(train), "heldout": len(heldout)},
                    "heldout_genuine": int((kinds == "genuine").sum()),
                    "heldout_clones": {b: int((kinds == b).sum()) for b in ("vocoder", "convert")},
                    "training": det.info, "level_edges": [round(e, 4) for e in det.level_edges]}
    for unit, ks, sc in (("utterance", kinds, fused), ("window", wkinds, wfused)):
        g = sc[ks == "genuine"]
        r = {"false_alarm_at_high": round(float((g >= high).mean()), 4)}
        for b in ("vocoder", "convert"):
            thr, det_rate = rate_at_fa(g, sc[ks == b], 0.01)
            r[b] = {"detection_at_1pct_fa": round(det_rate, 4), "threshold_1pct_fa": round(thr, 4),
                    "detection_at_high": round(float((sc[ks == b] >= high).mean()), 4),
                    "eer": round(equal_error_rate(g, sc[ks == b]), 4)}
        report[unit] = r
    g = cm[kinds == "genuine"]
    report["countermeasure"] = {
        "eer_all_clones": round(equal_error_rate(g, cm[kinds != "genuine"]), 4),
        **{f"eer_{b}": round(equal_error_rate(g, cm[kinds == b]), 4) for b in ("vocoder", "convert")},
        **{f"detection_at_1pct_fa_{b}": round(rate_at_fa(g, cm[kinds == b], 0.01)[1], 4) for b in ("vocoder", "convert")},
    }
    report["timing"] = {"enroll_s": round(t_enroll, 1), "train_s": round(t_train, 1),
                        "heldout_cloning_s": round(t_clone, 1), "countermeasure_ms_per_window": round(cm_ms, 2),
                        "assess_ms_per_window": round(per_window_ms, 2), "windows": len(win_audio)}

    # Figures: enroll the held-out clones (as known clones) into a copy for the t-SNE / distributions.
    try:
        from voxguard.enroll import figures  # noqa: F401
        have_figures = True
    except ImportError:
        have_figures = False
    if have_figures:
        report["figures"] = write_figures(store, emb, heldout, test_clones, Path(a.figures), a.seed)
    else:
        report["figures"] = "skipped: voxguard.enroll.figures is not available"

    print(json.dumps(report, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2))
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def write_figures(store, emb, heldout, test_clones, out: Path, seed: int) -> dict:
    """Distributions (same / different / clone) and t-SNE with the held-out clones enrolled."""
    from voxguard.enroll.calibration import CalibrationConfig, CalibrationInput, calibrate_input
    from voxguard.enroll.figures import distributions_figure, save_figure, tsne_figure
    from voxguard.store import NewSample
    from voxguard.utterance import embed_utterances

    import hashlib

    for n in heldout:
        audio = [x for _, _, x in test_clones[n]]
        vecs = embed_utterances(emb, audio)
        samples = [NewSample(hashlib.sha256(x.tobytes()).hexdigest(), v, len(x) / 16000,
                             provenance={"backend": b, "source": s})
                   for (b, s, x), v in zip(test_clones[n], vecs)]
        store.add_samples(n, "clone", samples, emb.identity)
    table = store.embeddings()
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {}
    try:
        result = calibrate_input(CalibrationInput.from_table(table), CalibrationConfig(backend="cosine"))
        fig = distributions_figure(result.cosine_trials, {"backend": "cosine", **result.thresholds},
                                   "AN4: same / different speaker and vocoder+convert clones (cosine)")
        written["distributions"] = [str(p) for p in save_figure(fig, out, "clone_distributions")]
    except Exception as e:  # the calibration API is another module's; report rather than fail the bench
        written["distributions"] = f"failed: {type(e).__name__}: {e}"
    chosen = sorted(np.random.default_rng(seed).choice(heldout, min(8, len(heldout)), replace=False).tolist())
    fig = tsne_figure(table, chosen, seed)
    written["tsne"] = [str(p) for p in save_figure(fig, out, "clone_tsne")]
    written["tsne_speakers"] = chosen
    return written


if __name__ == "__main__":
    sys.exit(main())
