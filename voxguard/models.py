"""Pinned pretrained countermeasure checkpoints, and ``voxguard models list|fetch|path``.

Each :class:`ModelSpec` pins one public checkpoint: the URL at a fixed commit, its SHA-256 and
size, and the model configuration it was trained with.  Checkpoints live in :func:`models_dir`
(``$VOXGUARD_MODELS``, else ``models/`` in the user cache directory) under their own file names.

:func:`fetch` downloads the pinned URL (or copies a local file / a folder holding it, or another
URL) into ``FILE.part``, checks size and SHA-256 while it streams, and only then renames it to
``FILE``: a failed transfer, an HTTP error or a wrong file leaves no ``.part`` and never touches an
installed file.  :func:`require` is what model loaders call: the installed, verified path, or a
:class:`~voxguard.errors.ModelError` naming the exact command that installs it.  Hashes are
remembered per (file, inode, size, mtime), so repeated loads hash a file once per process.

This module imports only the standard library and platformdirs (the CLI registers it at start).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError
from .paths import default_cache_dir

MODELS_ENV = "VOXGUARD_MODELS"
DEFAULT_COUNTERMEASURE = "aasist"
LICENCE = "MIT (NAVER Corp.)"
_URL_SCHEMES = ("http://", "https://", "file://", "ftp://")
_BLOCK = 1 << 16


@dataclass(frozen=True)
class ModelSpec:
    """One pinned checkpoint.  ``config`` is the model configuration it was trained with (treat
    it as read-only: it is the registry's own)."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int | None
    architecture: str
    config: dict = field(hash=False)
    trained_on: str
    licence: str
    params: int


def _aasist_config() -> dict:
    return {"nb_samp": 64600, "first_conv": 128,
            "filts": [70, [1, 32], [32, 32], [32, 64], [64, 64]],
            "gat_dims": [64, 32], "pool_ratios": [0.5, 0.7, 0.5, 0.5],
            "temperatures": [2.0, 2.0, 100.0, 100.0]}


def _aasist_l_config() -> dict:
    return {"nb_samp": 64600, "first_conv": 128,
            "filts": [70, [1, 32], [32, 32], [32, 24], [24, 24]],
            "gat_dims": [24, 32], "pool_ratios": [0.4, 0.5, 0.7, 0.5],
            "temperatures": [2.0, 2.0, 100.0, 100.0]}


_CLOVA = "https://github.com/clovaai/aasist/raw/a04c9863f63d44471dde8a6abcb3b082b07cd1d1/models/weights"
_ASVSPOOF5 = ("https://github.com/asvspoof-challenge/asvspoof5/raw/fe23d3053a0889b305d98c9e4cadf418c213d972"
              "/Baseline-AASIST/models/weights/AASIST/best.pth")

MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec(name="aasist", filename="AASIST.pth", url=f"{_CLOVA}/AASIST.pth",
              sha256="51d2d9cf0738172f61e2a384ec50a54a55363240f67c971ed55a92435bc1a1c0", size=1281532,
              architecture="aasist", config=_aasist_config(), trained_on="ASVspoof 2019 LA train",
              licence=LICENCE, params=297866),
    ModelSpec(name="aasist-l", filename="AASIST-L.pth", url=f"{_CLOVA}/AASIST-L.pth",
              sha256="814331d088032bb4c3fa61cc014789eadeed464209dd094ab3a2dd6ffbdce27a", size=426428,
              architecture="aasist", config=_aasist_l_config(), trained_on="ASVspoof 2019 LA train",
              licence=LICENCE, params=85306),
    ModelSpec(name="aasist-asvspoof5", filename="AASIST-ASVspoof5.pth", url=_ASVSPOOF5,
              sha256="8f10fe1d1ce3ac62c19f00b86dfaf79f86f464301d23e08726b16b02edbb601c", size=1275639,
              architecture="aasist", config=_aasist_config(), trained_on="ASVspoof 5 train",
              licence=LICENCE, params=297866),
)}


