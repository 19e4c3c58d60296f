"""``voxguard clone`` (make clones of an enrolled speaker) and ``voxguard check`` (is a
recording a clone?)."""

from __future__ import annotations

import argparse
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
               "  nemo-tts  NeMo FastPitch + HiFi-GAN (--fastpitch F.nemo --hifigan H.nemo [--tts-speaker ID])\n"
               "  command   an external tool: --command 'tool --ref {ref} --text {text} --out {out}' [--timeout S]")
    p.add_argument("speaker")
    p.add_argument("--backend", "-b", default="vocoder", metavar="B",
                   help="vocoder (default), convert, nemo-tts or command")
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
    g.add_argument("--espeak-voice", metavar="VOICE", help="espeak-ng voice for --text (default en-us)")
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
        description="Identify the speaker of each FILE (files, folders, NeMo manifests; open-set, as "
                    "identify) and score how likely it is a clone: known clones among the nearest stored "
                    "samples, the clone band of the calibrated thresholds and the synthetic-speech "
                    "countermeasure, fused into one score in [0, 1] with a level (none, low, medium, high). "
                    "Exit 0 whatever the verdict, 2 when a file failed.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--claimed", metavar="SPEAKER", help="the speaker the caller claims to be")
    p.set_defaults(func=cmd_check)


BACKEND_OPTIONS = {
    "vocoder": ("pitch_range", "tempo_range", "f0_method"),
    "convert": ("f0_method", "espeak_voice"),
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

            enroller = Enroller(store, ctx.embedder(store))
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

    def __init__(self, store, embedder, claimed: str | None = None):
        from ..clone_detection import CloneDetector
        from ..recognizer import Recognizer

        if claimed is not None and not store.has_speaker(claimed):
            raise UnknownSpeaker(claimed)
        self.claimed = claimed
        self.recognizer = Recognizer.for_store(store, embedder)
        self.detector = CloneDetector.for_store(store, self.recognizer.scorer.thresholds)

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
                "claimed": claim, "clone": assessment.as_dict(), "detector": self.detector.source}


def check_recording(store, embedder, samples, claimed: str | None = None) -> dict:
    """Identity and clone assessment of one 16 kHz recording (what ``voxguard check`` prints)."""
    from .. import SAMPLE_RATE
    from ..audio import Audio

    checker = Checker(store, embedder, claimed)
    return checker.check(checker.recognizer.embed([Audio(samples, SAMPLE_RATE, SAMPLE_RATE, 1)])[0])


def check_text(data: dict, single: bool) -> str:
    idn, cl = data["identity"], data["clone"]
    who = idn["speaker"] or f"unknown — nobody enrolled passes (best {idn['best']})"
    lines = [f"{data['file']}: speaker: {who}  LLR {idn['llr']} (threshold {idn['threshold_llr']}, "
             f"{idn['calibration']})"]
    if data["claimed"]:
        c = data["claimed"]
        lines.append(f"  claimed: {c['speaker']}  LLR {c['llr']}  "
                     f"{'accepted' if c['decision'] == 'accept' else c['decision'].upper()} ({c['calibration']})")
    lines.append(f"  clone:   {cl['level'].upper()}  score {cl['score']:.3f} about {cl['speaker']} "
                 f"({data['detector']} detector)")
    lines.append("  evidence: " + ", ".join(f"{k}={v}" for k, v in cl["evidence"].items()))
    return "\n".join(lines)


def cmd_check(ctx) -> int:
    from .batch import run_batch

    a = ctx.args
    with ctx.open_store(readonly=True) as store:
        checker = Checker(store, ctx.embedder(store), a.claimed)
        return run_batch(ctx, a.files, checker.recognizer, checker.check, check_text, rejection_exits=False,
                         notice=checker.recognizer.calibration.notice)
