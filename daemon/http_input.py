"""What the daemon takes from a request before :meth:`Daemon.process_request` answers it:

* **Request bodies.**  The ``websockets`` handshake parser refuses any request with a body
  (``Content-Length`` other than 0, or ``Transfer-Encoding``) by dropping the connection
  without a reply, so ``curl -X POST -d '{}' .../admin/reload`` got an empty reply, and its
  chunked reader stops at 1 MiB.  :class:`BodyTolerantConnection` reads the body off the
  connection first.  The one endpoint that takes a body (an audio upload,
  ``POST /v1/speakers/{speaker}/samples``) gets it in ``request_body.data``, up to
  ``--max-upload-bytes``; everywhere else up to :data:`BODY_IGNORED` bytes are ignored and
  the request is answered as usual.  A bigger body is answered 413 — refused from its
  ``Content-Length`` before a byte is read when it says so, else as soon as the bytes pass
  the limit (read and thrown away up to :data:`BODY_DISCARD` bytes so the client gets to
  read the answer).
* **Browser origins** (:func:`origin_refusal`): a request carrying ``Origin`` is accepted
  when the origin's host:port is the request's ``Host`` (the daemon's own pages, ``/`` and
  ``/monitor``), or when it is on the ``--allow-origin`` list (``*`` allows any).  Requests
  without ``Origin`` (non-browser clients) are not concerned.
"""

from __future__ import annotations

import http
from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import SecurityError
from websockets.http11 import Response

from voxguard.protocol import wire_json


# -- answers ------------------------------------------------------------------------------------
def _response(status: int, body: bytes, content_type: str, extra: dict | None = None) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    for k, v in (extra or {}).items():
        headers[k] = v
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _json(status: int, data: dict, extra: dict | None = None) -> Response:
    return _response(status, (wire_json(data) + "\n").encode(), "application/json", extra)


# -- request bodies -------------------------------------------------------------------------------
BODY_IGNORED = 64 * 1024  # bytes of request body read and ignored (endpoints that take no body)
BODY_DISCARD = 16 << 20  # a bigger body is read and thrown away up to this size, then answered 413
_CHUNK = 64 * 1024
_MAX_LINE = 8192


@dataclass
class RequestBody:
    """What the request said about its body and what was done with it."""

    length: int = 0  # bytes read
    too_large: bool = False
    invalid: str | None = None  # why the framing could not be understood
    limit: int = BODY_IGNORED  # the most this request may send
    kept: bool = False  # an endpoint that takes a body (an upload): ``data`` holds it
    data: bytes = b""
    declared: int | None = None  # Content-Length, when given

    def refusal(self) -> tuple[int, str] | None:
        if self.invalid is not None:
            return 400, f"cannot read the request body: {self.invalid}"
        if self.too_large:
            if self.kept:
                return 413, (f"request body too large: at most {self.limit} bytes are accepted here "
                             f"(--max-upload-bytes); nothing was decoded or stored")
            return 413, (f"request body too large: the daemon's endpoints take no body "
                         f"(at most {BODY_IGNORED} bytes are accepted and ignored)")
        return None


def _read_chunked(reader, read_line, body: RequestBody):
    """A chunked body, refused (``too_large``) as soon as it passes ``body.limit`` — the
    ``websockets`` parser stops at its own 1 MiB (``WEBSOCKETS_MAX_BODY_SIZE``)."""
    data = bytearray()
    total = 0
    while True:
        line = yield from read_line(_MAX_LINE, SecurityError)
        if not line.endswith(b"\r\n"):
            raise ValueError("chunk size line without CRLF")
        raw = bytes(line[:-2]).split(b";", 1)[0].strip()
        if not raw or any(c not in b"0123456789abcdefABCDEF" for c in raw):
            raise ValueError(f"invalid chunk size {raw[:20]!r}")
        size = int(raw, 16)
        if size == 0:
            break
        total += size
        if total > max(body.limit, BODY_DISCARD):
            raise SecurityError("too large")
        left = size
        while left:
            part = yield from reader.read_exact(min(left, _CHUNK))
            if body.kept and total <= body.limit:
                data += part
            left -= len(part)
        if (yield from reader.read_exact(2)) != b"\r\n":
            raise ValueError("chunk without CRLF")
    while True:  # the trailer
        line = yield from read_line(_MAX_LINE, SecurityError)
        if line in (b"\r\n", b"\n"):
            break
    body.length = total
    body.too_large = total > body.limit
    if body.kept and not body.too_large:
        body.data = bytes(data)


def _read_body(reader, read_line, protocol, body: RequestBody, length: int | None, chunked: bool, expect: bool):
    if chunked:
        if expect:
            protocol.writes.append(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            yield from _read_chunked(reader, read_line, body)
        except SecurityError:
            body.too_large = True
        except (ValueError, EOFError) as e:
            body.invalid = str(e) or type(e).__name__
        return
    body.declared = length
    if not length:
        return
    if length > body.limit and (expect or length > max(BODY_DISCARD, body.limit)):
        body.too_large = True  # never read (the client waits for "100 Continue", or it is huge)
        return
    if expect:
        protocol.writes.append(b"HTTP/1.1 100 Continue\r\n\r\n")
    keep = body.kept and length <= body.limit
    data = bytearray()
    left = length
    while left:
        n = min(left, _CHUNK)
        part = yield from reader.read_exact(n)
        if keep:
            data += part
        left -= n
    body.length = length
    body.too_large = length > body.limit
    if keep:
        body.data = bytes(data)


def _tolerant_read_line(protocol, body: RequestBody, takes_body, max_upload: int):
    """``protocol.reader.read_line`` for the handshake parser, minus the body framing headers:
    at the end of the headers the body is read here (and recorded in ``body``) instead.
    ``takes_body(method, path)`` says whether the request line names an endpoint that takes
    a body (kept, up to ``max_upload`` bytes); any other body is read and ignored."""
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
                parts = bytes(line).split(b" ")
                if len(parts) >= 2:
                    method = parts[0].decode("latin-1")
                    path = urlsplit(parts[1].decode("latin-1")).path
                    if takes_body(method, path):
                        body.kept, body.limit = True, max_upload
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
    """A server connection whose handshake parser reads a request body, so every request gets
    an HTTP answer (see the module docstring); ``request_body`` says what came.  The server
    makes a subclass with its own :attr:`takes_body` and :attr:`max_upload`
    (:func:`connection_class`)."""

    max_upload = BODY_IGNORED

    @staticmethod
    def takes_body(method: str, path: str) -> bool:
        return False

    def __init__(self, protocol, *args, **kwargs):
        super().__init__(protocol, *args, **kwargs)
        self.request_body = RequestBody()
        # no byte has been received yet: restart the handshake parser on the tolerant reader
        protocol.reader.read_line = _tolerant_read_line(protocol, self.request_body, self.takes_body,
                                                        self.max_upload)
        protocol.parser = protocol.parse()
        next(protocol.parser)


def connection_class(takes_body, max_upload: int) -> type[BodyTolerantConnection]:
    """A :class:`BodyTolerantConnection` that keeps the bodies ``takes_body(method, path)`` names."""
    return type("UploadConnection", (BodyTolerantConnection,),
                {"takes_body": staticmethod(takes_body), "max_upload": max_upload})


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
