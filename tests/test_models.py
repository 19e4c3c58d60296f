"""The pinned countermeasure checkpoint registry (voxguard.models) and ``voxguard models``.

No network: checkpoints come from ../shared/models/aasist as local files, file:// URLs and a
loopback HTTP server started here (one that serves the file, one that cuts the body short, ...).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import threading
from pathlib import Path

import platformdirs
import pytest

from conftest import REPO, run_cli
from voxguard import models
from voxguard.errors import ModelError, VoxguardError

SHARED = REPO.parent / "shared" / "models" / "aasist"


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "AASIST.pth").is_file():
        pytest.skip(f"AASIST checkpoints not found at {SHARED}")
    return SHARED


@pytest.fixture
def mdir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "models"
    monkeypatch.setenv(models.MODELS_ENV, str(d))
    return d


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- a loopback HTTP server ---------------------------------------------------------------------

class Server:
    """``routes``: path -> (body bytes, mode); mode "ok", "cut" (announces the full length, sends
    half, closes), "nolength" (no Content-Length, body ends at close), or an HTTP status int."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, object]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body, mode = routes.get(self.path, (b"", 404))
                if isinstance(mode, int):
                    self.send_error(mode)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode != "nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    try:
        yield s
    finally:
        s.close()


# --- the registry -------------------------------------------------------------------------------

def test_registry_matches_the_shared_checkpoints_and_readme(shared):
    readme = (shared / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines()
            if line.startswith("| `") and ".pth" in line}
    assert set(models.MODELS) == {"aasist", "aasist-l", "aasist-asvspoof5"}
    assert models.DEFAULT_COUNTERMEASURE in models.MODELS
    for s in models.MODELS.values():
        row = rows[s.filename]
        assert f"`{s.sha256}`" in row and f"`{s.url}`" in row, s.name
        assert f"{s.params:,}" in row
        assert s.trained_on in row
        f = shared / s.filename
        assert s.size == f.stat().st_size
        assert sha(f) == s.sha256
        assert s.architecture == "aasist" and s.licence == "MIT (NAVER Corp.)"
        assert s.url.startswith("https://github.com/") and re.search(r"/[0-9a-f]{40}/", s.url), "pinned commit"
    # hyper-parameters as the README gives them
    block_l = readme[readme.index("AASIST-L:   "):readme.index("## Input")]
    block = readme[readme.index("AASIST, AASIST-ASVspoof5:"):readme.index("AASIST-L:   ")]
    for name, text in (("aasist", block), ("aasist-asvspoof5", block), ("aasist-l", block_l)):
        c = models.MODELS[name].config
        assert set(c) == {"nb_samp", "first_conv", "filts", "gat_dims", "pool_ratios", "temperatures"}
        flat = " ".join(text.split())
        for key, value in c.items():
            assert f"{key} {value}" in flat, (name, key)
    assert models.MODELS["aasist"].config is not models.MODELS["aasist-asvspoof5"].config


def test_spec_and_models_dir(monkeypatch, tmp_path):
    assert models.spec("aasist-l").filename == "AASIST-L.pth"
    assert models.spec("AASIST").name == "aasist"
    with pytest.raises(ModelError) as e:
        models.spec("wav2vec")
    assert isinstance(e.value, VoxguardError)
    assert "wav2vec" in e.value.message and "aasist, aasist-l, aasist-asvspoof5" in e.value.message
    monkeypatch.delenv(models.MODELS_ENV, raising=False)
    assert models.models_dir() == Path(platformdirs.user_cache_dir("voxguard", appauthor=False)) / "models"
    monkeypatch.setenv(models.MODELS_ENV, str(tmp_path / "m"))
    assert models.models_dir() == tmp_path / "m"
    assert models.installed_path("aasist") is None


# --- fetch ----------------------------------------------------------------------------------------

