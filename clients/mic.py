"""``voxguard mic``: stream a microphone (PortAudio, through sounddevice) to the daemon with
a live terminal view; Ctrl-C sends ``stop`` and prints the session summary.

The device is captured as 16-bit mono at its native (default) sample rate and the daemon
resamples; a device whose native rate lies outside the protocol's 8-48 kHz is resampled
to 16 kHz here (soxr).  The streaming loop is :func:`voxguard.clients.stream.run_job`,
which takes any audio source — tests feed it AN4 blocks instead of a device.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import numpy as np
import soxr

from voxguard import SAMPLE_RATE
from voxguard.audio import int16_to_float
from voxguard.errors import VoxguardError
from voxguard.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

from .sources import QueueSource
from .stream import StreamJob, UsageError, client_from_args, options_from_args, run

EXIT_NO_DEVICE = 8


class AudioDeviceError(VoxguardError):
    """No usable audio input device (or PortAudio is missing)."""

    exit_code = EXIT_NO_DEVICE


def _sounddevice():
    try:
        import sounddevice
    except OSError as e:  # libportaudio2 missing
        raise AudioDeviceError(f"cannot use the microphone: PortAudio is not installed ({e}); on Debian: "
                               f"apt-get install libportaudio2") from None
    return sounddevice


def input_devices() -> list[dict]:
    """PortAudio devices with at least one input channel (``index``, ``name``, ``hostapi``,
    ``channels``, ``rate``, ``default``)."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as e:
        raise AudioDeviceError(f"cannot list audio devices: {e}") from None
    return [{"index": d["index"], "name": d["name"], "hostapi": hostapis[d["hostapi"]]["name"],
             "channels": d["max_input_channels"], "rate": int(d["default_samplerate"]),
             "default": d["index"] == default_in}
            for d in devices if d["max_input_channels"] > 0]


NO_DEVICE = ("no audio input device found (PortAudio lists none); plug in a microphone, or stream a recording "
             "with 'voxguard stream FILE'")


def choose_device(spec: str | None) -> dict:
    """The input device named by ``spec`` (index or part of its name), else the default one."""
    devices = input_devices()
    if not devices:
        raise AudioDeviceError(NO_DEVICE)
    if spec is None:
        return next((d for d in devices if d["default"]), devices[0])
    if spec.isdigit():
        found = [d for d in devices if d["index"] == int(spec)]
    else:
        found = [d for d in devices if spec.lower() in d["name"].lower()]
    if not found:
        names = ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        raise AudioDeviceError(f"no input device matches {spec!r} (input devices: {names})")
    if len(found) > 1:
        raise AudioDeviceError(f"{spec!r} matches several input devices: "
                               + ", ".join(f"{d['index']}: {d['name']}" for d in found))
    return found[0]


class MicSource(QueueSource):
    """Blocks of a PortAudio input device, 16-bit mono, pushed from its callback thread."""

    def __init__(self, device: dict, rate: int | None = None, block: float = 0.1):
        self.device = device
        self.capture_rate = int(rate or device["rate"])
        self._resampler = None
        out_rate = self.capture_rate
        if not MIN_SAMPLE_RATE <= out_rate <= MAX_SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(self.capture_rate, SAMPLE_RATE, 1, dtype="float32")
            out_rate = SAMPLE_RATE
        super().__init__(out_rate, 1)
        self.block_frames = max(1, int(block * self.capture_rate))
        self.status_errors = 0

    def _callback(self, indata, frames, time_info, status) -> None:  # PortAudio thread
        if status:
            self.status_errors += 1
        block = indata[:, 0].copy()
        if self._resampler is not None:
            block = self._resampler.resample_chunk(int16_to_float(block))
        self.put_threadsafe(block)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        sd = _sounddevice()
        self.bind(asyncio.get_running_loop())
        try:
            stream = sd.InputStream(device=self.device["index"], samplerate=self.capture_rate, channels=1,
                                    dtype="int16", blocksize=self.block_frames, callback=self._callback)
        except (sd.PortAudioError, ValueError) as e:
            raise AudioDeviceError(f"cannot open input device {self.device['index']} "
                                   f"({self.device['name']}) at {self.capture_rate} Hz: {e}") from None
        with stream:
            async for block in super().__aiter__():
                yield block


def format_devices(devices: list[dict]) -> str:
    lines = [f"{'':1}{'#':>3}  {'NAME':40} {'HOST API':16} {'CH':>3} {'RATE':>6}"]
    for d in devices:
        lines.append(f"{'*' if d['default'] else ' '}{d['index']:>3}  {d['name'][:40]:40} {d['hostapi'][:16]:16} "
                     f"{d['channels']:>3} {d['rate']:>6}")
    return "\n".join(lines)


def cmd_mic(ctx) -> int:
    args = ctx.args
    if args.list_devices:
        devices = input_devices()
        if not devices:
            raise AudioDeviceError(NO_DEVICE)
        ctx.emit(devices, format_devices(devices))
        return 0
    if args.block <= 0 or args.block > 2:
        raise UsageError("--block must be between 0 and 2 seconds")
    device = choose_device(args.input_device)
    client = client_from_args(args)
    source = MicSource(device, args.rate, args.block)
    print(f"voxguard mic: {device['name']} at {source.capture_rate} Hz -> {args.url} (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    job = StreamJob(client, source, args.claim, options_from_args(args), args.stream_id, ctx.json)
    code = run(job)
    if source.overflows:
        print(f"voxguard mic: warning: {source.overflows} audio block(s) dropped (the connection fell behind)",
              file=sys.stderr)
    return code
