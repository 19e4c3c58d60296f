"""Benchmark: embedding throughput and memory of each embedder.

    python bench/bench_embedders.py [--device auto] [--batches 1,8,32] [--seconds 5] [--threads N] [--runtime auto]
                                    [--embedders resemblyzer,titanet-tiny,titanet-large]
                                    [--out bench/results/embedders.json]

For each embedder, in its own fresh process (so one model's memory never counts against
another): RSS after ``import torch`` (the baseline), after loading the model, and after a
warm-up batch (plus the peak), then windows/s embedding 1.5 s windows at each batch size
(each batch size runs for at least ``--seconds`` and 3 batches).  A baseline process that
only imports numpy and torch is measured too.  TitaNet runs on random-weight ``.nemo``
files built here (the tests' miniature and the full TitaNet-large architecture, see
``bench/titanet_large_config.py``) and loaded through ``create_embedder`` as a user's
model would be; ``--titanet-model PATH`` benchmarks a real one instead of the large one.

Figures depend on the machine and on what else runs on it (on a small shared CPU,
``--threads 1`` is steadier); the JSON records the CPU count, load averages and device.
``--runtime`` chooses what runs Resemblyzer (default ``auto``: ONNX Runtime on CPU); to compare
runtimes, ``bench/bench_embedder_runtime.py`` measures them against each other in one run.
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

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 1.5
SR = 16000
EMBEDDERS = ("resemblyzer", "titanet-tiny", "titanet-large")


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def speech_like_windows(n: int, seed: int = 0):
    """``n`` distinct 1.5 s harmonic, amplitude-modulated windows (content does not change speed)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(WINDOW_S * SR)) / SR
    out = []
    for _ in range(n):
        phase = 2 * np.pi * np.cumsum(rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * t))) / SR
        x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        out.append((0.1 * x + 0.005 * rng.standard_normal(len(t))).astype(np.float32))
    return out


# -- worker: one embedder in this process ----------------------------------------------------------

def worker(name: str, model: str | None, device: str, batches: list[int], min_seconds: float,
           threads: int | None, runtime: str | None = None) -> dict:
    import numpy  # noqa: F401
    import torch

    if threads:
        torch.set_num_threads(threads)

    rec: dict = {"embedder": name, "rss_mb": {"torch_imported": round(rss_mb(), 1)}}
    from voxguard.embedders import create_embedder

    t0 = time.perf_counter()
    emb = create_embedder("titanet" if name.startswith("titanet") else name, device=device, model=model,
                          max_batch=max(batches), runtime=runtime if name == "resemblyzer" else None)
    rec["load_s"] = round(time.perf_counter() - t0, 2)
    rec["rss_mb"]["model_loaded"] = round(rss_mb(), 1)
    rec.update(device=emb.device, dim=emb.dim, version=emb.identity.version,
               torch_threads=torch.get_num_threads(), runtime=getattr(emb, "runtime", "torch"))
    if model:
        rec["model"] = str(model)
    try:
        rec["parameters"] = int(sum(p.numel() for p in emb._model.parameters()))  # titanet
    except AttributeError:
        rec["parameters"] = int(sum(p.numel() for p in emb._encoder.parameters()))  # resemblyzer
    windows = speech_like_windows(max(batches))
    emb.embed(windows)  # warm-up at the largest batch
    rec["rss_mb"]["after_warmup"] = round(rss_mb(), 1)
    rec["throughput"] = {}
    for b in batches:
        batch = windows[:b]
        emb.embed(batch)
        n_batches, t0 = 0, time.perf_counter()
        while n_batches < 3 or time.perf_counter() - t0 < min_seconds:
            emb.embed(batch)
            n_batches += 1
        dt = time.perf_counter() - t0
        rec["throughput"][str(b)] = {"windows_per_s": round(n_batches * b / dt, 2),
                                     "ms_per_batch": round(1000 * dt / n_batches, 2), "batches": n_batches}
    rec["rss_mb"]["peak"] = round(peak_rss_mb(), 1)
    rec["rss_mb"]["over_baseline_after_warmup"] = round(rec["rss_mb"]["after_warmup"]
                                                        - rec["rss_mb"]["torch_imported"], 1)
    return rec


