"""Defects found by a client written from docs/protocol.md (issue 12), each against the real
daemon (``voxguard serve`` in a subprocess on loopback) with a real store of AN4 speakers:

* a graceful shutdown keeps listening and answers 503 (``/readyz`` with a reason, handshakes
  with ``Retry-After``) until the streams have drained;
* browsers: same origin, or ``--allow-origin``; anything else gets 403;
* a store on a read-only mount is served, and ``enroll add`` on it fails clearly;
* a store that vanished fails the reload (HTTP, SIGHUP, follower) and the loaded index stays;
* ``POST /admin/reload`` with a body gets an answer (413 when too big);
* everything written is strict JSON (non-finite floats become null).

Tests run in file order; the last one shuts the shared daemon down with SIGTERM.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from daemon_support import DaemonProcess, build_store, held_out_pcm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxguard.protocol import wire_json

pytestmark = [pytest.mark.an4, pytest.mark.slow, pytest.mark.timeout(300)]

CONSOLE = "http://console.example:8443"  # the daemon's --allow-origin


def strict_loads(text: str | bytes):
    """json.loads that refuses NaN / Infinity (what every other JSON parser does)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("defects") / "vg.db"
    return path, build_store(path, embedder, an4_speakers)


@pytest.fixture(scope="module")
def daemon(store):
    process = DaemonProcess(store[0], extra=("--allow-origin", CONSOLE, "--idle-timeout", "30"))
    yield process
    process.kill()
    print(process.log_tail())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def pcm(store, an4_speakers):
    """16-bit PCM (16 kHz) of two held-out utterances of the second enrolled speaker."""
    _, names = store
    return names[1], held_out_pcm(an4_speakers, names[1], 2)


def http_get(d: DaemonProcess, path: str, method: str = "GET", headers: dict | None = None,
             body: bytes | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{d.http}{path}", method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def metric(d: DaemonProcess, name: str) -> float:
    _, _, body = http_get(d, "/metrics")
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.decode().splitlines()
               if ln.startswith(name) and not ln.startswith("#"))


def start_msg(stream_id: str, **over) -> str:
    return json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                       "stream_id": stream_id, **over})


async def read_events(ws) -> list[dict]:
    """Every event until the server closes, each parsed strictly (no NaN)."""
    events = []
    try:
        async for msg in ws:
            events.append(strict_loads(msg))
    except ConnectionClosed:
        pass
    return events


async def run_stream(url: str, pcm: bytes, stream_id: str, **start) -> tuple[list[dict], int]:
    """Send ``pcm`` (8x real time) and stop; every event (parsed strictly) and the close code."""
    async with connect(url, max_size=None) as ws:
        await ws.send(start_msg(stream_id, **start))
        step = 3200
        for i in range(0, len(pcm), step):
            await ws.send(pcm[i:i + step])
            await asyncio.sleep(step / 2 / 16000 / 8)
        await ws.send('{"type": "stop"}')
        events = await read_events(ws)
        return events, ws.close_code


async def handshake_status(url: str, **kwargs) -> tuple[int, dict, bytes]:
    """101 when the WebSocket opened, else the HTTP refusal."""
    try:
        async with connect(url, **kwargs):
            return 101, {}, b""
    except InvalidStatus as e:
        return e.response.status_code, {k.lower(): v for k, v in e.response.headers.raw_items()}, e.response.body


# -- 6. strict JSON ----------------------------------------------------------------------------------
def test_non_finite_floats_serialise_to_null():
    ev = {"type": "identity", "score": math.nan, "llr": -math.inf, "candidates": [{"score": math.inf}, 0.5],
          "np": np.float32("nan"), "np64": np.float64(np.inf), "ok": np.float32(0.25), "arr": np.array([1.0, np.nan]),
          "pair": (1.0, math.nan), "n": 3, "s": "NaN", "none": None, "flag": True}
    text = wire_json(ev)
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text
    back = strict_loads(text)
    assert back["score"] is None and back["llr"] is None and back["candidates"] == [{"score": None}, 0.5]
    assert back["np"] is None and back["np64"] is None and back["ok"] == 0.25 and back["arr"] == [1.0, None]
    assert back["pair"] == [1.0, None] and back["n"] == 3 and back["s"] == "NaN" and back["flag"] is True


