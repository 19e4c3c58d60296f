"""``voxguard enroll ...``, ``voxguard verify`` and ``voxguard identify``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import StoreError, VoxguardError


def _add_daemon_arguments(p) -> None:
    g = p.add_argument_group("a running daemon instead of the store (the speakers API)")
    g.add_argument("--url", metavar="URL", help="the daemon, http(s)://HOST:PORT (or its ws(s):// stream URL); "
                                                "needs a token with the 'enroll' scope")
    g.add_argument("--token", help="bearer token (default $VOXGUARD_TOKEN)")
    g.add_argument("--token-file", metavar="FILE", help="read the token from FILE (first field of the first "
                                                        "non-comment line)")
    g.add_argument("--cafile", metavar="PEM", help="CA certificate(s) to trust for https://")


def register(sub, common) -> None:
    enroll = sub.add_parser("enroll", parents=[common], help="manage enrolled speakers and known clones",
                            description="Add, list, inspect and remove enrolled speakers.")
    esub = enroll.add_subparsers(dest="enroll_command", metavar="ACTION", required=True)

    p = esub.add_parser("add", parents=[common], help="add genuine samples of SPEAKER",
                        description="Embed FILEs and store them as genuine samples of SPEAKER "
                                    "(created if new). Re-adding the same audio is a no-op.")
    p.add_argument("speaker")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--consent", metavar="REF", help="the consent reference the samples are enrolled under "
                                                    "(stored with them and in the audit trail)")
    _add_daemon_arguments(p)
    p.set_defaults(func=cmd_add, kind="genuine")

    p = esub.add_parser("add-clone", parents=[common], help="add known clones of SPEAKER",
                        description="Store FILEs as known clones (synthetic imitations) of SPEAKER.")
    p.add_argument("speaker")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--source", metavar="NAME", help="what made the clones (system, model, vendor)")
    p.add_argument("--consent", metavar="REF", help="the consent reference (stored and audited)")
    _add_daemon_arguments(p)
    p.set_defaults(func=cmd_add, kind="clone")

    p = esub.add_parser("list", parents=[common], help="list enrolled speakers")
    p.set_defaults(func=cmd_list)

    p = esub.add_parser("show", parents=[common], help="show one speaker's samples")
    p.add_argument("speaker")
    p.set_defaults(func=cmd_show)

    p = esub.add_parser("remove", parents=[common], help="remove a speaker and all its samples",
                        description="Erase SPEAKER: its audio, embeddings and band views (the freed pages of "
                                    "an SQLite store are overwritten), recorded in the audit trail.")
    p.add_argument("speaker")
    p.add_argument("--consent", metavar="REF", help="the reference of the erasure request (audited)")
    _add_daemon_arguments(p)
    p.set_defaults(func=cmd_remove)

    p = esub.add_parser("audit", parents=[common], help="show the audit trail of enrollment changes",
                        description="Every enrollment change (CLI or HTTP API), oldest first: time, action, "
                                    "speaker, sample ids, who, consent reference.")
    p.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    p.add_argument("--after", type=int, default=0, metavar="ID", help="rows after this audit id (paging)")
    p.add_argument("--speaker", metavar="NAME", help="only this speaker's rows")
    p.set_defaults(func=cmd_audit)

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

    p = sub.add_parser("verify", parents=[common], help="is each recording the same speaker as REF?",
                       description="Compare each FILE with REF, an enrolled speaker's name (trial type "
                                   "'utterance': the recording against the speaker's model) or a recording "
                                   "(trial type 'pair'), and decide on the calibrated log-likelihood ratio of "
                                   "that trial type. FILEs may be folders or NeMo manifests. Exit 0 when every "
                                   "comparison is accepted, 1 when one is rejected, 2 when a file failed.")
    p.add_argument("ref", metavar="REF", help="an enrolled speaker's name, or an audio file")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--threshold", type=float, metavar="LLR",
                   help="override the accept threshold (an LLR; default: the calibrated operating point)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("identify", parents=[common], help="who in the store is speaking in each FILE?",
                       description="Open-set identification: rank enrolled speakers for each FILE (files, "
                                   "folders, NeMo manifests) and name the best one only when its calibrated "
                                   "LLR passes the open-set threshold for the number of enrolled speakers; "
                                   "otherwise the speaker is null (nobody enrolled). The nearest stored "
                                   "samples are listed too, genuine and known clones told apart.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("-k", "--top", type=int, default=5, help="how many speakers to list (default 5)")
    p.set_defaults(func=cmd_identify)


def _enroller(ctx, store):
    from .enrollment import Enroller, cli_actor

    return Enroller(store, ctx.embedder(store), actor=cli_actor())


def _daemon_client(a):
    """A client of the daemon at ``--url`` (its speakers API)."""
    import ssl
    from urllib.parse import urlsplit, urlunsplit

    from ..clients.client import Client
    from ..clients.stream import read_token

    u = urlsplit(a.url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(u.scheme)
    if scheme is None or not u.netloc:
        raise VoxguardError(f"--url must be http(s)://HOST:PORT, got {a.url!r}")
    ctx = None
    if a.cafile:
        try:
            ctx = ssl.create_default_context(cafile=a.cafile)
        except (OSError, ssl.SSLError) as e:
            raise VoxguardError(f"cannot load --cafile {a.cafile}: {e}") from None
    return Client(urlunsplit((scheme, u.netloc, "/v1/stream", "", "")), read_token(a), ssl=ctx)


def _add_remote(ctx, decoded: dict) -> int:
    """``enroll add --url``: each file is one ``POST /v1/speakers/{speaker}/samples`` (one
    transaction each, in order; the first refusal stops the rest)."""
    import asyncio

    a = ctx.args
    client = _daemon_client(a)
    total = {"speaker": a.speaker, "kind": a.kind, "added": 0, "skipped": 0, "failed": [], "sample_ids": []}

    async def run():
        for f in a.files:
            got = await client.enroll(a.speaker, f, kind=a.kind, source=getattr(a, "source", None),
                                      consent=a.consent)
            total["added"] += got["added"]
            total["skipped"] += got["skipped"]
            total["sample_ids"] += got["sample_ids"]

    asyncio.run(run())
    what = "known clone" if a.kind == "clone" else "genuine sample"
    ctx.emit(total, f"{a.speaker}: added {total['added']} {what}(s), {total['skipped']} already enrolled "
                    f"(daemon {client.http_url})")
    return 0


def cmd_add(ctx) -> int:
    a = ctx.args
    provenance = {"source": a.source} if getattr(a, "source", None) else {}
    # Decode every file before opening the store, so bad input never creates or touches it.
    from ..audio import file_sha256, load_audio

    decoded = {}
    for f in a.files:
        audio = load_audio(f)
        decoded[str(Path(f))] = (file_sha256(f), audio)
    if a.url:
        return _add_remote(ctx, decoded)
    if not ctx.store_location.exists():
        ctx.embedder()  # a model that cannot load must not leave a new, empty store behind
    from .enrollment import cli_actor, enroll_files

    with ctx.open_store(create=True) as store:
        report = enroll_files(store, ctx.embedder(store), a.speaker, a.files, actor=cli_actor(), kind=a.kind,
                              provenance=provenance, consent=getattr(a, "consent", None), preloaded=decoded)
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
    from .enrollment import cli_actor, remove_speaker

    if ctx.args.url:
        import asyncio

        client = _daemon_client(ctx.args)
        got = asyncio.run(client.delete_speaker(ctx.args.speaker, ctx.args.consent))
        ctx.emit({"speaker": got["speaker"], "removed_samples": got["removed_samples"]},
                 f"removed {got['speaker']} ({got['removed_samples']} samples) on {client.http_url}")
        return 0

    with ctx.open_store() as store:
        n = remove_speaker(store, ctx.args.speaker, actor=cli_actor(), consent=getattr(ctx.args, "consent", None))
    ctx.emit({"speaker": ctx.args.speaker, "removed_samples": n},
             f"removed {ctx.args.speaker} ({n} samples)")
    return 0


def cmd_audit(ctx) -> int:
    import datetime

    a = ctx.args
    if a.limit < 1:
        raise VoxguardError("--limit must be at least 1")
    with ctx.open_store(readonly=True) as store:
        rows = store.audit(limit=a.limit, after=a.after, speaker=a.speaker)
    data = [r.as_dict() for r in rows]
    lines = []
    for r in rows:
        when = datetime.datetime.fromtimestamp(r.at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        ids = ",".join(map(str, r.sample_ids)) or "-"
        lines.append(f"#{r.id:<5} {when} {r.action:<14} {r.speaker:<20} samples {ids}  by {r.actor}"
                     + (f"  consent {r.consent}" if r.consent else ""))
    ctx.emit(data, "\n".join(lines) if lines else "no enrollment changes recorded")
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


def _recognizer(ctx, need_speakers: bool = True):
    """The store (if any) and a Recognizer on it, the model loaded once."""
    from ..recognizer import Recognizer

    store = None
    if ctx.store_location.exists() or getattr(ctx.args, "store", None):
        store = ctx.open_store(readonly=True)
    try:
        rec = Recognizer.for_store(store, ctx.embedder(store), need_speakers=need_speakers)
    except BaseException:
        if store is not None:
            store.close()
        raise
    return store, rec


def cmd_verify(ctx) -> int:
    from ..audio import load_audio
    from .batch import run_batch

    a = ctx.args
    if len(a.files) == 1 and not Path(a.files[0]).exists() and Path(a.ref).exists():
        a.ref, a.files = a.files[0], [a.ref]  # `verify FILE SPEAKER`: the speaker is the reference
    ref_is_file = Path(a.ref).exists()
    store, rec = _recognizer(ctx, need_speakers=not ref_is_file)
    try:
        if ref_is_file:
            ref = rec.embed([load_audio(a.ref)])[0]
            compare = lambda e: rec.verify_pair(ref, e)  # noqa: E731
            ref_desc = {"file": a.ref}
        else:
            if store is None or not store.has_speaker(a.ref):
                from ..errors import UnknownSpeaker

                raise UnknownSpeaker(a.ref)
            compare = lambda e: rec.verify_speaker(e, a.ref)  # noqa: E731
            ref_desc = {"speaker": a.ref}

        def decide(e) -> dict:
            r = compare(e)
            if a.threshold is not None and r["llr"] is not None:
                r.update(threshold_llr=a.threshold, calibration=r["calibration"] + " (--threshold)",
                         decision="accept" if r["llr"] >= a.threshold else "reject")
            return {"ref": ref_desc, "speaker": a.ref if (r["decision"] == "accept" and not ref_is_file) else None,
                    **r}

        def text(r: dict, single: bool) -> str:
            verdict = {"accept": "ACCEPT — same speaker", "reject": "REJECT — different speakers"}.get(
                r["decision"], r["decision"].upper())
            return (f"{'' if single else r['file'] + ': '}LLR {r['llr']} (score {r['score']}, cosine {r['cosine']}; "
                    f"threshold {r['threshold_llr']}, {r['calibration']}): {verdict}")

        return run_batch(ctx, a.files, rec, decide, text, notice=rec.calibration.notice)
    finally:
        if store is not None:
            store.close()


def cmd_identify(ctx) -> int:
    from .batch import run_batch

    if ctx.args.top < 1:
        raise VoxguardError("--top must be at least 1")
    store, rec = _recognizer(ctx)
    try:
        return run_batch(ctx, ctx.args.files, rec, lambda e: rec.identify(e, ctx.args.top), identify_text,
                         notice=rec.calibration.notice)
    finally:
        store.close()


def identify_text(r: dict, single: bool) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    who = r["speaker"] or f"unknown — nobody enrolled passes (best {r['best']})"
    head = (f"{r['file']}: {who}  LLR {fmt(r['llr'])} (open-set threshold {fmt(r['threshold_llr'])} for "
            f"{r['enrolled_speakers']} speakers, {r['calibration']})")
    if not single:
        return head
    lines = [f"{'RANK':<5}{'SPEAKER':<24}{'LLR':>8}{'SCORE':>8}{'COSINE':>8}{'GENUINE':>9}{'CLONE':>8}"]
    for i, s in enumerate(r["speakers"], 1):
        lines.append(f"{i:<5}{s['speaker']:<24}{fmt(s['llr']):>8}{fmt(s['score']):>8}{fmt(s['cosine']):>8}"
                     f"{fmt(s['best_genuine']):>9}{fmt(s['best_clone']):>8}")
    lines.append("nearest samples: " + ", ".join(f"{n['speaker']}/{n['kind']} {n['cosine']:.3f}"
                                                 for n in r["nearest"]))
    lines.append(head)
    return "\n".join(lines)
