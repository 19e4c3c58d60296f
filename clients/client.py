"""The async voxguard client: open a stream, send audio from any source, get typed events.

Embedding it takes a few lines::

    import asyncio
    from voxguard.clients import Client, file_source

    async def main():
        client = Client("ws://127.0.0.1:8765/v1/stream", token=None)
        async for event in client.stream(file_source("call.wav"), claimed_speaker="alice"):
            if event.type == "identity":
                print(f"{event.time:6.2f}s  {event.current} ({event.score})")
            elif event.type == "summary":
                print("verdict:", event.verdict)

    asyncio.run(main())

Any :class:`~voxguard.clients.sources.AudioSource` works: :class:`ArraySource` (numpy,
float32 or int16, any rate and channel count), :func:`file_source`, :class:`PcmSource`
(raw PCM from a pipe), :class:`QueueSource` (blocks pushed from a callback, e.g. a
microphone).  ``await client.run(source)`` returns just the :class:`Summary`.

Failures raise :class:`ClientError` subclasses (each also a
:class:`voxguard.errors.VoxguardError`, so the CLI prints one line):
:class:`ConnectFailed` (server down, bad URL, TLS, HTTP error), :class:`AuthRefused`
(401/403: token missing or wrong), :class:`ServerError` (an ``error`` event: ``code``,
``message``, ``close_code``), :class:`ConnectionLost` (closed before the summary of a
stream the client stopped, including a server shutdown).

**Reconnection** (``reconnect=True``): after a retryable failure — the server cannot be
reached or answers 503, the connection drops, the server shuts down or is busy or fails
internally — the client waits ``min(max_backoff, backoff * 2**(n-1))`` seconds with
"equal jitter" (half of it fixed, half random) and opens a *new* stream whose
``stream_id`` is the original with a ``~N`` suffix (``call-42~1``, ``call-42~2`` ...).
The protocol has no resume: the new stream's time restarts at 0 and the server's
decisions start afresh; the client yields a client-side :class:`Reconnected` event so
the caller knows.  Audio the source produced meanwhile waits in a bounded buffer
(``buffer_blocks``) and goes to the new stream (a paced source simply pauses while the
buffer is full; a live :class:`QueueSource` drops its oldest blocks).  After
``max_attempts`` consecutive failures, the last error is raised.  Refused tokens,
protocol errors and unknown claimed speakers are never retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl as ssl_module
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict
from urllib.parse import urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxguard.audio import float_to_pcm16, int16_to_float
from voxguard.errors import VoxguardError
from voxguard.protocol import (ENCODINGS, wire_json, MAX_STREAM_ID, ProtocolError, Start, StreamOptions,
                               parse_client_text)

from .events import Error, Event, Ready, Reconnected, Summary, parse_event
from .sources import AudioSource, Block

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
RETRYABLE_CODES = {"server_busy", "internal_error"}


# -- errors ---------------------------------------------------------------------------------
class ClientError(VoxguardError):
    """A stream failed.  ``exit_code`` is what ``voxguard stream``/``mic`` exit with."""

    exit_code = 4
    retryable = False


class ConnectFailed(ClientError):
    """The stream could not be opened (nothing listens, DNS, TLS, an HTTP error answer)."""

    exit_code = 5

    def __init__(self, message: str, status: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class AuthRefused(ConnectFailed):
    """The server refused the token (HTTP 401: none given, 403: wrong one or Origin refused)."""

    exit_code = 6

    def __init__(self, message: str, status: int):
        super().__init__(message, status, retryable=False)


class ServerError(ClientError):
    """The server sent an ``error`` event; ``code`` is a key of :data:`voxguard.protocol.ERRORS`."""

    exit_code = 4

    def __init__(self, event: Error):
        super().__init__(f"server error {event.code}: {event.message} (close code {event.close_code})")
        self.event = event
        self.code = event.code
        self.close_code = event.close_code
        self.retryable = event.code in RETRYABLE_CODES


class ApiError(ClientError):
    """The speakers API answered with an error (``status``; ``body`` is its JSON, with ``error``)."""

    exit_code = 4

    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body.get('error', body)}")
        self.status = status
        self.body = body


class ConnectionLost(ClientError):
    """The connection closed before the stream ended normally (network failure, server
    crash or shutdown).  ``summary`` is set when a shutdown summary came first."""

    exit_code = 7
    retryable = True

    def __init__(self, message: str, close_code: int | None = None, reason: str = "",
                 summary: Summary | None = None):
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason
        self.summary = summary


# -- helpers --------------------------------------------------------------------------------
def encode_block(block: Block, encoding: str, channels: int) -> bytes:
    """A block as interleaved little-endian PCM in ``encoding``.

    ``bytes`` pass through (they must hold whole sample frames); int16 arrays are scaled by
    1/32768 for ``pcm_f32le``; float arrays are clipped to [-1, 1] for ``pcm_s16le``."""
    frame = ENCODINGS[encoding] * channels
    if isinstance(block, (bytes, bytearray, memoryview)):
        data = bytes(block)
        if len(data) % frame:
            raise ValueError(f"{len(data)} bytes is not a whole number of {frame}-byte sample frames")
        return data
    x = np.asarray(block)
    if x.ndim == 2 and x.shape[1] == 1 and channels == 1:
        x = x[:, 0]
    if (channels == 1 and x.ndim != 1) or (channels > 1 and (x.ndim != 2 or x.shape[1] != channels)):
        raise ValueError(f"block of shape {x.shape} does not match {channels} channel(s)")
    if x.dtype == np.int16:
        return x.astype("<i2").tobytes() if encoding == "pcm_s16le" else int16_to_float(x).astype("<f4").tobytes()
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"audio blocks must be float or int16, not {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("audio block holds NaN or infinite samples")
    return float_to_pcm16(x) if encoding == "pcm_s16le" else x.astype("<f4").tobytes()


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: ``d/2 + uniform(0, d/2)``, ``d = min(cap, base * 2**(attempt-1))``."""
    d = min(cap, base * 2 ** max(0, attempt - 1))
    return d / 2 + (rng or random).uniform(0, d / 2)


