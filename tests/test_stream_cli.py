"""``voxguard stream`` as a user runs it, against a real daemon: the live view, ``--json``,
raw PCM on stdin, tokens, and one exit code per outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soxr

from client_support import (IMPOSTOR, SPEAKER, TOKEN, client_store, daemon, free_port,  # noqa: F401 (fixtures)
                            held_out_audio, spare_daemon, write_wav)
from conftest import run_cli
from voxguard.protocol import SCHEMAS

pytestmark = pytest.mark.an4


@pytest.fixture(scope="module")
def call_wav(tmp_path_factory, an4_speakers):
    return write_wav(tmp_path_factory.mktemp("stream-cli") / "call.wav", held_out_audio(an4_speakers))


def stream(*args, token: str | None = TOKEN, input: bytes | None = None):
    env = {"VOXGUARD_TOKEN": token} if token else {"VOXGUARD_TOKEN": ""}
    return run_cli("stream", *args, env=env, input=input, timeout=120)


def test_live_view_accepts_the_claimed_speaker(daemon, call_wav, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("# the client token\n" + TOKEN + "\n")
    r = stream(str(call_wav), "--url", daemon.url, "--token-file", str(token_file), "--claim", SPEAKER,
               "--speed", "6", token=None)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert out.startswith("ready: stream ") and f"claim {SPEAKER}" in out.splitlines()[0]
    assert f"speaking: {SPEAKER} 0." in out and f"claim {SPEAKER}: accept" in out
    # the test store has no known clones and no trained detector: no clone evidence either way
    assert f"claim {SPEAKER}: ACCEPT" in out and "clone suspicion: unavailable" in out


def test_json_events_and_rejected_claim(daemon, call_wav):
    jsonschema = pytest.importorskip("jsonschema")
    r = stream(str(call_wav), "--url", daemon.url, "--claim", IMPOSTOR, "--no-pace", "--json", "--top-k", "2")
    assert r.returncode == 1, r.stderr.decode()
    events = [json.loads(line) for line in r.stdout.decode().splitlines()]
    for e in events:
        jsonschema.validate(e, SCHEMAS[e["type"]])
    assert events[0]["type"] == "ready" and events[0]["options"]["top_k"] == 2
    assert events[-1]["type"] == "summary" and events[-1]["verification"]["decision"] == "reject"
    assert all(len(e["top"]) <= 2 for e in events if e["type"] == "identity")


def test_raw_pcm_on_stdin(daemon, an4_speakers):
    x = held_out_audio(an4_speakers)
    stereo = soxr.resample(x, 16000, 32000)
    pcm = (np.stack([stereo, stereo], axis=1) * 32767).astype("<i2").tobytes()
    r = stream("-", "--rate", "32000", "--channels", "2", "--url", daemon.url, "--no-pace", "--claim", SPEAKER,
               "--json", input=pcm + b"\x01")  # one stray byte: dropped with a warning
    assert r.returncode == 0, r.stderr.decode()
    events = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert events[0]["input"] == {"sample_rate": 32000, "encoding": "pcm_s16le", "channels": 2}
    assert events[-1]["identity"]["decision"]["speaker"] == SPEAKER
    assert events[-1]["duration"] == pytest.approx(len(x) / 16000, abs=0.01)
    assert "dropped 1 trailing byte" in r.stderr.decode()


def test_undecided_claim_exits_3(daemon, an4_speakers):
    x = held_out_audio(an4_speakers, files=1)[: int(1.9 * 16000)]  # too little speech for a session verdict
    pcm = x.astype("<f4").tobytes()
    r = stream("-", "--encoding", "pcm_f32le", "--url", daemon.url, "--no-pace", "--claim", SPEAKER, input=pcm)
    assert r.returncode == 3, r.stderr.decode()
    assert f"claim {SPEAKER}: UNDECIDED" in r.stdout.decode()


@pytest.mark.parametrize("case", ["down", "no-token", "bad-token", "unknown-speaker", "bad-file"])
def test_failures_have_distinct_exit_codes(daemon, call_wav, tmp_path, case):
    url, token, extra, path = daemon.url, TOKEN, [], str(call_wav)
    if case == "down":
        url = f"ws://127.0.0.1:{free_port()}/v1/stream"
    elif case == "no-token":
        token = None
    elif case == "bad-token":
        token = "not-the-right-token-at-all"
    elif case == "unknown-speaker":
        extra = ["--claim", "nobody-enrolled"]
    else:
        path = str(tmp_path / "missing.wav")
    r = stream(path, "--url", url, "--no-pace", *extra, token=token)
    err = r.stderr.decode().strip().splitlines()
    expected = {"down": (5, "cannot connect to ws://127.0.0.1:"),
                "no-token": (6, "requires a token (HTTP 401"),
                "bad-token": (6, "refused the token or this Origin (HTTP 403"),
                "unknown-speaker": (4, "server error unknown_speaker"),
                "bad-file": (2, "missing.wav: no such file")}[case]
    assert (r.returncode, len(err)) == (expected[0], 1), err
    assert err[0].startswith("voxguard: error: ") and expected[1] in err[0]


def _popen_stream(*args) -> subprocess.Popen:
    env = {**os.environ, "VOXGUARD_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-m", "voxguard.cli", "stream", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60) -> list[str]:
    lines = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not printed; got {lines}")


def test_ctrl_c_stops_and_prints_the_summary(daemon, call_wav):
    proc = _popen_stream(str(call_wav), "--url", daemon.url, "--claim", SPEAKER)
    _wait_for_line(proc, "speech start")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping, waiting for the summary" in err and "summary (stopped)" in out


def test_server_shutdown_mid_stream(spare_daemon, call_wav):
    d = spare_daemon()
    proc = _popen_stream(str(call_wav), "--url", d.url, "--claim", SPEAKER)
    _wait_for_line(proc, "speech start")
    assert d.terminate() == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 7, err
    assert "summary (server shut down)" in out
    assert err.strip() == ("voxguard: error: the server shut down the stream before it ended "
                           "(close code 1001 server shutting down)")


def test_no_pace_is_lossless_and_real_time_drops_show_in_the_exit_status(client_store, an4_speakers, tmp_path):
    """A daemon that keeps at most one window per stream outstanding: ``--no-pace`` (the
    lossless ``realtime: false`` mode) still scores every window — the server stops reading
    instead — while a real-time stream sent in 10 s blocks loses windows, says so, and
    exits 9."""
    from daemon_support import DaemonProcess

    wav = write_wav(tmp_path / "long.wav", held_out_audio(an4_speakers, files=6))
    d = DaemonProcess(client_store, tokens=(TOKEN,), extra=("--max-pending-windows", "1"))
    try:
        r = stream(str(wav), "--url", d.url, "--no-pace", "--json", "--block", "10")
        assert r.returncode == 0, r.stderr.decode()
        events = [json.loads(line) for line in r.stdout.decode().splitlines()]
        assert events[0]["options"]["realtime"] is False
        summary = events[-1]
        assert summary["type"] == "summary" and summary["realtime"] is False
        w = summary["windows"]
        assert w["dropped"] == 0 and w["scored"] == w["emitted"] >= 20
        assert sum(e["type"] == "identity" for e in events) == w["emitted"]
        r = stream(str(wav), "--url", d.url, "--speed", "1000", "--json", "--block", "10")
        assert r.returncode == 9, r.stderr.decode()
        summary = json.loads(r.stdout.decode().splitlines()[-1])
        assert summary["realtime"] is True and summary["windows"]["dropped"] > 0
        assert "dropped" in r.stderr.decode() and "--no-pace" in r.stderr.decode()
    finally:
        d.terminate()
