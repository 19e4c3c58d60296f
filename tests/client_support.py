"""Helpers for the client tests: a real ``voxguard serve`` subprocess on an ephemeral port,
a shared token-protected daemon (``daemon_support.DaemonProcess``) over a small AN4 store, and held-out test audio."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from daemon_support import DaemonProcess, build_store, free_port, held_out  # noqa: F401 (re-exported)

TOKEN = "client-tests-token-0123456789"
SPEAKER = "fbbh"  # the enrolled speaker whose held-out audio the tests stream
IMPOSTOR = "fash"  # another enrolled speaker


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

    def start(port: int = 0, extra: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(client_store, port=port, extra=extra)
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
