"""Load generator for ``voxguard serve``: N concurrent real-time streams of AN4 speech over
real WebSockets against a real daemon subprocess.

Phases, in one run:

1. **raw** — the embedder alone, in this process before the daemon starts: windows/s at
   batch sizes 1, 8, 32, 64 (1.5 s windows).
2. **real time** — N streams, each sending 100 ms of 16-bit PCM every 100 ms (held-out AN4
   utterances of an enrolled speaker, back to back).  Per identity event, the latency from
   the moment the chunk holding the window's last sample was sent to the moment the
   event arrived; p50/p95/p99 over all streams; whether each stream kept up (no dropped
   window, its own p95 under 1 s, its summary within 2 s of ``stop``); the daemon's CPU and
   peak RSS (psutil).
3. **saturation** — the same N streams send as fast as the daemon reads; the daemon's
   sustained embedding rate (``voxguard_windows_embedded_total`` over the phase) and its
   ratio to the raw batch-64 rate.

The store (all AN4 speakers x 5 utterances) is built once and cached in the work dir.

    .venv/bin/python bench/bench_daemon.py --streams 48 --duration 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

REPO = Path(__file__).resolve().parents[1]
AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4")) / "wav" / "an4_clstk"
ENROLL_PER_SPEAKER = 5
CHUNK_S = 0.1
RATE = 16000


def build_store(work: Path, embedder_name: str, device: str) -> Path:
    from voxguard.embedders import create_embedder
    from voxguard.enroll.enrollment import Enroller
    from voxguard.store import SpeakerStore

    path = work / f"an4-{embedder_name}.db"
    if path.exists():
        return path
    tmp = path.with_suffix(".building.db")
    for p in tmp.parent.glob(tmp.name + "*"):
        p.unlink()
    emb = create_embedder(embedder_name, device=device)
    t0 = time.perf_counter()
    with SpeakerStore(tmp) as store:
        enroller = Enroller(store, emb, keep_audio=False)
        for spk in sorted(d.name for d in AN4.iterdir() if d.is_dir()):
            enroller.enroll(spk, sorted((AN4 / spk).glob("*.wav"))[:ENROLL_PER_SPEAKER])
        enroller.refresh_index()
    for suffix in ("", ".faiss"):
        os.replace(str(tmp) + suffix, str(path) + suffix)
    print(f"built store {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def start_daemon(store: Path, device: str, log_path: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    """``voxguard serve`` on an ephemeral loopback port; returns the process and its port."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("NOTIFY_SOCKET", None)
    cmd = [sys.executable, "-m", "voxguard.cli", "--store", str(store), "--device", device, "serve",
           "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True, env=env)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"daemon did not start (see {log_path})")
    return proc, int(line.rsplit(":", 1)[1].split("/")[0])


def raw_throughput(embedder_name: str, device: str, seconds: float = 2.0, trials: int = 3) -> dict[int, float]:
    """Windows/s of ``embed`` per batch size: the best of ``trials`` (the machine may be shared)."""
    from voxguard.embedders import create_embedder

    emb = create_embedder(embedder_name, device=device)
    rng = np.random.default_rng(0)
    win = [rng.standard_normal(int(1.5 * RATE)).astype(np.float32) * 0.1 for _ in range(64)]
    emb.embed(win[:8])  # warm-up
    out = {}
    for _ in range(trials):
        for b in (1, 8, 32, 64):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                emb.embed(win[:b])
                n += b
            out[b] = max(out.get(b, 0.0), n / (time.perf_counter() - t0))
    return out


def stream_audio(duration: float) -> list[tuple[str, bytes]]:
    """(speaker, PCM) for every AN4 speaker: held-out utterances back to back, >= duration."""
    from voxguard.audio import load_audio

    out = []
    for spk in sorted(d.name for d in AN4.iterdir() if d.is_dir()):
        files = sorted((AN4 / spk).glob("*.wav"))[ENROLL_PER_SPEAKER:] or sorted((AN4 / spk).glob("*.wav"))
        parts, total, i = [], 0.0, 0
        while total < duration:
            x = load_audio(files[i % len(files)]).samples
            parts.append(x)
            total += len(x) / RATE
            i += 1
        pcm = (np.clip(np.concatenate(parts), -1, 1) * 32767).astype("<i2").tobytes()
        out.append((spk, pcm[: int(duration * RATE) * 2]))
    return out


class StreamStats:
    def __init__(self, speaker: str):
        self.speaker = speaker
        self.sent_at: list[float] = []  # wall time each chunk was sent
        self.latencies: list[float] = []
        self.identity = 0
        self.correct = 0
        self.summary: dict | None = None
        self.stop_sent = 0.0
        self.summary_at = 0.0
        self.close_code = None


async def run_stream(url: str, sid: str, speaker: str, pcm: bytes, t_start: float, realtime: bool,
                     stats: StreamStats) -> None:
    step = int(RATE * CHUNK_S) * 2
    async with connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": sid}))

        async def reader():
            try:
                async for msg in ws:
                    now = time.monotonic()
                    ev = json.loads(msg)
                    if ev["type"] == "identity":
                        stats.identity += 1
                        stats.correct += ev["speaker"] == speaker
                        k = min(len(stats.sent_at), int(np.ceil(ev["window"]["end"] / CHUNK_S - 1e-6))) - 1
                        if realtime and k >= 0:
                            stats.latencies.append(now - stats.sent_at[k])
                    elif ev["type"] == "summary":
                        stats.summary, stats.summary_at = ev, now
            except ConnectionClosed:
                pass
            stats.close_code = ws.close_code

        task = asyncio.create_task(reader())
        delay = t_start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            if realtime:
                lag = t0 + n * CHUNK_S - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
            await ws.send(pcm[i:i + step])
            stats.sent_at.append(time.monotonic())
        await ws.send('{"type": "stop"}')
        stats.stop_sent = time.monotonic()
        await task


def metric(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")
               or ln.startswith(name + "{"))


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await reader.read(-1)
    writer.close()
    return data.decode(errors="replace")


async def monitor(proc: psutil.Process, stop: asyncio.Event, out: dict) -> None:
    proc.cpu_percent(None)
    rss, t0 = 0, time.monotonic()
    cpu0 = proc.cpu_times()
    while not stop.is_set():
        rss = max(rss, proc.memory_info().rss)
        await asyncio.sleep(0.5)
    cpu1 = proc.cpu_times()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out.update(rss=rss, cpu=busy / (time.monotonic() - t0))


async def phase(url: str, port: int, daemon: psutil.Process, audio, n: int, duration: float,
                realtime: bool) -> dict:
    stats = [StreamStats(audio[i % len(audio)][0]) for i in range(n)]
    stop = asyncio.Event()
    usage: dict = {}
    mon = asyncio.create_task(monitor(daemon, stop, usage))
    before = metric(await scrape(port), "voxguard_windows_embedded_total")
    t_start = time.monotonic() + 1.0
    t0 = time.monotonic()
    await asyncio.gather(*(run_stream(url, f"s{i}", stats[i].speaker,
                                      audio[i % len(audio)][1][: int(duration * RATE) * 2],
                                      t_start + (i / n) * 0.5 if realtime else t_start, realtime, stats[i])
                           for i in range(n)))
    elapsed = time.monotonic() - t_start
    stop.set()
    await mon
    after_text = await scrape(port)
    embedded = metric(after_text, "voxguard_windows_embedded_total") - before
    lat = np.array([x for s in stats for x in s.latencies]) * 1000
    kept_up = [s.summary is not None and s.summary["windows"]["dropped"] == 0 and
               (not s.latencies or np.percentile(s.latencies, 95) < 1.0) and s.summary_at - s.stop_sent < 2.0
               for s in stats]
    ident = sum(s.identity for s in stats)
    return {
        "streams": n, "elapsed_s": round(elapsed, 1), "wall_s": round(time.monotonic() - t0, 1),
        "windows_embedded": int(embedded), "window_rate": round(embedded / elapsed, 1),
        "identity_events": ident, "top1_correct": round(sum(s.correct for s in stats) / max(ident, 1), 3),
        "dropped": sum(s.summary["windows"]["dropped"] if s.summary else 0 for s in stats),
        "latency_ms": {q: round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)} if len(lat) else None,
        "streams_kept_up": int(sum(kept_up)), "closed_1000": sum(s.close_code == 1000 for s in stats),
        "daemon_cpu_cores": round(usage["cpu"], 2), "daemon_peak_rss_mib": round(usage["rss"] / 2**20, 1),
        "batch_mean": round(metric(after_text, "voxguard_batch_size_sum") /
                            max(metric(after_text, "voxguard_batch_size_count"), 1), 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=48)
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of audio per real-time stream")
    ap.add_argument("--saturate", type=float, default=20.0, help="seconds of audio per stream in saturation")
    ap.add_argument("--embedder", default="resemblyzer")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "daemon")
    ap.add_argument("--serve-args", default="", help="extra 'voxguard serve' flags")
    args = ap.parse_args()
    if not AN4.is_dir():
        print(f"AN4 not found at {AN4} (set VOXGUARD_AN4)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    store = build_store(args.work, args.embedder, args.device)
    raw = raw_throughput(args.embedder, args.device)
    print("raw embedder windows/s by batch:", {b: round(r, 1) for b, r in raw.items()}, flush=True)
    audio = stream_audio(max(args.duration, args.saturate))
    proc, port = start_daemon(store, args.device, args.work / "daemon.log",
                              ["--max-streams", str(args.streams + 8), *args.serve_args.split()])
    try:
        url = f"ws://127.0.0.1:{port}/v1/stream"
        daemon = psutil.Process(proc.pid)
        rt = asyncio.run(phase(url, port, daemon, audio, args.streams, args.duration, realtime=True))
        print("real time:", json.dumps(rt), flush=True)
        sat = asyncio.run(phase(url, port, daemon, audio, args.streams, args.saturate, realtime=False))
        print("saturation:", json.dumps(sat), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    ratio = sat["window_rate"] / raw[64]
    lat = rt["latency_ms"] or {}
    print(f"\n== {args.streams} real-time streams, {args.duration:g} s each ({args.embedder}, {args.device}) ==")
    print(f"event latency p50/p95/p99: {lat.get(50)} / {lat.get(95)} / {lat.get(99)} ms   (target p95 <= 300)")
    print(f"streams kept up: {rt['streams_kept_up']}/{args.streams}   dropped windows: {rt['dropped']}   "
          f"top-1 correct: {rt['top1_correct']:.1%}")
    print(f"daemon CPU: {rt['daemon_cpu_cores']} cores   peak RSS: {rt['daemon_peak_rss_mib']} MiB "
          f"(target <= 1536)   real-time window rate: {rt['window_rate']}/s, mean batch {rt['batch_mean']}")
    print(f"saturated window rate: {sat['window_rate']}/s (mean batch {sat['batch_mean']}) = {ratio:.0%} of raw "
          f"batch-64 rate {raw[64]:.0f}/s   (target >= 60%)")
    (args.work / "last.json").write_text(json.dumps({"raw": raw, "realtime": rt, "saturation": sat,
                                                     "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