def models_dir() -> Path:
    """``$VOXGUARD_MODELS``, else ``models/`` in the user cache directory."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "models"


def spec(name: str) -> ModelSpec:
    s = MODELS.get(name) or MODELS.get(name.lower())
    if s is None:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return s


def installed_path(name: str) -> Path | None:
    """``models_dir()/FILE`` when that file exists (not verified: see :func:`require`)."""
    p = models_dir() / spec(name).filename
    return p if p.is_file() else None


# (path, device, inode, size, mtime_ns) -> sha256 hex digest
_hashes: dict[tuple, str] = {}
_hashes_lock = threading.Lock()


def _key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _file_sha256(path: Path) -> str:
    try:
        key = _key(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
    with _hashes_lock:
        digest = _hashes.get(key)
    if digest is None:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            raise ModelError(f"{path}: cannot read ({e.strerror or e})") from None
        digest = h.hexdigest()
        with _hashes_lock:
            _hashes[key] = digest
    return digest


def _mismatch(where, s: ModelSpec, actual: str, nbytes: int | None) -> ModelError:
    size = f" ({nbytes} bytes, expected {s.size})" if nbytes is not None and s.size not in (None, nbytes) else ""
    return ModelError(f"{where}: not the {s.name} checkpoint: SHA-256 {actual}, expected {s.sha256}{size}")


def verify(path: Path, spec: ModelSpec) -> None:
    """Raise :class:`ModelError` (one line: expected vs actual SHA-256) unless ``path`` is ``spec``'s file."""
    path = Path(path)
    actual = _file_sha256(path)
    if actual != spec.sha256:
        try:
            nbytes = path.stat().st_size
        except OSError:
            nbytes = None
        raise _mismatch(path, spec, actual, nbytes)


def _is_url(source) -> bool:
    return isinstance(source, str) and source.lower().startswith(_URL_SCHEMES)


def _open_source(s: ModelSpec, source) -> tuple[object, int | None, str]:
    """(binary stream, announced length or None, description) for the fetch source."""
    if source is None or _is_url(source):
        url = s.url if source is None else source
        try:
            r = urllib.request.urlopen(url, timeout=60)
        except urllib.error.HTTPError as e:
            raise ModelError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise ModelError(f"cannot download {url}: {e.reason}") from None
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise ModelError(f"cannot download {url}: {e or type(e).__name__}") from None
        length = r.headers.get("Content-Length")
        try:
            length = int(length) if length is not None else None
        except ValueError:
            length = None
        return r, length, url
    p = Path(source).expanduser()
    if p.is_dir():
        p = p / s.filename
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise ModelError(f"{p}: no such file") from None
    except OSError as e:
        raise ModelError(f"{p}: cannot read ({e.strerror or e})") from None
    return f, os.fstat(f.fileno()).st_size, str(p)


def fetch(name: str, source: str | Path | None = None, progress: bool = False, *, force: bool = False) -> Path:
    """Install ``name`` into :func:`models_dir` and return its path.

    ``source``: None (the pinned URL), a URL (http(s)://, file://), a local file, or a folder
    holding the checkpoint under its file name.  Already installed and valid: returned as it is
    (unless ``force``).  Any failure raises :class:`ModelError` and leaves no ``.part`` file; an
    installed file is only ever replaced by a complete, verified one.
    """
    s = spec(name)
    dest = models_dir() / s.filename
    if not force and dest.is_file():
        try:
            verify(dest, s)
            return dest
        except ModelError:
            pass  # damaged or stale: fetch it again (it stays until a good one replaces it)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the model directory {dest.parent}: {e.strerror or e}") from None
    part = dest.with_name(dest.name + ".part")
    stream, length, where = _open_source(s, source)
    if length is not None and s.size is not None and length != s.size and (source is None or _is_url(source)):
        stream.close()  # announced by the server: refuse before downloading it (a local file gets the hash line)
        raise ModelError(f"{where}: not the {s.name} checkpoint: {length} bytes, expected {s.size}")
    h = hashlib.sha256()
    received = 0
    limit = length if length is not None else s.size
    done = False
    try:
        with stream:
            try:
                out = open(part, "wb")
            except OSError as e:
                raise ModelError(f"cannot write {part}: {e.strerror or e}") from None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=limit, unit="B", unit_scale=True, file=sys.stderr, desc=s.name)
            try:
                with out:
                    while block := stream.read(_BLOCK):
                        received += len(block)
                        if limit is not None and received > limit:
                            raise ModelError(f"{where}: more than the expected {limit} bytes: "
                                             f"not the {s.name} checkpoint")
                        out.write(block)
                        h.update(block)
                        if bar is not None:
                            bar.update(len(block))
                    out.flush()
                    os.fsync(out.fileno())
            except ModelError:
                raise
            except (OSError, http.client.HTTPException) as e:
                why = " ".join(str(e).split()) or type(e).__name__
                raise ModelError(f"cannot fetch {where}: transfer broken after {received} bytes ({why})") from None
            finally:
                if bar is not None:
                    bar.close()
        if length is not None and received < length:
            raise ModelError(f"cannot fetch {where}: transfer broken after {received} of {length} bytes")
        actual = h.hexdigest()
        if actual != s.sha256:
            raise _mismatch(where, s, actual, received)
        try:
            os.replace(part, dest)
        except OSError as e:
            raise ModelError(f"cannot install {dest}: {e.strerror or e}") from None
        done = True
    finally:
        if not done:
            part.unlink(missing_ok=True)
    try:
        with _hashes_lock:
            _hashes[_key(dest)] = actual
    except OSError:
        pass
    return dest


