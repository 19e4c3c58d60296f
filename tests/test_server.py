"""The real daemon (``voxguard serve`` in a subprocess) on loopback, with real WebSocket
and HTTP clients, a real store of AN4 speakers and a real systemd notify socket.

Tests run in file order against one daemon; the last one shuts it down with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import numpy as np
import pytest
from conftest import speech_like
from daemon_support import DaemonProcess, build_store, held_out_pcm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voxguard.audio import load_audio
from voxguard.protocol import ERRORS, SCHEMAS

pytestmark = [pytest.mark.an4, pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_FRAME = 65536


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("daemon") / "vg.db"
    return path, build_store(path, embedder, an4_speakers)


class Daemon:
    """The daemon under test plus what it sends to its systemd notify socket."""

    def __init__(self, process: DaemonProcess, notify: socket.socket):
        self.process, self.proc, self.port = process, process.proc, process.port
        self.notes: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_notify, args=(notify,), daemon=True).start()

    def _read_notify(self, notify: socket.socket) -> None:
        while True:
            try:
                self.notes.put(notify.recv(4096).decode())
            except OSError:
                return

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def http(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def notifications(self, until: str, timeout: float = 60) -> list[str]:
        """sd_notify datagrams received until one contains ``until``."""
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.notes.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            got.append(msg)
            if until in msg:
                return got
        raise AssertionError(f"no {until!r} notification; got {got}")


@pytest.fixture(scope="module")
def daemon(store, tmp_path_factory):
    path, _ = store
    sock_path = tmp_path_factory.mktemp("notify") / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    process = DaemonProcess(path, tokens=(TOKEN,), env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"},
                            extra=("--idle-timeout", "3", "--write-timeout", "2", "--max-frame-bytes", str(MAX_FRAME),
                                   "--max-pending-windows", "4", "--max-streams", "12"))
    d = Daemon(process, notify)
    assert any("READY=1" in m for m in d.notifications("READY=1"))
    assert any("WATCHDOG=1" in m for m in d.notifications("WATCHDOG=1", timeout=5))
    yield d
    process.kill()
    notify.close()
    print(process.log_tail())  # shown by pytest when a test failed


@pytest.fixture(scope="module")
def utterances(store, an4_speakers):
    """16-bit PCM (16 kHz) of three held-out utterances of the second enrolled speaker."""
    _, names = store
    return names[1], held_out_pcm(an4_speakers, names[1], 3)


# -- client helpers ---------------------------------------------------------------------------------
def start_msg(stream_id: str, **over) -> str:
    return json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                       "stream_id": stream_id, **over})


async def collect(ws) -> list[dict]:
    """Every event until the server closes; each is checked against its schema."""
    events = []
    try:
        async for msg in ws:
            ev = json.loads(msg)
            jsonschema.validate(ev, SCHEMAS[ev["type"]])
            events.append(ev)
    except ConnectionClosed:
        pass
    return events


async def send_audio(ws, pcm: bytes, speed: float = 1.0, chunk_s: float = 0.1, rate: int = 16000, fb: int = 2):
    step = int(rate * chunk_s) * fb
    t0 = time.monotonic()
    for i in range(0, len(pcm), step):
        await ws.send(pcm[i:i + step])
        lag = t0 + (i + step) / fb / rate / speed - time.monotonic()
        if lag > 0:
            await asyncio.sleep(lag)


async def good_stream(daemon: Daemon, pcm: bytes, stream_id: str, speed: float = 1.0, **start) -> tuple[list, int]:
    async with connect(daemon.url, additional_headers=AUTH, max_size=None) as ws:
        await ws.send(start_msg(stream_id, **start))
        reader = asyncio.create_task(collect(ws))
        await send_audio(ws, pcm, speed)
        await ws.send('{"type": "stop"}')
        events = await reader
        return events, ws.close_code


async def bad_case(daemon: Daemon, *messages, headers=AUTH, url: str | None = None) -> tuple[list, int]:
    async with connect(url or daemon.url, additional_headers=headers, max_size=None) as ws:
        for m in messages:
            try:
                await ws.send(m)
            except ConnectionClosed:
                break
        events = await collect(ws)
        return events, ws.close_code


def assert_error(result: tuple[list, int], code: str):
    events, close = result
    assert events and events[-1]["type"] == "error", events
    assert events[-1]["code"] == code, events[-1]
    assert close == ERRORS[code].close_code == events[-1]["close_code"]


def metric(daemon: Daemon, name: str) -> float:
    _, body = daemon.http("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- tests ---------------------------------------------------------------------------------------------
def test_http_endpoints(daemon, store):
    assert daemon.http("/healthz")[0] == 200
    status, body = daemon.http("/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] and ready["index"]["enrolled_speakers"] == len(store[1])
    status, body = daemon.http("/metrics")
    assert status == 200 and b"voxguard_active_streams" in body and b'voxguard_model_info{' in body
    assert daemon.http("/")[0] == 200
    assert daemon.http("/nope")[0] == 404
    assert daemon.http("/admin/reload", "POST")[0] == 401
    assert daemon.http("/admin/reload", "POST", {"Authorization": "Bearer wrong-token-0000000000"})[0] == 403
    assert daemon.http("/admin/reload", "GET", AUTH)[0] == 405


def test_stream_identifies_an_enrolled_speaker(daemon, utterances):
    name, pcm = utterances
    events, close = asyncio.run(good_stream(daemon, pcm, "ident", speed=4.0, claimed_speaker=name))
    assert close == 1000
    types = [e["type"] for e in events]
    assert types[0] == "ready" and types[-1] == "summary" and "speech_start" in types
    assert [e["seq"] for e in events] == list(range(len(events)))
    ident = [e for e in events if e["type"] == "identity"]
    assert len(ident) >= 6 and sum(e["speaker"] == name for e in ident) >= 0.6 * len(ident)
    assert ident[-1]["decision"]["speaker"] == name
    summary = events[-1]
    assert summary["reason"] == "stop" and summary["identity"]["speaker"] == name
    assert summary["verification"]["decision"] == "accept"
    assert summary["windows"]["scored"] == len(ident)
    assert summary["duration"] == pytest.approx(len(pcm) / 2 / 16000, abs=0.01)
    assert metric(daemon, "voxguard_windows_embedded_total") >= len(ident)
    assert metric(daemon, 'voxguard_events_total{type="identity"}') >= len(ident)


def test_decisions_are_calibrated_llrs_per_band_and_open_set(daemon, utterances, store, an4_speakers):
    """A telephone-rate stream is decided with the telephone-band calibration; an unenrolled
    speaker is nobody, in every window decision and in the summary."""
    from voxguard.audio import resample

    name, pcm = utterances
    audio16 = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    pcm8 = (np.clip(resample(audio16, 16000, 8000), -1, 1) * 32767).astype("<i2").tobytes()

    async def run(data: bytes, rate: int, stream_id: str, **start):
        async with connect(daemon.url, additional_headers=AUTH, max_size=None) as ws:
            await ws.send(start_msg(stream_id, sample_rate=rate, **start))
            reader = asyncio.create_task(collect(ws))
            await send_audio(ws, data, 8.0, rate=rate)
            await ws.send('{"type": "stop"}')
            return await reader

    events = asyncio.run(run(pcm8, 8000, "tel", claimed_speaker=name))
    ready, summary = events[0], events[-1]
    th = ready["thresholds"]
    assert th["band"] == "telephone" and th["units"] == "llr" and summary["band"] == "telephone"
    assert th["source"] == "default:resemblyzer" and "never calibrated" in th["notice"]
    assert th["window"]["calibration"] == "default:resemblyzer:window/telephone"
    assert th["open_set_llr"] >= th["accept"]
    ident = [e for e in events if e["type"] == "identity"]
    assert ident and all(e["calibration"].endswith("window/telephone") for e in ident)
    for e in ident:
        assert e["cosine"] == pytest.approx(e["score"])  # the default backend is raw cosine
        supports = e["llr"] >= e["threshold_llr"]
        assert e["decision"]["candidate"] == (e["speaker"] if supports else None)
    assert summary["identity"]["speaker"] == name
    assert summary["verification"]["decision"] == "accept"
    assert summary["verification"]["calibration"].startswith("default:resemblyzer:session[n=")
    # a speaker who is not enrolled is nobody
    _, names = store
    stranger = next(s for s in sorted(an4_speakers) if s not in names and s[0] == name[0])
    audio = np.concatenate([load_audio(p).samples for p in an4_speakers[stranger][:4]])
    events = asyncio.run(run((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(), 16000, "stranger"))
    ident = [e for e in events if e["type"] == "identity"]
    named = [e for e in ident if e["decision"]["speaker"] is not None]
    assert len(named) <= 0.2 * len(ident), named
    assert events[-1]["identity"]["speaker"] is None and events[-1]["identity"]["best"] in names


def test_bad_inputs_get_their_codes_while_a_good_stream_runs(daemon, utterances):
    name, pcm = utterances
    s = start_msg

    async def scenario():
        good = asyncio.create_task(good_stream(daemon, pcm[: 16000 * 2 * 5], "good", speed=1.0))
        await asyncio.sleep(0.5)
        results = {
            "invalid_json": await bad_case(daemon, "this is not json"),
            "unknown_type": await bad_case(daemon, '{"type": "pause"}'),
            "not_started": await bad_case(daemon, b"\0\0" * 100),
            "already_started": await bad_case(daemon, s("a"), s("a")),
            "partial_frame": await bad_case(daemon, s("b"), b"\0" * 101),
            "unsupported_format": await bad_case(daemon, s("c", sample_rate=96000)),
            "enc": await bad_case(daemon, s("c", encoding="mulaw")),
            "chan": await bad_case(daemon, s("c", channels=4)),
            "non_finite_audio": await bad_case(daemon, s("d", encoding="pcm_f32le"),
                                               np.array([0.0, math.inf, 0.1, 0.2], "<f4").tobytes()),
            "frame_too_large": await bad_case(daemon, s("e"), b"\0" * (MAX_FRAME + 2)),
            "unknown_speaker": await bad_case(daemon, s("f", claimed_speaker="nobody")),
            "invalid_message": await bad_case(daemon, s("g", options={"window": 60})),
            "idle_timeout": await bad_case(daemon, s("h")),  # then says nothing for 3 s
        }
        huge = await bad_case(daemon, s("i"), b"\0" * (4 * MAX_FRAME))
        statuses = []
        for headers, url in [({}, None), ({"Authorization": "Bearer not-a-valid-token-123"}, None)]:
            with pytest.raises(InvalidStatus) as e:
                await bad_case(daemon, s("j"), headers=headers, url=url)
            statuses.append(e.value.response.status_code)
        via_query = await bad_case(daemon, s("k"), '{"type": "stop"}', headers={},
                                   url=f"{daemon.url}?token={TOKEN}")
        # a client that disconnects in the middle of a window
        ws = await connect(daemon.url, additional_headers=AUTH)
        await ws.send(s("drop"))
        await ws.send(pcm[: 16000 * 2])
        ws.transport.abort()
        return results, huge, statuses, via_query, await good

    results, huge, statuses, via_query, (good_events, good_close) = asyncio.run(scenario())
    for code, result in results.items():
        assert_error(result, code if code in ERRORS else "unsupported_format")
    assert huge[1] == 1009
    assert statuses == [401, 403]
    assert [e["type"] for e in via_query[0]] == ["ready", "summary"] and via_query[1] == 1000
    assert good_close == 1000 and good_events[-1]["type"] == "summary"
    assert sum(e["type"] == "identity" for e in good_events) >= 3
    assert metric(daemon, 'voxguard_errors_total{code="partial_frame"}') >= 1
    assert daemon.http("/healthz")[0] == 200


def test_faster_than_real_time_drops_oldest_windows(daemon):
    pcm = (speech_like(40.0, seed=9) * 32767).astype("<i2").tobytes()

    async def burst():
        async with connect(daemon.url, additional_headers=AUTH) as ws:
            await ws.send(start_msg("burst"))
            reader = asyncio.create_task(collect(ws))
            for i in range(0, len(pcm), 32000 * 2):
                await ws.send(pcm[i:i + 64000])
            await ws.send('{"type": "stop"}')
            return await reader, ws.close_code

    events, close = asyncio.run(burst())
    assert close == 1000
    summary = events[-1]
    warnings = [e for e in events if e["type"] == "warning"]
    assert summary["windows"]["dropped"] > 0 and warnings and warnings[0]["code"] == "overload"
    assert summary["windows"]["scored"] + summary["windows"]["dropped"] == summary["windows"]["emitted"]
    assert sum(e["type"] == "identity" for e in events) == summary["windows"]["scored"]
    assert metric(daemon, "voxguard_windows_dropped_total") >= summary["windows"]["dropped"]


def test_client_that_never_reads_is_dropped(daemon, store):
    pcm = (speech_like(60.0, seed=11) * 32767).astype("<i2").tobytes()
    # a claim and top_k 20 make big events, a tiny receive buffer and max_queue=1 stop reading early;
    # lossless mode scores every window, so the events come as fast as the embedder makes them
    opts = {"claimed_speaker": store[1][0], "options": {"hop": 0.1, "top_k": 20, "realtime": False}}

    async def never_read():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", daemon.port))
        ws = await connect(daemon.url, sock=sock, additional_headers=AUTH, max_queue=1)
        await ws.send(start_msg("deaf", **opts))
        deadline = time.monotonic() + 150
        try:
            while time.monotonic() < deadline:
                for i in range(0, len(pcm), 32000):
                    async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                        await ws.send(pcm[i:i + 32000])
                await asyncio.sleep(0.5)
                if metric(daemon, 'voxguard_errors_total{code="slow_consumer"}') >= 1:
                    break
        except (ConnectionClosed, TimeoutError):
            pass
        ws.transport.abort()

    asyncio.run(never_read())
    assert metric(daemon, 'voxguard_errors_total{code="slow_consumer"}') >= 1


def test_reload_picks_up_a_new_speaker_without_dropping_streams(daemon, store, embedder, an4_speakers, utterances):
    path, names = store
    name, pcm = utterances
    newcomer = sorted(an4_speakers)[len(names)]

    async def scenario():
        live = asyncio.create_task(good_stream(daemon, pcm[: 16000 * 2 * 6], "live", speed=1.0))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(build_store, path, embedder, an4_speakers, [newcomer])
        daemon.proc.send_signal(signal.SIGHUP)
        notes = await asyncio.to_thread(daemon.notifications, "READY=1")
        claimed = await bad_case(daemon, start_msg("new", claimed_speaker=newcomer), '{"type": "stop"}')
        return notes, claimed, await live

    notes, claimed, (live_events, live_close) = asyncio.run(scenario())
    assert any("RELOADING=1" in n for n in notes)
    assert claimed[1] == 1000 and claimed[0][0]["index"]["enrolled_speakers"] == len(names) + 1
    assert live_close == 1000 and live_events[-1]["type"] == "summary"
    assert sum(e["type"] == "identity" for e in live_events) >= 4
    status, body = daemon.http("/admin/reload", "POST", AUTH)
    assert status == 200 and json.loads(body)["index"]["enrolled_speakers"] == len(names) + 1
    assert metric(daemon, 'voxguard_reloads_total{result="ok"}') >= 2


def test_a_claim_on_a_speaker_removed_mid_stream_is_rejected(daemon, store, an4_speakers, utterances):
    """The stream keeps its pinned snapshot, but a reload that removes the claimed speaker
    revokes the claim: a warning, then ``reject`` for every window and the session."""
    from conftest import run_cli

    path, names = store
    _, pcm = utterances
    newcomer = sorted(an4_speakers)[len(names)]  # enrolled by the reload test above

    async def scenario():
        live = asyncio.create_task(good_stream(daemon, (pcm * 3)[: 16000 * 2 * 14], "revoked", speed=1.0,
                                               claimed_speaker=newcomer))
        await asyncio.sleep(1.5)
        removed = await asyncio.to_thread(run_cli, "--store", str(path), "enroll", "remove", newcomer)
        assert removed.returncode == 0, removed.stderr
        status, body = await asyncio.to_thread(daemon.http, "/admin/reload", "POST", AUTH)
        assert status == 200 and json.loads(body)["index"]["enrolled_speakers"] == len(names)
        return await live

    events, close = asyncio.run(scenario())
    assert close == 1000
    warn = [e for e in events if e["type"] == "warning"]
    assert [w["code"] for w in warn] == ["claimed_speaker_removed"] and warn[0]["claimed_speaker"] == newcomer
    after = [e for e in events if e["type"] == "verification" and e["seq"] > warn[0]["seq"]]
    assert after and all(e["window"]["decision"] == e["session"]["decision"] == "reject" for e in after)
    summary = events[-1]
    assert summary["verification"]["decision"] == "reject" and "removed" in summary["verification"]["revoked"]


def test_sigterm_sends_summary_and_closes_1001(daemon, utterances):
    _, pcm = utterances

    async def scenario():
        async with connect(daemon.url, additional_headers=AUTH) as ws:
            await ws.send(start_msg("last"))
            reader = asyncio.create_task(collect(ws))
            await send_audio(ws, pcm[: 16000 * 2 * 3], speed=1.0)
            daemon.proc.send_signal(signal.SIGTERM)
            try:
                await send_audio(ws, pcm[16000 * 2 * 3:], speed=1.0)
            except ConnectionClosed:
                pass
            return await reader, ws.close_code

    events, close = asyncio.run(scenario())
    assert close == 1001
    assert events[-1]["type"] == "summary" and events[-1]["reason"] == "shutdown"
    assert events[-1]["windows"]["scored"] >= 2
    assert daemon.proc.wait(60) == 0
    assert "STOPPING=1" in "".join(daemon.notifications("STOPPING=1", timeout=5))
