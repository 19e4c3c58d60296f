"""Do decisions hold on speakers and recordings the calibration never saw?

:func:`evaluate_decisions` splits the store's speakers three ways (seeded):

* **training** speakers — the calibration (backend, cohort, every LLR map) is made from
  them alone, exactly as ``voxguard calibrate`` would;
* **enrolled test** speakers — enrolled with ``enroll`` utterances each after calibration;
  their other utterances are probes that should be identified;
* **unenrolled test** speakers — never enrolled; every utterance of theirs is a probe that
  should come back ``unknown``.

The identification store holds the training speakers, the enrolled test speakers and, to
reach ``min_speakers``, *distractor* speakers: speed-perturbed copies of training speakers
(resampled by 0.88 or 1.12, which moves pitch and formants — the usual way speaker
recognition makes new speakers from old ones).

Every probe is decided by :class:`voxguard.recognizer.Recognizer` — the code ``identify``
runs — in several **conditions**: as recorded (``clean``), as an 8 kHz G.711 µ-law call
encoded by ffmpeg (``telephone``: its band is detected from the audio, as for any file),
and through each channel of :data:`voxguard.channels.HELDOUT_CHANNELS` (codecs, noise,
reverberation and gain kept out of every training).  Per condition it reports the rate of
unenrolled probes wrongly named, of enrolled probes identified correctly / missed
(``unknown``) / misidentified, closed-set top-1, and — on the clean and telephone probes —
held-out EER, minDCF and Cllr of the utterance, window and pair trial types with the
threshold's real FAR/FRR next to what the calibration stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import SAMPLE_RATE
from ..audio import Audio, resample
from ..bands import BANDS, TELEPHONE, WIDE
from ..channels import HELDOUT_CHANNELS, apply_chain, channel, ffmpeg_available, ffmpeg_roundtrip
from ..embedders.base import l2_normalise
from ..index import SpeakerIndex
from ..llr import cllr, eer_point, min_dcf
from ..recognizer import Recognizer
from ..scoring import Calibration, thresholds_from_calibration
from ..store import Store
from ..utterance import embed_band_views
from .calibration import CalibrationConfig, CalibrationError, CalibrationInput, calibrate_input
from .decision_trials import BandSamples, pair_trials
from .evaluation import choose_test_speakers

DISTRACTOR_SPEEDS = (0.88, 1.12)


@dataclass
class Probe:
    speaker: str
    enrolled: bool
    audio: np.ndarray  # 16 kHz


def _telephone_file(x: np.ndarray) -> Audio:
    """What a file from a phone system decodes to: 8 kHz µ-law by ffmpeg, read back at 8 kHz
    and resampled to 16 kHz by voxguard's own decoder path."""
    coded16 = ffmpeg_roundtrip(x, ["-c:a", "pcm_mulaw"], "mulaw", 8000) if ffmpeg_available() else \
        channel("mulaw-8k").apply(x, 0)
    return Audio(coded16, SAMPLE_RATE, 8000, 1)


def condition_audio(x: np.ndarray, condition: str, seed: int) -> Audio:
    if condition == "clean":
        return Audio(np.asarray(x, np.float32), SAMPLE_RATE, SAMPLE_RATE, 1)
    if condition == "telephone":
        return _telephone_file(x)
    return Audio(apply_chain(x, [condition], seed), SAMPLE_RATE, SAMPLE_RATE, 1)