def _install_hint(s: ModelSpec) -> str:
    return (f"run 'voxguard models fetch {s.name}' (offline: 'voxguard models fetch {s.name} --from FILE', "
            f"FILE being {s.filename} from {s.url})")


def require(name: str) -> Path:
    """The installed, verified checkpoint of ``name``, or :class:`ModelError` saying how to install it."""
    s = spec(name)
    p = installed_path(name)
    if p is None:
        raise ModelError(f"model {s.name!r} is not installed in {models_dir()}: {_install_hint(s)}")
    try:
        verify(p, s)
    except ModelError as e:
        raise ModelError(f"{e.message}; to replace it, {_install_hint(s)}") from None
    return p


def list_models() -> list[dict]:
    """One dict per registered model: where it is (or would be) and whether it is installed and verified."""
    out = []
    base = models_dir()
    for s in MODELS.values():
        p = base / s.filename
        installed = p.is_file()
        item = {"name": s.name, "installed": installed, "path": str(p), "verified": False,
                "size": s.size, "trained_on": s.trained_on, "licence": s.licence, "url": s.url,
                "sha256": s.sha256, "architecture": s.architecture, "params": s.params}
        if installed:
            try:
                verify(p, s)
                item["verified"] = True
            except ModelError as e:
                item["error"] = e.message
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# voxguard models ...

def register(sub, common) -> None:
    m = sub.add_parser("models", parents=[common], help="pretrained countermeasure checkpoints",
                       description="Pinned pretrained countermeasure checkpoints (AASIST), kept in "
                                   f"${MODELS_ENV} or the user cache directory.")
    msub = m.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = msub.add_parser("list", parents=[common], help="the known checkpoints, installed and verified or not")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("fetch", parents=[common], help="download (or copy) a checkpoint and verify it",
                        description="Download the pinned checkpoint (or copy it from a local file or "
                                    "folder, or another URL, with --from) and check its SHA-256.")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--from", dest="source", metavar="FILE_OR_URL",
                   help="a local file (or a folder holding it) or a URL instead of the pinned URL")
    p.add_argument("--force", action="store_true", help="fetch again even if a verified copy is installed")
    p.set_defaults(func=cmd_fetch)

    p = msub.add_parser("path", parents=[common], help="print the path of an installed, verified checkpoint")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_path)


def cmd_list(ctx) -> int:
    items = list_models()
    base = models_dir()
    lines = [f"models in {base}" + (f" (${MODELS_ENV})" if os.environ.get(MODELS_ENV) else f" (set ${MODELS_ENV} to move)")]
    rows = [("NAME", "STATUS", "SIZE", "PARAMS", "TRAINED ON", "FILE")]
    for it in items:
        status = ("verified" if it["verified"] else "BAD HASH") if it["installed"] else "not installed"
        rows.append((it["name"], status, f"{(it['size'] or 0) / 1e6:.2f} MB", f"{it['params']:,}",
                     it["trained_on"], Path(it["path"]).name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    ctx.emit({"models_dir": str(base), "models": items}, "\n".join(lines))
    return 0


def cmd_fetch(ctx) -> int:
    s = spec(ctx.args.name)
    before = installed_path(s.name)
    was_valid = False
    if before is not None and not ctx.args.force:
        try:
            verify(before, s)
            was_valid = True
        except ModelError:
            pass
    path = fetch(s.name, ctx.args.source, progress=sys.stderr.isatty(), force=ctx.args.force)
    what = "already installed" if was_valid else "stored"
    ctx.emit({"name": s.name, "path": str(path), "sha256": s.sha256, "already_installed": was_valid},
             f"{s.name}: {what} in {path} (SHA-256 verified)")
    return 0


def cmd_path(ctx) -> int:
    path = require(ctx.args.name)
    ctx.emit({"name": spec(ctx.args.name).name, "path": str(path)}, str(path))
    return 0
