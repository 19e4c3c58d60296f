"""``voxguard datasets an4 fetch|prepare``: get the public CMU AN4 archive
(``an4_sphere.tar.gz``, NIST Sphere) and turn it into 16 kHz WAV in the layout
``voxguard enroll import --layout an4`` reads, plus NeMo-style manifests.

Output layout (the same as ``../shared/datasets/an4``)::

    OUT/wav/an4_clstk/<speaker>/<utterance>.wav      training split
    OUT/wav/an4test_clstk/<speaker>/<utterance>.wav  test split
    OUT/etc/...                                      the archive's etc/ files
    OUT/manifests/{train,test}.json                  NeMo manifests (label = speaker)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from ..errors import VoxguardError

AN4_URL = "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
SPLITS = {"an4_clstk": "train", "an4test_clstk": "test"}


def register(sub, common) -> None:
    ds = sub.add_parser("datasets", parents=[common], help="download and prepare public datasets")
    dsub = ds.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    an4 = dsub.add_parser("an4", parents=[common], help="the CMU AN4 census database (74+10 speakers)")
    asub = an4.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = asub.add_parser("fetch", parents=[common], help="download an4_sphere.tar.gz and prepare it",
                        description="Download the public AN4 archive (about 64 MB) into OUT and convert "
                                    "it to WAV (see 'prepare').")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--url", default=AN4_URL, help=f"archive address (default {AN4_URL})")
    p.add_argument("--sha256", metavar="HEX", help="refuse the download unless it has this SHA-256")
    p.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz after preparing")
    p.set_defaults(func=cmd_fetch)

    p = asub.add_parser("prepare", parents=[common], help="convert a downloaded archive to WAV",
                        description="Extract an4_sphere.tar.gz (or an extracted an4/ folder), convert "
                                    "every Sphere file to 16-bit WAV and write NeMo manifests.")
    p.add_argument("source", metavar="ARCHIVE_OR_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_prepare)


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download to ``dest`` via a ``.part`` file, renamed only when complete (and verified)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0)
            from tqdm import tqdm

            with tqdm(total=total or None, unit="B", unit_scale=True, file=sys.stderr, desc="an4") as bar:
                for block in iter(lambda: r.read(1 << 16), b""):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    except OSError as e:
        part.unlink(missing_ok=True)
        raise VoxguardError(f"cannot download {url}: {e}") from None
    if sha256 and h.hexdigest() != sha256.lower():
        part.unlink(missing_ok=True)
        raise VoxguardError(f"{url}: SHA-256 {h.hexdigest()} does not match the expected {sha256}")
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _extract(archive: Path, into: Path) -> Path:
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, OSError):
        raise VoxguardError(f"{archive}: not a readable tar archive (not tar, tar.gz, tar.bz2 or tar.xz)") from None
    try:
        with tar:
            for m in tar.getmembers():
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts:
                    raise VoxguardError(f"{archive}: unsafe path in archive: {m.name}")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise VoxguardError(f"{archive}: not a readable tar archive, damaged or truncated ({why})") from None
    return into


def _find_an4_root(base: Path) -> Path:
    for cand in [base, base / "an4", *base.glob("*/")]:
        if (cand / "wav").is_dir():
            return cand
    raise VoxguardError(f"{base}: no an4 'wav' folder found (is this an4_sphere.tar.gz?)")


def prepare(source: Path, out: Path) -> dict:
    """Convert AN4 (archive or extracted folder) to WAV under ``out``; returns counts."""
    source = source.expanduser()
    if not source.exists():
        raise VoxguardError(f"{source}: no such file or directory")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="voxguard-an4-", dir=out) as tmp:
        root = _find_an4_root(_extract(source, Path(tmp)) if source.is_file() else source)
        counts: dict[str, int] = {}
        manifests: dict[str, list[dict]] = {"train": [], "test": []}
        transcripts = _transcripts(root)
        files = sorted(p for p in (root / "wav").rglob("*") if p.suffix.lower() in (".sph", ".wav"))
        if not files:
            raise VoxguardError(f"{root}: no .sph or .wav files under wav/")
        for src in files:
            rel = src.relative_to(root / "wav")
            if len(rel.parts) < 3:
                continue
            split_dir, speaker = rel.parts[0], rel.parts[1]
            dest = out / "wav" / rel.with_suffix(".wav")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                data, rate = sf.read(str(src), dtype="int16", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise VoxguardError(f"{src}: cannot read Sphere audio ({e})") from None
            tmp_dest = dest.with_name(dest.name + ".tmp")
            sf.write(str(tmp_dest), data[:, 0] if data.shape[1] == 1 else data.mean(axis=1).astype(np.int16),
                     rate, format="WAV", subtype="PCM_16")
            os.replace(tmp_dest, dest)
            counts[split_dir] = counts.get(split_dir, 0) + 1
            split = SPLITS.get(split_dir, split_dir)
            manifests.setdefault(split, []).append({
                "audio_filepath": str(dest.relative_to(out)), "duration": round(len(data) / rate, 3),
                "label": speaker, "text": transcripts.get(src.stem, "")})
        if (root / "etc").is_dir():
            shutil.copytree(root / "etc", out / "etc", dirs_exist_ok=True)
        (out / "manifests").mkdir(exist_ok=True)
        for split, items in manifests.items():
            if items:
                with open(out / "manifests" / f"{split}.json", "w", encoding="utf-8") as f:
                    for it in items:
                        f.write(json.dumps(it) + "\n")
    speakers = {d.name for d in (out / "wav").glob("*/*") if d.is_dir()}
    return {"out": str(out), "files": counts, "speakers": len(speakers)}


def _transcripts(root: Path) -> dict[str, str]:
    out = {}
    for t in (root / "etc").glob("*.transcription") if (root / "etc").is_dir() else []:
        for line in t.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.endswith(")") and "(" in line:
                words, utt = line.rsplit("(", 1)
                out[utt.rstrip(")").strip()] = words.replace("<s>", "").replace("</s>", "").strip()
    return out


def cmd_prepare(ctx) -> int:
    info = prepare(Path(ctx.args.source), Path(ctx.args.out).expanduser())
    ctx.emit(info, f"prepared AN4 in {info['out']}: {info['speakers']} speakers, "
                   + ", ".join(f"{k}: {v} files" for k, v in info["files"].items()))
    return 0


def cmd_fetch(ctx) -> int:
    out = Path(ctx.args.out).expanduser()
    archive = out / "an4_sphere.tar.gz"
    expected = ctx.args.sha256
    if archive.exists() and expected and _sha256(archive) != expected.lower():
        archive.unlink()  # a stale or damaged earlier download: fetch it again
    if not archive.exists():
        download(ctx.args.url, archive, expected)
    info = prepare(archive, out)
    if not ctx.args.keep_archive:
        archive.unlink(missing_ok=True)
    ctx.emit(info, f"AN4 ready in {info['out']}: {info['speakers']} speakers")
    return 0
