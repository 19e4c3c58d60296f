"""Benchmark: what the AASIST countermeasure costs per second of audio, next to the embedder.

    python bench/bench_countermeasure_cost.py [--model aasist] [--checkpoints ../shared/models/aasist]
                                              [--batches 1,4,8] [--threads 1,2] [--reps 3]
                                              [--cm-hop 4.04] [--no-onnx]
                                              [--out bench/results/countermeasure_cost.json]

In one run, each configuration in its own worker process (one runtime's thread pools per process,
as in service), one after the other:

* the default embedder as the daemon creates it (``create_embedder()``: Resemblyzer on ONNX
  Runtime on the CPU) on 1.5 s windows of AN4 speech, batch 64, with 1 and 2 threads.  The daemon
  embeds a window every 0.5 s hop, so one second of voiced audio costs 2 windows;
* AASIST (PyTorch, the strictly loaded checkpoint) on 4.04 s contexts of VCTK speech at batch 1,
  4 and 8, with 1 and 2 torch threads.  Per second of audio: one context every ``--cm-hop`` s
  (default 4.04: back-to-back contexts; the JSON keeps the per-context cost for any other hop);
* AASIST on ONNX Runtime (``voxguard.countermeasures.aasist_onnx``: the same network exported,
  opset 17, dynamic batch), measured the same way, after checking that it exports and that its
  logits and hidden vectors match PyTorch's within 1e-3 on the eight reference files of
  ``reference_outputs.json`` (and the reference logits themselves).

Cost is CPU time (``time.process_time`` of the worker: every thread's), the figure that matters
on a few shared cores; wall time per item is reported too.  Each figure is the median of
``--reps`` timed calls after a warm-up call (per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WINDOW = 24000  # 1.5 s at 16 kHz
EMBED_BATCH = 64
WINDOWS_PER_S = 2.0  # one 1.5 s window every 0.5 s hop
CONTEXT_S = 64600 / 16000


def _windows(n: int) -> list[np.ndarray]:
    """``n`` 1.5 s windows of AN4 speech (0.5 s hop over the concatenated files)."""
    from voxguard.audio import load_audio

    files = sorted((SHARED / "datasets" / "an4" / "wav" / "an4_clstk").glob("*/*.wav"))[:60]
    x = np.concatenate([load_audio(f).samples for f in files])
    return [x[i * 8000: i * 8000 + WINDOW] for i in range(n)]


def _contexts(n: int, samples: int) -> list[np.ndarray]:
    """``n`` contexts of VCTK speech (the three shared recordings, cut back to back)."""
    from voxguard.audio import load_audio

    x = np.concatenate([load_audio(f).samples for f in sorted((SHARED / "datasets" / "vits-vctk" / "wav").glob("*.flac"))])
    return [x[(i * samples) % (len(x) - samples):][:samples] for i in range(n)]


def _time(fn, reps: int, warm_up: bool = True) -> tuple[float, float]:
    """(median wall s, mean CPU s) of ``fn()`` over ``reps`` calls, after one warm-up call."""
    if warm_up:
        fn()
    walls, cpus = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.mean(cpus))


def worker(spec: dict) -> dict:
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    reps = int(spec["reps"])
    kind = spec["kind"]
    out: dict = {"kind": kind, "threads": threads}
    if kind == "embedder":
        from voxguard.embedders import create_embedder

        emb = create_embedder(device="cpu")  # the daemon's default: resemblyzer, runtime auto (onnx on CPU)
        out.update(embedder=emb.name, runtime=emb.runtime)
        w = _windows(EMBED_BATCH)
        wall, cpu = _time(lambda: emb.embed(w), reps)
        out["batches"] = {str(EMBED_BATCH): {"wall_ms_per_item": 1e3 * wall / EMBED_BATCH,
                                            "cpu_s_per_item": cpu / EMBED_BATCH}}
        return out

    from voxguard.countermeasures.load import load_countermeasure

    ckpts = Path(spec["checkpoints"])
    from voxguard import models

    s = models.spec(spec["model"])
    cm = load_countermeasure(s.name, device="cpu", threads=threads, path=ckpts / s.filename)
    out.update(model=s.name, runtime="torch")
    if kind == "onnx":
        from voxguard.countermeasures.aasist_onnx import AasistOnnxCountermeasure

        t0 = time.perf_counter()
        torch_cm = cm
        cm = AasistOnnxCountermeasure(torch_cm, threads=threads, directory=spec["onnx_cache"])
        out.update(runtime="onnx", load_s=time.perf_counter() - t0)
        if spec.get("check"):
            out["agreement"] = _agreement(torch_cm, cm, ckpts, s.filename)
    contexts = _contexts(max(spec["batches"]), cm.context_samples)
    out["batches"] = {}
    cm.outputs(contexts[:2])  # one warm-up call per worker (lazy initialisation), not per batch size
    for b in spec["batches"]:
        wall, cpu = _time(lambda: cm.outputs(contexts[:b]), reps, warm_up=False)
        out["batches"][str(b)] = {"wall_ms_per_item": 1e3 * wall / b, "cpu_s_per_item": cpu / b}
    return out


def _agreement(torch_cm, onnx_cm, ckpts: Path, filename: str) -> dict:
    """ONNX Runtime vs PyTorch (and vs the published reference logits) on the reference files."""
    from voxguard.audio import load_audio

    ref = json.loads((ckpts / "reference_outputs.json").read_text())[filename]
    files = list(ref)
    xs = []
    for f in files:
        x = load_audio(SHARED / f).samples
        xs.append(np.tile(x, 64600 // len(x) + 1)[:64600] if len(x) < 64600 else x[:64600])
    a, b = torch_cm.outputs(xs), onnx_cm.outputs(xs)
    logits = onnx_cm.logits(xs)
    return {"files": len(files),
            "max_abs_raw": float(np.abs(a.raw - b.raw).max()),
            "max_abs_hidden": float(np.abs(a.hidden - b.hidden).max()),
            "max_abs_logit_vs_reference": float(np.abs(logits - np.array([ref[f] for f in files])).max())}


def run_worker(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                       env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"worker {spec['kind']} x{spec['threads']} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="aasist")
    ap.add_argument("--checkpoints", type=Path, default=SHARED / "models" / "aasist")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cm-hop", type=float, default=CONTEXT_S,
                    help="seconds of audio per countermeasure context (default 4.04: back to back)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "countermeasure_cost.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    t_start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="voxguard-cm-bench-") as tmp:
        for t in threads:
            runs.append(run_worker({"kind": "embedder", "threads": t, "reps": max(args.reps, 5)}))
        kinds = ["torch"] + ([] if args.no_onnx else ["onnx"])
        for kind in kinds:
            for i, t in enumerate(threads):
                runs.append(run_worker({"kind": kind, "threads": t, "reps": args.reps, "batches": batches,
                                        "model": args.model, "checkpoints": str(args.checkpoints),
                                        "onnx_cache": tmp, "check": kind == "onnx" and i == 0}))

    base = next(r for r in runs if r["kind"] == "embedder" and r["threads"] == 1)
    emb_cpu_per_audio_s = base["batches"][str(EMBED_BATCH)]["cpu_s_per_item"] * WINDOWS_PER_S
    rows = []
    for r in runs:
        per_audio = WINDOWS_PER_S if r["kind"] == "embedder" else 1.0 / args.cm_hop
        for b, m in r["batches"].items():
            cpu_per_audio_s = m["cpu_s_per_item"] * per_audio
            m["cpu_s_per_audio_s"] = cpu_per_audio_s
            m["ratio_to_embedder"] = cpu_per_audio_s / emb_cpu_per_audio_s
            m["wall_s_per_audio_s"] = m["wall_ms_per_item"] / 1e3 * per_audio
            rows.append((f"{'embedder (' + r['runtime'] + ')' if r['kind'] == 'embedder' else 'aasist ' + r['runtime']}",
                         r["threads"], int(b), m))

    print(f"{'what':22s} {'thr':>3s} {'batch':>5s} {'ms/item':>9s} {'CPU-ms/item':>11s} "
          f"{'CPU-s/audio-s':>13s} {'x embedder':>10s}")
    for what, t, b, m in rows:
        print(f"{what:22s} {t:3d} {b:5d} {m['wall_ms_per_item']:9.1f} {1e3 * m['cpu_s_per_item']:11.1f} "
              f"{m['cpu_s_per_audio_s']:13.4f} {m['ratio_to_embedder']:10.1f}")
    print(f"(item: a 1.5 s window for the embedder, 2 per audio second; a 4.04 s context for AASIST, "
          f"one per {args.cm_hop:g} s of audio; ratio: CPU time per audio second over the embedder's at 1 thread)")

    speedup = {}
    if not args.no_onnx:
        by = {(r["kind"], r["threads"]): r for r in runs}
        for t in threads:
            for b in batches:
                tc = by[("torch", t)]["batches"][str(b)]["cpu_s_per_item"]
                oc = by[("onnx", t)]["batches"][str(b)]["cpu_s_per_item"]
                tw = by[("torch", t)]["batches"][str(b)]["wall_ms_per_item"]
                ow = by[("onnx", t)]["batches"][str(b)]["wall_ms_per_item"]
                speedup[f"threads{t}_batch{b}"] = {"cpu": tc / oc, "wall": tw / ow}
        ag = next(r["agreement"] for r in runs if "agreement" in r)
        print(f"ONNX Runtime vs PyTorch on the {ag['files']} reference files: max |raw| diff "
              f"{ag['max_abs_raw']:.2g}, max |hidden| diff {ag['max_abs_hidden']:.2g}, max |logit - reference| "
              f"{ag['max_abs_logit_vs_reference']:.2g}")
        print("ONNX Runtime speed-up over PyTorch (CPU time / wall time): " + ", ".join(
            f"{k.replace('threads', 'thr ').replace('_batch', ' b')}: {v['cpu']:.2f}x / {v['wall']:.2f}x"
            for k, v in speedup.items()))

    result = {"model": args.model, "cm_hop_s": args.cm_hop, "context_s": CONTEXT_S, "embed_batch": EMBED_BATCH,
              "windows_per_audio_s": WINDOWS_PER_S, "reps": args.reps, "runs": runs,
              "onnx_speedup": speedup, "elapsed_s": time.perf_counter() - t_start,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