def baseline() -> dict:
    import numpy  # noqa: F401
    import torch  # noqa: F401

    return {"rss_mb": round(rss_mb(), 1)}


# -- driver ------------------------------------------------------------------------------------------

def run_worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=dict(os.environ, NEMO_REDIRECT_LOGS_TO_STDERR="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_nemo(out: Path, tiny: bool) -> Path:
    cmd = [sys.executable, str(REPO / "bench" / "titanet_large_config.py"), str(out)] + (["--tiny"] if tiny else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NEMO_REDIRECT_LOGS_TO_STDERR="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"building {out.name} failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    return out


def table(results: list[dict], batches: list[int], base: dict) -> str:
    head = f"{'embedder':<15}{'dim':>4}{'device':>7}{'thr':>4}{'params':>9}{'load s':>8}" + "".join(
        f"{'b=' + str(b) + ' win/s':>13}" for b in batches) + f"{'RSS load':>10}{'RSS warm':>10}{'peak':>8}{'+base':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['embedder']:<15} failed: {r['error'].splitlines()[-1]}")
            continue
        m = r["rss_mb"]
        lines.append(f"{r['embedder']:<15}{r['dim']:>4}{r['device']:>7}{r['torch_threads']:>4}"
                     f"{r['parameters'] / 1e6:>8.2f}M{r['load_s']:>8.1f}"
                     + "".join(f"{r['throughput'][str(b)]['windows_per_s']:>13.1f}" for b in batches)
                     + f"{m['model_loaded']:>10.0f}{m['after_warmup']:>10.0f}{m['peak']:>8.0f}"
                     + f"{m['over_baseline_after_warmup']:>8.0f}")
    lines.append(f"RSS in MiB; baseline process (python + numpy + torch): {base['rss_mb']:.0f} MiB; "
                 f"+base = after warm-up minus the same process's RSS right after importing torch")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default=",".join(EMBEDDERS))
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per batch size")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--runtime", default="auto", help="resemblyzer's runtime: auto, torch, onnx or onnx-int8")
    ap.add_argument("--titanet-model", type=Path, help="a real TitaNet .nemo for titanet-large (else random weights)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embedders.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",") if b]
    if a.worker == "baseline":
        print(json.dumps(baseline()))
        return 0
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.device, batches, a.seconds, a.threads, a.runtime)))
        return 0

    names = [n for n in a.embedders.split(",") if n]
    unknown = set(names) - set(EMBEDDERS)
    if unknown:
        ap.error(f"unknown embedders: {', '.join(sorted(unknown))}")
    results = []
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="voxguard-bench-") as tmp:
        base = run_worker(["--worker", "baseline"])
        for name in names:
            common = ["--device", a.device, "--batches", a.batches, "--seconds", str(a.seconds)]
            common += ["--threads", str(a.threads)] if a.threads else []
            common += ["--runtime", a.runtime]
            try:
                model = None
                if name == "titanet-tiny":
                    model = build_nemo(Path(tmp) / "tiny_titanet.nemo", tiny=True)
                elif name == "titanet-large":
                    model = a.titanet_model or build_nemo(Path(tmp) / "titanet_large_random.nemo", tiny=False)
                print(f"measuring {name} ...", file=sys.stderr)
                results.append(run_worker(["--worker", name, *common] + (["--model", str(model)] if model else [])))
            except RuntimeError as e:
                results.append({"embedder": name, "error": str(e)})
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_at_start": load_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "window_s": WINDOW_S, "batches": batches, "min_seconds_per_batch_size": a.seconds,
        "baseline": base, "results": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, batches, base))
    print(f"load average {load_start} at start, {report['machine']['load_average_at_end']} at end, "
          f"on {os.cpu_count()} CPUs; wrote {a.out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
