"""``voxguard mic``: the device listing on a machine without audio devices, and the streaming
loop with an injected live source (AN4 blocks pushed from a thread, as PortAudio's callback
does) against a real daemon, including Ctrl-C and the failure cases."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time

import pytest

from client_support import (SPEAKER, TOKEN, client_store, daemon, free_port, held_out_audio,  # noqa: F401 (fixtures)
                            spare_daemon)
from conftest import run_cli
from voxguard.clients import AuthRefused, Client, ConnectFailed, ConnectionLost, QueueSource
from voxguard.clients.stream import StreamJob, run_job

pytestmark = pytest.mark.an4


def _has_input_device() -> bool:
    try:
        import sounddevice
    except OSError:
        return False
    return any(d["max_input_channels"] > 0 for d in sounddevice.query_devices())


@pytest.mark.skipif(_has_input_device(), reason="this machine has an audio input device")
@pytest.mark.parametrize("args", [["--list-devices"], []])
def test_no_input_device_is_a_clear_error(args):
    r = run_cli("mic", *args, "--url", f"ws://127.0.0.1:{free_port()}/v1/stream", timeout=60)
    assert r.returncode == 8
    err = r.stderr.decode().strip()
    assert err.startswith("voxguard: error: ") and len(err.splitlines()) == 1
    assert "no audio input device found" in err or "PortAudio is not installed" in err


class FakeCapture:
    """Pushes 100 ms int16 blocks into a QueueSource from a thread, in real time, like a
    PortAudio callback (the audio is a real AN4 recording, looped)."""

    def __init__(self, samples, rate: int = 16000):
        self.source = QueueSource(rate)
        self.blocks = [(samples[i:i + rate // 10] * 32767).astype("int16") for i in range(0, len(samples), rate // 10)]
        self.halt = threading.Event()

    def start(self) -> None:
        self.source.bind(asyncio.get_running_loop())
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        i = 0
        while not self.halt.is_set():
            self.source.put_threadsafe(self.blocks[i % len(self.blocks)])
            i += 1
            time.sleep(0.1)


async def _mic_session(url: str, token: str | None, capture: FakeCapture, out: io.StringIO, err: io.StringIO,
                       interrupt_when=None) -> int:
    """What ``voxguard mic`` runs, with ``capture`` instead of the microphone; sends this
    process a real SIGINT (Ctrl-C) once ``interrupt_when(out)`` holds."""
    capture.start()
    job = StreamJob(Client(url, token), capture.source, claimed_speaker=SPEAKER, out=out, err=err)

    async def interrupt():
        while not interrupt_when(out.getvalue()):
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = asyncio.create_task(interrupt()) if interrupt_when else None
    try:
        return await run_job(job)
    finally:
        capture.halt.set()
        if watcher:
            watcher.cancel()


def test_live_view_then_ctrl_c_prints_the_summary(daemon, an4_speakers):
    capture = FakeCapture(held_out_audio(an4_speakers))
    out, err = io.StringIO(), io.StringIO()
    verdict_shown = lambda text: f"claim {SPEAKER}: accept" in text  # noqa: E731
    code = asyncio.run(_mic_session(daemon.url, TOKEN, capture, out, err, verdict_shown))
    text = out.getvalue()
    assert code == 0, text
    assert f"speaking: {SPEAKER}" in text and "clone: none" in text
    assert "stopping, waiting for the summary" in err.getvalue()
    summary = text[text.index("summary (stopped)"):]
    assert f"speaker: {SPEAKER}" in summary and f"claim {SPEAKER}: ACCEPT" in summary


def test_failures(daemon, spare_daemon, an4_speakers):
    x = held_out_audio(an4_speakers)
    for url, token, error in ((f"ws://127.0.0.1:{free_port()}/v1/stream", None, ConnectFailed),
                              (daemon.url, "a-wrong-token-for-this-daemon", AuthRefused)):
        with pytest.raises(error) as e:
            asyncio.run(_mic_session(url, token, FakeCapture(x), io.StringIO(), io.StringIO()))
        assert e.value.exit_code in (5, 6)
    d = spare_daemon()
    out = io.StringIO()
    capture = FakeCapture(x)

    def shut_down_after_first_window(text: str) -> bool:
        if "speaking:" in text and d.proc.poll() is None:
            d.proc.send_signal(signal.SIGTERM)
        return False

    async def session():
        task = asyncio.create_task(_mic_session(d.url, None, capture, out, io.StringIO()))
        while not task.done():
            shut_down_after_first_window(out.getvalue())
            await asyncio.sleep(0.05)
        return await task

    with pytest.raises(ConnectionLost) as e:
        asyncio.run(session())
    assert e.value.close_code == 1001 and e.value.summary is not None and e.value.exit_code == 7
    assert "summary (server shut down)" in out.getvalue()
