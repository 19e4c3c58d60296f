"""Enrolling a speaker from a call: the session's bounded voiced-audio buffer (sans-I/O), and
``POST /v1/streams/{stream_id}/enroll`` on the real daemon — a call that passes every gate
is enrolled and identified in the next stream; one that fails a gate is refused naming it."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import speech_like
from daemon_support import DaemonProcess, build_store, fake_engine, held_out, held_out_pcm


def pcm_of(files) -> bytes:
    audio = np.concatenate([load_audio(f).samples for f in files])
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from voxguard.audio import load_audio
from voxguard.daemon.call import CallSession
from voxguard.daemon.session import SessionLimits
from voxguard.daemon.speakers import window_consistency
from voxguard.protocol import SCHEMAS

ENROLL = "enroll-token-0123456789abcdef"
STREAM = "stream-token-0123456789abcdef"


# -- sans-I/O ------------------------------------------------------------------------------------------
def test_the_session_keeps_only_the_newest_voiced_audio():
    import jsonschema

    call = CallSession(fake_engine({"alice"}), SessionLimits(enroll_buffer_s=4.0))
    ready = call.receive_text(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le",
                                          "channels": 1, "stream_id": "s"})).events[0]
    jsonschema.validate(ready, SCHEMAS["ready"])
    assert ready["enrollment"] == {"buffer_s": 4.0, "window_after_s": 120.0, "min_speech_s": 8.0}
    audio = speech_like(12.0, seed=3)
    for i in range(0, len(audio), 8000):
        call.receive_audio(audio[i:i + 8000].astype("<f4").tobytes())
    m = call.enrollment_material()
    assert 3.9 <= m.speech_seconds <= 4.0  # bounded: the newest 4 s of speech
    assert np.allclose(m.audio * 32767, np.round(m.audio * 32767), atol=1e-3)  # held as 16-bit samples
    assert m.clone_level == "unavailable" and m.identified == frozenset() and m.band == "wide"
    with pytest.raises(ValueError, match="no channel 3"):
        call.enrollment_material(3)
    off = CallSession(fake_engine({"alice"}), SessionLimits(enroll_buffer_s=0))
    ready = off.receive_text(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le",
                                         "channels": 1, "stream_id": "s"})).events[0]
    assert ready["enrollment"] is None
    off.receive_audio(audio[:32000].astype("<f4").tobytes())
    assert off.enrollment_material().speech_seconds == 0


def test_window_consistency_tells_one_voice_from_two(embedder, an4_speakers):
    from voxguard.utterance import embed_window_sets

    names = sorted(an4_speakers)[10:12]
    one = [np.concatenate([load_audio(f).samples for f in held_out(an4_speakers, n)[:6]]) for n in names]
    v_a, v_b = embed_window_sets(embedder, one)
    assert window_consistency(v_a) >= 0.85 and window_consistency(v_b) >= 0.85
    mixed = np.concatenate([v_a, v_b])
    assert window_consistency(mixed) < min(window_consistency(v_a), window_consistency(v_b))
    assert window_consistency(v_a[:3]) is None
    assert window_consistency(np.repeat(v_a[:1], 5, axis=0)) == 1.0


# -- the daemon ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory, embedder, an4_speakers):
    path = tmp_path_factory.mktemp("callenroll") / "vg.db"
    return path, build_store(path, embedder, an4_speakers, speakers=sorted(an4_speakers)[:2])


@pytest.fixture(scope="module")
def daemon(store, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tok") / "tokens"
    tokens.write_text(f"{ENROLL} enroll\n{STREAM} stream\n")
    d = DaemonProcess(store[0], extra=("--token-file", str(tokens), "--enroll-window", "300"))
    yield d
    d.kill()
    print(d.log_tail())


def post(daemon, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{daemon.http}{path}", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {ENROLL}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def _stream(daemon, pcm: bytes, stream_id: str) -> list[dict]:
    async with connect(f"ws://127.0.0.1:{daemon.port}/v1/stream", additional_headers={
            "Authorization": f"Bearer {STREAM}"}, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1,
                                  "stream_id": stream_id, "options": {"realtime": False}}))
        for i in range(0, len(pcm), 6400):
            await ws.send(pcm[i:i + 6400])
        await ws.send('{"type": "stop"}')
        events = []
        try:
            async for msg in ws:
                events.append(json.loads(msg))
        except ConnectionClosed:
            pass
    assert events[-1]["type"] == "summary", events[-1]
    return events


def two_distinct_voices(embedder, an4_speakers, names: list[str]):
    from voxguard.utterance import embed_utterances

    u = embed_utterances(embedder, [np.concatenate([load_audio(f).samples for f in an4_speakers[n][:3]]) for n in names])
    c = u @ u.T
    i, j = np.unravel_index(np.argmin(c), c.shape)
    return held_out(an4_speakers, names[i]), held_out(an4_speakers, names[j])


def stream(daemon, pcm: bytes, stream_id: str) -> list[dict]:
    return asyncio.run(_stream(daemon, pcm, stream_id))


@pytest.mark.an4
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_call_that_passes_the_gates_is_enrolled_and_identified_next_time(daemon, an4_speakers):
    newcomer = sorted(an4_speakers)[3]
    files = held_out(an4_speakers, newcomer)
    half = len(files) // 2
    pcm_a = pcm_of(files[:half] if len(files) >= 10 else files)
    events = stream(daemon, pcm_a, "call-enroll-1")
    assert events[0]["enrollment"]["min_speech_s"] == 8.0
    from voxguard.clients import Client

    client = Client(f"ws://127.0.0.1:{daemon.port}/v1/stream", token=ENROLL)
    got = asyncio.run(client.enroll_from_stream("call-enroll-1", newcomer, consent="CALL-OK"))
    assert got["added"] == 1 and got["gates"]["speech_seconds"] >= 8.0 and got["gates"]["consistency"] >= 0.6
    assert got["consent"] == "CALL-OK"
    pcm_b = pcm_of(files[half:])
    ident = [e for e in stream(daemon, pcm_b, "call-enroll-2") if e["type"] == "identity"]
    assert ident and ident[-1]["decision"]["speaker"] == newcomer, [e["decision"] for e in ident]
    req = urllib.request.Request(f"{daemon.http}/v1/speakers/{newcomer}", headers={"Authorization": f"Bearer {ENROLL}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        shown = json.loads(r.read())
    assert shown["samples"][0]["source"] == "stream:call-enroll-1"
    assert shown["samples"][0]["provenance"] == {"via": "stream", "stream_id": "call-enroll-1", "consent": "CALL-OK"}


@pytest.mark.an4
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_call_that_fails_a_gate_is_refused_naming_it(daemon, store, an4_speakers, embedder):
    _, names = store
    spk = sorted(an4_speakers)
    # too little speech
    short = held_out_pcm(an4_speakers, spk[4], 2)
    stream(daemon, short, "call-short")
    status, got = post(daemon, f"/v1/streams/call-short/enroll?speaker={spk[4]}")
    assert status == 422 and got["gate"] == "speech" and got["reason"] == "gate_failed", got
    from voxguard.clients import ApiError, Client

    with pytest.raises(ApiError) as refused:
        asyncio.run(Client(f"ws://127.0.0.1:{daemon.port}/v1/stream", token=ENROLL).enroll_from_stream(
            "call-short", spk[4]))
    assert refused.value.status == 422 and refused.value.body["gate"] == "speech"
    # two voices: the two least alike (by their enrolled utterances) of a few unenrolled speakers
    a, b = two_distinct_voices(embedder, an4_speakers, spk[5:11])
    mixed = pcm_of([f for pair in zip(a, b) for f in pair])
    stream(daemon, mixed, "call-two-voices")
    status, got = post(daemon, f"/v1/streams/call-two-voices/enroll?speaker={spk[12]}")
    assert status == 422 and got["gate"] == "consistency", got
    # an enrolled speaker's call cannot become somebody else
    # (the second enrolled speaker: its held-out utterances are identified, see test_server.py)
    stream(daemon, held_out_pcm(an4_speakers, names[1], 8), "call-known")
    status, got = post(daemon, f"/v1/streams/call-known/enroll?speaker={spk[7]}")
    assert status == 422 and got["gate"] == "other_speaker" and got["identified"] == [names[1]], got
    # unknown stream, bad parameters
    assert post(daemon, f"/v1/streams/nope/enroll?speaker={spk[7]}")[0] == 404
    assert post(daemon, "/v1/streams/call-known/enroll")[0] == 400
    assert post(daemon, "/v1/streams/call-known/enroll?speaker=bad%20name")[0] == 400
    assert post(daemon, f"/v1/streams/call-known/enroll?speaker={spk[7]}&channel=1")[0] == 400
    # nothing was stored by any refusal
    req = urllib.request.Request(f"{daemon.http}/v1/speakers", headers={"Authorization": f"Bearer {ENROLL}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        listed = {s["speaker"] for s in json.loads(r.read())["speakers"]}
    assert not listed & {spk[4], spk[12], spk[7]}
