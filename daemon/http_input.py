"""What the daemon takes from a request before :meth:`Daemon.process_request` answers it:

* **Request bodies.**  The ``websockets`` handshake parser refuses any request with a body
  (``Content-Length`` other than 0, or ``Transfer-Encoding``) by dropping the connection
  without a reply, so ``curl -X POST -d '{}' .../admin/reload`` got an empty reply.
  :class:`BodyTolerantConnection` reads the body off the connection first: up to
  :data:`BODY_IGNORED` bytes it is ignored (no endpoint takes a body) and the request is
  answered as usual; a bigger one is answered 413 (read and thrown away up to
  :data:`BODY_DISCARD` bytes so the client gets to read the answer).
* **Browser origins** (:func:`origin_refusal`): a request carrying ``Origin`` is accepted
  when the origin's host:port is the request's ``Host`` (the daemon's own pages, ``/`` and
  ``/monitor``), or when it is on the ``--allow-origin`` list (``*`` allows any).  Requests
  without ``Origin`` (non-browser clients) are not concerned.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import SecurityError
from websockets.http11 import read_body

BODY_IGNORED = 64 * 1024  # bytes of request body read and ignored
BODY_DISCARD = 16 << 20  # a bigger body is read and thrown away up to this size, then answered 413
_CHUNK = 64 * 1024


@dataclass
class RequestBody:
    """What the request said about its body and what was done with it."""

    length: int = 0  # bytes read (and ignored)
    too_large: bool = False
    invalid: str | None = None  # why the framing could not be understood

    def refusal(self) -> tuple[int, str] | None:
        if self.invalid is not None:
            return 400, f"cannot read the request body: {self.invalid}"
        if self.too_large:
            return 413, (f"request body too large: the daemon's endpoints take no body "
                         f"(at most {BODY_IGNORED} bytes are accepted and ignored)")
        return None


def _read_body(reader, read_line, protocol, body: RequestBody, length: int | None, chunked: bool, expect: bool):
    if chunked:
        try:
            data = yield from read_body(200, Headers([("Transfer-Encoding", "chunked")]), read_line,
                                        reader.read_exact, reader.read_to_eof)
        except SecurityError:
            body.too_large = True
            return
        except (ValueError, NotImplementedError, EOFError) as e:
            body.invalid = str(e) or type(e).__name__
            return
        body.length = len(data)
        body.too_large = body.length > BODY_IGNORED
        return
    if not length:
        return
    if length > BODY_IGNORED and (expect or length > BODY_DISCARD):
        body.too_large = True  # never read (the client waits for "100 Continue", or it is huge)
        return
    if expect:
        protocol.writes.append(b"HTTP/1.1 100 Continue\r\n\r\n")
    left = length
    while left:
        n = min(left, _CHUNK)
        yield from reader.read_exact(n)
        left -= n
    body.length = length
    body.too_large = length > BODY_IGNORED


def _tolerant_read_line(protocol, body: RequestBody):
    """``protocol.reader.read_line`` for the handshake parser, minus the body framing headers:
    at the end of the headers the body is read here (and recorded in ``body``) instead."""
    reader = protocol.reader
    orig = reader.read_line
    state = {"lines": 0, "done": False, "lengths": set(), "chunked": False, "te": None, "expect": False}

    def read_line(m, too_long_exc_type=RuntimeError):
        while True:
            line = yield from orig(m, too_long_exc_type)
            if state["done"]:
                return line
            state["lines"] += 1
            if state["lines"] == 1:  # the request line
                return line
            if line in (b"\r\n", b"\n"):  # end of the headers: the body follows
                state["done"] = True
                lengths = state["lengths"]
                length = None
                if state["te"] is not None and state["te"] != "chunked":
                    body.invalid = f"unsupported Transfer-Encoding {state['te']!r}"
                elif state["chunked"] and lengths:
                    body.invalid = "both Content-Length and Transfer-Encoding"
                elif len(lengths) > 1:
                    body.invalid = "conflicting Content-Length headers"
                elif lengths:
                    raw = next(iter(lengths))
                    if raw.isdigit():
                        length = int(raw)
                    else:
                        body.invalid = f"invalid Content-Length {raw!r}"
                if body.invalid is None:
                    yield from _read_body(reader, orig, protocol, body, length, state["chunked"], state["expect"])
                return line
            name, _, value = bytes(line).partition(b":")
            name = name.strip().lower()
            value = value.strip().decode("latin-1")
            if name == b"content-length":
                state["lengths"].add(value)
                continue
            if name == b"transfer-encoding":
                state["chunked"] = value.lower() == "chunked"
                state["te"] = value.lower()
                continue
            if name == b"expect" and value.lower() == "100-continue":
                state["expect"] = True
            return line

    return read_line


class BodyTolerantConnection(ServerConnection):
    """A server connection whose handshake parser reads (and ignores) a request body, so every
    request gets an HTTP answer (see the module docstring); ``request_body`` says what came."""

    def __init__(self, protocol, *args, **kwargs):
        super().__init__(protocol, *args, **kwargs)
        self.request_body = RequestBody()
        # no byte has been received yet: restart the handshake parser on the tolerant reader
        protocol.reader.read_line = _tolerant_read_line(protocol, self.request_body)
        protocol.parser = protocol.parse()
        next(protocol.parser)


# -- origins ------------------------------------------------------------------------------------
def _norm(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _host_port(netloc: str, default: int) -> tuple[str, int] | None:
    try:
        u = urlsplit("//" + netloc)
        if not u.hostname:
            return None
        return u.hostname.lower(), u.port or default
    except ValueError:
        return None


def same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin``'s host:port is ``host`` (the request's Host header; a missing port
    is the origin scheme's default)."""
    try:
        u = urlsplit(origin.strip())
    except ValueError:
        return False
    if u.scheme.lower() not in ("http", "https") or not host:
        return False
    default = 443 if u.scheme.lower() == "https" else 80
    a, b = _host_port(u.netloc, default), _host_port(host.strip(), default)
    return a is not None and a == b


def origin_refusal(headers: Headers, allow_origins: tuple[str, ...]) -> str | None:
    """None when the request may go on, else why it is refused (HTTP 403)."""
    origins = headers.get_all("Origin")
    if not origins:
        return None  # not a browser
    if len(origins) > 1:
        return "more than one Origin header"
    origin = origins[0]
    allowed = {_norm(o) for o in allow_origins}
    if "*" in allowed or _norm(origin) in allowed:
        return None
    hosts = headers.get_all("Host")
    if len(hosts) == 1 and same_origin(origin, hosts[0]):
        return None
    return (f"origin {origin!r} is not allowed: browsers may connect only from the daemon's own pages "
            f"(same origin) or from an origin given with --allow-origin")
