"""Speaker- and channel-disjoint evaluation of the clone detector (``voxguard evaluate-clones``,
``bench/bench_clone_detection.py``).

1. The store's speakers are split: held-out speakers keep their first ``enroll`` genuine
   samples as enrolled references, the rest are their genuine *test* recordings; the
   detector is trained (:func:`~voxguard.enroll.clone_training.build_training_items`,
   :func:`~voxguard.enroll.clone_training.fit_detector`) on the other speakers only and
   never sees the test recordings, nor the channels of
   :data:`voxguard.channels.HELDOUT_CHANNELS`.
2. Test spoofs: clones of every held-out speaker in each family (from its enrolled
   references; ``convert`` from other held-out speakers' enrolled audio), plus any
   ``extra_clones`` the caller brings (e.g. a "known system" whose earlier clones are
   enrolled as known clones).
3. Every test recording is heard clean and through each held-out channel, and assessed as
   ``voxguard check`` does (the target claimed) and window by window as the daemon does;
   windows of one speaker, kind and channel form a *stream* run through the daemon's
   :class:`~voxguard.daemon.decisions.CloneTracker`.

Reported: false alarms of held-out genuine speech through held-out channels (utterances,
windows, per hour of streamed speech: observed, and on long resampled streams),
detection per family at the trained levels and at 1 % false alarm, per channel, per
window and per session, leave-one-family-out, and the countermeasure models compared;
figures (LLR distributions by family and by channel, PNG + SVG).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..channels import HELDOUT_CHANNELS, apply_chain
from ..clone_detection import CloneDetector, SpeakerScore, embedding_stats
from ..embedders.base import l2_normalise
from ..errors import VoxguardError
from ..index import SearchResult
from ..scoring import Thresholds
from .clone_training import (DEFAULT_CLONES_PER_FAMILY, DEFAULT_COMPONENTS, FAMILIES, TrainingSet,
                             build_training_items, detection_at_fa, equal_error_rate, fit_detector,
                             frames_score, make_family_clones, recording_frames, window_chunks, _embed)
from .cloning import Reference, TargetVoice

HOP_S = 0.5
"""Seconds of new speech per daemon window (the default hop)."""
GENUINE = "genuine"


@dataclass
class TestRecording:
    speaker: str
    kind: str  # genuine | <family> | <extra kind>
    channel: str
    source: int  # index of the underlying recording (the same for all its channels)
    frames: np.ndarray = field(repr=False)
    embedding: np.ndarray = field(repr=False)
    windows: np.ndarray = field(repr=False)
    seconds: float = 0.0


@dataclass
class TestSet:
    recordings: list[TestRecording]
    pools: dict[str, tuple[np.ndarray, np.ndarray]]  # speaker -> (genuine vectors, clone vectors), clean, stored
    emb_stats: dict[str, tuple[float, float]]
    speakers: list[str]
    channels: list[str]


def split_speakers(store, heldout: int | Sequence[str], enroll: int, seed: int) -> tuple[list[str], list[str], set[int]]:
    """(training speakers, held-out speakers, ids of the held-out test samples)."""
    genuine: dict[str, list[int]] = {}
    for info in store.samples(kind="genuine"):
        genuine.setdefault(info.speaker, []).append(info.id)
    names = sorted(genuine)
    if isinstance(heldout, int):
        eligible = [n for n in names if len(genuine[n]) > enroll]
        if len(eligible) < heldout:
            raise VoxguardError(f"evaluating the clone detector on {heldout} held-out speakers needs {heldout} "
                                f"speakers with more than {enroll} genuine samples; the store has {len(eligible)}")
        rng = np.random.default_rng(seed)
        held = sorted(rng.choice(eligible, heldout, replace=False).tolist())
    else:
        held = sorted(heldout)
    train = [n for n in names if n not in held]
    test_ids = {i for n in held for i in sorted(genuine[n])[enroll:]}
    return train, held, test_ids


def build_test_set(store, embedder, held: list[str], test_ids: set[int], test_clones: int = 2,
                   families: Sequence[str] = FAMILIES, channels: Sequence[str] = HELDOUT_CHANNELS,
                   extra_clones: dict[str, dict[str, list[np.ndarray]]] | None = None, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> TestSet:
    rng = np.random.default_rng(seed + 17)
    table = store.embeddings()
    keep = np.array([int(i) not in test_ids for i in table.ids], dtype=bool)
    spk = np.asarray(table.speakers)
    kinds = np.asarray(table.kinds)
    vecs = l2_normalise(np.asarray(table.vectors, np.float64))
    pools = {s: (vecs[keep & (spk == s) & (kinds == "genuine")], vecs[keep & (spk == s) & (kinds == "clone")])
             for s in held}
    emb_stats = embedding_stats(type(table)(table.ids[keep], list(spk[keep]), list(kinds[keep]), table.vectors[keep]))
    refs: dict[str, list[Reference]] = {s: [] for s in held}
    originals: list[tuple[str, str, np.ndarray]] = []
    for s in held:
        for info in store.samples(s, "genuine"):
            audio = store.sample_audio(info.id)
            if audio is None:
                continue
            if info.id in test_ids:
                originals.append((s, GENUINE, audio))
            else:
                refs[s].append(Reference(info.id, audio))
    targets = {s: TargetVoice(s, tuple(r)) for s, r in refs.items() if len(r) >= 1}
    for n, s in enumerate(held):
        if s not in targets:
            continue
        if progress:
            progress(f"test clones of {s} ({n + 1}/{len(held)})")
        others = {o: targets[o] for o in targets if o != s}
        for fam in families:
            for c in make_family_clones(fam, targets[s], test_clones, others, rng, 100003 + n * 31 + FAMILIES.index(fam)):
                originals.append((s, fam, c.audio))
    for kind, per in (extra_clones or {}).items():
        for s, audios in per.items():
            originals += [(s, kind, a) for a in audios]
    recs: list[TestRecording] = []
    t0 = time.perf_counter()
    chans = ["clean", *channels]
    for ci, ch in enumerate(chans):
        if progress:
            progress(f"channel {ch} ({ci + 1}/{len(chans)}) for {len(originals)} recordings "
                     f"({time.perf_counter() - t0:.0f} s)")
        audios = [a if ch == "clean" else apply_chain(a, (ch,), seed=seed * 7 + i) for i, (_, _, a) in enumerate(originals)]
        emb, wins = _embed(embedder, audios)
        for i, ((s, kind, _), a) in enumerate(zip(originals, audios)):
            recs.append(TestRecording(s, kind, ch, i, recording_frames(a), emb[i], wins[i], len(a) / 16000))
    return TestSet(recs, pools, emb_stats, held, chans)


def _score(target: str, q: np.ndarray, pools) -> SpeakerScore:
    g, c = pools[target]
    q = q / (np.linalg.norm(q) + 1e-12)
    centroid = g.mean(0)
    centroid /= np.linalg.norm(centroid) + 1e-12
    return SpeakerScore(target, float(centroid @ q), float((g @ q).max()) if len(g) else None,
                        float((c @ q).max()) if len(c) else None)


@dataclass
class Scored:
    """LLRs of every test recording (and its windows) under one detector."""

    llr: np.ndarray  # [recordings]
    level: list[str]
    cm: np.ndarray
    window_llr: list[np.ndarray]
    window_level: list[list[str]]
    detector: CloneDetector


def score_test_set(det, test: TestSet, windows: bool = True) -> Scored:
    detector = CloneDetector(Thresholds(accept=0.0, source="evaluation"), trained=det, source="evaluation",
                             emb_stats=test.emb_stats)
    cm = det.countermeasure
    llr, level, cms, wl, wlev = [], [], [], [], []
    for r in test.recordings:
        c = frames_score(cm, r.frames)
        a = detector.assess(SearchResult([_score(r.speaker, r.embedding, test.pools)], []), r.speaker, cm_score=c)
        llr.append(a.llr)
        level.append(a.level)
        cms.append(c)
        if windows:
            chunks = window_chunks(r.frames)
            ws = [detector.assess(SearchResult([_score(r.speaker, w, test.pools)], []), r.speaker, window=True,
                                  cm_score=frames_score(cm, chunks[min(k, len(chunks) - 1)]))
                  for k, w in enumerate(r.windows)]
            wl.append(np.array([w.llr for w in ws]))
            wlev.append([w.level for w in ws])
    return Scored(np.array(llr), level, np.array(cms), wl, wlev, detector)


def _r(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def run_sessions(scored: Scored, test: TestSet, select) -> list[dict]:
    """Streams: windows of one (speaker, kind, channel), recordings in order, through a CloneTracker."""
    from ..daemon.decisions import CloneTracker
    from ..clone_detection import CloneAssessment, sigmoid

    streams: dict[tuple, list[int]] = {}
    for i, r in enumerate(test.recordings):
        if select(r):
            streams.setdefault((r.speaker, r.kind, r.channel), []).append(i)
    rule = scored.detector.session
    out = []
    for key, idx in streams.items():
        t = CloneTracker()
        first = None
        n = 0
        for i in idx:
            for x in scored.window_llr[i]:
                t.update(CloneAssessment(sigmoid(x), "none", key[0], {}, float(x), rule))
                n += 1
                if first is None and t.level in ("medium", "high"):
                    first = n
        out.append({"speaker": key[0], "kind": key[1], "channel": key[2], "windows": n,
                    "seconds": n * HOP_S, "alarms": t.alarms, "max_level": t.max_level,
                    "windows_to_medium": first})
    return out


def long_genuine_streams(scored: Scored, test: TestSet, hours: float, seed: int) -> dict:
    """Resampled long genuine calls: per (speaker, held-out channel), recordings drawn with
    replacement (window order kept inside each) until ``hours`` of speech in total."""
    from ..daemon.decisions import CloneTracker
    from ..clone_detection import CloneAssessment, sigmoid

    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(test.recordings):
        if r.kind == GENUINE and r.channel != "clean" and len(scored.window_llr[i]):
            groups.setdefault((r.speaker, r.channel), []).append(i)
    keys = sorted(groups)
    if not keys:
        return {}
    per = hours * 3600 / HOP_S / len(keys)
    rule = scored.detector.session
    alarms = {"medium": 0, "high": 0}
    total = 0
    for key in keys:
        t = CloneTracker()
        n = 0
        before = "none"
        highs = 0
        while n < per:
            i = groups[key][int(rng.integers(len(groups[key])))]
            for x in scored.window_llr[i]:
                t.update(CloneAssessment(sigmoid(x), "none", key[0], {}, float(x), rule))
                n += 1
                if t.level == "high" and before != "high":
                    highs += 1
                before = t.level
        alarms["medium"] += t.alarms
        alarms["high"] += highs
        total += n
    h = total * HOP_S / 3600
    return {"hours": round(h, 1), "streams": len(keys), "alarms_medium_or_high": alarms["medium"],
            "alarms_high": alarms["high"], "per_10_hours": round(alarms["medium"] / h * 10, 3)}


def summarise(scored: Scored, test: TestSet, det) -> dict:
    recs = test.recordings
    kinds = np.array([r.kind for r in recs])
    chans = np.array([r.channel for r in recs])
    lev = np.array(scored.level)
    heldch = chans != "clean"
    gen = (kinds == GENUINE) & heldch
    spoof_kinds = sorted({k for k in kinds if k != GENUINE})
    edges = det.utterance_edges
    out: dict = {"utterances": {"genuine_heldout_channels": int(gen.sum()),
                                "false_alarm_medium_or_high": _r(np.isin(lev[gen], ("medium", "high")).mean()),
                                "false_alarm_high": _r((lev[gen] == "high").mean()),
                                "false_alarm_low_or_more": _r((lev[gen] != "none").mean())}}
    per_family = {}
    for k in spoof_kinds:
        m = (kinds == k) & heldch
        per_family[k] = {"n": int(m.sum()),
                         "detected_medium_or_high": _r(np.isin(lev[m], ("medium", "high")).mean()),
                         "detection_at_1pct_fa": _r(detection_at_fa(scored.llr[gen], scored.llr[m])),
                         "eer": _r(equal_error_rate(scored.llr[gen], scored.llr[m])),
                         "cm_eer": _r(equal_error_rate(scored.cm[gen], scored.cm[m]))}
    out["utterances"]["per_family"] = per_family
    per_channel = {}
    for ch in test.channels:
        g = (kinds == GENUINE) & (chans == ch)
        row = {"genuine_n": int(g.sum()), "false_alarm_medium_or_high": _r(np.isin(lev[g], ("medium", "high")).mean())}
        for k in spoof_kinds:
            m = (kinds == k) & (chans == ch)
            row[k] = _r(detection_at_fa(scored.llr[g], scored.llr[m]))
        per_channel[ch] = row
    out["utterances"]["per_channel_detection_at_1pct_fa"] = per_channel
    # windows
    wk = np.concatenate([[r.kind] * len(w) for r, w in zip(recs, scored.window_llr)])
    wc = np.concatenate([[r.channel] * len(w) for r, w in zip(recs, scored.window_llr)])
    wl = np.concatenate(scored.window_llr)
    wlev = np.concatenate([np.array(x, dtype=object) for x in scored.window_level])
    wg = (wk == GENUINE) & (wc != "clean")
    out["windows"] = {"genuine_heldout_channels": int(wg.sum()),
                      "false_alarm_medium_or_high": _r(np.isin(wlev[wg], ("medium", "high")).mean()),
                      "per_family_detection_at_1pct_fa": {
                          k: _r(detection_at_fa(wl[wg], wl[(wk == k) & (wc != "clean")])) for k in spoof_kinds}}
    # sessions
    sessions = run_sessions(scored, test, lambda r: r.channel != "clean")
    gs = [s for s in sessions if s["kind"] == GENUINE]
    hours = sum(s["seconds"] for s in gs) / 3600
    alarms = sum(s["alarms"] for s in gs)
    out["sessions"] = {
        "genuine_streams": len(gs), "genuine_hours": round(hours, 3), "genuine_alarms_medium_or_high": alarms,
        "genuine_alarms_per_10_hours": _r(alarms / hours * 10) if hours else None,
        "per_family": {k: {"streams": len(ss), "detected_medium_or_high": _r(np.mean([s["max_level"] in ("medium", "high") for s in ss])),
                           "median_seconds_to_medium": _r(np.median([s["windows_to_medium"] * HOP_S for s in ss
                                                                      if s["windows_to_medium"]]))
                           if any(s["windows_to_medium"] for s in ss) else None}
                       for k in spoof_kinds for ss in [[s for s in sessions if s["kind"] == k]]},
        "stated_hours_per_false_alarm": dict(zip(("low", "medium", "high"), det.session.hours_per_false_alarm)),
        "offset": _r(det.session.offset)}
    out["utterance_edges"] = {k: [round(x, 3) for x in e] for k, e in edges.items()}
    out["window_edges"] = {k: [round(x, 3) for x in e] for k, e in det.window_edges.items()}
    return out


def write_figures(scored: Scored, test: TestSet, out: Path, stem: str = "clone") -> dict:
    from .figures import _plt, check_output_dir, save_figure

    plt = _plt()
    out = check_output_dir(out)
    recs = test.recordings
    kinds = np.array([r.kind for r in recs])
    chans = np.array([r.channel for r in recs])
    edges = scored.detector.trained.utterance_edges["no_known_clones"]
    written = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo, hi = np.percentile(scored.llr, [0.5, 99.5])
    bins = np.linspace(lo, hi, 50)
    for k in [GENUINE] + sorted(set(kinds) - {GENUINE}):
        m = (kinds == k) & (chans != "clean")
        ax.hist(scored.llr[m], bins=bins, histtype="step", density=True, lw=2 if k == GENUINE else 1.3,
                color="black" if k == GENUINE else None, label=f"{k} ({m.sum()})")
    for e, name in zip(edges, ("low", "medium", "high")):
        ax.axvline(e, ls="--", lw=0.8, color="grey")
        ax.text(e, ax.get_ylim()[1] * 0.95, name, rotation=90, va="top", fontsize=7)
    ax.set_xlabel("clone LLR (utterance)")
    ax.set_ylabel("density")
    ax.set_title("Held-out speakers through held-out channels: clone LLR by family")
    ax.legend(fontsize=8)
    written["by_family"] = [str(p) for p in save_figure(fig, out, f"{stem}_llr_by_family")]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    data, labels, colours = [], [], []
    for ch in test.channels:
        for k, col in ((GENUINE, "#4477aa"), ("spoof", "#cc3311")):
            m = (chans == ch) & ((kinds == GENUINE) if k == GENUINE else (kinds != GENUINE))
            data.append(scored.llr[m])
            labels.append(f"{ch}\n{k}")
            colours.append(col)
    bp = ax.boxplot(data, patch_artist=True, showfliers=False)
    for patch, col in zip(bp["boxes"], colours):
        patch.set_facecolor(col)
        patch.set_alpha(0.6)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=90, fontsize=7)
    ax.axhline(edges[1], ls="--", color="grey", lw=0.8)
    ax.set_ylabel("clone LLR (utterance)")
    ax.set_title("Clone LLR by channel (blue genuine, red spoofs; dashed: medium)")
    written["by_channel"] = [str(p) for p in save_figure(fig, out, f"{stem}_llr_by_channel")]
    plt.close(fig)
    return written


def evaluate_clones(store, embedder, heldout: int | Sequence[str] = 10, enroll: int = 5, seed: int = 0,
                    clones_per_family: int = DEFAULT_CLONES_PER_FAMILY, test_clones: int = 2,
                    n_components: int = DEFAULT_COMPONENTS, models: Sequence[str] = ("lfcc-gmm",),
                    lofo: bool = True, families: Sequence[str] = FAMILIES,
                    channels: Sequence[str] = HELDOUT_CHANNELS,
                    extra_clones: dict[str, dict[str, list[np.ndarray]]] | None = None,
                    figures: str | Path | None = None, long_hours: float = 100.0,
                    progress: Callable[[str], None] | None = None,
                    prepared: tuple[TrainingSet, TestSet] | None = None) -> dict:
    """The clone-detection report (see the module docstring); ``prepared`` reuses built data."""
    t0 = time.perf_counter()
    train, held, test_ids = split_speakers(store, heldout, enroll, seed)
    if prepared is None:
        ts = build_training_items(store, embedder, train, clones_per_family, families, seed=seed,
                                  progress=progress, exclude_samples=test_ids)
        test = build_test_set(store, embedder, held, test_ids, test_clones, families, channels, extra_clones, seed,
                              progress)
    else:
        ts, test = prepared
    report: dict = {"speakers": {"train": len(train), "heldout": len(held)},
                    "test_recordings": len({(r.kind, r.source) for r in test.recordings}),
                    "channels": {"train": ts.info["channels"], "heldout": list(channels)},
                    "prepare_s": round(time.perf_counter() - t0, 1), "models": {}}
    best, best_key, dets = None, -1.0, {}
    for m in models:
        if progress:
            progress(f"training {m}")
        det = fit_detector(ts, n_components, seed, model=m, progress=progress)
        scored = score_test_set(det, test)
        summ = summarise(scored, test, det)
        summ["training"] = det.info
        report["models"][m] = summ
        fams = [v["detection_at_1pct_fa"] for v in summ["utterances"]["per_family"].values()]
        key = float(np.nanmean([f for f in fams if f is not None])) if fams else 0.0
        summ["mean_family_detection_at_1pct_fa"] = round(key, 4)
        dets[m] = (det, scored)
        if key > best_key:
            best, best_key = m, key
    report["best_model"] = best
    det, scored = dets[best]
    report["long_streams"] = long_genuine_streams(scored, test, long_hours, seed)
    if lofo:
        out = {}
        for fam in sorted({r.kind for r in test.recordings if r.kind in families}):
            if progress:
                progress(f"leave-one-family-out: {fam}")
            d = fit_detector(ts, n_components, seed, model=best, exclude_families=[fam])
            s = score_test_set(d, test, windows=False)
            kinds = np.array([r.kind for r in test.recordings])
            held_ch = np.array([r.channel != "clean" for r in test.recordings])
            g, f = (kinds == GENUINE) & held_ch, (kinds == fam) & held_ch
            lev = np.array(s.level)
            out[fam] = {"detected_medium_or_high": _r(np.isin(lev[f], ("medium", "high")).mean()),
                        "genuine_false_alarm_medium_or_high": _r(np.isin(lev[g], ("medium", "high")).mean()),
                        "detection_at_1pct_fa": _r(detection_at_fa(s.llr[g], s.llr[f]))}
        report["leave_one_family_out"] = out
    if figures is not None:
        report["figures"] = write_figures(scored, test, Path(figures))
    report["total_s"] = round(time.perf_counter() - t0, 1)
    return report