def test_fetch_from_local_file_and_folder(mdir, shared):
    p = models.fetch("aasist", shared / "AASIST.pth")
    assert p == mdir / "AASIST.pth" and p.read_bytes() == (shared / "AASIST.pth").read_bytes()
    assert leftovers(mdir) == ["AASIST.pth"]
    assert models.installed_path("aasist") == p
    assert models.require("aasist") == p
    # a folder holding the file under its name
    assert models.fetch("aasist-l", str(shared)) == mdir / "AASIST-L.pth"
    assert sha(mdir / "AASIST-L.pth") == models.MODELS["aasist-l"].sha256
    # idempotent: a valid installed file is returned untouched, whatever the source
    st = p.stat()
    assert models.fetch("aasist", mdir / "does-not-exist.pth") == p
    assert (p.stat().st_ino, p.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert leftovers(mdir) == ["AASIST-L.pth", "AASIST.pth"]


def test_fetch_file_url(mdir, shared):
    p = models.fetch("aasist-asvspoof5", (shared / "AASIST-ASVspoof5.pth").as_uri())
    assert sha(p) == models.MODELS["aasist-asvspoof5"].sha256 and leftovers(mdir) == ["AASIST-ASVspoof5.pth"]


def test_wrong_hash_is_refused_and_leaves_nothing(mdir, shared, tmp_path):
    good = (shared / "AASIST.pth").read_bytes()
    bad = tmp_path / "AASIST.pth"
    bad.write_bytes(good[:1000] + bytes([good[1000] ^ 1]) + good[1001:])  # same size, one bit off
    with pytest.raises(ModelError) as e:
        models.fetch("aasist", bad)
    msg = e.value.message
    assert "\n" not in msg
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in msg and models.MODELS["aasist"].sha256 in msg
    assert leftovers(mdir) == []
    # another model's file: refused too, the sizes named
    with pytest.raises(ModelError, match=r"not the aasist-l checkpoint.*1281532 bytes, expected 426428"):
        models.fetch("aasist-l", shared / "AASIST.pth")
    assert leftovers(mdir) == []
    with pytest.raises(ModelError, match="no such file"):
        models.fetch("aasist", tmp_path / "missing.pth")
    assert leftovers(mdir) == []


def test_fetch_over_http(mdir, shared, server):
    server.routes["/AASIST.pth"] = ((shared / "AASIST.pth").read_bytes(), "ok")
    server.routes["/plain/AASIST-L.pth"] = ((shared / "AASIST-L.pth").read_bytes(), "nolength")
    p = models.fetch("aasist", server.url("/AASIST.pth"), progress=True)
    assert sha(p) == models.MODELS["aasist"].sha256
    p = models.fetch("aasist-l", server.url("/plain/AASIST-L.pth"))
    assert sha(p) == models.MODELS["aasist-l"].sha256
    assert leftovers(mdir) == ["AASIST-L.pth", "AASIST.pth"]


def test_http_failures_leave_nothing(mdir, shared, server):
    body = (shared / "AASIST.pth").read_bytes()
    server.routes["/cut"] = (body, "cut")
    server.routes["/big"] = (body, "nolength")   # AASIST.pth served as AASIST-L, no length announced
    server.routes["/other"] = (body, "ok")       # announced length is not AASIST-L's
    server.routes["/gone"] = (b"", 404)
    with pytest.raises(ModelError, match=rf"transfer broken after {len(body) // 2} of {len(body)} bytes"):
        models.fetch("aasist", server.url("/cut"))
    assert leftovers(mdir) == []
    with pytest.raises(ModelError, match="HTTP 404"):
        models.fetch("aasist", server.url("/gone"))
    with pytest.raises(ModelError, match="more than the expected 426428 bytes"):
        models.fetch("aasist-l", server.url("/big"))
    with pytest.raises(ModelError, match="1281532 bytes, expected 426428"):
        models.fetch("aasist-l", server.url("/other"))
    port = server.httpd.server_address[1]
    server.close()
    with pytest.raises(ModelError, match="cannot download"):
        models.fetch("aasist", f"http://127.0.0.1:{port}/AASIST.pth")
    assert leftovers(mdir) == []


def test_a_good_file_survives_a_failed_refetch(mdir, shared, server, tmp_path):
    good = models.fetch("aasist", shared / "AASIST.pth")
    st = good.stat()
    server.routes["/cut"] = ((shared / "AASIST.pth").read_bytes(), "cut")
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"\0" * st.st_size)
    for source in (server.url("/cut"), wrong, tmp_path / "missing.pth"):
        with pytest.raises(ModelError):
            models.fetch("aasist", source, force=True)
        assert leftovers(mdir) == ["AASIST.pth"]
        assert (good.stat().st_ino, good.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
        assert sha(good) == models.MODELS["aasist"].sha256
    # a forced re-fetch that succeeds replaces it with a new, verified file
    server.routes["/ok"] = ((shared / "AASIST.pth").read_bytes(), "ok")
    assert models.fetch("aasist", server.url("/ok"), force=True) == good
    assert good.stat().st_ino != st.st_ino and models.require("aasist") == good


def test_damaged_install_is_reported_and_replaced(mdir, shared, tmp_path):
    mdir.mkdir()
    dest = mdir / "AASIST.pth"
    dest.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as e:
        models.require("aasist")
    msg = e.value.message
    assert "\n" not in msg and hashlib.sha256(b"not a checkpoint").hexdigest() in msg
    assert models.MODELS["aasist"].sha256 in msg and "voxguard models fetch aasist" in msg
    # a failed fetch does not touch it; a good one replaces it
    with pytest.raises(ModelError):
        models.fetch("aasist", shared / "AASIST-L.pth")
    assert dest.read_bytes() == b"not a checkpoint" and leftovers(mdir) == ["AASIST.pth"]
    assert models.fetch("aasist", shared / "AASIST.pth") == dest
    assert models.require("aasist") == dest


def test_require_names_the_install_command(mdir):
    with pytest.raises(ModelError) as e:
        models.require("aasist-l")
    msg = e.value.message
    assert "\n" not in msg and str(mdir) in msg
    assert "voxguard models fetch aasist-l" in msg and "--from FILE" in msg
    assert models.MODELS["aasist-l"].url in msg


def test_verify_is_cached_by_file_identity(mdir, shared, monkeypatch):
    p = models.fetch("aasist", shared / "AASIST.pth")
    models.verify(p, models.MODELS["aasist"])

    def no_hashing(*a, **k):
        raise AssertionError("hashed again")

    monkeypatch.setattr(models.hashlib, "sha256", no_hashing)
    for _ in range(3):
        models.verify(p, models.MODELS["aasist"])
        assert models.require("aasist") == p
    with pytest.raises(ModelError, match="SHA-256"):
        models.verify(p, models.MODELS["aasist-l"])  # the cached hash is still compared
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        models.verify(p, models.MODELS["aasist"])
    monkeypatch.undo()
    # and a changed file is caught
    monkeypatch.setenv(models.MODELS_ENV, str(mdir))
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="not the aasist checkpoint"):
        models.verify(p, models.MODELS["aasist"])


