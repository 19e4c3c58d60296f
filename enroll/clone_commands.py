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
        "check", parents=[common], help="is FILE a clone of an enrolled speaker?",
        description="Identify the speaker of FILE and score how likely it is a clone: known clones "
                    "among the nearest stored samples, the clone band of the calibrated thresholds and "
                    "the synthetic-speech countermeasure, fused into one score in [0, 1] with a level "
                    "(none, low, medium, high). Exit 0 whatever the verdict.")
    p.add_argument("file", metavar="FILE")
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


def check_recording(store, embedder, samples, claimed: str | None = None) -> dict:
    """Identity and clone assessment of one 16 kHz recording (what ``voxguard check`` prints)."""
    from ..clone_detection import CloneDetector
    from ..index import SpeakerIndex
    from ..scoring import SpeakerScorer
    from ..utterance import embed_utterance

    if claimed is not None and not store.has_speaker(claimed):
        raise UnknownSpeaker(claimed)
    idx = SpeakerIndex.for_store(store, use_gpu=False)
    if idx.n_speakers == 0:
        raise StoreError(f"{store.location} has no enrolled speakers")
    scorer = SpeakerScorer.for_store(store, idx)
    th = scorer.thresholds
    detector = CloneDetector.for_store(store, th)
    emb = embed_utterance(embedder, samples)
    res = scorer.search(emb[None, :], k=idx.n_speakers, neighbors=32)[0]
    assessment = detector.assess(res, claimed, samples)
    best = res.best
    claim = None
    if claimed is not None:
        s = next((x for x in res.speakers if x.speaker == claimed), None)
        claim = {"speaker": claimed, "score": None if s is None else round(s.score, 4),
                 "accepted": bool(s is not None and s.score >= th.accept)}
    return {
        "identity": {"speaker": best.speaker if best.score >= th.accept else None, "best": best.speaker,
                     "score": round(best.score, 4), "margin": None if res.margin is None else round(res.margin, 4),
                     "threshold": round(th.accept, 4), "threshold_source": th.source, "backend": scorer.name},
        "claimed": claim,
        "clone": assessment.as_dict(),
        "detector": detector.source,
    }


def cmd_check(ctx) -> int:
    from ..audio import load_audio

    a = ctx.args
    audio = load_audio(a.file)
    with ctx.open_store(readonly=True) as store:
        data = {"file": a.file, "duration": round(audio.duration, 3),
                **check_recording(store, ctx.embedder(store), audio.samples, a.claimed)}
    idn, cl = data["identity"], data["clone"]
    who = idn["speaker"] or f"no enrolled speaker (nearest {idn['best']})"
    lines = [f"speaker: {who}  score {idn['score']:.3f} (threshold {idn['threshold']:.3f}, {idn['threshold_source']})"]
    if data["claimed"]:
        c = data["claimed"]
        lines.append(f"claimed: {c['speaker']}  score {c['score'] if c['score'] is not None else '-'}  "
                     f"{'accepted' if c['accepted'] else 'REJECTED'}")
    lines.append(f"clone:   {cl['level'].upper()}  score {cl['score']:.3f} about {cl['speaker']} "
                 f"({data['detector']} detector)")
    lines.append("evidence: " + ", ".join(f"{k}={v}" for k, v in cl["evidence"].items()))
    ctx.emit(data, "\n".join(lines))
    return 0
