"""``voxguard serve``: a thin asyncio shell around the call engine (:class:`CallSession`,
one :class:`Session` per speaker track) and the shared :class:`Batcher`, on one port that
speaks WebSocket (``/v1/stream``, ``/v1/twilio``, ``/v1/monitor``) and plain HTTP
(``/metrics``, ``/healthz``, ``/readyz``, ``/``, ``/monitor``, ``GET /v1/calls``,
``POST /admin/reload``).

Every event a stream emits goes to its own connection (Twilio connections get only
``error`` events unless ``?events=1``), to the monitor feed and to the alert rules.

Built on the ``websockets`` asyncio server: its ``process_request`` hook sees every
request before the WebSocket handshake (websockets >= 17 hands it non-GET requests
too), so the HTTP endpoints answer there and only authorised ``/v1/stream``
upgrades go on to the handshake.  The server never computes a score; the session
never touches a socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections import deque
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import faiss
import numpy as np
import sdnotify
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxguard.errors import StoreMissing
from voxguard.protocol import (ERRORS, MONITOR_PATH, STREAM_PATH, TWILIO_PATH, ProtocolError, parse_monitor_query,
                               parse_subscribe, wire_json)

from .alerts import AlertRules, WebhookSender
from .auth import Endpoint, Token, find, route, takes_body
from .batcher import Batcher
from .call import CallSession
from .countermeasure_checks import ContextResult, CountermeasureInfo
from .countermeasure_worker import CountermeasureWorker
from .config import ConfigError, ServeConfig
from .follow import StoreFollower
from .http_input import _json, _response, connection_class, origin_refusal
from .metrics import DaemonMetrics
from .monitor import CallState, MonitorHub
from .openapi import OPENAPI_PATH, openapi_document
from .session import EngineInfo, Output, WindowResult
from .speakers import SpeakersApi
from .twilio import TwilioAdapter
from .snapshot import ScoringSnapshot, load_snapshot

log = logging.getLogger(__name__)

STATIC_INDEX = Path(__file__).parent / "static" / "index.html"
STATIC_MONITOR = Path(__file__).parent / "static" / "monitor.html"
STATIC_SPEAKERS = Path(__file__).parent / "static" / "speakers.html"
CALLS_PATH = "/v1/calls"
SEND_BUFFER = 128 * 1024  # kernel send buffer per stream (events are small: ~100 KB/s at most)
MAX_OUTBOX = 1000  # events waiting to be written to one client before it counts as a slow consumer
MAX_PENDING_CHECKS = 8  # a lossless track's countermeasure checks outstanding before the server stops reading
DRAIN_TIMEOUT = 60.0  # seconds to wait for a stream's in-flight windows at stop / shutdown
SHUTDOWN_TIMEOUT = 90.0
GIL_SWITCH_S = 0.001
RESULTS_PER_TURN = 8  # window results handled per event-loop turn
RETRY_AFTER = "5"  # seconds, on the 503s answered while shutting down


class Notifier:
    """systemd ``sd_notify`` messages (only when ``$NOTIFY_SOCKET`` is set)."""

    def __init__(self):
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None
        if self._n is not None and self._n.socket is not None:
            # never let a notify socket nobody reads block the event loop (a full queue drops the message)
            self._n.socket.setblocking(False)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID")
        ok_pid = pid is None or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and ok_pid else None

    def notify(self, state: str) -> None:
        if self._n is not None:
            self._n.notify(state)

    def reloading(self) -> None:
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def _shutting_down() -> Response:
    return _json(503, {"error": "shutting down"}, {"Retry-After": RETRY_AFTER})


class Stream:
    """One WebSocket connection: reads client messages into its session, writes events."""

    def __init__(self, daemon: "Daemon", ws: ServerConnection, source: str = "stream", echo: bool = True,
                 token_check=None):
        self.daemon = daemon
        self.ws = ws
        self.session = CallSession(daemon.engine_info(), daemon.config.limits)
        # what reads the connection's messages: the call itself, or a wire-format adapter
        self.adapter = TwilioAdapter(self.session, token_check) if source == "twilio" else self.session
        self.state = CallState(source)
        self.echo = echo  # send every event back on this connection (else only errors)
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.progress = asyncio.Event()  # set whenever a result comes back (drain / backpressure waits)
        self.receiver: asyncio.Task | None = None
        self.shutting_down = False
        self.dead = False
        self._audio_s = 0.0
        self._voiced_s = 0.0

    # -- output -----------------------------------------------------------------------------
    def emit(self, event: dict, received_at: float | None = None) -> None:
        if self.dead:
            return
        try:
            self.state.apply(event)
            self.daemon.publish(event)
        except Exception:  # the monitor feed and the alerts must never break a stream
            log.exception("stream %s: monitor/alert bookkeeping failed on a %s event", self.session.stream_id,
                          event.get("type"))
        if not self.echo and event["type"] != "error":
            self.daemon.metrics.events.labels(event["type"]).inc()
            return
        if self.outbox.qsize() >= MAX_OUTBOX:
            self.slow_consumer()
            return
        self.outbox.put_nowait((event, received_at))

    def apply(self, out: Output) -> None:
        for ev in out.events:
            self.emit(ev)
        if out.withdrawn:
            self.daemon.batcher.withdraw(out.withdrawn)
            self.daemon.metrics.windows_dropped.inc(out.dropped)
        if out.requests:
            for r in out.requests:
                self.daemon.owners[r.key] = self
            self.daemon.batcher.submit(out.requests)
        if out.checks and self.daemon.cm_worker is not None:
            for c in out.checks:
                self.daemon.owners[c.key] = self
            self.daemon.cm_worker.submit(out.checks)
        m = self.daemon.metrics
        t, v = self.session.audio_seconds, self.session.speech_seconds
        m.audio_seconds.inc(max(0.0, t - self._audio_s))
        m.voiced_seconds.inc(max(0.0, v - self._voiced_s))
        self._audio_s, self._voiced_s = t, v

    def on_result(self, result: WindowResult | ContextResult) -> None:
        self.progress.set()
        if self.dead:
            return
        if isinstance(result, ContextResult):
            for ev in self.session.complete_check(result):
                self.daemon.metrics.clone_suspicions.labels(ev["level"]).inc()
                self.emit(ev)
            return
        received_at = self.session.received_at(result)
        try:
            events = self.session.complete(result)
        except RuntimeError as e:
            log.error("stream %s: %s", self.session.stream_id, e)
            self.fail(ProtocolError("internal_error", "the embedder failed on this stream's audio"))
            return
        if result.clone is not None and events:
            self.daemon.metrics.clone_suspicions.labels(result.clone.level).inc()
        for ev in events:
            self.emit(ev, received_at if ev["type"] == "identity" else None)

    async def until_room(self, max_windows: int, max_checks: int) -> None:
        """Wait until no track of this stream has ``max_windows`` windows or ``max_checks`` checks outstanding."""
        while self.session.full(max_windows, max_checks) and not self.dead:
            self.progress.clear()
            await self.progress.wait()

    async def until_backlog(self, limit: int, timeout: float | None = None) -> bool:
        """Wait until at most ``limit`` of this stream's windows are outstanding."""
        async with asyncio.timeout(timeout):
            while self.session.backlog > limit and not self.dead:
                self.progress.clear()
                await self.progress.wait()
        return self.session.backlog <= limit

    def fail(self, err: ProtocolError) -> None:
        """Send ``error`` and close with its code (the receiver stops)."""
        if self.dead:
            return
        self.daemon.metrics.errors.labels(err.code).inc()
        self.emit(self.session.error_event(err))
        self.outbox.put_nowait(("close", err.close_code, err.code))
        self.dead = True
        self._cancel_jobs()
        if self.receiver is not None and self.receiver is not asyncio.current_task():
            self.receiver.cancel()

    def slow_consumer(self) -> None:
        """The client does not read: abort the TCP connection (a close frame could not get through)."""
        if self.ws.transport.is_closing():
            return
        log.warning("stream %s: client does not read its events; dropping it", self.session.stream_id or "-")
        self.daemon.metrics.errors.labels("slow_consumer").inc()
        self.dead = True
        self._cancel_jobs()
        self.ws.transport.abort()
        if self.receiver is not None and self.receiver is not asyncio.current_task():
            self.receiver.cancel()

    def _cancel_jobs(self) -> None:
        if self.daemon.cm_worker is not None:
            self.daemon.cm_worker.withdraw(self.session.keys)
        self.daemon.batcher.withdraw(self.session.abandon())
        self.progress.set()

    async def _send_loop(self) -> None:
        m = self.daemon.metrics
        timeout = self.daemon.config.write_timeout
        while True:
            item = await self.outbox.get()
            if item[0] == "close":
                _, code, reason = item
                try:
                    await self.ws.close(code, reason)
                except ConnectionClosed:
                    pass
                return
            event, received_at = item
            try:
                async with asyncio.timeout(timeout):
                    await self.ws.send(wire_json(event))
            except TimeoutError:
                self.slow_consumer()
                return
            except ConnectionClosed:
                return
            m.events.labels(event["type"]).inc()
            if received_at is not None:
                m.event_latency.observe(time.monotonic() - received_at)

    # -- input ------------------------------------------------------------------------------
    async def _receive_loop(self) -> str:
        idle = self.daemon.config.idle_timeout
        while True:
            try:
                async with asyncio.timeout(idle):
                    msg = await self.ws.recv()
            except TimeoutError:
                raise ProtocolError("idle_timeout", f"nothing received for {idle:g} s") from None
            now = time.monotonic()
            if isinstance(msg, str):
                parts = [self.adapter.receive_text(msg, now)]
            elif self.adapter is self.session:
                # a large frame is processed in slices, yielding between them: no single client
                # message blocks the event loop (other streams, HTTP) for long
                parts = self.session.iter_audio(msg, now)
            else:
                parts = [self.adapter.receive_audio(msg, now)]
            for out in parts:
                self.apply(out)
                if out.stop:
                    return "stop"
                if not self.session.realtime:
                    # lossless mode: stop reading (TCP backpressure) while the stream's windows (or, past
                    # their own bound, its countermeasure checks) wait
                    await self.until_room(self.daemon.config.limits.max_pending, MAX_PENDING_CHECKS)
                # recv() does not yield while messages are buffered: let other streams and HTTP run
                await asyncio.sleep(0)

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        self.receiver = asyncio.create_task(self._receive_loop())
        outcome = "closed"
        try:
            await asyncio.wait({self.receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if self.receiver.done() and not self.receiver.cancelled():
                exc = self.receiver.exception()
                if exc is None:
                    outcome = "stop"
                elif isinstance(exc, ProtocolError):
                    outcome = "error"
                    self.fail(exc)
                elif isinstance(exc, ConnectionClosed):
                    outcome = "disconnected"
                else:
                    log.error("stream %s failed", self.session.stream_id, exc_info=exc)
                    outcome = "error"
                    self.fail(ProtocolError("internal_error", "unexpected server error"))
            elif self.shutting_down and not self.dead:
                outcome = "shutdown"
                if self.session.start is not None:
                    self.apply(self.session.finish(time.monotonic()))
            elif self.dead:
                outcome = "error"
            if outcome in ("stop", "shutdown"):
                try:
                    await self.until_backlog(0, DRAIN_TIMEOUT)
                except TimeoutError:
                    log.error("stream %s: windows still in flight after %g s", self.session.stream_id, DRAIN_TIMEOUT)
                if self.session.start is not None:
                    self.emit(self.session.summary("stop" if outcome == "stop" else "shutdown"))
                self.outbox.put_nowait(("close", 1000 if outcome == "stop" else 1001,
                                        "stream stopped" if outcome == "stop" else "server shutting down"))
            elif outcome == "disconnected":
                self._cancel_jobs()
                self.outbox.put_nowait(("close", 1000, ""))
            if not sender.done():
                await asyncio.wait_for(sender, self.daemon.config.write_timeout + 15)
        except (TimeoutError, ConnectionClosed):
            self.ws.transport.abort()
        finally:
            self._cancel_jobs()
            if not self.receiver.done():
                self.receiver.cancel()
            if not sender.done():
                sender.cancel()
            self.daemon.metrics.streams.labels(outcome).inc()

    def request_shutdown(self) -> None:
        self.shutting_down = True
        if self.receiver is not None and not self.receiver.done():
            self.receiver.cancel()


class Daemon:
    def __init__(self, config: ServeConfig, embedder, metrics: DaemonMetrics | None = None):
        self.config = config
        self.embedder = embedder
        self.metrics = metrics or DaemonMetrics()
        self.notifier = Notifier()
        self.streams: dict[CallSession, Stream] = {}
        self.owners: dict[int, Stream] = {}  # each track's session key -> its stream (for worker results)
        self._snapshot: ScoringSnapshot | None = None  # what new streams are scored against
        self._results: deque[WindowResult] = deque()  # worker results not yet handed to their streams
        self._draining = False
        self.hub = MonitorHub(config.monitor_queue, self.metrics)
        self.rules = AlertRules(config.webhook_level) if config.webhooks else None
        self.webhooks: WebhookSender | None = None
        self.batcher: Batcher | None = None
        self.countermeasure = None  # InstalledCountermeasure, when one checks the streams
        self.countermeasure_reason: str | None = None
        self.cm_worker: CountermeasureWorker | None = None
        self._cm_info: CountermeasureInfo | None = None
        self.ready = False
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._server = None
        self.speakers = SpeakersApi(self)
        # ended streams whose audio can still be enrolled: stream id -> (expiry, call), oldest first
        self.ended: dict[str, tuple[float, CallSession]] = {}
        self.follower = StoreFollower(config.store, config.follow_interval, self.reload,
                                      lambda: (self.snapshot.store_id, self.snapshot.revision), self.metrics)

    # -- state -----------------------------------------------------------------------------
    @property
    def snapshot(self) -> ScoringSnapshot:
        return self._snapshot

    def engine_info(self) -> EngineInfo:
        snap = self.snapshot
        ident = self.embedder.identity
        return EngineInfo(embedder={**ident.as_dict(), "device": str(self.embedder.device),
                                    "runtime": self.embedder.runtime}, snapshot=snap,
                          countermeasure=self._cm_info, countermeasure_reason=self.countermeasure_reason)

    def _load_countermeasure(self) -> None:
        """``--countermeasure``: the installed model and its shipped calibration, or why there is none
        (``auto`` without an installed model serves without one; a named one that fails is an error)."""
        from voxguard.clone_detection import SessionRule
        from voxguard.countermeasures.load import installed_countermeasure

        self._cm_info = None
        choice = self.config.countermeasure
        if choice == "none":
            self.countermeasure_reason = "disabled (--countermeasure none)"
            return
        on_cuda = str(self.embedder.device).startswith("cuda")
        cm, why = installed_countermeasure(None if choice == "auto" else choice, device="auto",
                                           threads=None if on_cuda else 1)
        if cm is None:
            if choice != "auto":
                raise ConfigError(f"--countermeasure {choice}: {why}")
            self.countermeasure_reason = why
            log.warning("clone countermeasure: %s", why)
            return
        cal = cm.calibration
        rule = SessionRule.from_dict(cal.info["session"]) if "session" in cal.info else SessionRule.for_targets(
            1.0, 0.0, cm.model.context_samples / 16000)
        self.countermeasure = cm
        self._cm_info = CountermeasureInfo(cal.name, cm.model.context_samples, cm.model.min_samples, cal.edges,
                                           rule, str(cm.model.device), getattr(cm.model, "runtime", "torch"))
        cm.model.outputs([np.zeros(cm.model.min_samples, dtype=np.float32)])  # warm up before serving
        log.info("clone countermeasure: %s on %s (%s)", cal.name, cm.model.device, self._cm_info.runtime)

    def _embed_workers(self) -> list:
        """The embedder replicas the worker runs at once (``--embed-workers``; auto: one per
        core, at most 2, where the embedder can split its threads — ONNX Runtime on CPU)."""
        n = self.config.embed_workers or min(2, os.cpu_count() or 1)
        replicas = getattr(self.embedder, "replicas", None)
        workers = replicas(n) if replicas is not None else [self.embedder]
        for w in workers:  # each one's first forward pass is slow (lazy initialisation): not on a stream
            w.embed([np.zeros(24000, dtype=np.float32)])
        if all(w.runtime.startswith("onnx") for w in workers):
            # PyTorch then runs only the clone countermeasure's small CNN, once per batch in the score
            # thread: one thread, so that its OpenMP pool neither spins on nor competes for the cores
            # the embed workers and the event loop use
            import torch

            torch.set_num_threads(1)
        log.info("%d embed worker(s)", len(workers))
        return workers

    def _load(self) -> ScoringSnapshot:
        return load_snapshot(self.config.store, self.embedder.identity)

    async def reload(self) -> dict:
        """Re-read store and index and swap them in; streams keep running."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                snap = await asyncio.to_thread(self._load)
                if snap.store_id is None and self.snapshot.store_id is not None:
                    # load_snapshot serves a store that was never there as empty; one that vanished is an error
                    raise StoreMissing(f"store {self.config.store} is missing (it was at revision "
                                       f"{self.snapshot.revision}); keeping the loaded index")
            except Exception as e:
                self.metrics.reloads.labels("failed").inc()
                log.error("reload failed, keeping the current index: %s", getattr(e, "message", e))
                raise
            finally:
                self.notifier.notify("READY=1")
            self._snapshot = snap
            for stream in list(self.streams.values()):  # claims on removed speakers are revoked
                for ev in stream.session.store_changed(snap):
                    stream.emit(ev)
            self.metrics.set_index(snap.info())
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: %s", snap.info())
            return snap.info()

    def _deliver(self, results: list[WindowResult]) -> None:  # worker thread
        self._loop.call_soon_threadsafe(self._on_results, results)

    def _taken(self, windows: list[tuple[int, int]]) -> None:  # worker thread
        self._loop.call_soon_threadsafe(self._on_taken, windows)

    def _on_taken(self, windows: list[tuple[int, int]]) -> None:
        for key, index in windows:
            stream = self.owners.get(key)
            if stream is not None:
                stream.session.taken(key, index)

    def _on_results(self, results: list[WindowResult]) -> None:
        self._results.extend(results)
        if not self._draining:
            self._draining = True
            self._drain_results()

    def _drain_results(self) -> None:
        """Hand results to their streams, :data:`RESULTS_PER_TURN` per event-loop turn (in
        arrival order), so a batch of 64 never holds the loop for all its events at once."""
        for _ in range(min(RESULTS_PER_TURN, len(self._results))):
            r = self._results.popleft()
            stream = self.owners.get(r.key)
            if stream is None:
                continue
            try:
                stream.on_result(r)
            except Exception:  # one stream's failure must not stop delivery to the others
                log.exception("stream %s: handling a window result failed", stream.session.stream_id)
                stream.fail(ProtocolError("internal_error", "unexpected server error"))
        if self._results:
            self._loop.call_soon(self._drain_results)
        else:
            self._draining = False

    def publish(self, event: dict) -> None:
        """Every event of every stream: to the monitor feed and the alert rules."""
        self.hub.publish(event)
        if self.rules is not None:
            for alert in self.rules.alerts(event):
                self.metrics.alerts.labels(alert["alert"]).inc()
                self.webhooks.submit(alert)

    # -- HTTP ----------------------------------------------------------------------------------
    @staticmethod
    def _given_token(request: Request, query: dict) -> str | None:
        """The bearer token of a request (``Authorization: Bearer``, else ``?token=``), or None."""
        auth = request.headers.get("Authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            return value.strip() if scheme.lower() == "bearer" else ""
        if query.get("token"):
            return query["token"][0]
        return None

    def _token_ok(self, request: Request, query: dict) -> bool | None:
        """None: no token given; else whether it is a known token."""
        given = self._given_token(request, query)
        return None if given is None else find(self.config.tokens, given) is not None

    def _valid_token(self, given: str) -> bool:
        """A token given late (a Twilio start message's parameter): known and holding ``stream``."""
        tok = find(self.config.tokens, given)
        return tok is not None and tok.grants("stream")

    def _refuse(self, ep: Endpoint, status: int, reason: str, body: dict, extra: dict | None = None) -> Response:
        self.metrics.http_refusals.labels(ep.name, reason).inc()
        return _json(status, {**body, "reason": reason, "endpoint": ep.name}, extra)

    def _gate(self, request: Request, query: dict, ep: Endpoint) -> tuple[Response | None, Token | None]:
        """The one place scopes are checked: (refusal, None) or (None, the token; None without auth)."""
        if ep.scope is None or not self.config.auth_required:
            return None, None
        given = self._given_token(request, query)
        if given is None:
            return self._refuse(ep, 401, "missing_token", {"error": "missing bearer token"},
                                {"WWW-Authenticate": 'Bearer realm="voxguard"'}), None
        tok = find(self.config.tokens, given)
        if tok is None:
            return self._refuse(ep, 403, "invalid_token", {"error": "invalid token"}), None
        if not tok.grants(ep.scope):
            return self._refuse(ep, 403, "missing_scope",
                                {"error": f"this token lacks the {ep.scope!r} scope needed for {ep.name}",
                                 "missing_scope": ep.scope}), None
        return None, tok

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        path, method = url.path, request.method
        body = getattr(connection, "request_body", None)
        refused = body is not None and body.refusal()
        if refused:
            return _json(refused[0], {"error": refused[1]}, {"Connection": "close"})
        ep, params = route(path)
        if ep is None:
            if method != "GET":
                return _json(405, {"error": f"{method} not allowed"}, {"Allow": "GET"})
            return _json(404, {"error": f"no such endpoint: {path}"})
        if ep.scope is not None:
            bad_origin = origin_refusal(request.headers, self.config.allow_origins)
            if bad_origin is not None:
                return _json(403, {"error": bad_origin})
        if method not in ep.methods:
            allow = ", ".join(ep.methods) or "none"
            return _json(405, {"error": f"{method} not allowed on {ep.name}: use {allow}"}, {"Allow": allow})
        if path == TWILIO_PATH and self.config.auth_required and self._given_token(request, query) is None:
            # Twilio drops query strings: the token may come in the start message (checked there)
            return None if self.ready else _shutting_down()
        denied, token = self._gate(request, query, ep)
        if denied is not None:
            return denied
        if path in (STREAM_PATH, TWILIO_PATH, MONITOR_PATH):
            return None if self.ready else _shutting_down()  # None: go on with the WebSocket handshake
        if ep.name.startswith(("/v1/speakers", "/v1/streams/")) or ep.name == "/v1/audit":
            return await self.speakers.handle(ep, params, request, query, body.data if body is not None else None,
                                              token)
        if path == OPENAPI_PATH:
            return _json(200, openapi_document(self.config.max_upload_bytes))
        if path == "/admin/reload":
            try:
                return _json(200, {"reloaded": True, "index": await self.reload()})
            except StoreMissing as e:
                return _json(503, {"reloaded": False, "error": e.message, "store": "missing"})
            except Exception as e:
                return _json(500, {"reloaded": False, "error": str(getattr(e, "message", e))})
        if method != "GET":
            return _json(405, {"error": f"{method} not allowed"}, {"Allow": "GET"})
        if path == "/metrics":
            return _response(200, self.metrics.render(), self.metrics.content_type)
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            # degraded (store unreadable) stays 200: streams are served from the loaded index
            body = {"ready": self.ready, "degraded": self.follower.degraded,
                    "revision": self.snapshot.revision if self.batcher else None,
                    "embedder": self.engine_info().embedder if self.batcher else None,
                    "index": self.snapshot.info() if self.batcher else None, "store": self.follower.status(),
                    "active_streams": len(self.streams)}
            if not self.ready:
                body["reason"] = "shutting down" if self._stop.is_set() else "starting"
            return _json(200 if self.ready else 503, body, None if self.ready else {"Retry-After": RETRY_AFTER})
        if path == CALLS_PATH:
            return _json(200, {"calls": [st.state.as_dict() for st in self.streams.values() if st.state.ready]})
        if path == "/monitor":
            return _response(200, STATIC_MONITOR.read_bytes(), "text/html; charset=utf-8")
        if path == "/speakers":
            return _response(200, STATIC_SPEAKERS.read_bytes(), "text/html; charset=utf-8")
        if path in ("/", "/index.html"):
            if STATIC_INDEX.is_file():
                return _response(200, STATIC_INDEX.read_bytes(), "text/html; charset=utf-8")
            return _response(200, f"voxguard daemon: stream at {STREAM_PATH}, see docs/protocol.md\n".encode(),
                             "text/plain; charset=utf-8")
        return _json(404, {"error": f"no such endpoint: {path}"})

    # -- WebSocket --------------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:  # bound what a client that stops reading can leave in the kernel
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        url = urlsplit(ws.request.path)
        query = parse_qs(url.query)
        if url.path == MONITOR_PATH:
            await self.monitor_handler(ws, query)
            return
        if url.path == TWILIO_PATH:
            echo = query.get("events", ["0"])[-1].lower() in ("1", "true", "yes")
            deferred = self.config.auth_required and self._given_token(ws.request, query) is None
            stream = Stream(self, ws, source="twilio", echo=echo, token_check=self._valid_token if deferred else None)
        else:
            stream = Stream(self, ws)
        if len(self.streams) >= self.config.max_streams or not self.ready:
            err = ProtocolError("server_busy", f"the server serves its maximum of {self.config.max_streams} "
                                               f"streams; try again later" if self.ready else "shutting down")
            self.metrics.errors.labels(err.code).inc()
            try:
                await ws.send(wire_json(stream.session.error_event(err)))
                await ws.close(err.close_code, err.code)
            except ConnectionClosed:
                pass
            return
        self.streams[stream.session] = stream
        self.metrics.active_streams.inc()
        try:
            await stream.run()
        finally:
            del self.streams[stream.session]
            self._keep_for_enrollment(stream.session)
            for key in stream.session.keys:
                self.owners.pop(key, None)
            self.metrics.active_streams.dec()

    # -- enrolling from a call ---------------------------------------------------------------------
    def _keep_for_enrollment(self, call: CallSession) -> None:
        """An ended stream's voiced audio stays enrollable for ``--enroll-window`` seconds
        (at most ``--max-streams`` ended streams are kept, oldest dropped first)."""
        lim = self.config.limits
        if call.start is None or lim.enroll_buffer_s <= 0 or lim.enroll_window_s <= 0:
            return
        self._expire_ended()
        self.ended.pop(call.stream_id, None)
        self.ended[call.stream_id] = (time.monotonic() + lim.enroll_window_s, call)
        while len(self.ended) > self.config.max_streams:
            self.ended.pop(next(iter(self.ended)))

    def _expire_ended(self) -> None:
        now = time.monotonic()
        for sid in [sid for sid, (until, _) in self.ended.items() if until <= now]:
            del self.ended[sid]

    def call_for_enrollment(self, stream_id: str) -> CallSession | None:
        """The live stream with this id, else the ended one still in its enrollment window."""
        for call in self.streams:
            if call.stream_id == stream_id and call.start is not None:
                return call
        self._expire_ended()
        kept = self.ended.get(stream_id)
        return kept[1] if kept else None

    async def monitor_handler(self, ws: ServerConnection, query: dict) -> None:
        """``/v1/monitor``: every active stream's events, filtered, through a bounded queue."""
        seq = 0

        async def refuse(err: ProtocolError) -> None:
            self.metrics.errors.labels(err.code).inc()
            ev = {"type": "error", "stream_id": "", "seq": seq, "time": 0.0, "code": err.code,
                  "message": err.message, "close_code": err.close_code}
            try:
                await ws.send(wire_json(ev))
                await ws.close(err.close_code, err.code)
            except ConnectionClosed:
                pass

        try:
            flt = parse_monitor_query(query)
        except ProtocolError as e:
            await refuse(e)
            return
        if len(self.hub.subscribers) >= self.config.max_monitors or not self.ready:
            await refuse(ProtocolError("server_busy", f"the server serves its maximum of {self.config.max_monitors} "
                                                      f"monitors" if self.ready else "shutting down"))
            return
        sub = self.hub.subscribe(flt)

        def replay() -> None:
            for st in list(self.streams.values()):
                for ev in st.state.replay():
                    sub.offer(ev, wire_json(ev))

        async def reader() -> None:
            async for msg in ws:
                if not isinstance(msg, str):
                    raise ProtocolError("invalid_message", "a monitor sends only 'subscribe' text messages")
                sub.filter = parse_subscribe(msg)
                sub.queue.clear()
                replay()

        async def writer() -> None:
            while True:
                text = await sub.get()
                if text is None:
                    await ws.close(1001, "server shutting down")
                    return
                async with asyncio.timeout(self.config.write_timeout):
                    await ws.send(text)

        replay()
        tasks = [asyncio.create_task(reader()), asyncio.create_task(writer())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, ProtocolError):
                    await refuse(exc)
                elif isinstance(exc, TimeoutError):
                    log.warning("monitor does not read its events; dropping it")
                    self.metrics.errors.labels("slow_consumer").inc()
                    ws.transport.abort()
        finally:
            for t in tasks:
                t.cancel()
            self.hub.unsubscribe(sub)

    # -- lifecycle ------------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        self._stop.set()

    async def _watchdog(self) -> None:
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(self.notifier.watchdog_interval)

    def _ssl(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"cannot load TLS certificate/key: {e}") from None
        return ctx

    async def run(self, on_listening=None) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        # the worker threads hold the GIL in their Python parts for up to the switch interval
        # (5 ms by default) at a time: the event loop gets it back sooner, for lower event latency
        sys.setswitchinterval(GIL_SWITCH_S)
        if cfg.faiss_threads > 0:
            # batches are small: OpenMP threads cost more in wake-ups than they save (py-spy: 11 % of
            # the daemon's samples in IndexFlat.search with the default threads on 2 busy cores)
            faiss.omp_set_num_threads(cfg.faiss_threads)
        snap = await asyncio.to_thread(self._load)
        workers = await asyncio.to_thread(self._embed_workers)
        await asyncio.to_thread(self._load_countermeasure)
        self.metrics.set_model(self.embedder.identity, self.embedder.device)
        self.metrics.set_index(snap.info())
        self._snapshot = snap
        self.batcher = Batcher(self.embedder, self._deliver, cfg.max_batch, cfg.max_wait, self.metrics,
                               on_taken=self._taken, workers=workers)
        self.batcher.start()
        if self.countermeasure is not None:
            self.cm_worker = CountermeasureWorker(self.countermeasure, self._deliver, cfg.countermeasure_budget,
                                                  metrics=self.metrics)
            self.cm_worker.start()
        if cfg.webhooks:
            self.webhooks = WebhookSender(list(cfg.webhooks), cfg.webhook_secret, cfg.webhook_timeout,
                                          metrics=self.metrics)
            self.webhooks.start()
        limit = cfg.limits.max_frame_bytes
        for tok in cfg.tokens:
            if tok.all_by_default:
                log.warning("token %s is given without scopes: it holds every scope (stream, monitor, enroll, "
                            "admin); list the scopes it needs after it in the token file", tok.fingerprint)
        try:  # origins: checked in process_request (same origin, or --allow-origin)
            self._server = await serve(
                self.handler, cfg.host, cfg.port, process_request=self.process_request,
                create_connection=connection_class(takes_body, cfg.max_upload_bytes), compression=None,
                max_size=max(2 * limit, 1 << 16), open_timeout=cfg.request_timeout, ssl=self._ssl(),
                server_header="voxguard")
        except OSError as e:
            self.batcher.stop()
            if self.cm_worker is not None:
                self.cm_worker.stop()
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        self.ready = True
        for sig, fn in ((signal.SIGTERM, self.request_shutdown), (signal.SIGINT, self.request_shutdown),
                        (signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_quietly()))):
            self._loop.add_signal_handler(sig, fn)
        self.notifier.notify("READY=1")
        watchdog = asyncio.create_task(self._watchdog()) if self.notifier.watchdog_interval else None
        follow = asyncio.create_task(self.follower.run()) if cfg.follow_interval > 0 else None
        if on_listening:
            on_listening(self)
        await self._stop.wait()
        if follow:
            follow.cancel()
        await self._shutdown()
        if watchdog:
            watchdog.cancel()

    async def _reload_quietly(self) -> None:
        try:
            await self.reload()
        except Exception:
            pass  # logged by reload(); the old index stays in service

    async def _shutdown(self) -> None:
        """Stop accepting, finish in-flight windows, send summaries, close streams with 1001."""
        log.info("shutting down: %d stream(s) open", len(self.streams))
        self.notifier.notify("STOPPING=1")
        self.ready = False  # the listener stays open: handshakes and /readyz get 503 while streams drain
        for stream in list(self.streams.values()):
            stream.request_shutdown()
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while self.streams and time.monotonic() < deadline:  # monitors see the streams' summaries
            await asyncio.sleep(0.05)
        self._server.close(close_connections=False)
        for sub in list(self.hub.subscribers):
            sub.close()
        if self.webhooks is not None:
            await self.webhooks.stop()
        try:
            await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.error("streams still open after %g s; closing them", SHUTDOWN_TIMEOUT)
        await asyncio.to_thread(self.batcher.stop)
        if self.cm_worker is not None:
            await asyncio.to_thread(self.cm_worker.stop)


def listening_line(daemon: Daemon) -> str:
    scheme = "wss" if daemon.config.tls_cert else "ws"
    return f"voxguard serve: listening on {scheme}://{daemon.config.host}:{daemon.port}{STREAM_PATH}"


def run_daemon(config: ServeConfig, embedder) -> int:
    def announce(daemon: Daemon) -> None:
        print(listening_line(daemon), flush=True)
        info = daemon.snapshot.info()
        print(f"voxguard serve: embedder {embedder.identity} on {embedder.device} ({embedder.runtime}); "
              f"{info['enrolled_speakers']} enrolled speaker(s) from {config.store}", file=sys.stderr, flush=True)

    asyncio.run(Daemon(config, embedder).run(announce))
    return 0


__all__ = ["Daemon", "Stream", "run_daemon", "listening_line", "ERRORS"]