def test_monitor_hub_and_webhook_bodies_are_strict_json():
    from voxguard.daemon.monitor import MonitorHub
    from voxguard.protocol import MonitorFilter

    hub = MonitorHub(10)
    sub = hub.subscribe(MonitorFilter())
    hub.publish({"type": "identity", "stream_id": "s", "seq": 0, "time": 1.0, "score": math.nan})
    text = asyncio.run(sub.get())
    assert strict_loads(text)["score"] is None

    from voxguard.daemon.alerts import WebhookSender

    sender = WebhookSender(["http://127.0.0.1:9/hook"])
    sender.submit({"alert": "clone_suspicion", "llr": math.inf, "score": math.nan})
    sent = strict_loads(sender._queues["http://127.0.0.1:9/hook"][0])
    assert sent["llr"] is None and sent["score"] is None


def test_http_json_answers_are_strict_json():
    from voxguard.daemon.server import _json

    r = _json(200, {"x": math.nan, "y": [math.inf]})
    assert strict_loads(r.body) == {"x": None, "y": [None]}


# -- 2. origins ----------------------------------------------------------------------------------------
def test_browser_origins_are_same_origin_or_allowed(daemon, store):
    url = f"ws://127.0.0.1:{daemon.port}/v1/stream"
    mon = f"ws://127.0.0.1:{daemon.port}/v1/monitor"

    async def cases():
        return {
            "none": await handshake_status(url),
            "same": await handshake_status(url, origin=f"http://127.0.0.1:{daemon.port}"),
            "monitor_same": await handshake_status(mon, origin=f"http://127.0.0.1:{daemon.port}"),
            "allowed": await handshake_status(url, origin=CONSOLE),
            "evil": await handshake_status(url, origin="https://evil.example"),
            "other_port": await handshake_status(url, origin=f"http://127.0.0.1:{daemon.port + 1}"),
            "other_name": await handshake_status(url, origin=f"http://localhost:{daemon.port}"),
            "null": await handshake_status(url, origin="null"),
            "monitor_evil": await handshake_status(mon, origin="https://evil.example"),
        }

    got = asyncio.run(cases())
    for ok in ("none", "same", "monitor_same", "allowed"):
        assert got[ok][0] == 101, (ok, got[ok])
    for bad in ("evil", "other_port", "other_name", "null", "monitor_evil"):
        status, headers, body = got[bad]
        assert status == 403, (bad, got[bad])
        assert "not allowed" in strict_loads(body)["error"] and "--allow-origin" in strict_loads(body)["error"]
    # a cross-origin page cannot read the enrolled names through /v1/calls or the monitor either
    status, _, _ = http_get(daemon, "/admin/reload", "POST", {"Origin": "https://evil.example"})
    assert status == 403
    # the daemon's own pages still load (and connect from their own origin: checked in test_browser.py)
    assert http_get(daemon, "/")[0] == 200 and http_get(daemon, "/monitor")[0] == 200


# -- 5. request bodies ----------------------------------------------------------------------------------
def raw_post(port: int, path: str, body: bytes | None, headers: dict | None = None,
             chunked: bool = False) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_reload_with_a_request_body_gets_an_answer(daemon, store):
    n = len(store[1])
    for body, chunked in [(b"{}", False), (b'{"why": "' + b"x" * 5000 + b'"}', False), (b"{}", True),
                          (iter([b"{", b"}"]), True)]:
        status, _, reply = raw_post(daemon.port, "/admin/reload", body, {"Content-Type": "application/json"},
                                    chunked=chunked)
        assert status == 200, reply
        got = strict_loads(reply)
        assert got["reloaded"] is True and got["index"]["enrolled_speakers"] == n
    big = b"\0" * (2 << 20)
    for chunked in (False, True):
        status, headers, reply = raw_post(daemon.port, "/admin/reload", big, chunked=chunked)
        assert status == 413 and "too large" in strict_loads(reply)["error"], (status, reply)
    # the daemon goes on serving
    assert http_get(daemon, "/healthz")[0] == 200
    assert strict_loads(http_get(daemon, "/readyz")[2])["index"]["enrolled_speakers"] == n