def make_start(source: AudioSource, stream_id: str, claimed_speaker: str | None,
               options: StreamOptions | Mapping | None, encoding: str | None, channel_mode: str = "mix",
               claimed_speakers: Mapping[int, str] | None = None) -> Start:
    """The ``start`` message for ``source``, checked with the protocol's own parser."""
    enc = getattr(source, "encoding", None) or encoding or "pcm_s16le"
    if isinstance(options, Mapping):
        opts = StreamOptions(**{**asdict(StreamOptions()), **options})
    else:
        opts = options or StreamOptions()
    start = Start(int(source.sample_rate), enc, int(source.channels), stream_id, claimed_speaker, opts,
                  channel_mode, dict(claimed_speakers or {}))
    try:
        parse_client_text(start.to_json())
    except ProtocolError as e:
        raise ValueError(f"invalid stream settings: {e.message}") from None
    except TypeError as e:
        raise ValueError(f"invalid stream options: {e}") from None
    return start


def _http_failure(url: str, e: InvalidStatus) -> ConnectFailed:
    status = e.response.status_code
    try:
        detail = json.loads(e.response.body or b"{}").get("error", "")
    except (ValueError, AttributeError):
        detail = (e.response.body or b"").decode("utf-8", "replace").strip()[:200]
    detail = f": {detail}" if detail else ""
    if status == 401:
        return AuthRefused(f"{url}: the server requires a token (HTTP 401{detail}); pass --token, "
                           f"--token-file or $VOXGUARD_TOKEN", status)
    if status == 403:
        return AuthRefused(f"{url}: the server refused the token or this Origin (HTTP 403{detail})", status)
    return ConnectFailed(f"{url}: the server answered HTTP {status}{detail}", status,
                         retryable=status in (502, 503, 504))


