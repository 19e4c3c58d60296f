"""Helpers for the client tests: a real ``voxguard serve`` subprocess on an ephemeral port,
a shared token-protected daemon over a small AN4 store, and held-out test audio."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon_support import build_store, held_out

TOKEN = "client-tests-token-0123456789"
SPEAKER = "fbbh"  # the enrolled speaker whose held-out audio the tests stream
IMPOSTOR = "fash"  # another enrolled speaker
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """``voxguard serve`` in a subprocess; ``url`` once it listens."""

    def __init__(self, store: Path, port: int = 0, tokens: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
        env = dict(os.environ)
        env.pop("VOXGUARD_TOKENS", None)
        if tokens:
            env["VOXGUARD_TOKENS"] = ",".join(tokens)
        cmd = [sys.executable, "-m", "voxguard.cli", "serve", "--store", str(store), "--port", str(port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = self._wait_listening()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.http = f"http://127.0.0.1:{self.port}"

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _wait_listening(self) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                if "listening on" in line:
                    found.append(line.split("listening on", 1)[1].strip())
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(START_TIMEOUT)
        if not found:
            self.kill()
            raise RuntimeError("voxguard serve did not start:\n" + "".join(self.stderr[-30:]))
        return found[0]

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful shutdown) and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the connections drop without a close frame."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture(scope="session")
def client_store(tmp_path_factory, embedder, an4_speakers) -> Path:
    """4 AN4 speakers x 3 utterances (the daemon tests' store)."""
    path = tmp_path_factory.mktemp("client-store") / "store.db"
    names = build_store(path, embedder, an4_speakers)
    assert SPEAKER in names and IMPOSTOR in names
    return path


_SHARED: dict[str, DaemonProcess] = {}


@pytest.fixture(scope="session")
def daemon(request, client_store) -> DaemonProcess:
    """One token-protected daemon shared by every client test module (started once)."""
    if "daemon" not in _SHARED:
        d = DaemonProcess(client_store, tokens=(TOKEN,))
        request.config.add_cleanup(d.terminate)
        _SHARED["daemon"] = d
    return _SHARED["daemon"]


@pytest.fixture
def spare_daemon(client_store):
    """A daemon of its own, for tests that kill or shut it down mid-stream (no token)."""
    started: list[DaemonProcess] = []

    def start(port: int = 0) -> DaemonProcess:
        d = DaemonProcess(client_store, port=port)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def held_out_audio(an4_speakers, name: str = SPEAKER, files: int = 3) -> np.ndarray:
    """``files`` utterances of ``name`` that were not enrolled, concatenated (16 kHz float32)."""
    chunks = [sf.read(str(p), dtype="float32")[0] for p in held_out(an4_speakers, name)[:files]]
    return np.concatenate(chunks)


def write_wav(path: Path, x: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, rate, subtype=subtype)
    return path


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
