"""Audio sources for the client: async iterators of audio blocks with a known format.

An *audio source* is any object with ``sample_rate`` and ``channels`` attributes (and
optionally ``encoding``, when it yields raw PCM bytes already in that encoding) that can be
iterated with ``async for``, yielding blocks: numpy arrays (``[frames]`` or
``[frames, channels]``; float32 in [-1, 1] or int16) or ``bytes`` of whole sample frames.

* :class:`ArraySource` — a numpy array, cut into blocks, paced at real time (or ``speed``
  times real time, or as fast as the connection takes it with ``speed=None``).
* :func:`file_source` — any file :func:`voxguard.audio.load_audio` decodes, sent as
  16 kHz mono (the rate the engine works at: no resampling on the server, least bandwidth).
* :class:`PcmSource` — raw interleaved PCM from a binary stream (``sys.stdin.buffer``).
* :class:`QueueSource` — blocks pushed by other code (a sound-card callback, another
  thread): ``put`` / ``put_threadsafe`` and ``close``.  ``voxguard mic`` builds on it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from collections.abc import AsyncIterator
from typing import BinaryIO, Protocol, runtime_checkable

import numpy as np

from voxguard import SAMPLE_RATE
from voxguard.audio import downmix, int16_to_float, load_audio, resample
from voxguard.errors import AudioError
from voxguard.protocol import CHANNELS, ENCODINGS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

Block = np.ndarray | bytes
DEFAULT_BLOCK_S = 0.1


@runtime_checkable
class AudioSource(Protocol):
    sample_rate: int
    channels: int

    def __aiter__(self) -> AsyncIterator[Block]: ...


class Pacer:
    """Releases audio no faster than ``speed`` times real time (``None``: no pacing).

    Block *k* is released when the audio up to its end would have been captured live,
    so a paced source behaves like a microphone delivering blocks as they fill up."""

    def __init__(self, sample_rate: int, speed: float | None = 1.0):
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (None: no pacing)")
        self.sample_rate = sample_rate
        self.speed = speed
        self._t0: float | None = None
        self._frames = 0

    async def wait(self, frames: int) -> None:
        """Account for ``frames`` more frames and sleep until they are due."""
        if self._t0 is None:
            self._t0 = time.monotonic()
        self._frames += frames
        if self.speed is None:
            await asyncio.sleep(0)
            return
        due = self._t0 + self._frames / self.sample_rate / self.speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class ArraySource:
    """Stream a numpy array: ``[frames]`` or ``[frames, channels]``, float32/float64 in
    [-1, 1] or int16, at ``sample_rate``.

    More than two channels are downmixed to mono; a rate outside the protocol's
    8-48 kHz is resampled to 16 kHz (soxr)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, block: float = DEFAULT_BLOCK_S,
                 speed: float | None = 1.0):
        x = np.asarray(samples)
        if x.ndim not in (1, 2) or x.size == 0:
            raise ValueError("samples must be a non-empty [frames] or [frames, channels] array")
        if x.dtype != np.int16 and not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"samples must be float or int16, not {x.dtype}")
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim == 2 and x.shape[1] not in CHANNELS:
            x = downmix(int16_to_float(x) if x.dtype == np.int16 else x)
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            f = int16_to_float(x) if x.dtype == np.int16 else x
            x = resample(f, sample_rate)  # soxr takes [frames] or [frames, channels]
            sample_rate = SAMPLE_RATE
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32, copy=False)
            if not np.isfinite(x).all():
                raise ValueError("samples hold NaN or infinite values")
        if block <= 0:
            raise ValueError("block must be positive")
        self.samples = x
        self.sample_rate = int(sample_rate)
        self.channels = 1 if x.ndim == 1 else x.shape[1]
        self.block_frames = max(1, int(round(block * self.sample_rate)))
        self.speed = speed

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        pacer = Pacer(self.sample_rate, self.speed)
        for i in range(0, len(self.samples), self.block_frames):
            block = self.samples[i:i + self.block_frames]
            await pacer.wait(len(block))
            yield block