class _Eos:
    """End of the source (``error`` set when the source failed)."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


# -- one connection -------------------------------------------------------------------------
class StreamConnection:
    """One open WebSocket stream.  Usually driven by :meth:`Client.stream`."""

    def __init__(self, ws: ClientConnection, start: Start):
        self.ws = ws
        self.start = start
        self.ready: Ready | None = None
        self.stop_sent = False
        self.pump_error: BaseException | None = None

    @classmethod
    async def open(cls, url: str, start: Start, token: str | None = None,
                   ssl: ssl_module.SSLContext | None = None, open_timeout: float = 10.0) -> "StreamConnection":
        """Connect, send ``start`` and wait for ``ready``."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        kwargs = {}
        if ssl is not None:
            kwargs["ssl"] = ssl
        try:
            ws = await connect(url, additional_headers=headers, open_timeout=open_timeout, compression=None,
                               max_size=4 << 20, **kwargs)
        except InvalidURI as e:
            raise ConnectFailed(f"invalid URL {url!r}: {e}", retryable=False) from None
        except InvalidStatus as e:
            raise _http_failure(url, e) from None
        except ssl_module.SSLError as e:
            raise ConnectFailed(f"{url}: TLS failure: {e.reason or e}", retryable=False) from None
        except (OSError, TimeoutError) as e:
            if isinstance(e, TimeoutError):
                why = "timed out"
            else:
                # asyncio's "Connect call failed (...)" hides the reason; DNS errors have negative errnos
                why = os.strerror(e.errno) if e.errno and e.errno > 0 else (e.strerror or str(e) or type(e).__name__)
            raise ConnectFailed(f"cannot connect to {url}: {why} (is 'voxguard serve' running?)") from None
        except InvalidHandshake as e:
            raise ConnectFailed(f"{url}: not a voxguard WebSocket endpoint ({e})", retryable=False) from None
        conn = cls(ws, start)
        try:
            await ws.send(start.to_json())
            async with asyncio.timeout(open_timeout):
                first = parse_event(await ws.recv())
        except ConnectionClosed as e:
            await conn.aclose()
            raise conn._lost(e) from None
        except TimeoutError:
            await conn.aclose()
            raise ConnectFailed(f"{url}: no 'ready' within {open_timeout:g} s") from None
        except ValueError as e:
            await conn.aclose()
            raise ConnectFailed(f"{url}: unexpected answer to 'start': {e}", retryable=False) from None
        if isinstance(first, Error):
            await conn.aclose()
            raise ServerError(first)
        if not isinstance(first, Ready):
            await conn.aclose()
            raise ConnectFailed(f"{url}: expected 'ready', got {first.type!r}", retryable=False)
        conn.ready = first
        return conn

    def _lost(self, e: ConnectionClosed | None = None, summary: Summary | None = None) -> ConnectionLost:
        rcvd = e.rcvd if e is not None else None
        code = rcvd.code if rcvd is not None else self.ws.close_code
        reason = rcvd.reason if rcvd is not None else (self.ws.close_reason or "")
        if summary is not None:
            what = "the server shut down the stream"
        elif code in (None, 1006):
            what = "the connection dropped"
        else:
            what = "the server closed the stream"
        detail = f"close code {code if code is not None else 1006}" + (f" {reason}" if reason else "")
        return ConnectionLost(f"{what} before it ended ({detail})", code, reason, summary)

    async def send(self, block: Block) -> None:
        await self.ws.send(encode_block(block, self.start.encoding, self.start.channels))

    async def send_stop(self) -> None:
        if not self.stop_sent:
            self.stop_sent = True
            await self.ws.send(wire_json({"type": "stop"}))

    async def aclose(self) -> None:
        try:
            await self.ws.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    async def _pump(self, queue: asyncio.Queue, stop: asyncio.Event | None) -> None:
        """Send queued blocks until the source ends or ``stop`` is set, then ``stop``.

        When the source fails (or a block cannot be encoded) the connection is closed,
        which ends :meth:`events`, and the exception is re-raised for it."""
        stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                waits = {getter} | ({stopper} if stopper else set())
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping = not getter.done()
                    if stopping:
                        getter.cancel()
                if stopping:
                    await self.send_stop()
                    return
                item = getter.result()
                if isinstance(item, _Eos):
                    queue.put_nowait(item)  # stays visible to a later connection
                    if item.error is not None:
                        raise item.error
                    await self.send_stop()
                    return
                await self.send(item)
        except ConnectionClosed:
            return  # events() reports how the connection ended
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self.pump_error = e  # seen by events() even if it finishes before this task
            await self.aclose()
            raise
        finally:
            if stopper is not None:
                stopper.cancel()

    async def events(self, queue: asyncio.Queue, stop: asyncio.Event | None = None) -> AsyncIterator[Event]:
        """Send the queued audio while yielding events, until the stream ends.

        Returns after the ``summary`` of a stream this client stopped; raises
        :class:`ServerError`, :class:`ConnectionLost`, or what the source raised."""
        pump = asyncio.create_task(self._pump(queue, stop))
        summary: Summary | None = None
        error: Error | None = None
        closed: ConnectionClosed | None = None
        try:
            try:
                async for message in self.ws:
                    if isinstance(message, bytes):
                        continue
                    try:
                        event = parse_event(message)
                    except ValueError as e:
                        log.warning("ignoring a malformed server message: %s", e)
                        continue
                    if isinstance(event, Error):
                        error = event
                        continue
                    if isinstance(event, Summary):
                        summary = event
                    yield event
            except ConnectionClosed as e:
                closed = e
            if self.pump_error is not None:
                raise self.pump_error
            if error is not None:
                raise ServerError(error)
            if summary is not None and summary.reason == "stop" and self.stop_sent:
                return
            raise self._lost(closed, summary)
        finally:
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self.aclose()


