"""``voxguard clone`` (make clones of an enrolled speaker) and ``voxguard check`` (is a
recording a clone?)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import StoreError, UnknownSpeaker, VoxguardError

MAX_DEFAULT_SOURCES = 50


def register(sub, common) -> None:
    p = sub.add_parser(
        "clone", parents=[common], help="make synthetic clones of an enrolled speaker",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make COUNT clones of SPEAKER's voice from its enrolled recordings, write them to "
                    "--out as 16 kHz WAVs and, with --enroll, store them as known clones of SPEAKER "
                    "(with their backend, parameters and source) in one transaction.",
        epilog="backends:\n"
               "  vocoder   WORLD resynthesis of SPEAKER's own recordings (--pitch-range, --tempo-range)\n"
               "  convert   WORLD voice conversion of other speech towards SPEAKER: --source FILE,\n"
               "            --source-speaker NAME, or --text (espeak-ng); default: other speakers' recordings\n"
               "  griffinlim  SPEAKER's recordings -> log-mel -> Griffin-Lim (--gl-iterations, --tempo-range)\n"
               "  espeak    espeak-ng formant speech at SPEAKER's pitch, no conversion (--text, --espeak-voice)\n"
               "  nemo-tts  NeMo FastPitch + HiFi-GAN (--fastpitch F.nemo --hifigan H.nemo [--tts-speaker ID])\n"
               "  command   an external tool: --command 'tool --ref {ref} --text {text} --out {out}' [--timeout S]")
    p.add_argument("speaker")
    p.add_argument("--backend", "-b", default="vocoder", metavar="B",
                   help="vocoder (default), convert, griffinlim, espeak, nemo-tts or command")
    p.add_argument("--count", "-n", type=int, default=4, help="how many clones (default 4)")
    p.add_argument("--text", action="append", metavar="TEXT",
                   help="sentence to say (repeatable; text-driven backends; default: Harvard sentences)")
    p.add_argument("--out", metavar="DIR", default="clones", help="output folder (default ./clones)")
    p.add_argument("--enroll", action="store_true", help="store the clones as known clones of SPEAKER")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g = p.add_argument_group("vocoder")
    g.add_argument("--pitch-range", type=float, help="random pitch factor in 1 +- R (default 0)")
    g.add_argument("--tempo-range", type=float, help="random tempo factor in 1 +- R (default 0)")
    g.add_argument("--f0-method", choices=["dio", "harvest"], help="WORLD F0 estimator (default dio; also convert)")
    g = p.add_argument_group("convert")
    g.add_argument("--source", action="append", metavar="FILE", help="source recording to convert (repeatable)")
    g.add_argument("--source-speaker", metavar="NAME", help="convert this enrolled speaker's recordings")
    g.add_argument("--espeak-voice", metavar="VOICE", help="espeak-ng voice for --text and the espeak backend (default en-us)")
    g = p.add_argument_group("griffinlim")
    g.add_argument("--gl-iterations", type=int, help="Griffin-Lim iterations (default 32)")
    g = p.add_argument_group("nemo-tts")
    g.add_argument("--fastpitch", metavar="NEMO", help="FastPitch .nemo checkpoint (speaker-conditioned or adapted)")
    g.add_argument("--hifigan", metavar="NEMO", help="HiFi-GAN .nemo checkpoint")
    g.add_argument("--tts-speaker", type=int, metavar="ID", help="speaker id of a multi-speaker FastPitch")
    g.add_argument("--pace", type=float, help="FastPitch pace (default 1.0)")
    g = p.add_argument_group("command")
    g.add_argument("--command", metavar="TEMPLATE", help="command with {ref}, {text}, {out} placeholders")
    g.add_argument("--timeout", type=float, metavar="S", help="seconds per clone before the tool is killed (default 600)")
    p.set_defaults(func=cmd_clone)

    p = sub.add_parser(
        "check", parents=[common], help="is each FILE a clone of an enrolled speaker?",
        description="Identify the speaker of each FILE (files, folders, NeMo manifests; open-set, as identify) "
                    "and weigh the evidence that it is a clone: the synthetic-speech countermeasure, the same "
                    "relative to the speaker's own genuine audio, the distance from the speaker's genuine "
                    "samples, known clones among the nearest stored samples. Prints the clone LLR, each "
                    "evidence's value and contribution, and a level (none, low, medium, high; unavailable "
                    "without a pretrained countermeasure, known clones or a trained detector). With a pretrained "
                    "countermeasure installed (`voxguard models fetch aasist`) its calibrated LLR joins the "
                    "fusion. Exit 0 whatever the verdict, 2 when a file failed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--claimed", metavar="SPEAKER", help="the speaker the caller claims to be")
    p.add_argument("--countermeasure", metavar="NAME", default=os.environ.get("VOXGUARD_COUNTERMEASURE", "auto"),
                   help="pretrained countermeasure: a model of `voxguard models list`, 'none', or 'auto' "
                        "(default: the default model when installed; also $VOXGUARD_COUNTERMEASURE)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "evaluate-clones", parents=[common], help="speaker- and channel-disjoint clone-detection report",
        description="Train the clone detector on all but --heldout speakers (their first --enroll genuine samples "
                    "stay enrolled, the rest are test recordings), make clones of the held-out speakers in every "
                    "spoof family, play everything clean and through the held-out channel simulations, and report "
                    "false alarms (per utterance, window and hour of streamed speech), detection per family, per "
                    "channel, per window and per session, leave-one-family-out, the countermeasure models "
                    "compared, and figures. Reads the store, never changes it.")
    p.add_argument("--heldout", type=int, default=10, help="held-out speakers (default 10)")
    p.add_argument("--enroll", type=int, default=5, help="enrolled samples per held-out speaker (default 5)")
    p.add_argument("--clones-per-family", type=int, default=None, help="training clones per family per speaker")
    p.add_argument("--test-clones", type=int, default=2, help="test clones per family per held-out speaker (default 2)")
    p.add_argument("--models", nargs="+", default=["lfcc-gmm"], metavar="MODEL",
                   help="countermeasure models to compare: lfcc-gmm, lfcc-cnn (default lfcc-gmm)")
    p.add_argument("--components", type=int, default=None, help="GMM components (default: the library's)")
    p.add_argument("--no-lofo", action="store_true", help="skip leave-one-family-out (one training per family)")
    p.add_argument("--long-hours", type=float, default=100.0, help="hours of resampled genuine calls (default 100)")
    p.add_argument("--channels", nargs="+", metavar="CHANNEL",
                   help="held-out channel simulations to test through (default: all of voxguard.channels.HELDOUT_CHANNELS)")
    p.add_argument("--figures", metavar="DIR", help="write the LLR distributions by family and channel (PNG + SVG)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate_clones)


BACKEND_OPTIONS = {
    "vocoder": ("pitch_range", "tempo_range", "f0_method"),
    "convert": ("f0_method", "espeak_voice"),
    "griffinlim": ("gl_iterations", "tempo_range"),
    "espeak": ("espeak_voice",),
    "nemo-tts": ("fastpitch", "hifigan", "tts_speaker", "pace"),
    "command": ("command", "timeout"),
}
ALL_OPTIONS = sorted({o for opts in BACKEND_OPTIONS.values() for o in opts} | {"source", "source_speaker"})


def _convert_sources(a, store, speaker: str, rng) -> list:
    from ..audio import load_audio
    from .clone_convert import Source

    if a.source:
        return [Source("--source", str(f), load_audio(f).samples) for f in a.source]
    if a.source_speaker:
        if a.source_speaker == speaker:
            raise VoxguardError("--source-speaker must be another speaker than the target")
        from .cloning import target_voice

        voice = target_voice(store, a.source_speaker)
        return [Source(a.source_speaker, f"{a.source_speaker} {r.label}", r.audio) for r in voice.references]
    if a.text:
        return []
    infos = [i for i in store.samples(kind="genuine") if i.speaker != speaker]
    if not infos:
        raise VoxguardError("the convert backend needs source speech: --source FILE, --source-speaker NAME or "
                            "--text (no other enrolled speaker to convert from)")
    picks = rng.choice(len(infos), size=min(len(infos), MAX_DEFAULT_SOURCES), replace=False)
    out = []
    for k in picks:
        audio = store.sample_audio(infos[k].id)
        if audio is not None:
            out.append(Source(infos[k].speaker, f"{infos[k].speaker} sample #{infos[k].id}", audio))
    return out


def _backend_options(a, store) -> dict:
    import numpy as np

    from .cloning import BACKENDS, CloningError

    if a.backend not in BACKENDS:
        raise CloningError(f"unknown cloning backend {a.backend!r} (choose from {', '.join(BACKENDS)})")
    opts = {k: getattr(a, k) for k in ALL_OPTIONS if getattr(a, k) is not None}
    if a.backend == "convert":
        opts["sources"] = _convert_sources(a, store, a.speaker, np.random.default_rng(a.seed))
        opts.pop("source", None), opts.pop("source_speaker", None)
        if a.text:
            opts["text"] = a.text
    if a.backend == "nemo-tts":
        opts["device"] = a.device
    return opts


def cmd_clone(ctx) -> int:
    from .cloning import create_cloner, enroll_clones, generate_clones, target_voice, write_clones

    a = ctx.args
    if a.count < 1:
        raise VoxguardError("--count must be at least 1")
    with ctx.open_store(readonly=not a.enroll, create=False) as store:
        target = target_voice(store, a.speaker)
        cloner = create_cloner(a.backend, **_backend_options(a, store))
        enroller = None
        if a.enroll:
            from .enrollment import Enroller

            from .enrollment import cli_actor

            enroller = Enroller(store, ctx.embedder(store), actor=cli_actor())
        clones = generate_clones(cloner, target, a.count, a.text, seed=a.seed)
        paths = write_clones(clones, Path(a.out), a.speaker, a.backend)
        added = 0
        if enroller is not None:
            added = enroll_clones(enroller, a.speaker, cloner, clones)
            enroller.refresh_index()
    files = [{"path": str(c.path), "duration": round(c.duration, 3), "source": c.source, "params": c.params}
             for c in clones]
    data = {"speaker": a.speaker, "backend": a.backend, "params": cloner.params(), "count": len(clones),
            "out": str(Path(a.out)), "files": files, "enrolled": added if a.enroll else None}
    text = [f"{a.speaker}: wrote {len(paths)} {a.backend} clone(s) to {a.out}"]
    text += [f"  {f['path']}  {f['duration']:.2f}s  from {f['source']}" for f in files]
    if a.enroll:
        text.append(f"enrolled {added} new known clone(s) of {a.speaker}")
    ctx.emit(data, "\n".join(text))
    return 0


class Checker:
    """Identity, claim and clone assessment of recordings; store, model and detector loaded once."""

    def __init__(self, store, embedder, claimed: str | None = None, countermeasure: str | None = "auto"):
        from ..clone_detection import CloneDetector
        from ..recognizer import Recognizer

        if claimed is not None and not store.has_speaker(claimed):
            raise UnknownSpeaker(claimed)
        self.claimed = claimed
        self.recognizer = Recognizer.for_store(store, embedder)
        detector = CloneDetector.for_store(store, self.recognizer.scorer.thresholds)
        self.countermeasure, why = None, "disabled (--countermeasure none)"
        if countermeasure not in (None, "none"):
            from ..countermeasures.load import installed_countermeasure

            self.countermeasure, why = installed_countermeasure(None if countermeasure == "auto" else countermeasure)
            if self.countermeasure is None and countermeasure != "auto":
                raise VoxguardError(f"--countermeasure {countermeasure}: {why}")

        def genuine_audio(speaker: str) -> list:
            return [a for a in (store.sample_audio(i.id) for i in store.samples(speaker, "genuine")) if a is not None]

        if self.countermeasure is not None:
            detector = detector.with_countermeasure(self.countermeasure, genuine_audio)
        elif not detector.available:
            detector.reason = f"{detector.reason}; and {why}"
        self.detector = detector

    def check(self, e) -> dict:
        rec = self.recognizer
        res = rec.search(e, k=rec.index.n_speakers)
        identity = rec.identify(e, k=5, result=res)
        claim = None
        if self.claimed is not None:
            claim = {"speaker": self.claimed, **rec.verify_speaker(e, self.claimed)}
        assessment = self.detector.assess(res, self.claimed, e.audio.samples)
        return {"speaker": identity["speaker"], "band": e.band,
                "identity": {k: identity[k] for k in ("speaker", "decision", "best", "llr", "score", "cosine",
                                                      "margin", "threshold_llr", "calibration")},
                "claimed": claim, "clone": assessment.as_dict(), "detector": self.detector.source,
                "detector_available": self.detector.available}


def check_recording(store, embedder, samples, claimed: str | None = None) -> dict:
    """Identity and clone assessment of one 16 kHz recording (what ``voxguard check`` prints)."""
    from .. import SAMPLE_RATE
    from ..audio import Audio

    checker = Checker(store, embedder, claimed)
    return checker.check(checker.recognizer.embed([Audio(samples, SAMPLE_RATE, SAMPLE_RATE, 1)])[0])


def check_text(data: dict, single: bool) -> str:
    idn = data["identity"]
    who = idn["speaker"] or f"unknown — nobody enrolled passes (best {idn['best']})"
    lines = [f"{data['file']}: speaker: {who}  LLR {idn['llr']} (threshold {idn['threshold_llr']}, "
             f"{idn['calibration']})"]
    if data["claimed"]:
        c = data["claimed"]
        lines.append(f"claimed: {c['speaker']}  LLR {c['llr']}  "
                     f"{'accepted' if c['decision'] == 'accept' else c['decision'].upper()} ({c['calibration']})")
    lines += clone_lines(data["clone"], data["detector"])
    return "\n".join(lines)


def clone_lines(cl: dict, detector: str) -> list[str]:
    """The clone part of ``voxguard check``'s text: level, LLR and every evidence's share of it."""
    ev = cl["evidence"]
    if cl["level"] == "unavailable":
        return [f"clone:   UNAVAILABLE ({detector}): {ev.get('reason')}"]
    out = [f"clone:   {cl['level'].upper()}  LLR {cl['llr']:+.2f} (score {cl['score']:.3f}) about {cl['speaker']} "
           f"({detector} detector)"]
    values, contrib = ev.get("values", {}), ev.get("contributions", {})
    if "intercept" in ev:
        out.append(f"  {'base (intercept)':<18} {'':>9}  {ev['intercept']:+7.2f}")
    for k, v in values.items():
        out.append(f"  {k:<18} {v:>9.4f}  {contrib.get(k, 0.0):+7.2f}")
    if not values:
        out.append("  no evidence about this speaker (no known clone among the nearest samples)")
    rest = {k: v for k, v in ev.items() if k not in ("values", "contributions", "intercept")}
    out.append("  " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    return out


def cmd_check(ctx) -> int:
    from .batch import run_batch

    a = ctx.args
    with ctx.open_store(readonly=True) as store:
        checker = Checker(store, ctx.embedder(store), a.claimed, a.countermeasure)
        return run_batch(ctx, a.files, checker.recognizer, checker.check, check_text, rejection_exits=False,
                         notice=checker.recognizer.calibration.notice)


def cmd_evaluate_clones(ctx) -> int:
    import sys

    from .clone_evaluation import evaluate_clones
    from .clone_training import DEFAULT_CLONES_PER_FAMILY, DEFAULT_COMPONENTS, MODELS

    a = ctx.args
    bad = [m for m in a.models if m not in MODELS]
    if bad:
        raise VoxguardError(f"unknown countermeasure model(s) {', '.join(bad)} (choose from {', '.join(MODELS)})")
    from ..channels import HELDOUT_CHANNELS, TRAIN_CHANNELS, channel

    for c in a.channels or ():
        try:
            channel(c)
        except ValueError as e:
            raise VoxguardError(str(e)) from None
        if c in TRAIN_CHANNELS:
            raise VoxguardError(f"{c} is a training channel: test channels must be held out of training")
    if a.figures:
        from .figures import check_output_dir

        check_output_dir(a.figures)
    progress = (lambda m: print(m, file=sys.stderr, flush=True)) if getattr(a, "verbose", 0) else None
    with ctx.open_store(readonly=True) as store:
        report = evaluate_clones(store, ctx.embedder(store), a.heldout, a.enroll, a.seed,
                                 a.clones_per_family or DEFAULT_CLONES_PER_FAMILY, a.test_clones,
                                 a.components or DEFAULT_COMPONENTS, a.models, not a.no_lofo,
                                 channels=tuple(a.channels or HELDOUT_CHANNELS), figures=a.figures, long_hours=a.long_hours, progress=progress)
    ctx.emit(report, clone_report_text(report))
    return 0


def clone_report_text(r: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    best = r["models"][r["best_model"]]
    u, w, s = best["utterances"], best["windows"], best["sessions"]
    lines = [f"held-out speakers {r['speakers']['heldout']} (trained on {r['speakers']['train']}); "
             f"test channels: clean + {', '.join(r['channels']['heldout'])}",
             "models: " + ", ".join(f"{m} {pct(v['mean_family_detection_at_1pct_fa'])} mean detection at 1 % FA"
                                    for m, v in r["models"].items()) + f"  -> {r['best_model']}",
             f"genuine, held-out channels: {u['genuine_heldout_channels']} utterances, false alarms medium/high "
             f"{pct(u['false_alarm_medium_or_high'])} (high {pct(u['false_alarm_high'])}); windows "
             f"{pct(w['false_alarm_medium_or_high'])}",
             f"streamed genuine speech: {s['genuine_alarms_medium_or_high']} alarm(s) in {s['genuine_hours']:.2f} h"
             + (f"; resampled {r['long_streams']['hours']} h: {r['long_streams']['alarms_medium_or_high']} alarm(s)"
                if r.get("long_streams") else ""),
             f"{'family':<14} {'medium+':>8} {'@1%FA':>8} {'window@1%':>10} {'session':>8} {'LOFO':>8}"]
    lofo = r.get("leave_one_family_out", {})
    for fam, v in u["per_family"].items():
        lines.append(f"{fam:<14} {pct(v['detected_medium_or_high']):>8} {pct(v['detection_at_1pct_fa']):>8} "
                     f"{pct(w['per_family_detection_at_1pct_fa'].get(fam)):>10} "
                     f"{pct(s['per_family'].get(fam, {}).get('detected_medium_or_high')):>8} "
                     f"{pct(lofo.get(fam, {}).get('detected_medium_or_high')):>8}")
    lines.append("detection at 1 % FA per channel:")
    for ch, v in u["per_channel_detection_at_1pct_fa"].items():
        lines.append(f"  {ch:<20} " + "  ".join(f"{k} {pct(x)}" for k, x in v.items()
                                                if k not in ("genuine_n", "false_alarm_medium_or_high")))
    if r.get("figures"):
        lines.append("figures: " + ", ".join(p for ps in r["figures"].values() for p in ps))
    return "\n".join(lines)