def test_list_models(mdir, shared):
    items = {i["name"]: i for i in models.list_models()}
    assert set(items) == set(models.MODELS)
    assert not any(i["installed"] or i["verified"] for i in items.values())
    models.fetch("aasist", shared / "AASIST.pth")
    (mdir / "AASIST-L.pth").write_bytes(b"junk")
    items = {i["name"]: i for i in models.list_models()}
    a = items["aasist"]
    assert a["installed"] and a["verified"] and a["path"] == str(mdir / "AASIST.pth")
    assert a["size"] == 1281532 and a["trained_on"] == "ASVspoof 2019 LA train"
    assert a["licence"] == "MIT (NAVER Corp.)" and a["url"] == models.MODELS["aasist"].url
    assert items["aasist-l"]["installed"] and not items["aasist-l"]["verified"]
    assert "SHA-256" in items["aasist-l"]["error"]
    assert not items["aasist-asvspoof5"]["installed"]


# --- the CLI --------------------------------------------------------------------------------------

def _one_error_line(r) -> str:
    assert r.returncode != 0
    err = r.stderr.decode().strip()
    assert err.startswith("voxguard: error: ") and "\n" not in err, err
    return err


def test_cli_models(tmp_path, shared, server):
    d = tmp_path / "cache"
    env = {models.MODELS_ENV: str(d)}

    r = run_cli("models", "path", "aasist", env=env)
    assert "voxguard models fetch aasist" in _one_error_line(r) and r.stdout == b""

    r = run_cli("models", "fetch", "aasist", "--from", str(shared / "AASIST.pth"), env=env)
    assert r.returncode == 0, r.stderr.decode()
    assert str(d / "AASIST.pth") in r.stdout.decode() and "stored" in r.stdout.decode()
    r = run_cli("models", "fetch", "aasist", "--from", str(shared / "AASIST.pth"), env=env)
    assert r.returncode == 0 and "already installed" in r.stdout.decode()

    r = run_cli("models", "path", "aasist", env=env)
    assert r.returncode == 0 and r.stdout.decode().strip() == str(d / "AASIST.pth")

    r = run_cli("models", "list", env=env)
    out = r.stdout.decode()
    assert r.returncode == 0 and str(d) in out
    assert re.search(r"^aasist\s+verified\b", out, re.M) and re.search(r"^aasist-l\s+not installed\b", out, re.M)
    r = run_cli("--json", "models", "list", env=env)
    data = json.loads(r.stdout)
    assert data["models_dir"] == str(d)
    by = {m["name"]: m for m in data["models"]}
    assert by["aasist"]["verified"] and not by["aasist-l"]["installed"]

    # failures: one line, non-zero, nothing left behind
    r = run_cli("models", "fetch", "aasist-l", "--from", str(shared / "AASIST.pth"), env=env)
    assert models.MODELS["aasist-l"].sha256 in _one_error_line(r)
    server.routes["/cut"] = ((shared / "AASIST-L.pth").read_bytes(), "cut")
    r = run_cli("models", "fetch", "aasist-l", "--from", server.url("/cut"), env=env)
    assert "transfer broken" in _one_error_line(r)
    r = run_cli("models", "fetch", "aasist", "--force", "--from", server.url("/cut"), env=env)
    _one_error_line(r)
    r = run_cli("models", "fetch", "resnet", env=env)
    assert "aasist-asvspoof5" in _one_error_line(r)
    r = run_cli("models", "path", "aasist-l", env=env)
    _one_error_line(r)
    assert leftovers(d) == ["AASIST.pth"] and sha(d / "AASIST.pth") == models.MODELS["aasist"].sha256
