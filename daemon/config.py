"""``voxguard serve`` settings: command-line flags, ``VOXGUARD_*`` environment
overrides for the deployment-specific ones, and the checks that refuse an unsafe or
inconsistent configuration before anything is loaded."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from voxguard.errors import VoxguardError
from voxguard.store import StoreLocation, parse_store_location

from .auth import Token, TokenError, merge, parse_env_tokens, parse_token_line
from .session import SessionLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKENS_ENV = "VOXGUARD_TOKENS"


class ConfigError(VoxguardError):
    """The daemon's configuration is unsafe or inconsistent."""


@dataclass(frozen=True)
class ServeConfig:
    store: StoreLocation
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tokens: tuple[Token, ...] = ()  # (a plain string: a token with every scope)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_origins: tuple[str, ...] = ()
    max_streams: int = 64
    idle_timeout: float = 30.0
    write_timeout: float = 10.0
    max_batch: int = 64
    embed_workers: int = 0  # embedder replicas run at once; 0 = auto (see --embed-workers)
    max_wait: float = 0.005
    faiss_threads: int = 1
    max_monitors: int = 32
    monitor_queue: int = 1000
    webhooks: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_level: str = "medium"
    webhook_timeout: float = 5.0
    follow_interval: float = 0.5  # seconds between store revision checks (SQLite poll; PostgreSQL listen timeout)
    countermeasure: str = "auto"  # auto: the default model when installed; none; or a model name
    countermeasure_budget: float = 0.5  # share of one CPU core the countermeasure may use
    limits: SessionLimits = field(default_factory=SessionLimits)
    max_upload_bytes: int = 10 << 20  # largest audio body of POST /v1/speakers/{speaker}/samples
    enroll_consistency: float = 0.85  # enrolling from a call: cosine between the two halves of its windows
    request_timeout: float = 60.0  # a request's headers, body and answer (or a WebSocket handshake)

    def __post_init__(self) -> None:  # a path or URL given directly becomes a StoreLocation
        object.__setattr__(self, "store", parse_store_location(self.store))
        object.__setattr__(self, "tokens", merge([t if isinstance(t, Token) else Token(t, all_by_default=True)
                                                  for t in self.tokens]))

    @property
    def auth_required(self) -> bool:
        return bool(self.tokens)

    def check(self) -> None:
        if not self.tokens and not is_loopback(self.host):
            raise ConfigError(f"refusing to listen on {self.host} without authentication: pass --token-file "
                              f"FILE or set ${TOKENS_ENV} (tokens are optional only on loopback addresses)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        for p in (self.tls_cert, self.tls_key):
            if p is not None and not p.is_file():
                raise ConfigError(f"TLS file not found: {p}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        if self.embed_workers < 0:
            raise ConfigError("--embed-workers must be 0 (auto) or more")
        if self.max_streams < 1 or self.max_batch < 1 or self.limits.max_pending < 1:
            raise ConfigError("--max-streams, --max-batch and --max-pending-windows must be at least 1")
        for url in self.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--webhook must be an http:// or https:// URL, got {url!r}")
        if self.max_monitors < 1 or self.monitor_queue < 1:
            raise ConfigError("--max-monitors and --monitor-queue must be at least 1")
        if not 0.0 < self.countermeasure_budget <= 1.0:
            raise ConfigError("--countermeasure-budget must be in (0, 1] (a share of one CPU core)")
        if self.max_upload_bytes < 1024:
            raise ConfigError("--max-upload-bytes must be at least 1024")
        lim = self.limits
        if lim.enroll_buffer_s < 0 or lim.enroll_window_s < 0 or lim.enroll_min_speech_s < 0:
            raise ConfigError("--enroll-buffer, --enroll-window and --enroll-min-speech must be 0 or more")
        if lim.enroll_buffer_s and lim.enroll_min_speech_s > lim.enroll_buffer_s:
            raise ConfigError("--enroll-min-speech cannot exceed --enroll-buffer")
        if not -1.0 <= self.enroll_consistency <= 1.0:
            raise ConfigError("--enroll-consistency is a cosine, between -1 and 1")
        if self.request_timeout <= 0:
            raise ConfigError("--request-timeout must be positive")
        if self.webhook_timeout <= 0:
            raise ConfigError("--webhook-timeout must be positive")
        if self.follow_interval < 0:
            raise ConfigError("--follow-interval must be 0 (off) or positive")
        for name in ("idle_timeout", "write_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_tokens(token_file: str | None, env: dict | None = None) -> tuple[Token, ...]:
    """Tokens from ``token_file`` (``TOKEN [SCOPE,...]`` per line, ``#`` comments) plus
    ``$VOXGUARD_TOKENS`` (``TOKEN[:SCOPE+SCOPE],...``); see :mod:`voxguard.daemon.auth`."""
    env = os.environ if env is None else env
    tokens: list[Token] = []
    try:
        if token_file:
            p = Path(token_file).expanduser()
            try:
                text = p.read_text()
            except OSError as e:
                raise ConfigError(f"cannot read token file {p}: {e.strerror or e}") from None
            for n, line in enumerate(text.splitlines(), 1):
                t = parse_token_line(line, f"token file {p}, line {n}")
                if t is not None:
                    tokens.append(t)
            if not tokens:
                raise ConfigError(f"token file {p} holds no token")
        tokens += parse_env_tokens(env.get(TOKENS_ENV, ""))
    except TokenError as e:
        raise ConfigError(str(e)) from None
    return merge(tokens)


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    net = p.add_argument_group("network and security")
    net.add_argument("--host", default=env("VOXGUARD_HOST", DEFAULT_HOST),
                     help="address to bind (default 127.0.0.1, or $VOXGUARD_HOST); anything but loopback "
                          "requires tokens")
    net.add_argument("--port", type=int, default=int(env("VOXGUARD_PORT", DEFAULT_PORT)),
                     help="TCP port (default 8765, or $VOXGUARD_PORT; 0 picks a free one)")
    net.add_argument("--token-file", metavar="FILE", default=env("VOXGUARD_TOKEN_FILE"),
                     help="bearer tokens, one per line: TOKEN [SCOPE,...] with scopes stream, monitor, enroll, "
                          "admin (a token alone: every scope); also $VOXGUARD_TOKENS, comma-separated "
                          "TOKEN[:SCOPE+SCOPE]")
    net.add_argument("--tls-cert", metavar="PEM", default=env("VOXGUARD_TLS_CERT"), help="serve wss:// and https://")
    net.add_argument("--tls-key", metavar="PEM", default=env("VOXGUARD_TLS_KEY"), help="private key for --tls-cert")
    net.add_argument("--allow-origin", metavar="ORIGIN", action="append", default=None,
                     help="browser Origin allowed besides the daemon's own (repeatable; '*' = any; default: "
                          "same origin only; clients that send no Origin are always allowed)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-streams", type=int, default=64, help="concurrent streams (default 64)")
    lim.add_argument("--max-frame-bytes", type=int, default=1 << 20, help="largest binary message (default 1 MiB)")
    lim.add_argument("--max-duration", type=float, default=4 * 3600.0,
                     help="longest stream, seconds of audio (default 14400)")
    lim.add_argument("--idle-timeout", type=float, default=30.0,
                     help="close a stream that sends nothing for this long (default 30 s)")
    lim.add_argument("--write-timeout", type=float, default=10.0,
                     help="drop a client that does not read its events for this long (default 10 s)")
    lim.add_argument("--max-upload-bytes", type=int, default=10 << 20,
                     help="largest audio file POSTed to /v1/speakers/{speaker}/samples (default 10 MiB; "
                          "bigger bodies get 413 before anything is decoded)")
    lim.add_argument("--request-timeout", type=float, default=60.0,
                     help="time for an HTTP request (headers, body, answer) or a WebSocket handshake "
                          "(default 60 s)")
    lim.add_argument("--max-pending-windows", type=int, default=16,
                     help="windows of one stream waiting for the embedder before the oldest are dropped "
                          "(default 16)")
    enr = p.add_argument_group("enrolling from a call (POST /v1/streams/{stream_id}/enroll)")
    enr.add_argument("--enroll-buffer", type=float, default=60.0, metavar="SECONDS",
                     help="newest voiced audio kept per speaker track for enrollment (default 60; 0: keep none)")
    enr.add_argument("--enroll-window", type=float, default=120.0, metavar="SECONDS",
                     help="how long after a stream ends its audio can still be enrolled (default 120)")
    enr.add_argument("--enroll-min-speech", type=float, default=8.0, metavar="SECONDS",
                     help="net speech needed to enroll from a call (default 8)")
    enr.add_argument("--enroll-consistency", type=float, default=0.85, metavar="COSINE",
                     help="one voice: split the call's window embeddings in two (2-means); the cosine between "
                          "the halves' centroids must reach this (default 0.85; resemblyzer on AN4: one voice "
                          "0.86-0.94, two alternating voices 0.66-0.87)")
    mon = p.add_argument_group("monitoring and alerts")
    mon.add_argument("--max-monitors", type=int, default=32, help="concurrent /v1/monitor subscribers (default 32)")
    mon.add_argument("--monitor-queue", type=int, default=1000,
                     help="events queued per monitor before the oldest are dropped (default 1000)")
    mon.add_argument("--webhook", metavar="URL", action="append", default=None,
                     help="POST alerts (clone suspicion, rejected claim, unknown speaker on a claimed stream) "
                          "as JSON to URL (repeatable)")
    mon.add_argument("--webhook-secret", metavar="SECRET", default=env("VOXGUARD_WEBHOOK_SECRET"),
                     help="sign webhook bodies with HMAC-SHA256 (header X-Voxguard-Signature; also "
                          "$VOXGUARD_WEBHOOK_SECRET, which keeps it out of the process list)")
    mon.add_argument("--webhook-level", choices=("low", "medium", "high"), default="medium",
                     help="clone-suspicion level that raises an alert (default medium)")
    mon.add_argument("--webhook-timeout", type=float, default=5.0, help="seconds per webhook POST (default 5)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--max-batch", type=int, default=64, help="largest embedder batch (default 64)")
    eng.add_argument("--embed-workers", type=int, default=0, metavar="N",
                     help="embedder replicas embedding batches at the same time, splitting the model's "
                          "threads (ONNX Runtime on CPU only; 0 = auto: one per core up to 2 there, else 1)")
    eng.add_argument("--max-wait-ms", type=float, default=5.0,
                     help="how long a window waits for others to join its batch (default 5 ms)")
    eng.add_argument("--faiss-threads", type=int, default=1,
                     help="OpenMP threads for index searches (default 1; 0 keeps FAISS's default)")
    eng.add_argument("--follow-interval", type=float, default=0.5, metavar="SECONDS",
                     help="how often the store's revision is checked (SQLite poll; PostgreSQL LISTEN timeout) "
                          "to reload by itself (default 0.5; 0: reload only on SIGHUP or /admin/reload)")
    eng.add_argument("--countermeasure", metavar="NAME", default=env("VOXGUARD_COUNTERMEASURE", "auto"),
                     help="pretrained clone countermeasure checking every track's voiced audio: a model of "
                          "`voxguard models list`, 'none', or 'auto' (default: the default model when it is "
                          "installed, else none, said in every ready event)")
    eng.add_argument("--countermeasure-budget", type=float, default=0.5, metavar="CORES",
                     help="share of one CPU core the countermeasure may use (default 0.5; on CUDA it is not "
                          "limited): under load it checks fewer spans, never delays identity windows")
    eng.add_argument("--enter-windows", type=int, default=2,
                     help="consistent windows before a speaker becomes current (default 2)")
    eng.add_argument("--exit-windows", type=int, default=3,
                     help="contradicting windows before the current speaker is dropped (default 3)")


def from_args(args: argparse.Namespace, store: StoreLocation) -> ServeConfig:
    limits = SessionLimits(max_frame_bytes=args.max_frame_bytes, max_duration=args.max_duration,
                           max_pending=args.max_pending_windows, enter_windows=args.enter_windows,
                           exit_windows=args.exit_windows, enroll_buffer_s=args.enroll_buffer,
                           enroll_window_s=args.enroll_window, enroll_min_speech_s=args.enroll_min_speech)
    if limits.enter_windows < 1 or limits.exit_windows < 1:
        raise ConfigError("--enter-windows and --exit-windows must be at least 1")
    if args.max_frame_bytes < 1024:
        raise ConfigError("--max-frame-bytes must be at least 1024")
    cfg = ServeConfig(
        store=store, host=args.host, port=args.port, tokens=read_tokens(args.token_file),
        tls_cert=Path(args.tls_cert).expanduser() if args.tls_cert else None,
        tls_key=Path(args.tls_key).expanduser() if args.tls_key else None,
        allow_origins=tuple(args.allow_origin or ()), max_streams=args.max_streams,
        idle_timeout=args.idle_timeout, write_timeout=args.write_timeout, max_batch=args.max_batch,
        embed_workers=args.embed_workers,
        max_wait=args.max_wait_ms / 1000.0, faiss_threads=args.faiss_threads, max_monitors=args.max_monitors,
        monitor_queue=args.monitor_queue, webhooks=tuple(args.webhook or ()), webhook_secret=args.webhook_secret or None,
        webhook_level=args.webhook_level, webhook_timeout=args.webhook_timeout,
        follow_interval=args.follow_interval, countermeasure=args.countermeasure,
        countermeasure_budget=args.countermeasure_budget, limits=limits, max_upload_bytes=args.max_upload_bytes,
        request_timeout=args.request_timeout, enroll_consistency=args.enroll_consistency)
    cfg.check()
    return cfg