def _distractors(store: Store, embedder, speakers: list[str], need: int, seed: int,
                 per_speaker: int = 8) -> dict[str, list[dict[str, np.ndarray]]]:
    """Band views of speed-perturbed copies of ``speakers`` (``need`` new speakers)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, np.ndarray]]] = {}
    picks = [(s, f) for f in DISTRACTOR_SPEEDS for s in rng.permutation(speakers)][:need]
    for spk, factor in picks:
        recs = []
        for info in store.samples(spk, kind="genuine")[:per_speaker]:
            audio = store.sample_audio(info.id)
            if audio is not None:
                recs.append(resample(audio, SAMPLE_RATE, int(round(SAMPLE_RATE * factor))))
        if recs:
            out[f"{spk}~speed{factor}"] = embed_band_views(embedder, recs)
    return out


def _index(names: list[str], views: dict[str, list[dict[str, np.ndarray]]], store: Store) -> SpeakerIndex:
    """An in-memory index whose speaker models are the mean utterance embedding per band."""
    dim = store.embedder.dim
    cents = {b: np.zeros((len(names), dim)) for b in BANDS}
    vecs, owners = [], []
    for i, n in enumerate(names):
        for v in views[n]:
            for b in BANDS:
                u = l2_normalise(v[b].mean(axis=0, keepdims=True))[0]
                cents[b][i] += u
            vecs.append(l2_normalise(v[WIDE].mean(axis=0, keepdims=True))[0])
            owners.append(i)
    vecs = np.asarray(vecs, np.float32)
    return SpeakerIndex(names, l2_normalise(cents[WIDE]), np.arange(len(vecs)), np.asarray(owners, np.int32),
                        np.zeros(len(vecs), np.int8), vecs, store.store_id, store.revision, None, use_gpu=False,
                        band_centroids={b: l2_normalise(c) for b, c in cents.items() if b != WIDE})


def evaluate_decisions(store: Store, embedder, test_speakers: int = 20, enroll: int = 5, seed: int = 0,
                       config: CalibrationConfig | None = None, min_speakers: int = 90,
                       conditions: tuple[str, ...] | None = None) -> dict:
    """Open-set identification and calibration quality on held-out speakers (module docstring)."""
    config = config or CalibrationConfig()
    if store.embedder is None:
        raise CalibrationError("the store is empty: nothing to evaluate")
    store.check_embedder(embedder.identity)
    if conditions is None:
        conditions = ("clean", "telephone") + HELDOUT_CHANNELS
    table = store.embeddings("genuine")
    views = {b: store.views(b, kind="genuine") for b in BANDS}
    everything = CalibrationInput.from_table(table, views=views)
    if set(everything.bands) != set(BANDS) or everything.bands[WIDE].windows is None:
        raise CalibrationError("the store lacks band views; run 'voxguard calibrate' once to add them")
    names, counts = np.unique(everything.gen_spk, return_counts=True)
    test = choose_test_speakers(names.tolist(), dict(zip(names.tolist(), counts.tolist())), test_speakers,
                                enroll, seed)
    rng = np.random.default_rng(seed)
    enrolled_test = sorted(rng.choice(test, len(test) // 2, replace=False).tolist())
    unenrolled = sorted(set(test) - set(enrolled_test))
    train = sorted(set(names.tolist()) - set(test))
    # calibration on the training speakers only
    result = calibrate_input(CalibrationInput.from_table(table, set(train), views), config)
    cal = Calibration.from_record("evaluation", result.data,
                                  None if result.backend.name == "cosine" else result.backend,
                                  thresholds_from_calibration(0, result.data))
    # the identification store: training speakers (all samples), enrolled test speakers
    # (``enroll`` samples), distractors
    per_sample = {int(i): n for n, i in enumerate(table.ids)}
    sample_views: dict[str, list[dict[str, np.ndarray]]] = {}
    probes: list[Probe] = []
    samples = store.samples(kind="genuine")
    by_speaker: dict[str, list] = {}
    for info in samples:
        by_speaker.setdefault(info.speaker, []).append(info)
    view_of = {b: {int(i): w for i, w in zip(views[b].ids, views[b].windows)} for b in BANDS}
    for spk in train + enrolled_test:
        infos = by_speaker[spk]
        if spk in enrolled_test:
            order = rng.permutation(len(infos))
            enrolled_infos = [infos[i] for i in order[:enroll]]
            for i in order[enroll:]:
                probes.append(Probe(spk, True, store.sample_audio(infos[i].id)))
        else:
            enrolled_infos = infos
        sample_views[spk] = [{b: view_of[b][s.id] for b in BANDS} for s in enrolled_infos if s.id in per_sample]
    for spk in unenrolled:
        probes += [Probe(spk, False, store.sample_audio(i.id)) for i in by_speaker[spk]]
    need = max(0, min_speakers - len(sample_views))
    sample_views.update(_distractors(store, embedder, train, need, seed))
    index = _index(sorted(sample_views), sample_views, store)
    rec = Recognizer(embedder, index, cal)
    report = {"split": {"seed": seed, "train_speakers": len(train), "enrolled_test_speakers": enrolled_test,
                        "unenrolled_test_speakers": unenrolled, "distractor_speakers": need,
                        "enrolled_speakers": index.n_speakers, "enroll_utterances": enroll,
                        "enrolled_probes": sum(p.enrolled for p in probes),
                        "unenrolled_probes": sum(not p.enrolled for p in probes)},
              "calibration": {"backend": cal.backend_name, "open_set_alpha": cal.open_set_alpha,
                              "far_target": config.far_target},
              "conditions": {}, "trials": {}}
    for ci, cond in enumerate(conditions):
        audios = [condition_audio(p.audio, cond, seed * 1000 + ci * 100 + n) for n, p in enumerate(probes)]
        embedded = rec.embed(audios)
        decided = [rec.identify(e, k=5) for e in embedded]
        enr = [(p, d) for p, d in zip(probes, decided) if p.enrolled]
        une = [d for p, d in zip(probes, decided) if not p.enrolled]
        bands = [e.band for e in embedded]
        report["conditions"][cond] = {
            "unenrolled_named": float(np.mean([d["speaker"] is not None for d in une])) if une else None,
            "enrolled_correct": float(np.mean([d["speaker"] == p.speaker for p, d in enr])) if enr else None,
            "enrolled_unknown": float(np.mean([d["speaker"] is None for _, d in enr])) if enr else None,
            "enrolled_wrong": float(np.mean([d["speaker"] not in (None, p.speaker) for p, d in enr])) if enr else None,
            "top1": float(np.mean([d["best"] == p.speaker for p, d in enr])) if enr else None,
            "telephone_band_share": float(np.mean([b == TELEPHONE for b in bands])),
        }
        if cond in ("clean", "telephone"):
            report["trials"][cond] = _trial_quality(rec, cal, probes, embedded, enrolled_test, index)
    worst = [c for c in report["conditions"].values() if c["unenrolled_named"] is not None]
    report["summary"] = {
        "max_unenrolled_named": max(c["unenrolled_named"] for c in worst) if worst else None,
        "min_enrolled_correct": min(c["enrolled_correct"] for c in worst) if worst else None,
        "clean": report["conditions"].get("clean"), "telephone": report["conditions"].get("telephone")}
    return report


def _trial_quality(rec: Recognizer, cal: Calibration, probes: list[Probe], embedded, enrolled_test: list[str],
                   index: SpeakerIndex) -> dict:
    """Held-out EER / minDCF / Cllr per trial type, and the operating point's real FAR/FRR."""
    band = embedded[0].band
    enr = [i for i, p in enumerate(probes) if p.enrolled]
    cols = [index.speaker_names.index(s) for s in enrolled_test]
    q = np.stack([embedded[i].vector for i in enr])
    scores = rec.scorer.score_all(q, band)[:, cols]
    truth = np.array([enrolled_test.index(probes[i].speaker) for i in enr])
    mask = np.zeros_like(scores, dtype=bool)
    mask[np.arange(len(truth)), truth] = True
    out = {"utterance": _quality(cal.trial("utterance", band), scores[mask], scores[~mask])}
    # pairs among all probes (enrolled and unenrolled test speakers)
    spk = np.array([p.speaker for p in probes])
    be = cal.backend
    from ..backend import ScoreBackend

    data = BandSamples(np.stack([e.vector for e in embedded]).astype(np.float64), spk)
    _, own = np.unique(spk, return_inverse=True)
    tar, non = pair_trials(be or ScoreBackend("cosine"), data, own, np.random.default_rng(0))
    out["pair"] = _quality(cal.trial("pair", band), tar, non)
    return {"band": band, **out}


def _quality(tc, tar: np.ndarray, non: np.ndarray) -> dict:
    if tc is None or not len(tar) or not len(non):
        return {}
    lt, ln = tc.llr(tar), tc.llr(non)
    return {"calibration": tc.label(), "eer": eer_point(tar, non)["eer"], "min_dcf": min_dcf(tar, non), "cllr": cllr(lt, ln),
            "far": float((ln >= tc.accept_llr).mean()), "frr": float((lt < tc.accept_llr).mean()),
            "stated_far": tc.far, "stated_frr": tc.frr, "targets": int(len(tar)), "nontargets": int(len(non))}
