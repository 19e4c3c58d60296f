"""The speakers service on a real daemon: enrolling from a call vs from files, uploads under
load (and a SIGKILL mid-upload), and two replicas following one SQLite store.

Every figure comes from ``voxguard serve`` subprocesses on loopback, real WebSockets and real
HTTP (``/v1/speakers...``, ``POST /v1/streams/{id}/enroll``), AN4 audio (``$VOXGUARD_AN4``).

Phases (``--phases``, default all; JSON to ``bench/results/speakers_service.json``, merged per
phase so that phases can be rerun one at a time):

* ``enroll`` — held-out speakers (``--held``, default 20) that the base store (every other AN4
  speaker but 4 "strangers", two women and two men: 50 speakers, 5 files each) does not hold.  Store A: each enrolled from one call
  (all its utterances but the last 4, concatenated, streamed ``realtime: false``, then
  ``POST /v1/streams/{id}/enroll``).  Store B: the same speakers enrolled from their first 5
  files (the CLI's code, in this process).  Then a later call of each (its last 4 utterances,
  never enrolled in either store, ~10 s) is streamed to both daemons: session identification
  accuracy (summary ``identity.speaker`` == the speaker) and the mean session score / LLR.
* ``refusals`` — per ``--refusal-runs`` (a copy of store A with countermeasure ``none``, then
  ``aasist``; an empty store with ``aasist``), real-time calls: two alternating voices (a woman and a man;
  two men), under 8 s of speech, and vocoder clones of a stranger (``voxguard clone --backend
  vocoder``); each ``POST .../enroll`` answer (status, gate) is reported as it came.
* ``uploads`` — ``--streams`` (default 32) real-time streams (100 ms chunks) on the base store,
  once alone and once with ``--uploads`` (default 50) concurrent ``POST .../samples`` (AN4 WAVs,
  of the held-out speakers, a new speaker name each) during them: dropped windows, every upload's status, the store's
  consistency afterwards (speakers / samples == the 201s, ``PRAGMA integrity_check``) and the
  identity latency p95 with vs without uploads.  Then a SIGKILL of the daemon while uploads
  are in flight: the store opens, passes ``integrity_check`` and holds no partial speaker.
* ``replicas`` — two daemons on one SQLite file: a speaker POSTed to replica 1; the time until a
  new stream on replica 2 identifies it (target <= 2 s), then DELETE and the time until new
  streams on replica 2 no longer do (``--replica-trials`` speakers).

    .venv/bin/python bench/bench_speakers_service.py                      # everything
    .venv/bin/python bench/bench_speakers_service.py --phases uploads --streams 16
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_daemon as bd  # noqa: E402  (AN4 location, daemon start, stream audio)

REPO = bd.REPO
AN4 = bd.AN4
RATE = 16000
TOKEN = "bench-admin-token-0123456789abcdef"
TEST_FILES = 4  # the last utterances of a held-out speaker: its later call, never enrolled
FILES = 5


# -- data -------------------------------------------------------------------------------------------------
def an4_files(spk: str) -> list[Path]:
    return sorted((AN4 / spk).glob("*.wav"))


def split_speakers(n_held: int) -> tuple[list[str], list[str], list[str]]:
    """(base, held, strangers): held-out and strangers are among speakers with >= 12 utterances."""
    allspk = bd.an4_speakers()
    eligible = [s for s in allspk if len(an4_files(s)) >= 12]
    held = eligible[1::3][:n_held]
    rest = [s for s in eligible[2::3] if s not in held]
    # two women and two men: a two-voice call of either pairing
    strangers = [s for s in rest if s.startswith("f")][:2] + [s for s in rest if s.startswith("m")][:2]
    base = [s for s in allspk if s not in set(held) | set(strangers)]
    return base, held, strangers


def load(f: Path) -> np.ndarray:
    from voxguard.audio import load_audio

    return load_audio(f).samples


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def build_base(work: Path, base: list[str], device: str) -> Path:
    from voxguard.embedders import create_embedder
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    path = work / f"base-{len(base)}.db"
    if path.exists():
        return path
    tmp = work / "base.building.db"
    for p in work.glob("base.building.db*"):
        p.unlink()
    emb = create_embedder("resemblyzer", device=device)
    t0 = time.perf_counter()
    with SpeakerStore(tmp) as store:
        enroller = Enroller(store, emb, keep_audio=False)
        for spk in base:
            enroller.enroll(spk, an4_files(spk)[:FILES])
        enroller.refresh_index()
    copy_store(tmp, path)
    print(f"built base store ({len(base)} speakers x {FILES} files) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def copy_store(src: Path, dst: Path) -> Path:
    """A consistent copy of an SQLite store (the backup API) and its index file."""
    for p in dst.parent.glob(dst.name + "*"):
        p.unlink()
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    if os.path.exists(str(src) + ".faiss"):
        shutil.copy(str(src) + ".faiss", str(dst) + ".faiss")
    return dst


# -- daemon and HTTP --------------------------------------------------------------------------------------
class Daemon:
    def __init__(self, store: Path, work: Path, name: str, device: str, extra: list[str] = (),
                 countermeasure: str = "none", models: Path | None = None):
        tokens = work / "tokens"
        tokens.write_text(f"{TOKEN} admin\n")
        self.proc, self.port = bd.start_daemon(store, device, work / f"daemon-{name}.log",
                                               ["--token-file", str(tokens), "--countermeasure", countermeasure,
                                                *extra], models=models)
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v1/stream"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def request(method: str, url: str, body: bytes | None = None, timeout: float = 300) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(url, method=method, data=body if body is not None else
                                 (b"" if method == "POST" else None), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


async def call(url: str, audio_pcm: bytes, stream_id: str, realtime: bool = False, chunk_s: float = 0.1) -> list[dict]:
    """One stream: all of ``audio_pcm``, then stop; every event."""
    step = int(RATE * chunk_s) * 2
    async with connect(url, max_size=None, compression=None,
                       additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": stream_id, **({} if realtime else {"options": {"realtime": False}})}))
        events: list[dict] = []

        async def reader():
            try:
                async for msg in ws:
                    events.append(json.loads(msg))
            except ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(audio_pcm), step)):
            if realtime:
                lag = t0 + n * chunk_s - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
            await ws.send(audio_pcm[i:i + step])
        await ws.send('{"type": "stop"}')
        await task
    return events


def summary_of(events: list[dict]) -> dict | None:
    return next((e for e in reversed(events) if e["type"] == "summary"), None)


def session_identity(events: list[dict]) -> dict:
    s = summary_of(events) or {}
    ident = s.get("identity") or {}
    return {"speaker": ident.get("speaker"), "best": ident.get("best"), "score": ident.get("score"),
            "llr": ident.get("llr"), "calibration": ident.get("calibration"),
            "speech_s": s.get("speech_duration"), "dropped": (s.get("windows") or {}).get("dropped")}


def mean(xs):
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 3) if xs else None


# -- phase 1: enroll from a call vs from files ------------------------------------------------------------
def phase_enroll(args, base_store: Path, held: list[str]) -> dict:
    from voxguard.embedders import create_embedder
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    store_a = copy_store(base_store, args.work / "call-enrolled.db")
    store_b = copy_store(base_store, args.work / "file-enrolled.db")
    t0 = time.perf_counter()
    emb = create_embedder("resemblyzer", device=args.device)
    with SpeakerStore(store_b) as st:
        enroller = Enroller(st, emb, keep_audio=False)
        for spk in held:
            enroller.enroll(spk, an4_files(spk)[:FILES])
        enroller.refresh_index()
    files_s = time.perf_counter() - t0
    print(f"[enroll] store B: {len(held)} speakers from {FILES} files each in {files_s:.0f} s", flush=True)

    da = Daemon(store_a, args.work, "call-enrolled", args.device, ["--enroll-window", "600"])
    db = Daemon(store_b, args.work, "file-enrolled", args.device)
    enrolled, per = {}, []
    try:
        for spk in held:
            files = an4_files(spk)[:-TEST_FILES]
            audio = np.concatenate([load(f) for f in files])
            sid = f"enroll-call-{spk}"
            t = time.monotonic()
            ev = asyncio.run(call(da.ws, pcm(audio), sid))
            status, got = request("POST", f"{da.http}/v1/streams/{sid}/enroll?speaker={spk}&consent=BENCH")
            enrolled[spk] = {"status": status, "call_s": round(len(audio) / RATE, 1),
                             "files": len(files), "gates": got.get("gates"), "gate": got.get("gate"),
                             "error": None if status == 201 else got.get("error"),
                             "enroll_wall_s": round(time.monotonic() - t, 2)}
            print(f"[enroll] {spk}: call {len(audio) / RATE:.1f} s -> {status} {got.get('gates') or got}", flush=True)
        later = {}
        for spk in held:
            audio = np.concatenate([load(f) for f in an4_files(spk)[-TEST_FILES:]])
            later[spk] = (len(audio) / RATE, pcm(audio))

        async def both():
            out = {}
            for spk, (secs, p) in later.items():
                ea, eb = await asyncio.gather(call(da.ws, p, f"later-a-{spk}"), call(db.ws, p, f"later-b-{spk}"))
                out[spk] = (secs, session_identity(ea), session_identity(eb))
            return out

        res = asyncio.run(both())
    finally:
        da.stop()
        db.stop()
    for spk, (secs, a, b) in res.items():
        per.append({"speaker": spk, "later_call_s": round(secs, 1), "call_enrolled": a, "file_enrolled": b})

    def agg(key, only=None):
        sel = [p for p in per if only is None or p["speaker"] in only]
        rows = [p[key] for p in sel]
        out = {"n": len(sel), "accuracy": round(sum(r["speaker"] == p["speaker"] for r, p in zip(rows, sel))
                                                / max(len(sel), 1), 3),
               "correct": sum(r["speaker"] == p["speaker"] for r, p in zip(rows, sel)),
               "best_correct": sum(r["best"] == p["speaker"] for r, p in zip(rows, sel)),
               "mean_score": mean([r["score"] for r in rows]), "mean_llr": mean([r["llr"] for r in rows]),
               "calibration": rows[0]["calibration"] if rows else None,
               "dropped": sum(r["dropped"] or 0 for r in rows)}
        if only is None:  # the speakers the call-enrolled store holds (a gate may have refused some calls)
            out["enrolled_in_both"] = agg(key, {s for s, e in enrolled.items() if e["status"] == 201})
        return out

    call_s = [e["call_s"] for e in enrolled.values()]
    speech = [e["gates"]["speech_seconds"] for e in enrolled.values() if e.get("gates")]
    return {"held_speakers": held, "base_speakers": None, "calls_enrolled_201": sum(e["status"] == 201 for e in enrolled.values()),
            "call_seconds": {"min": min(call_s), "mean": round(float(np.mean(call_s)), 1), "max": max(call_s)},
            "call_speech_seconds": {"min": min(speech), "mean": round(float(np.mean(speech)), 1),
                                    "max": max(speech)} if speech else None,
            "later_call_seconds": mean([r["later_call_s"] for r in per]),
            "call_enrolled": agg("call_enrolled"), "file_enrolled": agg("file_enrolled"),
            "enrollments": enrolled, "per_speaker": per}


# -- refusals --------------------------------------------------------------------------------------------
def least_alike_pair(strangers: list[str], device: str) -> tuple[str, str]:
    from voxguard.embedders import create_embedder
    from voxguard.utterance import embed_utterances

    emb = create_embedder("resemblyzer", device=device)
    u = embed_utterances(emb, [np.concatenate([load(f) for f in an4_files(s)[:3]]) for s in strangers])
    c = u @ u.T
    i, j = np.unravel_index(np.argmin(c), c.shape)
    return strangers[i], strangers[j]


def make_clones(args, spk: str) -> tuple[np.ndarray | None, dict]:
    """``voxguard clone SPK --backend vocoder`` from a scratch store holding SPK's first 5 files."""
    from voxguard.embedders import create_embedder
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    scratch = args.work / "clone-source.db"
    out = args.work / "clones"
    for p in args.work.glob("clone-source.db*"):
        p.unlink()
    shutil.rmtree(out, ignore_errors=True)
    with SpeakerStore(scratch) as st:
        Enroller(st, create_embedder("resemblyzer", device=args.device), keep_audio=True).enroll(spk, an4_files(spk)[:FILES])
    cmd = [sys.executable, "-m", "voxguard.cli", "--store", str(scratch), "--device", args.device, "clone", spk,
           "--backend", "vocoder", "--count", "6", "--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    info = {"command": " ".join(["voxguard", *cmd[3:]]), "rc": r.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    wavs = sorted(out.rglob("*.wav"))
    if r.returncode != 0 or not wavs:
        info["stderr"] = r.stderr[-800:]
        return None, info
    info["clones"] = len(wavs)
    return np.concatenate([load(f) for f in wavs]), info


def phase_refusals(args, strangers: list[str]) -> dict:
    """Refused calls: a woman and a man alternating, two men alternating, under 8 s of speech,
    vocoder clones.  Per (store, countermeasure) of ``--refusal-runs``: ``call-enrolled`` is the
    enroll phase's store A (50 + the call-enrolled AN4 speakers whom a stranger's windows may be taken for: the
    ``other_speaker`` gate), ``empty`` a store with nobody enrolled (only the speech,
    consistency and clone gates can refuse)."""
    f1, f2, m1, m2 = strangers
    two = lambda a, b: np.concatenate([load(f) for pair in zip(an4_files(a)[:5], an4_files(b)[:5]) for f in pair])
    short = np.concatenate([load(f) for f in an4_files(f2)[:2]])
    clones, clone_info = make_clones(args, m2)
    print(f"[refusals] clones: {clone_info}", flush=True)
    calls = {"two_voices_woman_man": (two(f1, m1), f"{f1}+{m1}", "newname-wm"),
             "two_voices_two_men": (two(m1, m2), f"{m1}+{m2}", "newname-mm"),
             "short": (short, f2, f2)}
    if clones is not None:
        calls["clones"] = (clones, f"vocoder clones of {m2}", m2)
    store_a = args.work / "call-enrolled.db"
    if not store_a.exists():
        raise SystemExit("run the enroll phase first (refusals use its store)")
    out = {"calls": {k: {"voices": v[1], "seconds": round(len(v[0]) / RATE, 1)} for k, v in calls.items()},
           "clone_generation": clone_info, "runs": []}
    for run in args.refusal_runs.split(","):
        store_kind, cm = run.split(":")
        st = args.work / f"refusals-{store_kind}-{cm}.db"
        for p in args.work.glob(st.name + "*"):
            p.unlink()
        if store_kind == "call-enrolled":
            copy_store(store_a, st)
        d = Daemon(st, args.work, f"refusals-{store_kind}-{cm}", args.device, ["--enroll-window", "600"],
                   countermeasure=cm, models=args.models)
        try:
            async def run_all():
                return await asyncio.gather(*(call(d.ws, pcm(v[0]), f"refuse-{run}-{k}", realtime=True)
                                              for k, v in calls.items()))

            evs = dict(zip(calls, asyncio.run(run_all())))
            res = {}
            for k, (audio, voices, name) in calls.items():
                status, got = request("POST", f"{d.http}/v1/streams/refuse-{run}-{k}/enroll?speaker={name}")
                s = summary_of(evs[k]) or {}
                levels = [e["level"] for e in evs[k] if e["type"] == "clone_suspicion"]
                checks = [e["check"]["level"] for e in evs[k] if e["type"] == "clone_suspicion" and e.get("check")]
                res[k] = {"status": status, "reason": got.get("reason"), "gate": got.get("gate"),
                          "gates": got.get("gates"), "error": got.get("error"), "identified": got.get("identified"),
                          "session_clone": s.get("clone"), "clone_levels_seen": sorted(set(levels)),
                          "countermeasure_checks": len(checks), "check_levels": sorted(set(checks))}
                print(f"[refusals/{run}] {k}: {status} gate={got.get('gate')} gates={got.get('gates')} "
                      f"{got.get('error') or ''} | clone levels {sorted(set(levels))} checks {len(checks)}", flush=True)
        finally:
            d.stop()
        out["runs"].append({"store": store_kind, "countermeasure": cm, "results": res})
    return out


# -- phase 2: uploads under load --------------------------------------------------------------------------
async def rt_stream(url: str, sid: str, speaker: str, p: bytes, t_start: float, rec: dict) -> None:
    step = int(RATE * 0.1) * 2
    sent: list[float] = []
    rec.update(latencies=[], summary=None, identity=0, correct=0)
    delay = t_start - 1.0 - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    async with connect(url, max_size=None, compression=None,
                       additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": sid}))

        async def reader():
            try:
                async for msg in ws:
                    now = time.monotonic()
                    ev = json.loads(msg)
                    if ev["type"] == "identity":
                        rec["identity"] += 1
                        rec["correct"] += ev["speaker"] == speaker
                        k = min(len(sent), int(np.ceil(ev["window"]["end"] / 0.1 - 1e-6))) - 1
                        if k >= 0:
                            rec["latencies"].append((now, now - sent[k]))
                    elif ev["type"] == "summary":
                        rec["summary"] = ev
            except ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        delay = t_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(p), step)):
            lag = t0 + n * 0.1 - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
            await ws.send(p[i:i + step])
            sent.append(time.monotonic())
        await ws.send('{"type": "stop"}')
        await task


