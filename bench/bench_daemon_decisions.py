"""Benchmark: the daemon's verification error rates on held-out speakers, measured through
the real daemon over real WebSockets, next to what ``voxguard calibrate`` stated.

    python bench/bench_daemon_decisions.py [--work DIR] [--backend wccn+asnorm] [--seed 0] [--concurrent 8]

1. A store of the AN4 training speakers (all but 20, chosen with ``--seed``) is calibrated
   with ``--backend`` — the calibration never sees the 20 held-out speakers.
2. 10 of the held-out speakers are then enrolled with 5 of their utterances each (drawn at
   random with ``--seed``, as the calibration draws its 5-utterance models).
3. Every held-out speaker streams its other utterances (up to ``--seconds`` of audio) once
   per claim: claiming itself when enrolled (genuine) and claiming each enrolled held-out
   speaker but itself (impostor), ``--concurrent`` streams at a time at ``--speed`` x real
   time.
4. Per window: the claimed speaker's window LLR (``verification.window.llr``) against the
   window threshold; per session: the final session LLR against the session threshold for
   that many windows.  Measured FAR / FRR are printed next to the stated ones (the window
   calibration's, and the session calibrations' averaged over the sessions' lengths),
   with their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect

from bench_daemon import AN4, RATE, start_daemon


def build(work: Path, seed: int, backend: str) -> tuple[Path, list[str], list[str], dict]:
    from voxguard.embedders import create_embedder
    from voxguard.enroll.calibration import CalibrationConfig, calibrate, save_calibration
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    names = sorted(d.name for d in AN4.iterdir() if d.is_dir())
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(names, 20, replace=False).tolist())
    enrolled = held[:10]
    path = work / f"decisions-{seed}-{backend}.db"
    for p in work.glob(path.name + "*"):
        p.unlink()
    emb = create_embedder("resemblyzer", device="cpu")
    t0 = time.perf_counter()
    with SpeakerStore(path) as store:
        enr = Enroller(store, emb)
        for s in names:
            if s not in held:
                enr.enroll(s, sorted((AN4 / s).glob("*.wav")))
        result = calibrate(store, CalibrationConfig(backend=backend))
        save_calibration(store, result)
        for s in enrolled:
            enr.enroll(s, enrollment_files(s, seed))
        enr.refresh_index()
    print(f"store of {len(names) - 20} training + 10 held-out speakers, calibrated with {backend}, "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    return path, held, enrolled, result.data["decisions"]


def enrollment_files(speaker: str, seed: int) -> list[Path]:
    files = sorted((AN4 / speaker).glob("*.wav"))
    pick = np.random.default_rng([seed, len(files)]).permutation(len(files))[:5]
    return [files[i] for i in sorted(pick)]


def audio_of(speaker: str, enrolled: bool, seconds: float, seed: int) -> bytes:
    from voxguard.audio import float_to_pcm16, load_audio

    taken = set(enrollment_files(speaker, seed)) if enrolled else set()
    files = [f for f in sorted((AN4 / speaker).glob("*.wav")) if f not in taken]
    out, total = [], 0.0
    for f in files:
        a = load_audio(f).samples
        out.append(a)
        total += len(a) / RATE
        if total >= seconds:
            break
    return float_to_pcm16(np.concatenate(out))


async def one(url: str, sid: str, claim: str, pcm: bytes, speed: float) -> list[dict]:
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": sid, "claimed_speaker": claim}))
        events = []

        async def reader():
            async for m in ws:
                events.append(json.loads(m))

        task = asyncio.create_task(reader())
        step = int(RATE * 0.1) * 2
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            await ws.send(pcm[i: i + step])
            lag = t0 + (i + step) / 2 / RATE / speed - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
        await ws.send('{"type": "stop"}')
        await task
        return events


async def run_all(url: str, jobs: list[tuple[str, str, bytes, bool]], concurrent: int, speed: float) -> list:
    sem = asyncio.Semaphore(concurrent)
    out = []

    async def go(i, job):
        async with sem:
            speaker, claim, pcm, genuine = job
            ev = await one(url, f"s{i}-{speaker}-claims-{claim}", claim, pcm, speed)
            out.append((genuine, ev))

    await asyncio.gather(*(go(i, j) for i, j in enumerate(jobs)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "voxguard-bench")
    ap.add_argument("--backend", default="wccn+asnorm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=12.0, help="audio per stream")
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--speed", type=float, default=2.0)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    store, held, enrolled, decisions = build(a.work, a.seed, a.backend)
    pcm = {s: audio_of(s, s in enrolled, a.seconds, a.seed) for s in held}
    jobs = [(s, c, pcm[s], s == c) for s in held for c in enrolled]
    proc, port = start_daemon(store, "cpu", a.work / "daemon-decisions.log", ["--max-streams", str(a.concurrent + 4)])
    try:
        t0 = time.perf_counter()
        results = asyncio.run(run_all(f"ws://127.0.0.1:{port}/v1/stream", jobs, a.concurrent, a.speed))
        print(f"{len(jobs)} streams in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    win = {True: [0, 0], False: [0, 0]}  # genuine -> [errors, windows]
    ses = {True: [0, 0], False: [0, 0]}
    stated_ses = {True: [], False: []}
    dropped = 0
    thresholds = None
    for genuine, events in results:
        ready = events[0]
        thresholds = ready["thresholds"]
        verif = [e for e in events if e["type"] == "verification"]
        for e in verif:
            llr = e["window"]["llr"]
            if llr is None:
                continue
            err = (llr < e["threshold"]) if genuine else (llr >= e["threshold"])
            win[genuine][0] += err
            win[genuine][1] += 1
        summary = events[-1]
        dropped += summary["windows"]["dropped"]
        v = summary["verification"]
        if v["llr"] is None:
            continue
        err = (v["llr"] < v["threshold_llr"]) if genuine else (v["llr"] >= v["threshold_llr"])
        ses[genuine][0] += err
        ses[genuine][1] += 1
        n = int(v["calibration"].split("[n=")[1].split("]")[0])
        cal = next(c for c in decisions["bands"]["wide"]["session"] if c["windows"] == n)
        stated_ses[genuine].append(cal["frr"] if genuine else cal["far"])
    w = decisions["bands"]["wide"]["window"]
    rate = lambda x: x[0] / max(1, x[1])  # noqa: E731
    rows = [("window FAR", rate(win[False]), w["far"], win[False][1]),
            ("window FRR", rate(win[True]), w["frr"], win[True][1]),
            ("session FAR", rate(ses[False]), float(np.mean(stated_ses[False])), ses[False][1]),
            ("session FRR", rate(ses[True]), float(np.mean(stated_ses[True])), ses[True][1])]
    print(f"\nheld-out speakers through the daemon ({a.backend}, seed {a.seed}; {dropped} windows dropped); "
          f"thresholds from {thresholds['source']}")
    print(f"{'':<13}{'measured':>10}{'stated':>10}{'ratio':>8}{'trials':>8}")
    for name, m, st, n in rows:
        print(f"{name:<13}{100 * m:9.2f}%{100 * st:9.2f}%{(m / st if st else float('nan')):8.2f}{n:8d}")
    (a.work / "decisions-last.json").write_text(json.dumps(
        {"rows": [{"what": r[0], "measured": r[1], "stated": r[2], "trials": r[3]} for r in rows],
         "dropped": dropped, "backend": a.backend, "seed": a.seed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
