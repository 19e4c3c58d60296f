"""``voxguard calibrate`` and ``voxguard evaluate``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..backend import BACKEND_NAMES
from ..errors import VoxguardError
from .calibration import DEFAULT_BACKEND, DEFAULT_MODEL_UTTERANCES, DEFAULT_OPEN_SET_ALPHA, CalibrationConfig


def _backend_options(p) -> None:
    g = p.add_argument_group("scoring backend")
    g.add_argument("--backend", choices=BACKEND_NAMES, default=DEFAULT_BACKEND,
                   help=f"scoring backend (default {DEFAULT_BACKEND}, measured best on AN4)")
    g.add_argument("--far", type=float, default=0.01, metavar="RATE",
                   help="target false-accept rate for the far threshold and the clone band (default 0.01)")
    g.add_argument("--shrinkage", type=float, default=0.5,
                   help="within-speaker covariance shrinkage for lda/wccn, 0..1 (default 0.5)")
    g.add_argument("--lda-dims", type=int, metavar="N", help="LDA dimensions (default: speakers - 1)")
    g.add_argument("--cohort-top", type=int, default=50, metavar="N",
                   help="AS-norm: top cohort scores per side (default 50)")
    g.add_argument("--folds", type=int, default=5, help="speaker folds for cross-fitted scores (default 5)")
    g.add_argument("--seed", type=int, default=0, help="random seed (folds, t-SNE speakers, split)")


def _config(a) -> CalibrationConfig:
    cfg = CalibrationConfig(backend=a.backend, far_target=a.far, accept_rule=getattr(a, "accept", "far"),
                            shrinkage=a.shrinkage, lda_dims=a.lda_dims, asnorm_top=a.cohort_top,
                            folds=a.folds, seed=a.seed,
                            open_set_alpha=getattr(a, "open_set_rate", DEFAULT_OPEN_SET_ALPHA),
                            model_utterances=getattr(a, "model_utterances", DEFAULT_MODEL_UTTERANCES) or None)
    cfg.check()
    return cfg


def register(sub, common) -> None:
    p = sub.add_parser(
        "calibrate", parents=[common], help="measure score distributions, set thresholds, train the backend",
        description="Train the scoring backend on every enrolled speaker, measure same-speaker, "
                    "different-speaker and genuine-vs-clone score distributions (cross-fitted by speaker), "
                    "and save thresholds and backend in the store as a new calibration. With --out, figures "
                    "are written first; the calibration is saved only once they all are.")
    _backend_options(p)
    p.add_argument("--accept", choices=["far", "eer"], default="far",
                   help="operating threshold: at the target FAR (default) or at the equal-error point")
    p.add_argument("--out", metavar="DIR", help="write figures (PNG + SVG) into DIR")
    p.add_argument("--tsne-speakers", type=int, default=11, metavar="N", help="speakers in the t-SNE map (default 11)")
    p.add_argument("--no-clone-detector", action="store_true",
                   help="skip training the clone countermeasure and fusion (a minute or more on stores with clones); clone scores then use the known-clone margin and the clone band")
    p.add_argument("--dry-run", action="store_true", help="compute and report, but save nothing in the store")
    p.add_argument("--open-set-rate", type=float, default=DEFAULT_OPEN_SET_ALPHA, metavar="RATE",
                   help="open-set identification: the chance that a speaker who is not enrolled is named "
                        f"(default {DEFAULT_OPEN_SET_ALPHA})")
    p.add_argument("--model-utterances", type=int, default=DEFAULT_MODEL_UTTERANCES, metavar="N",
                   help="speaker models in the decision trials are the mean of N utterances, as an enrollment of "
                        f"N recordings (default {DEFAULT_MODEL_UTTERANCES}; 0 = all of a speaker's samples)")
    p.add_argument("--export", metavar="FILE",
                   help="also write the calibration record as JSON (with --backend cosine: the format of the "
                        "default calibration shipped in the package; see scripts/make_default_calibration.sh)")
    p.add_argument("--describe", metavar="TEXT", help="with --export: what the calibration was measured on")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "evaluate", parents=[common], help="speaker-disjoint evaluation of cosine and the backend",
        description="Hold out test speakers, calibrate on the others, and measure EER, minDCF, "
                    "identification top-1/top-5 and clone rejection on the held-out speakers. "
                    "The store is only read.")
    _backend_options(p)
    p.add_argument("--test-speakers", default="20", metavar="N|NAME,...",
                   help="how many held-out speakers (random with --seed), or a comma-separated list (default 20)")
    p.add_argument("--enroll", type=int, default=5, metavar="K", help="enrollment utterances per test speaker (default 5)")
    p.add_argument("--report", metavar="DIR", help="write evaluation.json and evaluation.md into DIR")
    p.add_argument("--decisions", action="store_true",
                   help="also evaluate the decisions end to end: open-set identification (half the held-out "
                        "speakers enrolled, half not, distractors up to 90 speakers), held-out Cllr/EER/minDCF per "
                        "trial type, on clean, 8 kHz telephone and held-out-channel audio (re-embeds the "
                        "held-out audio: a few minutes on CPU)")
    p.add_argument("--conditions", metavar="NAME,...",
                   help="with --decisions: conditions to test (default: clean, telephone and every held-out channel)")
    p.set_defaults(func=cmd_evaluate)


def cmd_calibrate(ctx) -> int:
    from .calibration import calibrate, save_calibration

    a = ctx.args
    cfg = _config(a)
    if a.tsne_speakers < 1:
        raise VoxguardError("--tsne-speakers must be at least 1")
    out = None
    if a.out:
        from .figures import check_output_dir

        out = check_output_dir(a.out)  # fail before any work if figures cannot be written
    if a.export and a.backend != "cosine":
        raise VoxguardError("--export writes a record without trained arrays: use it with --backend cosine")
    from ..bands import BANDS
    from .calibration import CalibrationError

    with ctx.open_store(readonly=a.dry_run) as store:
        # samples enrolled before band views existed get them now, from their stored audio
        missing = store.embedder is not None and any(store.samples_without_view(b) for b in BANDS)
        try:
            result = calibrate(store, cfg, ctx.embedder(store) if missing else None, save_views=not a.dry_run)
        except CalibrationError as e:
            from ..scoring import load_calibration

            fallback = load_calibration(store) if store.embedder is not None else None
            if fallback is not None and fallback.available:
                raise CalibrationError(f"{e.message}. Until the store can be calibrated, decisions use "
                                       f"{fallback.source} ({fallback.notice})") from None
            raise
        if not a.dry_run and not a.no_clone_detector and result.data["clone_samples"]:
            # Clone detector (countermeasure + fusion, voxguard.enroll.clone_training): one more
            # part of the same record, trained when the store holds known clones.
            from .clone_training import add_clone_detector

            add_clone_detector(store, ctx.embedder(store), result)
        if out is not None:
            from .figures import write_calibration_figures

            figures = write_calibration_figures(out, result, store.embeddings(), a.tsne_speakers, a.seed)
            result.data["figures"] = figures
        cid = None if a.dry_run else save_calibration(store, result)
    if a.export:
        record = {**result.data, "created_from": a.describe or f"{result.data['speakers']} speakers, "
                                                               f"{result.data['genuine_samples']} utterances"}
        _write_atomic(Path(a.export), json.dumps(record, indent=1, sort_keys=True) + "\n")
    d, th = result.data, result.thresholds
    summary = {"calibration_id": cid, "backend": d["backend"], "thresholds": th, "speakers": d["speakers"],
               "genuine_samples": d["genuine_samples"], "clone_samples": d["clone_samples"],
               "cosine_reference": {k: d["cosine_reference"][k] for k in ("eer", "eer_threshold", "min_dcf")},
               "decisions": d.get("decisions"), "figures": d.get("figures"), "seconds": d["seconds"],
               "warnings": d.get("warnings", [])}
    pct = lambda v: f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"{'dry run: ' if a.dry_run else ''}calibration"
             f"{'' if cid is None else f' #{cid}'}: {d['speakers']} speakers, {d['genuine_samples']} genuine "
             f"samples, {d['clone_samples']} clones; backend {d['backend']['name']}",
             f"  EER {pct(th['eer'])} at {th['eer_threshold']:.4f} (raw cosine: {pct(d['cosine_reference']['eer'])})",
             f"  FAR {pct(th['far_at_far_threshold'])} / FRR {pct(th['frr_at_far_threshold'])} "
             f"at {th['far_threshold']:.4f} (target FAR {pct(th['far_target'])})",
             f"  accept = {th['accept']:.4f} ({th['accept_rule']})"]
    if th.get("clone_upper") is not None:
        lines.append(f"  clone band: [{th['accept']:.4f}, {th['clone_upper']:.4f}) — clones reaching clone_upper "
                     f"{pct(th['clone_accept_at_clone_upper'])}, genuine below it {pct(th['genuine_frr_at_clone_upper'])}; "
                     f"clone EER {pct(th['clone_eer'])}")
    else:
        lines.append("  no known clones in the store: no clone band")
    for band, entry in d.get("decisions", {}).get("bands", {}).items():
        for trial in ("window", "utterance", "pair"):
            c = entry.get(trial)
            if c:
                lines.append(f"  {trial:>9}/{band:<9} EER {pct(c['eer'])}  Cllr {c['cllr']:.3f}  accept LLR "
                             f"{c['accept_llr']:.2f}: FAR {pct(c['far'])} FRR {pct(c['frr'])}")
        if entry.get("session"):
            lines.append(f"  {'session':>9}/{band:<9} " + "  ".join(
                f"n={c['windows']}: FRR {pct(c['frr'])}" for c in entry["session"][:6]))
    lines += [f"  warning: {w}" for w in d.get("warnings", [])]
    if d.get("figures"):
        lines.append("  figures: " + ", ".join(p for k, v in d["figures"].items() if k != "tsne_speakers" for p in v))
    ctx.emit(summary, "\n".join(lines))
    return 0


def cmd_evaluate(ctx) -> int:
    from .evaluation import evaluate, markdown_report

    a = ctx.args
    cfg = _config(a)
    test = a.test_speakers.strip()
    if test.isdigit():
        test_speakers: int | list[str] = int(test)
    else:
        test_speakers = [s.strip() for s in test.split(",") if s.strip()]
        if not test_speakers:
            raise VoxguardError("--test-speakers needs a number or speaker names")
    report_dir = None
    if a.report:
        from .figures import check_output_dir

        report_dir = check_output_dir(a.report)
    decisions = None
    with ctx.open_store(readonly=True) as store:
        result = evaluate(store, test_speakers, a.seed, a.enroll, cfg)
        if a.decisions:
            from .decision_evaluation import evaluate_decisions

            conds = tuple(c.strip() for c in a.conditions.split(",") if c.strip()) if a.conditions else None
            decisions = evaluate_decisions(store, ctx.embedder(store), test_speakers if isinstance(test_speakers, int)
                                           else len(test_speakers), a.enroll, a.seed, cfg, conditions=conds)
    report = result.report()
    if decisions is not None:
        report["decisions"] = decisions
    if report_dir is not None:
        _write_atomic(report_dir / "evaluation.json", json.dumps(report, indent=2))
        _write_atomic(report_dir / "evaluation.md", markdown_report(result, decisions))
    summary = result.summary()
    if decisions is not None:
        summary["decisions"] = {"split": decisions["split"], "conditions": decisions["conditions"],
                                "trials": decisions["trials"]}
    if report_dir is not None:
        summary["report"] = [str(report_dir / "evaluation.json"), str(report_dir / "evaluation.md")]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"held-out speakers: {len(result.split['test_speakers'])}, trained on {result.split['train_speakers']}"]
    for r in result.results:
        s = r.summary
        lines.append(f"  {r.backend:<14} pair EER {pct(s['pair_eer'])}  minDCF {s['pair_min_dcf']:.3f}  "
                     f"Cllr {s['pair_cllr']:.3f} (model {s['model_cllr']:.3f})  "
                     f"top-1 {pct(s['top1'])}  top-5 {pct(s['top5'])}  "
                     f"FAR/FRR @ accept {pct(s['at_accept']['far'])}/{pct(s['at_accept']['frr'])}")
    if summary.get("relative_eer_reduction") is not None:
        lines.append(f"  relative EER reduction vs cosine: {pct(summary['relative_eer_reduction'])}")
    if decisions is not None:
        sp = decisions["split"]
        lines.append(f"decisions: {sp['enrolled_speakers']} enrolled speakers; {len(sp['unenrolled_test_speakers'])} "
                     f"held-out speakers never enrolled")
        for cond, c in decisions["conditions"].items():
            lines.append(f"  {cond:<20} unenrolled named {pct(c['unenrolled_named'])}  enrolled identified "
                         f"{pct(c['enrolled_correct'])}  (unknown {pct(c['enrolled_unknown'])}, wrong "
                         f"{pct(c['enrolled_wrong'])})  top-1 {pct(c['top1'])}")
        for cond, t in decisions["trials"].items():
            for trial in ("utterance", "pair"):
                q = t.get(trial)
                if q:
                    lines.append(f"  {cond + ' ' + trial:<20} Cllr {q['cllr']:.3f}  EER {pct(q['eer'])}  minDCF "
                                 f"{q['min_dcf']:.3f}  FAR {pct(q['far'])} (stated {pct(q['stated_far'])})  "
                                 f"FRR {pct(q['frr'])} (stated {pct(q['stated_frr'])})")
    if report_dir is not None:
        lines.append(f"  report: {report_dir}")
    ctx.emit(summary, "\n".join(lines))
    return 0


def _write_atomic(path: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise VoxguardError(f"cannot write {path}: {e.strerror or e}") from None
