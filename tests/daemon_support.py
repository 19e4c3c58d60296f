"""Helpers shared by the tests that run the daemon: a small real store of AN4 speakers and
``voxguard serve`` in a subprocess on an ephemeral port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from voxguard.enroll.enrollment import Enroller
from voxguard.store import SpeakerStore

SPEAKERS = 4
FILES_PER_SPEAKER = 3


def build_store(path: Path, embedder, an4_speakers: dict[str, list[Path]], speakers: list[str] | None = None,
                files: int = FILES_PER_SPEAKER) -> list[str]:
    """Enroll ``files`` utterances of each speaker (default: the first SPEAKERS) into ``path``
    and save its index; returns the enrolled names."""
    names = speakers or sorted(an4_speakers)[:SPEAKERS]
    with SpeakerStore(path) as store:
        enroller = Enroller(store, embedder)
        for name in names:
            enroller.enroll(name, an4_speakers[name][:files])
        enroller.refresh_index()
    return names


def held_out(an4_speakers: dict[str, list[Path]], name: str, files: int = FILES_PER_SPEAKER) -> list[Path]:
    """Utterances of ``name`` that were not enrolled."""
    return an4_speakers[name][files:]


def held_out_pcm(an4_speakers: dict[str, list[Path]], name: str, utterances: int) -> bytes:
    """16-bit PCM (16 kHz) of ``utterances`` held-out utterances of ``name``, concatenated."""
    from voxguard.audio import load_audio

    audio = np.concatenate([load_audio(p).samples for p in held_out(an4_speakers, name)[:utterances]])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


START_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for servers and 'server down' cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """``voxguard serve`` in a subprocess; ``url``/``port``/``http`` once it listens.

    The environment is the test's own without ``VOXGUARD_*`` and systemd variables, plus
    ``env``; stderr is drained into :attr:`stderr` so a chatty daemon never blocks.
    """

    def __init__(self, store: Path, port: int = 0, tokens: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith(("VOXGUARD_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        if tokens:
            e["VOXGUARD_TOKENS"] = ",".join(tokens)
        e["VOXGUARD_MODELS"] = os.environ["VOXGUARD_MODELS"]  # conftest: no pretrained model unless a test says so
        e.update(env or {})
        cmd = [sys.executable, "-m", "voxguard.cli", "serve", "--store", str(store), "--device", "cpu",
               "--port", str(port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, text=True)
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

    def log_tail(self, n: int = 60) -> str:
        return "".join(self.stderr[-n:])

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


def fake_engine(speakers: frozenset[str] | set[str]):
    """An engine with enrolled ``speakers`` and no index, embedder or calibration: enough for
    everything a stream does before its windows are scored."""
    from voxguard.clone_detection import CloneDetector
    from voxguard.daemon.session import EngineInfo
    from voxguard.daemon.snapshot import ScoringSnapshot
    from voxguard.scoring import Calibration, Thresholds

    th = Thresholds(float("inf"), "uncalibrated")
    snap = ScoringSnapshot(th, CloneDetector(th), None, Calibration.uncalibrated("resemblyzer", "test"),
                           _rows={s: i for i, s in enumerate(sorted(speakers))})
    return EngineInfo(embedder={"name": "resemblyzer", "dim": 256, "version": "x", "device": "cpu"}, snapshot=snap)