def upload_set(n: int, speakers: list[str]) -> list[tuple[str, bytes]]:
    """(new speaker name, WAV bytes): ``n`` AN4 utterances of speakers the store does not hold."""
    out = []
    for k in range(n):
        spk = speakers[k % len(speakers)]
        f = an4_files(spk)[k // len(speakers)]
        out.append((f"upload-{k:02d}-{spk}", f.read_bytes()))
    return out


def post_many(http: str, items: list[tuple[str, bytes]]) -> list[dict]:
    def one(item):
        name, body = item
        t = time.monotonic()
        try:
            status, got = request("POST", f"{http}/v1/speakers/{name}/samples?filename={name}.wav", body, timeout=600)
        except Exception as e:  # a connection reset: no answer
            return {"speaker": name, "status": None, "error": repr(e), "t0": t, "t1": time.monotonic()}
        return {"speaker": name, "status": status, "error": got.get("error"), "sample_ids": got.get("sample_ids"),
                "t0": t, "t1": time.monotonic()}

    with cf.ThreadPoolExecutor(len(items)) as ex:
        return list(ex.map(one, items))


def streams_phase(d: Daemon, audio, n: int, duration: float, uploads=None, upload_at: float = 6.0) -> dict:
    recs = [{} for _ in range(n)]

    async def main():
        t_start = time.monotonic() + 1.5
        tasks = [rt_stream(d.ws, f"load-{time.time_ns()}-{i}", audio[i % len(audio)][0],
                           audio[i % len(audio)][1][: int(duration * RATE) * 2], t_start + (i / n) * 0.5, recs[i])
                 for i in range(n)]
        up = None
        if uploads:
            async def later():
                await asyncio.sleep(t_start + upload_at - time.monotonic())
                return await asyncio.to_thread(post_many, d.http, uploads)
            up = asyncio.create_task(later())
        await asyncio.gather(*tasks)
        return await up if up else None

    answers = asyncio.run(main())
    lat = [x for r in recs for x in r["latencies"]]
    all_ms = np.array([x[1] for x in lat]) * 1000
    out = {"streams": n, "duration_s": duration,
           "summaries": sum(r["summary"] is not None for r in recs),
           "dropped": sum(r["summary"]["windows"]["dropped"] if r["summary"] else 0 for r in recs),
           "identity_events": sum(r["identity"] for r in recs),
           "top1_correct": round(sum(r["correct"] for r in recs) / max(sum(r["identity"] for r in recs), 1), 3),
           "latency_ms": {q: round(float(np.percentile(all_ms, q)), 1) for q in (50, 95, 99)} if len(all_ms) else None}
    if answers:
        u0, u1 = min(a["t0"] for a in answers), max(a["t1"] for a in answers)
        during = np.array([x[1] for x in lat if u0 <= x[0] <= u1]) * 1000
        out["latency_ms_during_uploads"] = ({q: round(float(np.percentile(during, q)), 1) for q in (50, 95, 99)}
                                            if len(during) else None)
        out["identity_events_during_uploads"] = int(len(during))
        out["uploads_span_s"] = round(u1 - u0, 1)
        codes: dict = {}
        for a in answers:
            codes[str(a["status"])] = codes.get(str(a["status"]), 0) + 1
        out["upload_status"] = codes
        out["upload_latency_s"] = {"p50": round(float(np.percentile([a["t1"] - a["t0"] for a in answers], 50)), 2),
                                   "max": round(max(a["t1"] - a["t0"] for a in answers), 2)}
        out["_answers"] = answers
    return out


def store_check(path: Path) -> dict:
    """integrity_check, speakers and samples, speakers without a sample, samples without views."""
    from voxguard.store import SpeakerStore

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = dict(db.execute("SELECT s.name, COUNT(x.id) FROM speakers s LEFT JOIN samples x ON x.speaker_id = s.id "
                               "GROUP BY s.id").fetchall())
        no_views = db.execute("SELECT COUNT(*) FROM samples WHERE id NOT IN (SELECT sample_id FROM sample_views)").fetchone()[0]
        fk = db.execute("PRAGMA foreign_key_check").fetchall()
    with SpeakerStore(path, readonly=True) as st:  # the store itself opens it
        opened = len(st.speakers())
    return {"integrity_check": integrity, "speakers": len(rows), "samples": sum(rows.values()),
            "speakers_without_samples": [n for n, c in rows.items() if c == 0], "samples_without_views": no_views,
            "foreign_key_violations": len(fk), "opened_by_SpeakerStore_speakers": opened, "_rows": rows}


def phase_uploads(args, base_store: Path, base: list[str], others: list[str]) -> dict:
    st = copy_store(base_store, args.work / "uploads.db")
    before = store_check(st)
    audio = bd.stream_audio(args.duration, base, "plain")  # held-out utterances (not the first 5)
    uploads = upload_set(args.uploads, others)
    d = Daemon(st, args.work, "uploads", args.device, ["--max-streams", str(args.streams + 16)])
    daemon = psutil.Process(d.proc.pid)
    try:
        alone = streams_phase(d, audio, args.streams, args.duration)
        print(f"[uploads] {args.streams} streams alone: dropped {alone['dropped']}, p95 {alone['latency_ms']}", flush=True)
        cpu0 = daemon.cpu_times()
        t0 = time.monotonic()
        loaded = streams_phase(d, audio, args.streams, args.duration, uploads)
        cpu = (sum(daemon.cpu_times()[:2]) - sum(cpu0[:2])) / (time.monotonic() - t0)
        loaded["daemon_cpu_cores"] = round(cpu, 2)
        print(f"[uploads] with uploads: dropped {loaded['dropped']}, p95 {loaded['latency_ms']}, during "
              f"{loaded.get('latency_ms_during_uploads')}, status {loaded['upload_status']}", flush=True)
        status, listed = request("GET", f"{d.http}/v1/speakers?limit=1000")
    finally:
        d.stop()
    answers = loaded.pop("_answers")
    ok = {a["speaker"] for a in answers if a["status"] == 201}
    after = store_check(st)
    rows = after.pop("_rows")
    before.pop("_rows")
    new = {n: c for n, c in rows.items() if n.startswith("upload-")}
    consistency = {"answered_201": len(ok), "new_speakers_in_store": len(new), "new_samples_in_store": sum(new.values()),
                   "store_new_equals_201s": set(new) == ok and all(c == 1 for c in new.values()),
                   "api_listed_speakers": len(listed.get("speakers", [])) if status == 200 else None,
                   "before": before, "after": after}
    kill = kill_mid_upload(args, base_store, others)
    return {"alone": alone, "with_uploads": loaded, "store": consistency, "sigkill": kill}


def kill_mid_upload(args, base_store: Path, others: list[str]) -> dict:
    """SIGKILL while uploads (30 s recordings, slower to embed) are in flight."""
    st = copy_store(base_store, args.work / "sigkill.db")
    d = Daemon(st, args.work, "sigkill", args.device)
    items = []
    for k, spk in enumerate(others[:12]):
        items.append((f"killed-{k:02d}-{spk}", wav_bytes(np.concatenate([load(f) for f in an4_files(spk)]))))
    results: list = []

    def fire():
        results.extend(post_many(d.http, items))

    import threading
    th = threading.Thread(target=fire)
    t0 = time.monotonic()
    th.start()
    # kill once the first upload has been answered (the rest are decoding, embedding or writing)
    while not results and time.monotonic() - t0 < 120:
        time.sleep(0.01)
        # post_many returns all answers at once: watch the store instead
        try:
            with sqlite3.connect(f"file:{st}?mode=ro", uri=True, timeout=0.2) as db:
                n = db.execute("SELECT COUNT(*) FROM speakers WHERE name LIKE 'killed-%'").fetchone()[0]
        except sqlite3.Error:
            n = 0
        if n >= 2:
            break
    killed_at = time.monotonic() - t0
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(30)
    th.join(120)
    codes: dict = {}
    for a in results:
        codes[str(a["status"])] = codes.get(str(a["status"]), 0) + 1
    ok = {a["speaker"] for a in results if a["status"] == 201}
    chk = store_check(st)
    rows = chk.pop("_rows")
    killed = {n: c for n, c in rows.items() if n.startswith("killed-")}
    return {"uploads": len(items), "upload_seconds_each": "all of one AN4 speaker's utterances (~34 s)",
            "killed_after_s": round(killed_at, 2), "answers_before_kill": codes,
            "killed_speakers_in_store": len(killed), "answered_201_all_in_store": ok <= set(killed),
            "partial_speakers": [n for n, c in killed.items() if c != 1], **chk}


# -- phase 3: replicas -----------------------------------------------------------------------------------
def phase_replicas(args, base_store: Path, others: list[str]) -> dict:
    st = copy_store(base_store, args.work / "replicas.db")
    r1 = Daemon(st, args.work, "replica1", args.device)
    r2 = Daemon(st, args.work, "replica2", args.device)
    trials = []
    try:
        for k, spk in enumerate(others[:args.replica_trials]):
            files = an4_files(spk)
            body = wav_bytes(np.concatenate([load(f) for f in files[:FILES]]))
            probe = pcm(np.concatenate([load(f) for f in files[-3:]]))
            name = f"replica-{k}-{spk}"
            # baseline: the probe audio is not identified as the name before it exists
            pre = session_identity(asyncio.run(call(r2.ws, probe, f"pre-{k}")))
            t_post = time.monotonic()
            status, got = request("POST", f"{r1.http}/v1/speakers/{name}/samples?filename={name}.wav", body)
            t_ans = time.monotonic()
            first, n_probes, last = None, 0, None
            while time.monotonic() - t_ans < 20:
                t = time.monotonic()
                last = session_identity(asyncio.run(call(r2.ws, probe, f"after-{k}-{n_probes}")))
                n_probes += 1
                if last["speaker"] == name:
                    first = t
                    break
            t_del = time.monotonic()
            dstatus, _ = request("DELETE", f"{r1.http}/v1/speakers/{name}")
            t_dans = time.monotonic()
            gone, d_probes = None, 0
            while time.monotonic() - t_dans < 20:
                t = time.monotonic()
                e = session_identity(asyncio.run(call(r2.ws, probe, f"del-{k}-{d_probes}")))
                d_probes += 1
                if e["speaker"] != name and e["best"] != name:
                    gone = t
                    break
            tr = {"speaker": name, "post_status": status, "post_answer_s": round(t_ans - t_post, 2),
                  "identified_before": pre["speaker"],
                  "replica2_identifies_after_answer_s": None if first is None else round(first - t_ans, 2),
                  "replica2_identifies_after_post_sent_s": None if first is None else round(first - t_post, 2),
                  "probes": n_probes, "probe_s": round(len(probe) / 2 / RATE, 1), "last": last,
                  "delete_status": dstatus, "delete_answer_s": round(t_dans - t_del, 2),
                  "replica2_forgets_after_answer_s": None if gone is None else round(gone - t_dans, 2),
                  "delete_probes": d_probes}
            print(f"[replicas] {tr}", flush=True)
            trials.append(tr)
    finally:
        r1.stop()
        r2.stop()
    f = [t["replica2_identifies_after_answer_s"] for t in trials]
    g = [t["replica2_forgets_after_answer_s"] for t in trials]
    return {"store": "one SQLite file, two daemons (--follow-interval 0.5 default)", "trials": trials,
            "identify_max_s": max((x for x in f if x is not None), default=None), "identify_missed": f.count(None),
            "forget_max_s": max((x for x in g if x is not None), default=None), "forget_missed": g.count(None),
            "target_s": 2.0}


# -- main ------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="enroll,refusals,uploads,replicas")
    ap.add_argument("--held", type=int, default=20)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per real-time stream (uploads phase)")
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--replica-trials", type=int, default=3)
    ap.add_argument("--refusal-runs", default="call-enrolled:none,call-enrolled:aasist,empty:aasist",
                    help="STORE:COUNTERMEASURE runs of the refusal calls (STORE: call-enrolled or empty)")
    ap.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models" / "aasist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "speakers_service")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speakers_service.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base, held, strangers = split_speakers(args.held)
    base_store = build_base(args.work, base, args.device)
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out["split"] = {"base": len(base), "held": held, "strangers": strangers}
    for ph in args.phases.split(","):
        t0 = time.perf_counter()
        load0 = os.getloadavg()
        if ph == "enroll":
            r = phase_enroll(args, base_store, held)
            r["base_speakers"] = len(base)
        elif ph == "refusals":
            r = phase_refusals(args, strangers)
        elif ph == "uploads":
            r = phase_uploads(args, base_store, base, held + strangers)
        elif ph == "replicas":
            r = phase_replicas(args, base_store, strangers + held)
        else:
            raise SystemExit(f"unknown phase {ph}")
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        r["loadavg_start_end"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
        r["cpus"] = os.cpu_count()
        r["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out[ph] = r
        args.out.write_text(json.dumps(out, indent=2, default=str))
        print(f"== {ph} done in {r['wall_s']} s (load {r['loadavg_start_end']})", flush=True)
    print_table(out)
    return 0


def print_table(out: dict) -> None:
    rows = []
    if "enroll" in out:
        e = out["enroll"]
        for k in ("call_enrolled", "file_enrolled"):
            rows.append((f"later calls vs {k.replace('_', '-')} store",
                         f"{e[k]['correct']}/{e[k]['n']} identified, mean score {e[k]['mean_score']}, "
                         f"mean LLR {e[k]['mean_llr']}; of the {e[k]['enrolled_in_both']['n']} call-enrolled: "
                         f"{e[k]['enrolled_in_both']['correct']}, LLR {e[k]['enrolled_in_both']['mean_llr']}"))
        rows.append(("calls enrolled (201)", f"{e['calls_enrolled_201']}/{len(e['held_speakers'])}, call "
                     f"{e['call_seconds']['mean']} s mean ({e['call_speech_seconds']})"))
    if "refusals" in out:
        for run in out["refusals"]["runs"]:
            for k, v in run["results"].items():
                rows.append((f"refusal [{run['store']}, cm {run['countermeasure']}] {k}",
                             f"{v['status']} gate={v['gate']} {v.get('gates') or ''}"))
    if "uploads" in out:
        u = out["uploads"]
        rows.append(("streams alone: dropped / p95 ms", f"{u['alone']['dropped']} / {u['alone']['latency_ms']}"))
        w = u["with_uploads"]
        rows.append(("with uploads: dropped / p95 ms", f"{w['dropped']} / {w['latency_ms']} (during "
                     f"{w.get('latency_ms_during_uploads')})"))
        rows.append(("upload status", str(w["upload_status"])))
        s = u["store"]
        rows.append(("store after", f"{s['new_speakers_in_store']} new speakers / {s['new_samples_in_store']} samples "
                     f"for {s['answered_201']} x 201; integrity {s['after']['integrity_check']}"))
        k = u["sigkill"]
        rows.append(("SIGKILL mid-upload", f"integrity {k['integrity_check']}, partial {k['partial_speakers']}, "
                     f"stored {k['killed_speakers_in_store']}/{k['uploads']}, answers {k['answers_before_kill']}"))
    if "replicas" in out:
        r = out["replicas"]
        rows.append(("replica 2 identifies new speaker", f"max {r['identify_max_s']} s after the 201 "
                     f"({[t['replica2_identifies_after_answer_s'] for t in r['trials']]})"))
        rows.append(("replica 2 forgets deleted speaker", f"max {r['forget_max_s']} s after the 200 "
                     f"({[t['replica2_forgets_after_answer_s'] for t in r['trials']]})"))
    for a, b in rows:
        print(f"{a:40s} {b}")


if __name__ == "__main__":
    sys.exit(main())
