"""The speakers API against the real daemon on loopback (``voxguard serve`` in a subprocess, a
real store of AN4 speakers): the OpenAPI document (validated, and the docs page generated
from it), listing and paging, enrolling uploads in every format the CLI decodes, the new
speaker identified in a new stream without any reload call and no longer after DELETE, bad
input refused with nothing stored, the audit trail — and the worker running stream windows
before an upload's embedding jobs."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import time
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile as sf
from conftest import REPO
from daemon_support import DaemonProcess, build_store, held_out_pcm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxguard.audio import load_audio
from voxguard.daemon.auth import fingerprint
from voxguard.daemon.openapi import markdown, openapi_document

pytestmark = [pytest.mark.an4, pytest.mark.slow, pytest.mark.timeout(600)]

ENROLL = "enroll-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
STREAM = "stream-token-0123456789abcdef"
MAX_UPLOAD = 2 << 20


@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("speakers") / "vg.db"
    return path, build_store(path, embedder, an4_speakers, speakers=sorted(an4_speakers)[:2])


@pytest.fixture(scope="module")
def daemon(store, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tok") / "tokens"
    tokens.write_text(f"{ENROLL} enroll\n{ADMIN} admin\n{STREAM} stream\n")
    d = DaemonProcess(store[0], extra=("--token-file", str(tokens), "--max-upload-bytes", str(MAX_UPLOAD)))
    yield d
    d.kill()
    print(d.log_tail())


@pytest.fixture(scope="module")
def newcomer(an4_speakers, store):
    return sorted(an4_speakers)[2]


def speechy(files: list[Path], n: int) -> list[Path]:
    """The first ``n`` of ``files`` with at least a second of speech (AN4 has very short ones)."""
    from voxguard.enroll.enrollment import voiced_seconds

    return [f for f in files if voiced_seconds(load_audio(f).samples) >= 1.0][:n]


def call(daemon, method: str, path: str, token: str | None = ENROLL, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict]:
    h = dict(headers or {})
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{daemon.http}{path}", method=method, headers=h, data=body)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


DOC = openapi_document(MAX_UPLOAD)


def check(body: dict, schema: str) -> None:
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema}", "components": DOC["components"]})


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def resample_8k(x: np.ndarray) -> np.ndarray:
    from voxguard.audio import resample

    return resample(x, 16000, 8000)


async def stream_identities(daemon, pcm: bytes) -> list[dict]:
    headers = {"Authorization": f"Bearer {STREAM}"}
    async with connect(f"ws://127.0.0.1:{daemon.port}/v1/stream", additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": "api-test", "options": {"realtime": False}}))
        for i in range(0, len(pcm), 6400):
            await ws.send(pcm[i:i + 6400])
        await ws.send('{"type": "stop"}')
        events = []
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:
            pass
    assert events[-1]["type"] == "summary", json.dumps(events)
    return events


# -- the document ------------------------------------------------------------------------------------
def test_openapi_document_is_valid_served_and_rendered_in_docs(daemon):
    from openapi_spec_validator import validate

    validate(DOC)
    with urllib.request.urlopen(f"{daemon.http}/v1/openapi.json", timeout=60) as r:  # no token needed
        served = json.loads(r.read())
    assert served == DOC
    assert served["paths"]["/v1/speakers/{speaker}/samples"]["post"]["security"] == [{"bearer": ["enroll"]}]
    assert served["paths"]["/v1/audit"]["get"]["security"] == [{"bearer": ["admin"]}]
    page = (REPO / "docs" / "speakers-api.md").read_text()
    assert page == markdown(openapi_document()), "regenerate: python -m voxguard.daemon.openapi --markdown"


# -- reads ------------------------------------------------------------------------------------------------
def test_list_pages_and_show(daemon, store):
    _, names = store
    status, first = call(daemon, "GET", "/v1/speakers?limit=1")
    assert status == 200 and [s["speaker"] for s in first["speakers"]] == names[:1] and first["next"] == names[0]
    check(first, "SpeakerPage")
    status, second = call(daemon, "GET", f"/v1/speakers?limit=1&after={first['next']}")
    assert [s["speaker"] for s in second["speakers"]] == names[1:2]
    _, rest = call(daemon, "GET", f"/v1/speakers?limit=5&after={names[1]}")
    assert rest == {"speakers": [], "next": None}
    _, found = call(daemon, "GET", f"/v1/speakers?q={names[1][1:3].upper()}")
    assert names[1] in [s["speaker"] for s in found["speakers"]]
    status, one = call(daemon, "GET", f"/v1/speakers/{names[0]}")
    assert status == 200 and one["speaker"] == names[0] and one["genuine"] == 3 and len(one["samples"]) == 3
    check(one, "Speaker")
    s = one["samples"][0]
    assert s["kind"] == "genuine" and s["bands"] == ["telephone", "wide"] and s["seconds"] > 0.5
    assert s["source"].endswith(".wav") and s["consent"] is None
    assert one["updated_at"] >= one["created_at"]


# -- enroll, identify, erase ----------------------------------------------------------------------------
def test_uploaded_speaker_is_identified_in_a_new_stream_then_erased(daemon, store, an4_speakers, newcomer):
    _, names = store
    files = an4_speakers[newcomer][:3]
    raw = [load_audio(f).samples for f in files]
    bodies = [("wav", files[0].read_bytes()),
              ("flac", encode(raw[1], 16000, "FLAC")),
              ("g711", encode(resample_8k(raw[2]), 8000, "WAV", "ULAW"))]
    ids = []
    for n, (what, body) in enumerate(bodies):
        status, got = call(daemon, "POST", f"/v1/speakers/{newcomer}/samples?consent=REF-{n}&filename={what}", body=body)
        assert status == 201, (what, got)
        check(got, "Enrolled")
        assert got["added"] == 1 and len(got["sample_ids"]) == 1 and got["voiced_seconds"] > 0.5
        assert got["band"] == ("telephone" if what == "g711" else "wide") and got["consent"] == f"REF-{n}"
        ids += got["sample_ids"]
    # the same audio again: nothing new
    status, again = call(daemon, "POST", f"/v1/speakers/{newcomer}/samples", body=bodies[0][1])
    assert status == 200 and again["added"] == 0 and again["skipped"] == 1
    _, shown = call(daemon, "GET", f"/v1/speakers/{newcomer}")
    assert [s["id"] for s in shown["samples"]] == ids
    assert [s["consent"] for s in shown["samples"]] == ["REF-0", "REF-1", "REF-2"]
    assert shown["samples"][1]["source"] == "upload:flac" and shown["samples"][1]["provenance"]["via"] == "http"

    pcm = held_out_pcm(an4_speakers, newcomer, 3)
    ident = [e for e in asyncio.run(stream_identities(daemon, pcm)) if e["type"] == "identity"]
    assert ident and ident[-1]["decision"]["speaker"] == newcomer, [e["decision"] for e in ident]

    status, gone = call(daemon, "DELETE", f"/v1/speakers/{newcomer}?consent=ERASE-1")
    assert status == 200 and gone["removed_samples"] == 3
    check(gone, "SpeakerRemoved")
    assert call(daemon, "GET", f"/v1/speakers/{newcomer}")[0] == 404
    ident = [e for e in asyncio.run(stream_identities(daemon, pcm)) if e["type"] == "identity"]
    assert ident and all(e["speaker"] != newcomer and e["decision"]["speaker"] != newcomer for e in ident)

    status, audit = call(daemon, "GET", "/v1/audit", token=ADMIN)
    assert status == 200
    check(audit, "AuditPage")
    mine = [e for e in audit["entries"] if e["speaker"] == newcomer]
    assert [e["action"] for e in mine] == ["enroll"] * 3 + ["remove_speaker"]
    assert [e["consent"] for e in mine] == ["REF-0", "REF-1", "REF-2", "ERASE-1"]
    assert all(e["actor"] == f"token:{fingerprint(ENROLL)}" for e in mine)
    assert mine[-1]["sample_ids"] == ids and [e["sample_ids"] for e in mine[:3]] == [[i] for i in ids]
    assert ENROLL not in json.dumps(audit)
    _, paged = call(daemon, "GET", f"/v1/audit?limit=2&after={mine[0]['id']}", token=ADMIN)
    assert [e["id"] for e in paged["entries"]] == [e["id"] for e in mine[1:3]] and paged["next"] == mine[2]["id"]


def test_other_formats_and_one_sample_deleted(daemon, an4_speakers):
    name = sorted(an4_speakers)[3]
    raw = load_audio(an4_speakers[name][0]).samples
    ids = []
    for fmt, subtype in (("OGG", "OPUS"), ("MP3", "MPEG_LAYER_III")):
        status, got = call(daemon, "POST", f"/v1/speakers/{name}/samples?kind=clone&source=vendor-x",
                           body=encode(raw * (0.9 if fmt == "MP3" else 1.0), 16000 if fmt == "MP3" else 48000,
                                       fmt, subtype))
        assert status == 201, (fmt, got)
        assert got["kind"] == "clone"
        ids += got["sample_ids"]
    _, shown = call(daemon, "GET", f"/v1/speakers/{name}")
    assert shown["clones"] == 2 and shown["genuine"] == 0
    assert {s["provenance"]["source"] for s in shown["samples"]} == {"vendor-x"}
    status, out = call(daemon, "DELETE", f"/v1/speakers/{name}/samples/{ids[0]}")
    assert status == 200 and out == {"speaker": name, "removed_sample": ids[0], "speaker_removed": False,
                                     "revision": out["revision"]}
    assert call(daemon, "DELETE", f"/v1/speakers/{name}/samples/{ids[0]}")[0] == 404
    status, out = call(daemon, "DELETE", f"/v1/speakers/{name}/samples/{ids[1]}")
    assert status == 200 and out["speaker_removed"] is True
    assert call(daemon, "GET", f"/v1/speakers/{name}")[0] == 404


# -- bad input ---------------------------------------------------------------------------------------------
def raw_post(daemon, path: str, body, headers: dict, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers=headers, encode_chunked=chunked)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def store_state(daemon) -> tuple:
    _, ready = call(daemon, "GET", "/readyz", token=None)
    _, page = call(daemon, "GET", "/v1/speakers")
    return ready["store"]["revision"], ready["revision"], json.dumps(page, sort_keys=True)


def test_bad_input_gets_a_clear_error_and_stores_nothing(daemon, store, an4_speakers):
    _, names = store
    target = sorted(an4_speakers)[4]
    # the store revision /readyz reports is the follower's last poll: after the previous test's changes it
    # may lag the loaded one for a poll interval on a busy machine; start from a settled state
    deadline = time.monotonic() + 15
    before = store_state(daemon)
    while before[0] != before[1] and time.monotonic() < deadline:
        time.sleep(0.1)
        before = store_state(daemon)
    auth = {"Authorization": f"Bearer {ENROLL}"}
    big = b"RIFF" + b"\0" * (MAX_UPLOAD + 10)
    for chunked in (False, True):
        status, got = raw_post(daemon, f"/v1/speakers/{target}/samples", big if not chunked else iter([big]),
                               auth, chunked=chunked)
        assert status == 413 and "too large" in got["error"] and str(MAX_UPLOAD) in got["error"], got
    # a Content-Length over the limit is refused before the body is sent (Expect: 100-continue)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    conn.putrequest("POST", f"/v1/speakers/{target}/samples")
    for k, v in {**auth, "Content-Length": str(50 << 20), "Expect": "100-continue"}.items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "too large" in json.loads(r.read())["error"]
    conn.close()

    cases = [
        ("undecodable", f"/v1/speakers/{target}/samples", b"this is not audio at all" * 100, 422, "undecodable"),
        ("silence", f"/v1/speakers/{target}/samples", encode(np.zeros(48000, np.float32), 16000, "WAV"), 422,
         "no_speech"),
        ("bad name", "/v1/speakers/-bad%20name!/samples", encode(np.zeros(48000, np.float32), 16000, "WAV"), 400,
         None),
        ("bad kind", f"/v1/speakers/{target}/samples?kind=fake", b"x", 400, None),
        ("no body", f"/v1/speakers/{target}/samples", b"", 400, None),
    ]
    for what, path, body, code, reason in cases:
        status, got = call(daemon, "POST", path, body=body)
        assert status == code and isinstance(got["error"], str), (what, status, got)
        if reason:
            assert got["reason"] == reason and "nothing was stored" in got["error"], (what, got)
    assert call(daemon, "GET", "/v1/speakers/bad%20name")[0] == 400
    for method, path in (("GET", f"/v1/speakers/{target}"), ("DELETE", f"/v1/speakers/{target}"),
                         ("DELETE", f"/v1/speakers/{names[0]}/samples/999999")):
        status, got = call(daemon, method, path)
        assert status == 404 and "error" in got, (method, path, got)
    assert call(daemon, "DELETE", f"/v1/speakers/{names[0]}/samples/abc")[0] == 400
    assert call(daemon, "GET", "/v1/speakers?limit=0")[0] == 400
    status, got = call(daemon, "POST", f"/v1/speakers/{target}/samples", token=None, body=b"x")
    assert status == 401 and got["error"]
    assert store_state(daemon) == before  # nothing was stored, the revision did not move
    assert call(daemon, "GET", "/healthz", token=None)[0] == 200


# -- the worker: stream windows before upload jobs ------------------------------------------------------
def test_stream_windows_go_before_upload_jobs(embedder):
    from daemon_support import fake_engine

    from voxguard.daemon.batcher import Batcher, QueuedEmbedder
    from voxguard.daemon.session import WindowRequest

    order: list[str] = []
    b = Batcher(embedder, lambda results: None, max_batch=1, max_wait=0.0, workers=[embedder],
                on_taken=lambda windows: order.extend(f"window{i}" for _, i in windows))
    snap = fake_engine(set()).snapshot
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    out = {}

    def upload():  # an upload's embedding job (on the embed thread that takes it)
        out["job"] = b.run_job(lambda e: order.append("job") or e.embed([audio]))

    t = threading.Thread(target=upload)
    t.start()
    while not b._jobs:  # the job is queued before the worker starts
        threading.Event().wait(0.01)
    b.submit([WindowRequest(1, i, 0.0, 1.0, audio, snap) for i in range(3)])
    b.start()
    t.join(120)
    # an upload's windows are cut into jobs of windows_per_job, with the same embeddings
    queued = QueuedEmbedder(b, embedder, windows_per_job=2).embed([audio] * 5)
    b.stop()
    assert order == ["window0", "window1", "window2", "job"], order
    assert queued.shape == (5, embedder.dim)
    np.testing.assert_allclose(queued, embedder.embed([audio] * 5), atol=1e-5)
    np.testing.assert_allclose(out["job"][0], queued[0], atol=1e-5)


# -- clients: the library and `voxguard enroll add --url` ----------------------------------------------
def test_client_library_enrolls_lists_and_erases(daemon, an4_speakers, tmp_path):
    from voxguard.clients import ApiError, AuthRefused, Client

    name = sorted(an4_speakers)[5]
    files = speechy(an4_speakers[name], 2)
    ws_url = f"ws://127.0.0.1:{daemon.port}/v1/stream"
    client = Client(ws_url, token=ENROLL)
    assert client.http_url == daemon.http

    async def scenario():
        first = await client.enroll(name, files[0], consent="LIB-1")
        second = await client.enroll(name, files[1].read_bytes(), filename="two.wav")
        listed = await client.speakers(page=1)  # every page
        found = await client.speakers(q=name)
        shown = await client.speaker(name)
        try:
            await client.enroll(name, b"not audio" * 50)
        except ApiError as e:
            refused = (e.status, e.body["reason"])
        try:
            await Client(ws_url, token=STREAM).speakers()
        except AuthRefused as e:
            denied = e.status
        one = await client.delete_sample(name, first["sample_ids"][0], consent="LIB-DEL")
        gone = await client.delete_speaker(name)
        try:
            await client.speaker(name)
        except ApiError as e:
            missing = e.status
        audit = await Client(ws_url, token=ADMIN).audit(speaker=name)
        return first, second, listed, found, shown, refused, denied, one, gone, missing, audit

    first, second, listed, found, shown, refused, denied, one, gone, missing, audit = asyncio.run(scenario())
    assert first["added"] == 1 and first["consent"] == "LIB-1" and second["added"] == 1
    assert name in [s["speaker"] for s in listed] and len(listed) >= 3
    assert [s["speaker"] for s in found] == [name]
    assert [s["source"] for s in shown["samples"]] == [f"upload:{files[0].name}", "upload:two.wav"]
    assert refused == (422, "undecodable") and denied == 403 and missing == 404
    assert one["speaker_removed"] is False and gone["removed_samples"] == 1
    assert [e["action"] for e in audit["entries"]] == ["enroll", "enroll", "remove_sample", "remove_speaker"]
    assert audit["entries"][2]["consent"] == "LIB-DEL"


def test_enroll_cli_targets_a_running_daemon(daemon, an4_speakers, store, tmp_path):
    from conftest import run_cli

    name = sorted(an4_speakers)[6]
    untouched = tmp_path / "never-created.db"
    files = [str(f) for f in speechy(an4_speakers[name], 2)]
    r = run_cli("--json", "enroll", "add", name, *files, "--url", daemon.http, "--token", ENROLL,
                "--consent", "CLI-URL", store=untouched)
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["added"] == 2 and len(out["sample_ids"]) == 2 and not untouched.exists()
    _, shown = call(daemon, "GET", f"/v1/speakers/{name}")
    assert shown["genuine"] == 2 and {s["consent"] for s in shown["samples"]} == {"CLI-URL"}
    # a token file in the daemon's format (token, then scopes) works for the client too
    tf = tmp_path / "tok"
    tf.write_text(f"# mine\n{ENROLL} enroll\n")
    r = run_cli("enroll", "add", name, files[0], "--url", daemon.http, "--token-file", str(tf), store=untouched)
    assert r.returncode == 0 and "0 genuine sample(s), 1 already enrolled" in r.stdout.decode()
    r = run_cli("enroll", "add", name, files[0], "--url", daemon.http, "--token", STREAM, store=untouched)
    assert r.returncode == 6 and "403" in r.stderr.decode()
    r = run_cli("enroll", "remove", name, "--url", daemon.http, "--token", ENROLL, store=untouched)
    assert r.returncode == 0 and "removed" in r.stdout.decode()
    r = run_cli("enroll", "remove", name, "--url", daemon.http, "--token", ENROLL, store=untouched)
    assert r.returncode != 0 and "unknown speaker" in r.stderr.decode()
    assert not untouched.exists()
