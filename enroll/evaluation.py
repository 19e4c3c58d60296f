"""Speaker-disjoint evaluation: calibrate on some speakers, measure on the others.

The held-out ("test") speakers never reach the backend, its cohort or the thresholds.
For each backend (raw cosine as the reference, and the chosen one) it reports:

* single-utterance verification over every pair of held-out genuine utterances: EER and
  minDCF (p_target = 0.01, C_miss = C_fa = 1);
* identification among the held-out speakers, each enrolled with ``enroll`` utterances
  (its model is their normalised mean) and tested on the rest: top-1 / top-5, scored
  through :class:`voxguard.scoring.SpeakerScorer` exactly as ``identify`` and the daemon do;
* utterance-vs-model verification on those trials: EER, minDCF, and the false-accept /
  false-reject rates at the thresholds calibrated on the training speakers;
* when held-out speakers have known clones: the share of clones rejected (score below
  ``accept``) and flagged (score below ``clone_upper``: rejected or in the clone band);
* a per-speaker breakdown.

The store is only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import ScoreBackend
from ..embedders.base import l2_normalise
from ..index import SpeakerIndex
from ..llr import TrialCalibration, cllr
from ..scoring import SpeakerScorer, Thresholds
from ..store import Store
from .calibration import (CalibrationConfig, CalibrationError, CalibrationInput, calibrate_input,
                          eer_point, error_rates, min_dcf, with_backend)

REFERENCE_BACKEND = "cosine"


@dataclass
class BackendEvaluation:
    """Measurements of one backend on the held-out speakers; score arrays kept for checks."""

    backend: str
    thresholds: dict  # calibrated on the training speakers
    summary: dict
    per_speaker: list[dict]
    pair_scores: np.ndarray  # single-utterance pairs
    pair_same: np.ndarray  # bool, same speaker
    model_scores: np.ndarray  # [n_test_utterances, n_test_speakers]
    model_truth: np.ndarray  # column of each row's speaker
    clone_scores: np.ndarray  # clone utterances vs their target's model
    trained: ScoreBackend  # the backend trained on the training speakers


@dataclass
class EvaluationResult:
    split: dict
    results: list[BackendEvaluation] = field(default_factory=list)

    def summary(self) -> dict:
        out = {"split": self.split, "backends": {r.backend: r.summary for r in self.results}}
        if len(self.results) >= 2:
            ref, best = self.results[0].summary, self.results[-1].summary
            out["relative_eer_reduction"] = _rel(ref["pair_eer"], best["pair_eer"])
        return out

    def report(self) -> dict:
        s = self.summary()
        s["thresholds"] = {r.backend: r.thresholds for r in self.results}
        s["per_speaker"] = {r.backend: r.per_speaker for r in self.results}
        return s


def _rel(ref: float, new: float) -> float | None:
    return None if ref == 0 else (ref - new) / ref


def choose_test_speakers(names: list[str], counts: dict[str, int], test: int | list[str], enroll: int,
                         seed: int) -> list[str]:
    eligible = sorted(n for n in names if counts[n] > enroll)
    if isinstance(test, list):
        unknown = [s for s in test if s not in counts]
        if unknown:
            raise CalibrationError(f"unknown test speaker(s): {', '.join(unknown)}")
        short = [s for s in test if counts[s] <= enroll]
        if short:
            raise CalibrationError(f"test speaker(s) {', '.join(short)} need more than {enroll} genuine samples "
                                   f"({enroll} to enroll, the rest to test)")
        chosen = sorted(set(test))
    else:
        if test > len(eligible):
            raise CalibrationError(f"{test} test speakers asked for, but only {len(eligible)} speakers have more "
                                   f"than {enroll} genuine samples")
        chosen = sorted(np.random.default_rng(seed).choice(eligible, test, replace=False).tolist())
    if len(chosen) < 2:
        raise CalibrationError("evaluation needs at least 2 test speakers")
    if len(set(names) - set(chosen)) < 2:
        raise CalibrationError("evaluation needs at least 2 training speakers besides the test speakers")
    return chosen


def evaluate(store: Store, test_speakers: int | list[str] = 20, seed: int = 0, enroll: int = 5,
             config: CalibrationConfig | None = None) -> EvaluationResult:
    """Evaluate raw cosine and ``config.backend`` on a speaker-disjoint split of ``store``."""
    config = config or CalibrationConfig()
    config.check()
    if enroll < 1:
        raise CalibrationError("--enroll must be at least 1")
    if store.embedder is None:
        raise CalibrationError(f"{store.location} is empty: nothing to evaluate (enroll speakers first)")
    table = store.embeddings()
    everything = CalibrationInput.from_table(table)
    names, counts = np.unique(everything.gen_spk, return_counts=True)
    count = dict(zip(names.tolist(), counts.tolist()))
    test = choose_test_speakers(names.tolist(), count, test_speakers, enroll, seed)
    train = CalibrationInput.from_table(table, set(names.tolist()) - set(test))
    held = CalibrationInput.from_table(table, set(test))
    # enrollment / test utterances of each held-out speaker
    rng = np.random.default_rng(seed + 1)
    enroll_rows, test_rows = [], []
    for s in test:
        rows = rng.permutation(np.flatnonzero(held.gen_spk == s))
        enroll_rows += rows[:enroll].tolist()
        test_rows += rows[enroll:].tolist()
    enroll_rows, test_rows = np.array(enroll_rows), np.array(test_rows)
    split = {"seed": seed, "enroll": enroll, "test_speakers": test, "train_speakers": int(len(names) - len(test)),
             "train_utterances": int(len(train.gen_x)), "test_utterances": int(len(test_rows)),
             "held_out_utterances": int(len(held.gen_x)), "held_out_clones": int(len(held.clone_x))}
    result = EvaluationResult(split)
    backends = [REFERENCE_BACKEND] + ([config.backend] if config.backend != REFERENCE_BACKEND else [])
    for name in backends:
        cal = calibrate_input(train, with_backend(config, name))
        result.results.append(_measure(cal, held, test, enroll_rows, test_rows, store))
    return result


def _measure(cal, held: CalibrationInput, test: list[str], enroll_rows: np.ndarray, test_rows: np.ndarray,
             store: Store) -> BackendEvaluation:
    backend = cal.backend if cal.backend.name != "cosine" else None
    th = cal.thresholds
    # single-utterance pairs
    be = cal.backend
    pair = be.score(held.gen_x, held.gen_x)
    iu = np.triu_indices(len(held.gen_x), 1)
    pair_scores = pair[iu]
    pair_same = (held.gen_spk[:, None] == held.gen_spk[None, :])[iu]
    pe = eer_point(pair_scores[pair_same], pair_scores[~pair_same])
    # identification through the scorer, on an in-memory index of the enrollment utterances
    index = _enrollment_index(held, enroll_rows, test, store)
    thresholds = Thresholds(th["accept"], "evaluation", th.get("clone_upper"), th["backend"], th["eer_threshold"])
    scorer = SpeakerScorer(index, thresholds, backend)
    scores = scorer.score_all(held.gen_x[test_rows]).astype(np.float64)
    col = {n: i for i, n in enumerate(index.speaker_names)}
    truth = np.array([col[s] for s in held.gen_spk[test_rows]])
    rank = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(axis=1)
    target = np.zeros_like(scores, dtype=bool)
    target[np.arange(len(truth)), truth] = True
    pos, neg = scores[target], scores[~target]
    me = eer_point(pos, neg)
    far_a, frr_a = error_rates(pos, neg, [th["accept"]])
    far_e, frr_e = error_rates(pos, neg, [th["eer_threshold"]])
    utt = TrialCalibration.from_dict(cal.data["decisions"]["bands"]["wide"]["utterance"], "evaluation")
    pair_cal = TrialCalibration.from_dict(cal.data["decisions"]["bands"]["wide"]["pair"], "evaluation")
    summary = {
        "pair_eer": pe["eer"], "pair_eer_threshold": pe["threshold"],
        "pair_cllr": cllr(pair_cal.llr(pair_scores[pair_same]), pair_cal.llr(pair_scores[~pair_same])),
        "model_cllr": cllr(utt.llr(pos), utt.llr(neg)),
        "pair_min_dcf": min_dcf(pair_scores[pair_same], pair_scores[~pair_same]),
        "pair_trials": {"same": int(pair_same.sum()), "different": int((~pair_same).sum())},
        "top1": float((rank == 0).mean()), "top5": float((rank < 5).mean()),
        "model_eer": me["eer"], "model_min_dcf": min_dcf(pos, neg),
        "at_accept": {"threshold": th["accept"], "far": float(far_a[0]), "frr": float(frr_a[0]),
                      "calibrated_far": th["accept_far"], "calibrated_frr": th["accept_frr"]},
        "at_eer_threshold": {"threshold": th["eer_threshold"], "far": float(far_e[0]), "frr": float(frr_e[0])},
    }
    clone_scores = np.zeros(0)
    if len(held.clone_x):
        ok = np.array([s in col for s in held.clone_spk], dtype=bool)
        cs = scorer.score_all(held.clone_x[ok]).astype(np.float64)
        clone_scores = cs[np.arange(ok.sum()), [col[s] for s in held.clone_spk[ok]]]
        upper = th.get("clone_upper")
        summary["clones"] = {
            "n": int(len(clone_scores)),
            "rejected_at_accept": float((clone_scores < th["accept"]).mean()),
            "flagged_below_clone_upper": None if upper is None else float((clone_scores < upper).mean()),
            "clone_upper": upper}
    per = []
    for s in test:
        rows = held.gen_spk[test_rows] == s
        c = col[s]
        imp = np.delete(scores[rows], c, axis=1)
        per.append({"speaker": s, "test_utterances": int(rows.sum()),
                    "top1": float((rank[rows] == 0).mean()),
                    "mean_target_score": float(scores[rows, c].mean()),
                    "frr_at_accept": float((scores[rows, c] < th["accept"]).mean()),
                    "far_at_accept": float((imp >= th["accept"]).mean()) if imp.size else None})
    return BackendEvaluation(cal.backend.name, th, summary, per, pair_scores, pair_same, scores, truth,
                             clone_scores, cal.backend)


def _enrollment_index(held: CalibrationInput, enroll_rows: np.ndarray, test: list[str],
                      store: Store) -> SpeakerIndex:
    """An in-memory index of the held-out speakers' enrollment utterances (and their clones)."""
    pos = {n: i for i, n in enumerate(test)}
    spk = held.gen_spk[enroll_rows]
    cent = np.zeros((len(test), held.gen_x.shape[1]))
    np.add.at(cent, [pos[s] for s in spk], held.gen_x[enroll_rows])
    vecs = np.concatenate([held.gen_x[enroll_rows], held.clone_x]).astype(np.float32)
    owners = np.array([pos[s] for s in spk] + [pos.get(s, 0) for s in held.clone_spk], dtype=np.int32)
    kinds = np.array([0] * len(spk) + [1] * len(held.clone_x), dtype=np.int8)
    return SpeakerIndex(test, l2_normalise(cent), np.arange(len(vecs)), owners, kinds, vecs,
                        store.store_id, store.revision, None, use_gpu=False)


