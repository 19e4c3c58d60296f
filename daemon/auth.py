"""Bearer tokens with scopes, and the one table that says which scope each endpoint needs.

A token grants one or more scopes (:data:`SCOPES`):

* ``stream``  — ``/v1/stream``, ``/v1/twilio`` (send a call's audio, get its events);
* ``monitor`` — ``/v1/monitor``, ``GET /v1/calls`` and the ``/monitor`` page;
* ``enroll``  — the speakers API (``/v1/speakers...``, ``POST /v1/streams/{stream_id}/enroll``) and
  the ``/speakers`` page;
* ``admin``   — ``/admin/*`` and ``GET /v1/audit``; an ``admin`` token holds every scope.

Token file: one token per line, then whitespace and comma-separated scopes
(``s3cr3t-token-value stream,monitor``); ``#`` starts a comment line.  A line with a token
alone keeps its old meaning, every scope, and the daemon logs a warning naming it by its
:func:`fingerprint` (never the token).  ``$VOXGUARD_TOKENS``: comma-separated entries, each
``TOKEN`` (every scope) or ``TOKEN:SCOPE+SCOPE`` (so a token given there cannot contain
``:``).

:func:`route` maps (method, path) to the endpoint's name (its metric label) and the scope it
needs; the server's request gate checks it there, in one place, before any handler runs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

SCOPES = ("stream", "monitor", "enroll", "admin")
ALL_SCOPES = frozenset(SCOPES)
MIN_TOKEN_LENGTH = 16

# the speaker name pattern of the HTTP API (path segments), one definition for code and docs
SPEAKER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SPEAKER_RE = re.compile(SPEAKER_PATTERN)
STREAM_ID_PATTERN = r"^[^/]{1,200}$"


class TokenError(ValueError):
    """A token-file line or ``$VOXGUARD_TOKENS`` entry that cannot be used."""


def fingerprint(token: str) -> str:
    """What logs, audit rows and metrics call a token: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Token:
    value: str
    scopes: frozenset[str] = ALL_SCOPES
    all_by_default: bool = False  # given without scopes (the pre-scope format): every scope

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def grants(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def __repr__(self) -> str:  # never the token itself
        return f"Token({self.fingerprint}, {sorted(self.scopes)})"


def _scopes(text: str, sep: str, where: str) -> frozenset[str]:
    names = [s.strip() for s in text.split(sep)]
    if not names or any(not s for s in names):
        raise TokenError(f"{where}: empty scope in {text!r}")
    unknown = [s for s in names if s not in SCOPES]
    if unknown:
        raise TokenError(f"{where}: unknown scope {unknown[0]!r} (scopes: {', '.join(SCOPES)})")
    return frozenset(names)


def _check_length(value: str) -> None:
    if len(value) < MIN_TOKEN_LENGTH:
        raise TokenError(f"every token must be at least {MIN_TOKEN_LENGTH} characters long")


def parse_token_line(line: str, where: str = "token file") -> Token | None:
    """One token-file line: ``TOKEN [SCOPE,SCOPE...]``; None for blank and comment lines."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split(None, 1)
    _check_length(parts[0])
    if len(parts) == 1:
        return Token(parts[0], ALL_SCOPES, all_by_default=True)
    rest = parts[1].strip()
    if rest.startswith("#"):  # a trailing comment
        return Token(parts[0], ALL_SCOPES, all_by_default=True)
    rest = rest.split("#", 1)[0].strip()
    return Token(parts[0], _scopes(rest.replace(" ", ""), ",", where))


def parse_env_tokens(value: str) -> list[Token]:
    """``$VOXGUARD_TOKENS``: ``TOKEN[:SCOPE+SCOPE],...``."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if ":" in entry:
            tok, _, scopes = entry.rpartition(":")
            _check_length(tok)
            out.append(Token(tok, _scopes(scopes, "+", "$VOXGUARD_TOKENS")))
        else:
            _check_length(entry)
            out.append(Token(entry, ALL_SCOPES, all_by_default=True))
    return out


def merge(tokens: list[Token]) -> tuple[Token, ...]:
    """One entry per token value (a token listed twice holds the union of its scopes)."""
    by_value: dict[str, Token] = {}
    for t in tokens:
        old = by_value.get(t.value)
        by_value[t.value] = t if old is None else Token(t.value, old.scopes | t.scopes,
                                                        old.all_by_default or t.all_by_default)
    return tuple(by_value.values())


def find(tokens: tuple[Token, ...], given: str) -> Token | None:
    """The token ``given`` is (constant-time comparison with each), or None."""
    found = None
    for t in tokens:
        if hmac.compare_digest(given.encode(), t.value.encode()):
            found = t
    return found


def valid_speaker(name: str) -> bool:
    return bool(_SPEAKER_RE.match(name))


# -- the request gate's table -----------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    name: str  # the path template: metric label and docs
    scope: str | None  # None: public
    methods: tuple[str, ...]
    pattern: re.Pattern


def _ep(template: str, scope: str | None, *methods: str) -> Endpoint:
    rx = "^" + re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", re.escape(template)) + "$"
    return Endpoint(template, scope, methods, re.compile(rx))


ENDPOINTS: tuple[Endpoint, ...] = (
    _ep("/v1/stream", "stream", "GET"),
    _ep("/v1/twilio", "stream", "GET"),
    _ep("/v1/monitor", "monitor", "GET"),
    _ep("/v1/calls", "monitor", "GET"),
    _ep("/monitor", "monitor", "GET"),
    _ep("/speakers", "enroll", "GET"),
    _ep("/v1/speakers", "enroll", "GET"),
    _ep("/v1/speakers/{speaker}", "enroll", "GET", "DELETE"),
    _ep("/v1/speakers/{speaker}/samples", "enroll", "POST"),
    _ep("/v1/speakers/{speaker}/samples/{sample_id}", "enroll", "DELETE"),
    _ep("/v1/streams/{stream_id}/enroll", "enroll", "POST"),
    _ep("/v1/audit", "admin", "GET"),
    _ep("/admin/reload", "admin", "POST"),
    _ep("/v1/openapi.json", None, "GET"),
    _ep("/metrics", None, "GET"),
    _ep("/healthz", None, "GET"),
    _ep("/readyz", None, "GET"),
    _ep("/", None, "GET"),
    _ep("/index.html", None, "GET"),
)
ADMIN_PREFIX = "/admin/"  # anything under it needs admin, even a path nobody serves


def route(path: str) -> tuple[Endpoint | None, tuple[str, ...]]:
    """The endpoint serving ``path`` and the values of its ``{...}`` segments."""
    for ep in ENDPOINTS:
        m = ep.pattern.match(path)
        if m:
            return ep, m.groups()
    if path.startswith(ADMIN_PREFIX):
        return Endpoint("/admin/*", "admin", (), re.compile("")), ()
    return None, ()


def takes_body(method: str, path: str) -> bool:
    """Whether a request line names the endpoint that takes a body (an audio upload)."""
    ep, _ = route(path)
    return method == "POST" and ep is not None and ep.name == UPLOAD_ENDPOINT


UPLOAD_ENDPOINT = "/v1/speakers/{speaker}/samples"