def file_source(path: str | os.PathLike, block: float = DEFAULT_BLOCK_S, speed: float | None = 1.0,
                keep_channels: bool = False) -> ArraySource:
    """A file decoded by :func:`voxguard.audio.load_audio` (soundfile, ffmpeg fallback),
    sent as 16 kHz mono (``keep_channels``: 16 kHz with the file's channels, for
    ``channel_mode: separate``; the file must then be stereo).  Raises
    :class:`voxguard.errors.AudioError` when it cannot be read."""
    audio = load_audio(path, SAMPLE_RATE, keep_channels=keep_channels)
    if keep_channels and audio.source_channels != 2:
        raise AudioError(Path(path), f"separate channels need a stereo file; this one has "
                                     f"{audio.source_channels} channel(s)")
    return ArraySource(audio.samples, audio.sample_rate, block=block, speed=speed)


class PcmSource:
    """Raw interleaved little-endian PCM read from a binary stream (e.g. ``sys.stdin.buffer``),
    passed through unchanged in blocks of whole sample frames.

    Reads happen in a worker thread so a slow pipe never blocks the event loop.  Trailing
    bytes that do not make a whole frame are dropped (counted in ``dropped_bytes``)."""

    def __init__(self, reader: BinaryIO, sample_rate: int, encoding: str = "pcm_s16le", channels: int = 1,
                 block: float = DEFAULT_BLOCK_S, speed: float | None = 1.0):
        if encoding not in ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}; use one of: {', '.join(ENCODINGS)}")
        if channels not in CHANNELS:
            raise ValueError(f"unsupported channel count {channels}; use 1 or 2")
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"sample rate must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz")
        self.reader = reader
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.channels = channels
        self.frame_bytes = ENCODINGS[encoding] * channels
        self.block_bytes = max(1, int(round(block * sample_rate))) * self.frame_bytes
        self.speed = speed
        self.dropped_bytes = 0

    def _read(self, n: int) -> bytes:
        read = getattr(self.reader, "read1", None) or self.reader.read
        return read(n)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pacer = Pacer(self.sample_rate, self.speed)
        pending = b""
        while True:
            chunk = await asyncio.to_thread(self._read, self.block_bytes - len(pending))
            if not chunk:
                break
            pending += chunk
            if len(pending) < self.block_bytes:
                continue
            block, pending = pending, b""
            await pacer.wait(len(block) // self.frame_bytes)
            yield block
        whole = len(pending) - len(pending) % self.frame_bytes
        self.dropped_bytes = len(pending) - whole
        if whole:
            await pacer.wait(whole // self.frame_bytes)
            yield pending[:whole]


class QueueSource:
    """A live source fed by other code.  ``put_threadsafe`` may be called from any thread
    (a PortAudio callback); when ``maxsize`` blocks are waiting the oldest is dropped and
    counted in ``overflows`` (live audio cannot wait)."""

    _END = object()

    def __init__(self, sample_rate: int, channels: int = 1, maxsize: int = 100,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.sample_rate = sample_rate
        self.channels = channels
        self.overflows = 0
        self._queue: asyncio.Queue = asyncio.Queue(maxsize)
        self._loop = loop
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def put(self, block: Block) -> None:
        """Queue a block (event-loop thread)."""
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.overflows += 1
        self._queue.put_nowait(block)

    def put_threadsafe(self, block: Block) -> None:
        """Queue a block from another thread."""
        if self._loop is None:
            raise RuntimeError("QueueSource.bind(loop) first")
        self._loop.call_soon_threadsafe(self.put, block)

    def close(self, error: BaseException | None = None) -> None:
        """End the source (after what is queued); with ``error``, iteration raises it."""
        if self._closed:
            return
        self._closed = True
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(error if error is not None else self._END)

    def close_threadsafe(self, error: BaseException | None = None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.close, error)

    async def __aiter__(self) -> AsyncIterator[Block]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
