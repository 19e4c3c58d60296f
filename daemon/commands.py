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
                    "enrolled speakers. The daemon follows the store by itself: a change (another "
                    "process's enrollment, a calibration) is loaded within about a second "
                    "(PostgreSQL: LISTEN/NOTIFY; SQLite: a revision poll).")
    serve_config.add_arguments(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(ctx) -> int:
    from .server import run_daemon

    location = ctx.store_location
    cfg = serve_config.from_args(ctx.args, location)
    if location.exists():  # an unreachable database stops here, with one line
        with location.open(create=False, readonly=True) as store:
            embedder = ctx.embedder(store)
    else:
        embedder = ctx.embedder(None)
    return run_daemon(cfg, embedder)
