"""Scoped tokens: the token file and ``$VOXGUARD_TOKENS`` syntax, and the real daemon's request
gate on loopback — each endpoint refuses a token without its scope (403 naming the scope,
counted in ``voxguard_http_refusals_total``), no token gets 401, an admin token passes."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from daemon_support import DaemonProcess
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voxguard.daemon.auth import ALL_SCOPES, ENDPOINTS, fingerprint, parse_env_tokens, parse_token_line, route
from voxguard.daemon.config import ConfigError, read_tokens

pytestmark = [pytest.mark.timeout(300)]

STREAM = "stream-only-token-0123456789"
MONITOR = "monitor-only-token-0123456789"
ENROLL = "enroll-only-token-0123456789"
ADMIN = "admin-token-0123456789abcdef"
LEGACY = "legacy-all-scopes-token-0123456789"


# -- parsing -------------------------------------------------------------------------------------------
def test_token_lines_and_env_entries():
    t = parse_token_line("s3cr3t-token-value-0000 stream,monitor")
    assert t.value == "s3cr3t-token-value-0000" and t.scopes == {"stream", "monitor"} and not t.all_by_default
    assert parse_token_line("s3cr3t-token-value-0000   enroll , admin  # ops").scopes == {"enroll", "admin"}
    legacy = parse_token_line("  s3cr3t-token-value-0000  ")
    assert legacy.scopes == ALL_SCOPES and legacy.all_by_default
    assert parse_token_line("# a comment") is None and parse_token_line("   ") is None
    assert "s3cr3t" not in repr(t) and fingerprint(t.value) in repr(t)
    with pytest.raises(ValueError, match="unknown scope 'strem'"):
        parse_token_line("s3cr3t-token-value-0000 strem")
    with pytest.raises(ValueError, match="at least 16"):
        parse_token_line("short stream")
    env = parse_env_tokens("aaaaaaaaaaaaaaaa:stream+monitor, bbbbbbbbbbbbbbbb")
    assert [(e.value, set(e.scopes), e.all_by_default) for e in env] == [
        ("aaaaaaaaaaaaaaaa", {"stream", "monitor"}, False), ("bbbbbbbbbbbbbbbb", set(ALL_SCOPES), True)]
    with pytest.raises(ValueError, match="unknown scope"):
        parse_env_tokens("aaaaaaaaaaaaaaaa:stream+bogus")


def test_read_tokens_merges_file_and_env(tmp_path):
    f = tmp_path / "tokens"
    f.write_text(f"# tokens\n{STREAM} stream\n{ADMIN} admin\n{STREAM} monitor\n")
    toks = {t.value: t for t in read_tokens(str(f), env={"VOXGUARD_TOKENS": f"{ENROLL}:enroll"})}
    assert toks[STREAM].scopes == {"stream", "monitor"} and toks[ENROLL].scopes == {"enroll"}
    assert toks[ADMIN].grants("enroll") and toks[ADMIN].grants("monitor")
    assert not toks[STREAM].grants("enroll")
    f.write_text(f"{STREAM} stream,nope\n")
    with pytest.raises(ConfigError, match=r"line 1: unknown scope 'nope'"):
        read_tokens(str(f), env={})


def test_every_endpoint_has_one_row_in_the_gate():
    names = [e.name for e in ENDPOINTS]
    assert len(names) == len(set(names))
    assert route("/v1/speakers/alice/samples/12")[0].name == "/v1/speakers/{speaker}/samples/{sample_id}"
    assert route("/v1/speakers/alice/samples/12")[1] == ("alice", "12")
    assert route("/admin/anything")[0].scope == "admin"
    assert route("/nope")[0] is None


# -- the daemon ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = tmp_path_factory.mktemp("scopes")
    tokens = d / "tokens"
    tokens.write_text(f"{STREAM} stream\n{MONITOR} monitor\n{ENROLL} enroll\n{ADMIN} admin\n{LEGACY}\n")
    process = DaemonProcess(d / "missing.db", extra=("--token-file", str(tokens)))
    yield process
    process.kill()


def http(daemon, method: str, path: str, token: str | None, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{daemon.http}{path}", method=method, headers=headers, data=body)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, json.loads(raw) if ctype.startswith("application/json") else {"text": raw.decode()}


def ws_status(daemon, path: str, token: str | None) -> int:
    async def go():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with connect(f"ws://127.0.0.1:{daemon.port}{path}", additional_headers=headers):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(go())


# (method, concrete path, WebSocket?) per endpoint that needs a scope other than stream
PROTECTED = [
    ("GET", "/v1/monitor", True, "monitor"),
    ("GET", "/v1/calls", False, "monitor"),
    ("GET", "/monitor", False, "monitor"),
    ("GET", "/speakers", False, "enroll"),
    ("GET", "/v1/speakers", False, "enroll"),
    ("GET", "/v1/speakers/alice", False, "enroll"),
    ("DELETE", "/v1/speakers/alice", False, "enroll"),
    ("POST", "/v1/speakers/alice/samples", False, "enroll"),
    ("DELETE", "/v1/speakers/alice/samples/1", False, "enroll"),
    ("POST", "/v1/streams/call-1/enroll?speaker=alice", False, "enroll"),
    ("GET", "/v1/audit", False, "admin"),
    ("POST", "/admin/reload", False, "admin"),
]


def refusals(daemon, endpoint: str, reason: str) -> float:
    _, body = http(daemon, "GET", "/metrics", None)
    needle = f'voxguard_http_refusals_total{{endpoint="{endpoint}",reason="{reason}"}}'
    for line in body["text"].splitlines():
        if line.startswith(needle):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {needle} in /metrics")


@pytest.mark.parametrize("method,path,websocket,scope", PROTECTED, ids=[f"{m} {p}" for m, p, _, _ in PROTECTED])
def test_a_stream_token_is_refused_with_the_missing_scope(daemon, method, path, websocket, scope):
    name = route(path.split("?")[0])[0].name
    before = refusals(daemon, name, "missing_scope")
    if websocket:
        assert ws_status(daemon, path, STREAM) == 403
    else:
        status, body = http(daemon, method, path, STREAM, b"x" if method == "POST" else None)
        assert status == 403, body
        assert body["missing_scope"] == scope and body["reason"] == "missing_scope" and scope in body["error"]
        assert body["endpoint"] == name
    assert refusals(daemon, name, "missing_scope") == before + 1
    # and no token at all: 401
    if websocket:
        assert ws_status(daemon, path, None) == 401
    else:
        assert http(daemon, method, path, None, b"x" if method == "POST" else None)[0] == 401
    assert refusals(daemon, name, "missing_token") >= 1


def test_a_monitor_token_cannot_enroll_or_stream(daemon):
    for method, path in (("GET", "/v1/speakers"), ("POST", "/v1/speakers/alice/samples"),
                         ("DELETE", "/v1/speakers/alice")):
        status, body = http(daemon, method, path, MONITOR, b"x" if method == "POST" else None)
        assert status == 403 and body["missing_scope"] == "enroll", body
    assert ws_status(daemon, "/v1/stream", MONITOR) == 403
    assert http(daemon, "GET", "/v1/calls", MONITOR)[0] == 200
    assert ws_status(daemon, "/v1/monitor", MONITOR) == 101
    assert http(daemon, "GET", "/v1/speakers", ENROLL)[0] == 200
    assert http(daemon, "GET", "/v1/audit", ENROLL)[0] == 403


def test_an_admin_token_and_an_unscoped_one_can_do_everything(daemon):
    for token in (ADMIN, LEGACY):
        assert ws_status(daemon, "/v1/stream", token) == 101
        assert ws_status(daemon, "/v1/monitor", token) == 101
        assert http(daemon, "GET", "/v1/calls", token)[0] == 200
        assert http(daemon, "GET", "/monitor", token)[0] == 200
        assert http(daemon, "POST", "/admin/reload", token)[0] == 200
        assert http(daemon, "GET", "/v1/speakers", token)[0] == 200
        assert http(daemon, "GET", "/v1/audit", token)[0] == 200
        assert http(daemon, "GET", "/v1/speakers/nobody", token)[0] == 404
        assert http(daemon, "DELETE", "/v1/speakers/nobody", token)[0] == 404
    assert http(daemon, "GET", "/v1/calls", "not-a-token-at-all-0000")[0] == 403
    assert refusals(daemon, "/v1/calls", "invalid_token") >= 1


def test_unscoped_tokens_are_named_by_fingerprint_only(daemon):
    log = daemon.log_tail(200)
    assert fingerprint(LEGACY) in log and "every scope" in log
    for secret in (LEGACY, STREAM, MONITOR, ENROLL, ADMIN):
        assert secret not in log
    for t in (STREAM, ADMIN):  # scoped tokens get no warning
        assert fingerprint(t) not in log