# -- 4. a vanished store ---------------------------------------------------------------------------------
def test_a_vanished_store_keeps_the_loaded_index(store, pcm, tmp_path):
    src, names = store
    path = tmp_path / "vg.db"
    shutil.copy(src, path)
    d = DaemonProcess(path, extra=("--follow-interval", "0.2"))
    try:
        n = len(names)
        away = tmp_path / "moved-away.db"
        path.rename(away)
        status, _, reply = http_get(d, "/admin/reload", "POST")
        body = strict_loads(reply)
        assert status == 503 and body["reloaded"] is False and "missing" in body["error"], (status, body)
        # SIGHUP: the same failed reload, logged and counted
        failed = metric(d, 'voxguard_reloads_total{result="failed"}')
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while metric(d, 'voxguard_reloads_total{result="failed"}') <= failed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(d, 'voxguard_reloads_total{result="failed"}') > failed
        # the follower: degraded, with the reason, counted; the loaded index stays in service
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = strict_loads(http_get(d, "/readyz")[2])
            if ready["degraded"]:
                break
            time.sleep(0.1)
        assert ready["degraded"] and "missing" in ready["store"]["reason"], ready
        assert ready["index"]["enrolled_speakers"] == n and ready["ready"]
        assert metric(d, "voxguard_store_errors_total") >= 1 and metric(d, "voxguard_store_degraded") == 1
        name, audio = pcm
        events, close = asyncio.run(run_stream(f"ws://127.0.0.1:{d.port}/v1/stream", audio, "kept",
                                               claimed_speaker=name))
        assert close == 1000 and events[0]["index"]["enrolled_speakers"] == n
        assert events[-1]["type"] == "summary" and events[-1]["identity"]["speaker"] == name
        assert "missing" in d.log_tail(200)
        # back in place: no longer degraded, served as before
        away.rename(path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = strict_loads(http_get(d, "/readyz")[2])
            if not ready["degraded"] and ready["store"]["state"] == "ok":
                break
            time.sleep(0.1)
        assert not ready["degraded"] and ready["index"]["enrolled_speakers"] == n, ready
        status, _, reply = http_get(d, "/admin/reload", "POST")
        assert status == 200 and strict_loads(reply)["index"]["enrolled_speakers"] == n
    finally:
        d.kill()


# -- 3. a read-only store --------------------------------------------------------------------------------
def _read_only_copy(src: Path, tmp: Path) -> tuple[Path, callable]:
    """A copy of the store (and its index) in a directory that cannot be written, and how to undo
    it: a read-only bind mount (root), else a 0555 directory holding a 0444 file (other users;
    root ignores those modes).  Skips when neither is possible."""
    rw, ro = tmp / "rw", tmp / "ro"
    rw.mkdir()
    ro.mkdir()
    for p in (src, Path(str(src) + ".faiss")):
        if p.exists():
            shutil.copy(p, rw / p.name)
    if os.geteuid() != 0:
        for p in rw.iterdir():
            p.chmod(0o444)
        rw.chmod(0o555)
        return rw / src.name, lambda: rw.chmod(0o755)
    r = subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot bind-mount read-only: {r.stderr.decode().strip()}")
    r = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
    if r.returncode != 0:
        subprocess.run(["umount", str(ro)])
        pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
    return ro / src.name, lambda: subprocess.run(["umount", "-l", str(ro)])


def test_a_read_only_store_is_served_and_refuses_writes(store, pcm, an4_speakers, tmp_path):
    src, names = store
    path, undo = _read_only_copy(src, tmp_path)
    try:
        with pytest.raises(OSError):  # really read-only, even for root
            (path.parent / "probe").write_text("x")
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        listing = [path.parent / p for p in sorted(os.listdir(path.parent))]
        # enroll add: a clear error, a non-zero exit, the store untouched
        newcomer = sorted(an4_speakers)[len(names)]
        r = subprocess.run([sys.executable, "-m", "voxguard.cli", "enroll", "add", newcomer,
                            str(an4_speakers[newcomer][0]), "--store", str(path), "--device", "cpu"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0
        assert "read-only" in r.stderr and "not an SQLite database" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert [path.parent / p for p in sorted(os.listdir(path.parent))] == listing
        # reads work: list, and serve
        r = subprocess.run([sys.executable, "-m", "voxguard.cli", "enroll", "list", "--store", str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and all(n in r.stdout for n in names), r.stderr
        d = DaemonProcess(path, extra=("--follow-interval", "0.2"))
        try:
            ready = strict_loads(http_get(d, "/readyz")[2])
            assert ready["ready"] and ready["index"]["enrolled_speakers"] == len(names), ready
            name, audio = pcm
            events, close = asyncio.run(run_stream(f"ws://127.0.0.1:{d.port}/v1/stream", audio, "ro"))
            assert close == 1000 and events[-1]["type"] == "summary"
            assert events[-1]["identity"]["speaker"] == name, events[-1]
            status, _, reply = http_get(d, "/admin/reload", "POST")
            assert status == 200 and strict_loads(reply)["index"]["enrolled_speakers"] == len(names)
            time.sleep(1.0)  # a few follower polls
            assert not strict_loads(http_get(d, "/readyz")[2])["degraded"]
        finally:
            d.kill()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    finally:
        undo()


# -- 1. the drain (last: shuts the shared daemon down) ----------------------------------------------------
def test_shutdown_answers_503_until_streams_drained(daemon, pcm):
    name, audio = pcm
    url = f"ws://127.0.0.1:{daemon.port}/v1/stream"

    async def scenario():
        ws = await connect(url, max_size=None)
        await ws.send(start_msg("draining"))
        for i in range(0, 16000 * 2 * 2, 3200):
            await ws.send(audio[i:i + 3200])
        await asyncio.sleep(0.5)
        # stop reading: the server's close handshake cannot complete, so the drain lasts
        ws.transport.pause_reading()
        daemon.proc.send_signal(signal.SIGTERM)
        ready = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = await asyncio.to_thread(http_get, daemon, "/readyz")
            if ready[0] == 503:
                break
            await asyncio.sleep(0.05)
        handshake = await handshake_status(url)
        monitor = await handshake_status(f"ws://127.0.0.1:{daemon.port}/v1/monitor")
        alive = daemon.proc.poll() is None
        ws.transport.resume_reading()
        events = await read_events(ws)
        return ready, handshake, monitor, alive, events, ws.close_code

    ready, handshake, monitor, alive, events, close = asyncio.run(scenario())
    assert alive
    status, headers, body = ready
    assert status == 503, ready
    got = strict_loads(body)
    assert got["ready"] is False and got["reason"] == "shutting down" and got["active_streams"] == 1
    assert headers["retry-after"] == "5"
    for status, headers, body in (handshake, monitor):
        assert status == 503 and headers["retry-after"] == "5", (status, headers, body)
        assert strict_loads(body)["error"] == "shutting down"
    assert close == 1001 and events[-1]["type"] == "summary" and events[-1]["reason"] == "shutdown"
    assert daemon.proc.wait(60) == 0
    with pytest.raises(OSError):  # drained: the listener is closed
        http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5).request("GET", "/healthz")
