"""``voxguard serve``: run the streaming verification daemon."""

from __future__ import annotations

from . import config as serve_config


def register(sub, common) -> None:
    p = sub.add_parser(
        "serve", parents=[common], help="run the streaming verification daemon",
        description="Serve live speaker identification, verification and clone suspicion over WebSockets "
                    "(ws://HOST:PORT/v1/stream; protocol in docs/protocol.md) with HTTP /metrics, /healthz, "
                    "/readyz and POST /admin/reload on the same port. SIGHUP reloads the store and index; "
                    "SIGTERM/SIGINT shut down gracefully. A missing or empty store is served with no "
                    "enrolled speakers (enroll, then reload).")
    serve_config.add_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(ctx) -> int:
    from voxguard.store import SpeakerStore

    from .server import run_daemon

    cfg = serve_config.from_args(ctx.args, ctx.store_path)
    if ctx.store_path.exists():
        with SpeakerStore(ctx.store_path, create=False) as store:
            embedder = ctx.embedder(store)
    else:
        embedder = ctx.embedder(None)
    return run_daemon(cfg, embedder)