# -- the client -------------------------------------------------------------------------------
class Client:
    """Connection settings shared by the streams one program opens.

    ``url``: ``ws://`` or ``wss://`` (TLS; ``ssl`` takes a custom :class:`ssl.SSLContext`,
    e.g. for a private CA).  ``token``: sent as ``Authorization: Bearer``.  See the module
    docstring for ``reconnect``, ``max_attempts``, ``backoff`` and ``max_backoff``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, ssl: ssl_module.SSLContext | None = None,
                 open_timeout: float = 10.0, reconnect: bool = False, max_attempts: int = 5, backoff: float = 0.5,
                 max_backoff: float = 10.0, buffer_blocks: int = 64, encoding: str = "pcm_s16le"):
        scheme = urlsplit(url).scheme
        if scheme not in ("ws", "wss"):
            raise ConnectFailed(f"invalid URL {url!r}: use ws://HOST:PORT/v1/stream or wss://...", retryable=False)
        if encoding not in ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.token = token
        self.ssl = ssl
        self.open_timeout = open_timeout
        self.reconnect = reconnect
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.buffer_blocks = buffer_blocks
        self.encoding = encoding
        self.sleep: Callable[[float], object] = asyncio.sleep

    # -- the speakers API (HTTP on the daemon's port; see docs/speakers-api.md) ----------------------
    @property
    def http_url(self) -> str:
        """``http(s)://HOST:PORT`` of the daemon the stream URL points at."""
        u = urlsplit(self.url)
        return f"{'https' if u.scheme == 'wss' else 'http'}://{u.netloc}"

    def _request(self, method: str, path: str, query: Mapping | None = None, body: bytes | None = None,
                 headers: Mapping | None = None) -> tuple[int, dict]:
        import urllib.error
        import urllib.request
        from urllib.parse import quote, urlencode

        q = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.http_url + quote(path) + (f"?{urlencode(q)}" if q else "")
        h = {"Accept": "application/json", **(headers or {})}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=max(60.0, self.open_timeout), context=self.ssl) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectFailed(f"cannot reach {self.http_url}: {reason}") from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw[:200].decode(errors="replace")}
        if status in (401, 403):
            raise AuthRefused(f"{method} {path}: HTTP {status}: {data.get('error', '')}", status)
        if status >= 400:
            raise ApiError(status, data)
        return status, data

    async def _call(self, *args, **kw) -> dict:
        return (await asyncio.to_thread(self._request, *args, **kw))[1]

    async def enroll(self, speaker: str, audio: bytes | str | os.PathLike, *, kind: str = "genuine",
                     source: str | None = None, consent: str | None = None, filename: str | None = None) -> dict:
        """Enroll one recording (a file path, or the file's bytes) as a ``kind`` sample of
        ``speaker``; returns what was stored (``sample_ids``, ``voiced_seconds``, ``band`` ...).
        :class:`ApiError` 422 when nothing could be (undecodable, no speech)."""
        if isinstance(audio, (str, os.PathLike)):
            filename = filename or os.path.basename(os.fspath(audio))
            with open(audio, "rb") as f:
                audio = f.read()
        return await self._call("POST", f"/v1/speakers/{speaker}/samples",
                                {"kind": kind, "source": source, "consent": consent, "filename": filename},
                                bytes(audio), {"Content-Type": "application/octet-stream"})

    async def speakers(self, q: str | None = None, page: int = 100) -> list[dict]:
        """Every enrolled speaker (all pages), or those whose name contains ``q``."""
        out: list[dict] = []
        after = None
        while True:
            got = await self._call("GET", "/v1/speakers", {"limit": page, "after": after, "q": q})
            out += got["speakers"]
            after = got["next"]
            if after is None:
                return out

    async def speaker(self, speaker: str) -> dict:
        """One speaker with its samples."""
        return await self._call("GET", f"/v1/speakers/{speaker}")

    async def delete_speaker(self, speaker: str, consent: str | None = None) -> dict:
        """Erase a speaker (audio, embeddings, index rows)."""
        return await self._call("DELETE", f"/v1/speakers/{speaker}", {"consent": consent})

    async def delete_sample(self, speaker: str, sample_id: int, consent: str | None = None) -> dict:
        return await self._call("DELETE", f"/v1/speakers/{speaker}/samples/{int(sample_id)}", {"consent": consent})

    async def enroll_from_stream(self, stream_id: str, speaker: str, *, channel: int | str | None = None,
                                 consent: str | None = None) -> dict:
        """Enroll ``speaker`` from the voiced audio of a stream (live, or ended within the
        daemon's ``--enroll-window``); :class:`ApiError` 422 names the ``gate`` that failed."""
        return await self._call("POST", f"/v1/streams/{stream_id}/enroll",
                                {"speaker": speaker, "channel": channel, "consent": consent}, b"")

    async def audit(self, after: int = 0, limit: int = 100, speaker: str | None = None) -> dict:
        """A page of the audit trail (needs an ``admin`` token)."""
        return await self._call("GET", "/v1/audit", {"after": after, "limit": limit, "speaker": speaker})

    async def stream(self, source: AudioSource, *, claimed_speaker: str | None = None,
                     options: StreamOptions | Mapping | None = None, stream_id: str | None = None,
                     stop: asyncio.Event | None = None, channel_mode: str = "mix",
                     claimed_speakers: Mapping[int, str] | None = None) -> AsyncIterator[Event]:
        """Stream ``source`` and yield the server's events, ending with the ``summary``.

        ``channel_mode="separate"`` makes each channel of a stereo source its own speaker
        track (events then carry ``channel``), with optional ``claimed_speakers``
        (channel -> speaker).

        Setting ``stop`` ends the stream early (the client sends ``stop`` and still gets
        the summary) — how ``voxguard mic`` handles Ctrl-C."""
        base = stream_id or f"vg-{uuid.uuid4().hex[:12]}"
        if len(base) > MAX_STREAM_ID - 6:
            raise ValueError(f"stream_id must be at most {MAX_STREAM_ID - 6} characters")
        mode = (channel_mode, claimed_speakers)
        make_start(source, base, claimed_speaker, options, self.encoding, *mode)  # fail early on bad settings
        queue: asyncio.Queue = asyncio.Queue(self.buffer_blocks)
        feeder = asyncio.create_task(self._feed(source, queue))
        opened = 0  # streams opened so far
        failures = 0  # consecutive failures
        last_error: ClientError | None = None
        try:
            while True:
                sid = base if opened == 0 else f"{base}~{opened}"
                start = make_start(source, sid, claimed_speaker, options, self.encoding, *mode)
                try:
                    conn = await StreamConnection.open(self.url, start, self.token, self.ssl, self.open_timeout)
                except ClientError as e:
                    failures += 1
                    if not (self.reconnect and e.retryable) or failures >= self.max_attempts:
                        raise
                    last_error = e
                    await self._wait(failures, e)
                    continue
                if opened:
                    why = last_error.message if last_error else ""
                    yield Reconnected(sid, 0, 0.0, {"type": "reconnected", "stream_id": sid, "attempt": failures,
                                                   "reason": why}, attempt=failures, reason=why)
                opened += 1
                failures = 0
                yield conn.ready
                try:
                    async with aclosing(conn.events(queue, stop)) as events:
                        async for event in events:
                            yield event
                    return
                except ClientError as e:
                    # no resume after our own 'stop': the source is spent, or the user asked to stop
                    if not (self.reconnect and e.retryable) or conn.stop_sent:
                        raise
                    failures += 1
                    if failures >= self.max_attempts:
                        raise
                    last_error = e
                    await self._wait(failures, e)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _wait(self, failures: int, e: ClientError) -> None:
        delay = backoff_delay(failures, self.backoff, self.max_backoff)
        log.warning("%s; reconnecting in %.1f s (attempt %d of %d)", e.message, delay, failures + 1,
                    self.max_attempts)
        await self.sleep(delay)

    @staticmethod
    async def _feed(source: AudioSource, queue: asyncio.Queue) -> None:
        try:
            async for block in source:
                await queue.put(block)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the stream, which raises it
            await queue.put(_Eos(e))
            return
        await queue.put(_Eos())

    async def run(self, source: AudioSource, on_event: Callable[[Event], object] | None = None,
                  **kwargs) -> Summary:
        """Stream ``source`` to the end; returns the summary (``on_event`` sees every event)."""
        summary = None
        async for event in self.stream(source, **kwargs):
            if on_event is not None:
                on_event(event)
            if isinstance(event, Summary):
                summary = event
        assert summary is not None
        return summary
