"""``voxguard enroll ...``, ``voxguard verify`` and ``voxguard identify``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StoreError, VoxguardError


def register(sub, common) -> None:
    enroll = sub.add_parser("enroll", parents=[common], help="manage enrolled speakers and known clones",
                            description="Add, list, inspect and remove enrolled speakers.")
    esub = enroll.add_subparsers(dest="enroll_command", metavar="ACTION", required=True)

    p = esub.add_parser("add", parents=[common], help="add genuine samples of SPEAKER",
                        description="Embed FILEs and store them as genuine samples of SPEAKER "
                                    "(created if new). Re-adding the same audio is a no-op.")
    p.add_argument("speaker")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_add, kind="genuine")

    p = esub.add_parser("add-clone", parents=[common], help="add known clones of SPEAKER",
                        description="Store FILEs as known clones (synthetic imitations) of SPEAKER.")
    p.add_argument("speaker")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--source", metavar="NAME", help="what made the clones (system, model, vendor)")
    p.set_defaults(func=cmd_add, kind="clone")

    p = esub.add_parser("list", parents=[common], help="list enrolled speakers")
    p.set_defaults(func=cmd_list)

    p = esub.add_parser("show", parents=[common], help="show one speaker's samples")
    p.add_argument("speaker")
    p.set_defaults(func=cmd_show)

    p = esub.add_parser("remove", parents=[common], help="remove a speaker and all its samples")
    p.add_argument("speaker")
    p.set_defaults(func=cmd_remove)

    p = esub.add_parser("import", parents=[common], help="bulk-import a dataset",
                        description="Import every speaker of a dataset. Each speaker is stored in one "
                                    "transaction, so an interrupted import leaves only whole speakers.")
    p.add_argument("dir", metavar="DIR", help="dataset folder (or manifest file for nemo-manifest)")
    p.add_argument("--layout", choices=["an4", "folders", "nemo-manifest"], default="folders")
    p.add_argument("--per-speaker", type=int, metavar="N", help="import at most N files per speaker")
    p.add_argument("--speakers", metavar="NAME,...", help="only these speakers")
    p.add_argument("--kind", choices=["genuine", "clone"], default="genuine")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = esub.add_parser("stats", parents=[common], help="store statistics")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("verify", parents=[common], help="are two recordings the same speaker?",
                       description="Cosine score between the utterance embeddings of A and B, accepted "
                                   "when at or above the calibrated (or default) threshold. Exit 0 on "
                                   "accept, 1 on reject. A or B may also be an enrolled speaker's name.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--threshold", type=float, help="override the accept threshold")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identify", parents=[common], help="who in the store is speaking in FILE?",
                       description="Rank enrolled speakers for FILE, and list the nearest stored samples, "
                                   "genuine and known clones told apart.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-k", "--top", type=int, default=5, help="how many speakers (default 5)")
    p.set_defaults(func=cmd_identify)


def _enroller(ctx, store):
    from .enrollment import Enroller

    return Enroller(store, ctx.embedder(store))


def cmd_add(ctx) -> int:
    a = ctx.args
    provenance = {"source": a.source} if getattr(a, "source", None) else {}
    # Decode every file before opening the store, so bad input never creates or touches it.
    from ..audio import file_sha256, load_audio

    decoded = {}
    for f in a.files:
        audio = load_audio(f)
        decoded[str(Path(f))] = (file_sha256(f), audio)
    if not ctx.store_location.exists():
        ctx.embedder()  # a model that cannot load must not leave a new, empty store behind
    with ctx.open_store(create=True) as store:
        enr = _enroller(ctx, store)
        report = enr.enroll(a.speaker, a.files, kind=a.kind, provenance=provenance, strict=True,
                            preloaded=decoded)
        if report.added:
            enr.refresh_index()
    what = "known clone" if a.kind == "clone" else "genuine sample"
    ctx.emit(report.as_dict(), f"{a.speaker}: added {report.added} {what}(s), "
                               f"{report.skipped} already enrolled")
    return 0


def cmd_list(ctx) -> int:
    with ctx.open_store(readonly=True) as store:
        rows = store.speakers()
    data = [{"speaker": s.name, "genuine": s.genuine, "clones": s.clones, "seconds": round(s.duration, 2)}
            for s in rows]
    lines = [f"{'SPEAKER':<24} {'GENUINE':>7} {'CLONES':>6} {'SECONDS':>8}"]
    lines += [f"{d['speaker']:<24} {d['genuine']:>7} {d['clones']:>6} {d['seconds']:>8.1f}" for d in data]
    ctx.emit(data, "\n".join(lines) if data else "no speakers enrolled")
    return 0


def cmd_show(ctx) -> int:
    with ctx.open_store(readonly=True) as store:
        summary = store.speaker(ctx.args.speaker)
        samples = store.samples(ctx.args.speaker)
    data = {"speaker": summary.name, "genuine": summary.genuine, "clones": summary.clones,
            "seconds": round(summary.duration, 3),
            "samples": [{"id": s.id, "kind": s.kind, "duration": round(s.duration, 3), "sha256": s.sha256,
                         "source_path": s.source_path, "provenance": s.provenance} for s in samples]}
    lines = [f"{summary.name}: {summary.genuine} genuine, {summary.clones} clone(s), {summary.duration:.1f} s"]
    for s in samples:
        prov = f" [{', '.join(f'{k}={v}' for k, v in s.provenance.items())}]" if s.provenance else ""
        lines.append(f"  #{s.id:<6} {s.kind:<8} {s.duration:6.2f}s  {s.source_path}{prov}")
    ctx.emit(data, "\n".join(lines))
    return 0


def cmd_remove(ctx) -> int:
    from ..index import SpeakerIndex

    with ctx.open_store() as store:
        n = store.remove_speaker(ctx.args.speaker)
        SpeakerIndex.build(store, use_gpu=False).save_beside(store)
    ctx.emit({"speaker": ctx.args.speaker, "removed_samples": n},
             f"removed {ctx.args.speaker} ({n} samples)")
    return 0


def cmd_stats(ctx) -> int:
    with ctx.open_store(readonly=True) as store:
        data = store.stats()
    text = "\n".join(f"{k:>16}: {v}" for k, v in data.items())
    ctx.emit(data, text)
    return 0


def cmd_import(ctx) -> int:
    from tqdm import tqdm

    from .importers import iter_layout

    a = ctx.args
    root = Path(a.dir).expanduser()
    if not root.exists():
        raise VoxguardError(f"{root}: no such file or directory")
    groups = list(iter_layout(a.layout, root))
    if a.speakers:
        wanted = {s.strip() for s in a.speakers.split(",") if s.strip()}
        groups = [(s, f) for s, f in groups if s in wanted]
    if a.per_speaker is not None:
        if a.per_speaker < 1:
            raise VoxguardError("--per-speaker must be at least 1")
        groups = [(s, f[: a.per_speaker]) for s, f in groups]
    if not groups:
        raise VoxguardError(f"{root}: no speakers with audio files found for layout {a.layout}")
    reports = []
    if not ctx.store_location.exists():
        ctx.embedder()  # a model that cannot load must not leave a new, empty store behind
    with ctx.open_store(create=True) as store:
        enr = _enroller(ctx, store)
        bar = tqdm(groups, unit="speaker", disable=a.no_progress or ctx.json or None,
                   file=sys.stderr, desc="importing")
        for speaker, files in bar:
            bar.set_postfix_str(speaker)
            reports.append(enr.enroll(speaker, files, kind=a.kind,
                                      provenance={"import": a.layout} if a.kind == "clone" else {},
                                      strict=False))
        enr.refresh_index()
    added = sum(r.added for r in reports)
    skipped = sum(r.skipped for r in reports)
    failed = [f for r in reports for f in r.failed]
    data = {"speakers": len(reports), "added": added, "skipped": skipped,
            "failed": [{"path": p, "reason": r} for p, r in failed]}
    text = f"imported {len(reports)} speakers: {added} new samples, {skipped} already enrolled"
    if failed:
        text += f", {len(failed)} failed:\n" + "\n".join(f"  {p}: {r}" for p, r in failed)
    ctx.emit(data, text)
    return 1 if failed else 0


def _embedding_for(ctx, store, ref: str):
    """A file's utterance embedding, or an enrolled speaker's centroid when ``ref`` names one."""
    from ..audio import load_audio
    from ..index import SpeakerIndex
    from ..utterance import embed_utterance

    p = Path(ref)
    if not p.exists() and store is not None and store.has_speaker(ref):
        idx = SpeakerIndex.for_store(store, use_gpu=False)
        vec = idx.speaker_centroid(ref)
        if vec is None:
            raise StoreError(f"speaker {ref!r} has no genuine samples")
        return vec, {"speaker": ref}
    audio = load_audio(p)
    return embed_utterance(ctx.embedder(store), audio.samples), {"file": str(p), "duration": round(audio.duration, 3)}


def _maybe_store(ctx):
    try:
        return ctx.open_store(readonly=True) if ctx.store_location.exists() else None
    except StoreError:
        if getattr(ctx.args, "store", None):
            raise
        return None


def cmd_verify(ctx) -> int:
    from ..scoring import calibration_for, pair_score

    store = _maybe_store(ctx)
    try:
        ea, da = _embedding_for(ctx, store, ctx.args.a)
        eb, db = _embedding_for(ctx, store, ctx.args.b)
        th, backend = calibration_for(store, ctx.embedder_name(store))
    finally:
        if store is not None:
            store.close()
    score = pair_score(ea, eb, backend, db.get("speaker") or da.get("speaker"))
    threshold = ctx.args.threshold if ctx.args.threshold is not None else th.accept
    accept = score >= threshold
    data = {"a": da, "b": db, "score": round(score, 4), "threshold": round(threshold, 4), "backend": th.backend,
            "threshold_source": "--threshold" if ctx.args.threshold is not None else th.source,
            "decision": "accept" if accept else "reject"}
    ctx.emit(data, f"score {score:.3f} (threshold {threshold:.3f}, {data['threshold_source']}): "
                   f"{'ACCEPT — same speaker' if accept else 'REJECT — different speakers'}")
    return 0 if accept else 1


def cmd_identify(ctx) -> int:
    from ..audio import load_audio
    from ..index import SpeakerIndex
    from ..scoring import SpeakerScorer
    from ..utterance import embed_utterance

    if ctx.args.top < 1:
        raise VoxguardError("--top must be at least 1")
    audio = load_audio(ctx.args.file)
    with ctx.open_store(readonly=True) as store:
        emb = embed_utterance(ctx.embedder(store), audio.samples)
        idx = SpeakerIndex.for_store(store, use_gpu=False)
        scorer = SpeakerScorer.for_store(store, idx)
        th = scorer.thresholds
    if idx.n_speakers == 0:
        raise StoreError(f"{ctx.store_location} has no enrolled speakers")
    res = scorer.search(emb[None, :], k=ctx.args.top, neighbors=max(16, ctx.args.top * 4))[0]
    best = res.best
    data = {
        "file": ctx.args.file, "duration": round(audio.duration, 3),
        "threshold": th.accept, "threshold_source": th.source, "backend": scorer.name,
        "best": best.speaker if best and best.score >= th.accept else None,
        "margin": round(res.margin, 4) if res.margin is not None else None,
        "speakers": [{"speaker": s.speaker, "score": round(s.score, 4),
                      "best_genuine": None if s.best_genuine is None else round(s.best_genuine, 4),
                      "best_clone": None if s.best_clone is None else round(s.best_clone, 4),
                      "match": s.score >= th.accept} for s in res.speakers],
        "nearest": [{"speaker": n.speaker, "kind": n.kind, "score": round(n.score, 4), "sample_id": n.sample_id}
                    for n in res.neighbors[: ctx.args.top * 2]],
    }
    lines = [f"{'RANK':<5}{'SPEAKER':<24}{'SCORE':>7}{'GENUINE':>9}{'CLONE':>8}"]
    for i, s in enumerate(data["speakers"], 1):
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"{i:<5}{s['speaker']:<24}{s['score']:>7.3f}{fmt(s['best_genuine']):>9}"
                     f"{fmt(s['best_clone']):>8}{'  match' if s['match'] else ''}")
    lines.append("nearest samples: " + ", ".join(f"{n['speaker']}/{n['kind']} {n['score']:.3f}"
                                                 for n in data["nearest"]))
    verdict = data["best"] or "no enrolled speaker above the threshold"
    lines.append(f"best: {verdict} (threshold {th.accept:.3f}, {th.source})")
    ctx.emit(data, "\n".join(lines))
    return 0
