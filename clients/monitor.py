"""``voxguard monitor``: print the daemon's monitor feed (``/v1/monitor``) — every active
stream's events — as readable lines per stream, or as JSON Lines with ``--json``.

Exit codes: 0 the feed ended (server shutdown, or ``--once`` after the first summary),
4 the server sent an ``error`` event (bad filter), 5 cannot connect, 6 token refused,
7 connection lost, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
import sys
from typing import TextIO
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from voxguard.protocol import MonitorFilter, ProtocolError, parse_monitor_query, wire_json

from .client import ConnectFailed, ConnectionLost, ServerError, _http_failure
from .events import Error, from_dict
from .view import LiveView


def feed_url(url: str, flt: MonitorFilter) -> str:
    parts = urlsplit(url)
    query = "&".join(p for p in (parts.query, urlencode(flt.to_query())) if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


async def watch(url: str, flt: MonitorFilter, token: str | None = None, as_json: bool = False, once: bool = False,
                out: TextIO = sys.stdout, ssl: ssl_module.SSLContext | None = None) -> int:
    """Print the feed until it ends; returns the exit code or raises a ClientError."""
    target = feed_url(url, flt)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    kwargs = {"ssl": ssl} if ssl is not None else {}
    try:
        ws = await connect(target, additional_headers=headers, compression=None, max_size=4 << 20, **kwargs)
    except InvalidURI as e:
        raise ConnectFailed(f"invalid URL {url!r}: {e}", retryable=False) from None
    except InvalidStatus as e:
        raise _http_failure(url, e) from None
    except (OSError, TimeoutError) as e:
        raise ConnectFailed(f"cannot connect to {url}: {e} (is 'voxguard serve' running?)") from None
    views: dict[str, LiveView] = {}
    async with ws:
        try:
            async for msg in ws:
                d = json.loads(msg)
                ev = from_dict(d)
                if isinstance(ev, Error) and not ev.stream_id:
                    raise ServerError(ev)
                if as_json:
                    print(wire_json(d), file=out, flush=True)
                else:
                    line = views.setdefault(ev.stream_id, LiveView()).render(ev)
                    if line is not None:
                        pad = "\n" + " " * (len(ev.stream_id) + 3)
                        print(f"[{ev.stream_id}] " + line.replace("\n", pad), file=out, flush=True)
                if ev.type in ("summary", "error"):
                    views.pop(ev.stream_id, None)
                    if once and ev.type == "summary":
                        return 0
        except ConnectionClosed as e:
            raise ConnectionLost(f"the monitor feed closed ({e})", e.rcvd.code if e.rcvd else None) from None
    code = ws.close_code
    if code in (1000, 1001):
        return 0
    raise ConnectionLost(f"the monitor feed closed with {code}", code)


def cmd_monitor(ctx) -> int:
    from .stream import UsageError, client_from_args

    args = ctx.args
    query = {k: [v] for k, v in (("stream_id", ",".join(args.stream_id or [])), ("types", args.types or ""),
                                 ("min_clone_level", args.min_clone_level)) if v}
    try:
        flt = parse_monitor_query(query)
    except ProtocolError as e:
        raise UsageError(e.message) from None
    client = client_from_args(args)  # token and TLS options as for 'voxguard stream'
    try:
        return asyncio.run(watch(args.url, flt, client.token, ctx.json, args.once, ssl=client.ssl))
    except KeyboardInterrupt:
        return 130
