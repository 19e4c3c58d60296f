"""Benchmark: the Resemblyzer encoder on PyTorch vs ONNX Runtime (and ONNX int8), in one process.

    python bench/bench_embedder_runtime.py [--an4 ../shared/datasets/an4] [--batches 1,16,64]
                                           [--seconds 4] [--block 0.5] [--threads N] [--no-int8]
                                           [--limit SPEAKERS]
                                           [--out bench/results/embedder_runtime.json]

What it measures, every runtime in the same process with the same thread count:

* where the time goes in one batch of 64 1.5 s windows, per runtime: volume normalisation,
  the batched mel spectrogram (the same code for all runtimes), the encoder forward, and the
  whole ``embed()``;
* throughput of ``embed()`` (mel spectrograms included) on real 1.5 s AN4 windows at each batch
  size.  Each runtime runs in its own worker process (as in service: one runtime's thread pools
  per process — in one process, ONNX Runtime's and PyTorch's pools slow each other down), and
  the workers take turns in short blocks, round-robin, so load changes on a shared machine hit
  them alike; windows/s from the median batch time, and each runtime's ratio to torch;
* agreement: every 1.5 s window (and shorter final window) of every AN4 file embedded by each
  runtime; min / mean / 0.1 % quantile cosine to the torch embedding and how many fall below
  0.999;
* accuracy: utterance embeddings (normalised mean of the windows, as enrollment makes them)
  of every AN4 file; EER and minDCF (p_target 0.01) of raw cosine over all utterance pairs
  (same speaker vs different speakers), per runtime.

``onnx-int8`` is the shipped opt-in runtime (LSTM layers 2 and 3 dynamically quantised to
int8, per-channel); ``int8-all`` is ONNX Runtime's default dynamic quantisation of every layer,
measured here only to show why the first layer stays in float.
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
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4"))
WINDOW = 24000  # 1.5 s at 16 kHz


class _Int8Encoder:
    """The ONNX export with *every* layer dynamically quantised to int8 (ONNX Runtime's defaults),
    behind the same call as OnnxEncoder: what ``onnx-int8`` avoids."""

    def __init__(self, fp32_path: Path, threads: int, tmp: Path):
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = tmp / "ge2e-int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxEncoder
        so.log_severity_level = 3
        self._s = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        return self._s.run(["embeds"], {"mels": np.ascontiguousarray(x, np.float32)})[0]


def load_an4(root: Path, limit: int | None):
    from voxguard.audio import load_audio
    from voxguard.windows import speech_windows

    wav = root / "wav" / "an4_clstk"
    files = sorted(wav.glob("*/*.wav"))
    if not files:
        sys.exit(f"no AN4 WAVs under {wav} (--an4 or $VOXGUARD_AN4)")
    if limit:  # the first ``limit`` speakers, all their files
        keep = sorted({f.parent.name for f in files})[:limit]
        files = [f for f in files if f.parent.name in keep]
    speakers, per_file = [], []
    for f in files:
        ws = [w.samples for w in speech_windows(load_audio(f).samples)]
        if ws:
            speakers.append(f.parent.name)
            per_file.append(ws)
    return speakers, per_file


def make(name: str, threads: int, tmp: Path):
    """The embedder for runtime ``name`` (``int8-all``: the bench-only fully quantised export)."""
    from voxguard.embedders.resemblyzer import ResemblyzerEmbedder

    if name != "int8-all":
        return ResemblyzerEmbedder(device="cpu", runtime=name)
    q = ResemblyzerEmbedder(device="cpu", runtime="onnx")
    q._onnx = _Int8Encoder(q._onnx.path if q._onnx.path.exists() else _spill(q, tmp), threads, tmp)
    q.runtime = "int8-all"
    return q


def _spill(emb, tmp: Path) -> Path:  # the export when the cache could not be written
    import torch

    from voxguard.embedders.onnx_runtime import _export

    path = tmp / "ge2e.onnx"
    path.write_bytes(_export(emb._encoder, torch.zeros(2, 151, 40), "mels", "embeds"))
    return path


def forward(emb, mels: np.ndarray) -> np.ndarray:
    if emb._onnx is not None:
        return emb._onnx(mels)
    import torch

    with torch.inference_mode():
        return emb._encoder(torch.from_numpy(mels)).numpy()


def profile(emb, windows: list[np.ndarray], rounds: int = 5) -> dict:
    """Milliseconds per stage for one batch (median of ``rounds``)."""
    batch = np.stack(windows).astype(np.float32)
    stages = {"volume": [], "mels": [], "forward": [], "embed": []}
    emb.embed(windows)
    for _ in range(rounds):
        t0 = time.perf_counter()
        b = emb._normalise_volume(batch)
        t1 = time.perf_counter()
        mels = emb._mels(b)
        t2 = time.perf_counter()
        forward(emb, mels)
        t3 = time.perf_counter()
        emb.embed(windows)
        t4 = time.perf_counter()
        for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[k].append(v)
    return {k: round(1000 * float(np.median(v)), 2) for k, v in stages.items()}


def worker(name: str, threads: int, windows_file: Path) -> None:
    """One runtime in its own process (its own thread pools), timing blocks the driver asks for:
    a line ``B SECONDS`` -> a JSON list of batch times; ``profile`` -> stage times; ``quit``."""
    import torch

    torch.set_num_threads(threads)
    windows = list(np.load(windows_file))
    with tempfile.TemporaryDirectory(prefix="voxguard-rt-w-") as tmp:
        emb = make(name, threads, Path(tmp))
        emb.embed(windows)
        print(json.dumps({"ready": name}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "profile":
                print(json.dumps(profile(emb, windows)), flush=True)
                continue
            b, secs = int(cmd[0]), float(cmd[1])
            batch, times, t0 = windows[:b], [], time.perf_counter()
            emb.embed(batch)
            while len(times) < 2 or time.perf_counter() - t0 < secs:
                s = time.perf_counter()
                emb.embed(batch)
                times.append(time.perf_counter() - s)
            print(json.dumps(times), flush=True)


class Worker:
    def __init__(self, name: str, threads: int, windows_file: Path):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--threads", str(threads),
                                      "--windows", str(windows_file)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line: str):
        if line:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"worker {self.name} died (exit {self.proc.wait()})")
        return json.loads(out)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def throughput(names: list[str], threads: int, windows: list[np.ndarray], batches: list[int],
               min_seconds: float, block_s: float, tmp: Path) -> tuple[dict, dict]:
    """Windows/s per runtime and batch size: each runtime in its own process, blocks of
    ``block_s`` interleaved round-robin (order rotated each round) until every runtime has
    ``min_seconds`` at each size; and each runtime's stage profile at batch 64."""
    wf = tmp / "windows.npy"
    np.save(wf, np.stack(windows))
    workers = [Worker(n, threads, wf) for n in names]
    try:
        for w in workers:
            w.ask("")  # ready
        prof = {w.name: w.ask("profile") for w in workers}
        out = {}
        for b in batches:
            times = {n: [] for n in names}
            rounds = max(2, int(np.ceil(min_seconds / block_s)))
            for r in range(rounds):
                for w in workers[r % len(workers):] + workers[: r % len(workers)]:
                    times[w.name] += w.ask(f"{b} {block_s}")
            med = {n: float(np.median(v)) for n, v in times.items()}
            out[str(b)] = {n: {"windows_per_s": round(b / med[n], 1), "ms_per_batch": round(1000 * med[n], 2),
                               "ratio_to_torch": round(med["torch"] / med[n], 3), "batches": len(times[n])}
                           for n in names}
            print(f"  b={b}: " + ", ".join(f"{n} {out[str(b)][n]['windows_per_s']}" for n in names), file=sys.stderr)
    finally:
        for w in workers:
            w.close()
    return out, prof


def agreement(runtimes: dict, per_file: list[list[np.ndarray]], chunk: int = 64) -> tuple[dict, dict]:
    """Window cosines to torch, and each runtime's per-file window embeddings."""
    flat = [w for ws in per_file for w in ws]
    vecs = {}
    for k, emb in runtimes.items():
        t0 = time.perf_counter()
        vecs[k] = np.concatenate([emb.embed(flat[i: i + chunk]) for i in range(0, len(flat), chunk)])
        print(f"  {k}: {len(flat)} windows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    full = np.array([len(w) == WINDOW for w in flat])
    out = {}
    for k in runtimes:
        if k == "torch":
            continue
        cos = np.sum(vecs[k] * vecs["torch"], axis=1)
        out[k] = {"windows": int(len(cos)), "full_1p5s_windows": int(full.sum()),
                  "min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6),
                  "q0.001": round(float(np.quantile(cos, 0.001)), 6), "below_0.999": int((cos < 0.999).sum()),
                  "min_full_windows": round(float(cos[full].min()), 6) if full.any() else None}
    return out, vecs


def accuracy(speakers: list[str], per_file: list[list[np.ndarray]], vecs: dict) -> dict:
    from voxguard.llr import eer_point, min_dcf
    from voxguard.utterance import utterance_of

    spk = np.array(speakers)
    iu = np.triu_indices(len(spk), k=1)
    same = (spk[:, None] == spk[None, :])[iu]
    bounds = np.cumsum([0] + [len(ws) for ws in per_file])
    out = {}
    for k, v in vecs.items():
        utt = np.stack([utterance_of(v[bounds[i]: bounds[i + 1]]) for i in range(len(per_file))])
        scores = (utt @ utt.T)[iu]
        e = eer_point(scores[same], scores[~same])
        out[k] = {"utterances": len(utt), "target_pairs": int(same.sum()), "nontarget_pairs": int((~same).sum()),
                  "eer": round(e["eer"], 5), "min_dcf_0.01": round(min_dcf(scores[same], scores[~same]), 4)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--an4", type=Path, default=DEFAULT_AN4)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--seconds", type=float, default=4.0, help="minimum timed seconds per runtime and batch size")
    ap.add_argument("--threads", type=int,
                    help="threads for every runtime (default: torch's own choice, as the daemon)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8-quantised ONNX variants")
    ap.add_argument("--limit", type=int, help="use only this many AN4 speakers (default: all 74)")
    ap.add_argument("--block", type=float, default=0.5, help="seconds of one timed block of one runtime")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embedder_runtime.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--windows", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    import torch

    if a.worker:
        worker(a.worker, a.threads, a.windows)
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    batches = [int(b) for b in a.batches.split(",") if b]
    load_start = [round(x, 2) for x in os.getloadavg()]
    print("loading AN4 windows ...", file=sys.stderr)
    speakers, per_file = load_an4(a.an4, a.limit)
    full = [w for ws in per_file for w in ws if len(w) == WINDOW]
    with tempfile.TemporaryDirectory(prefix="voxguard-rt-") as tmp:
        names = ["torch", "onnx"] + ([] if a.no_int8 else ["onnx-int8", "int8-all"])
        runtimes = {n: make(n, threads, Path(tmp)) for n in names}  # (exports and caches the ONNX models)
        identities = {k: e.identity.as_dict() for k, e in runtimes.items()}
        print("throughput (each runtime in its own process, interleaved) ...", file=sys.stderr)
        rates, prof = throughput(names, threads, full[:max(batches)], batches, a.seconds, a.block, Path(tmp))
        print("embedding every AN4 window with each runtime ...", file=sys.stderr)
        cos, vecs = agreement(runtimes, per_file)
        acc = accuracy(speakers, per_file, vecs)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "threads": threads, "torch": torch.__version__,
                    "onnxruntime": __import__("onnxruntime").__version__,
                    "load_average_at_start": load_start, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "an4": {"files": len(per_file), "speakers": len(set(speakers)), "windows": sum(len(w) for w in per_file)},
        "identity": identities, f"profile_batch{max(batches)}_ms": prof, "throughput": rates,
        "cosine_to_torch": cos,
        "accuracy": acc,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"threads {threads}; AN4 {report['an4']}")
    for k in names:
        print(f"batch of {max(batches)}, {k:<10} ms: " + ", ".join(f"{st} {v}" for st, v in prof[k].items()))
    print(f"{'runtime':<11}" + "".join(f"{'b=' + str(b) + ' win/s':>14}{'x torch':>9}" for b in batches)
          + f"{'min cos':>10}{'mean cos':>10}{'<0.999':>8}{'EER %':>8}{'minDCF':>8}")
    for k in names:
        row = f"{k:<11}" + "".join(f"{rates[str(b)][k]['windows_per_s']:>14.1f}"
                                   f"{rates[str(b)][k]['ratio_to_torch']:>9.2f}" for b in batches)
        c = cos.get(k, {"min": 1.0, "mean": 1.0, "below_0.999": 0})
        row += f"{c['min']:>10.5f}{c['mean']:>10.5f}{c['below_0.999']:>8d}"
        row += f"{100 * acc[k]['eer']:>8.2f}{acc[k]['min_dcf_0.01']:>8.3f}"
        print(row)
    print(f"identities equal: {len({json.dumps(v, sort_keys=True) for v in identities.values()}) == 1}; "
          f"load average {load_start} at start, {report['machine']['load_average_at_end']} at end; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