def markdown_report(result: EvaluationResult, decisions: dict | None = None) -> str:
    """A human-readable report of :meth:`EvaluationResult.report` (and of the decision
    evaluation, :func:`voxguard.enroll.decision_evaluation.evaluate_decisions`, if given)."""
    sp = result.split
    lines = ["# voxguard evaluation", "",
             f"Speaker-disjoint split (seed {sp['seed']}): backend, cohort and thresholds trained on "
             f"{sp['train_speakers']} speakers ({sp['train_utterances']} utterances); measured on "
             f"{len(sp['test_speakers'])} held-out speakers, {sp['enroll']} enrollment utterances each, "
             f"{sp['test_utterances']} test utterances.", "",
             "| backend | pair EER | pair minDCF | pair Cllr | top-1 | top-5 | model EER | model Cllr | FAR @ accept | FRR @ accept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    for r in result.results:
        s = r.summary
        lines.append(f"| {r.backend} | {pct(s['pair_eer'])} | {s['pair_min_dcf']:.3f} | {s['pair_cllr']:.3f} | "
                     f"{pct(s['top1'])} | {pct(s['top5'])} | {pct(s['model_eer'])} | {s['model_cllr']:.3f} | "
                     f"{pct(s['at_accept']['far'])} | {pct(s['at_accept']['frr'])} |")
    summ = result.summary()
    if "relative_eer_reduction" in summ:
        lines += ["", f"Relative single-utterance EER reduction vs cosine: {pct(summ['relative_eer_reduction'])}."]
    for r in result.results:
        if "clones" in r.summary:
            c = r.summary["clones"]
            lines += ["", f"Clones ({r.backend}): {c['n']} held-out clones; rejected at accept {pct(c['rejected_at_accept'])}, "
                          f"flagged below clone_upper {pct(c['flagged_below_clone_upper'])}."]
    for r in result.results:
        lines += ["", f"## Per speaker ({r.backend}, accept = {r.thresholds['accept']:.4f})", "",
                  "| speaker | test utts | top-1 | mean target score | FRR @ accept | FAR @ accept |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p in r.per_speaker:
            lines.append(f"| {p['speaker']} | {p['test_utterances']} | {pct(p['top1'])} | "
                         f"{p['mean_target_score']:.3f} | {pct(p['frr_at_accept'])} | {pct(p['far_at_accept'])} |")
    if decisions is not None:
        sp = decisions["split"]
        lines += ["", "## Decisions on held-out speakers", "",
                  f"{sp['enrolled_speakers']} enrolled speakers ({len(sp['enrolled_test_speakers'])} held-out speakers "
                  f"enrolled with {sp['enroll_utterances']} utterances, {sp['distractor_speakers']} distractors); "
                  f"{len(sp['unenrolled_test_speakers'])} held-out speakers never enrolled.", "",
                  "| condition | unenrolled named | enrolled identified | unknown | wrong | top-1 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for cond, c in decisions["conditions"].items():
            lines.append(f"| {cond} | {pct(c['unenrolled_named'])} | {pct(c['enrolled_correct'])} | "
                         f"{pct(c['enrolled_unknown'])} | {pct(c['enrolled_wrong'])} | {pct(c['top1'])} |")
        lines += ["", "| trials | calibration | Cllr | EER | minDCF | FAR (stated) | FRR (stated) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for cond, t in decisions["trials"].items():
            for trial in ("utterance", "pair"):
                q = t.get(trial)
                if q:
                    lines.append(f"| {cond} {trial} | {q['calibration']} | {q['cllr']:.3f} | {pct(q['eer'])} | "
                                 f"{q['min_dcf']:.3f} | {pct(q['far'])} ({pct(q['stated_far'])}) | "
                                 f"{pct(q['frr'])} ({pct(q['stated_frr'])}) |")
    return "\n".join(lines) + "\n"
