"""The call engine without sockets: G.711 input, separate channels, the Twilio adapter, the
monitor's filters and queues, and the alert rules."""

from __future__ import annotations

import asyncio
import base64
import json

import jsonschema
import numpy as np
import pytest
from conftest import speech_like
from daemon_support import fake_engine

from voxguard.audio import float_to_g711, float_to_int16, pcm_to_float, resample
from voxguard.daemon.alerts import AlertRules, sign
from voxguard.daemon.call import CallSession
from voxguard.daemon.metrics import DaemonMetrics
from voxguard.daemon.monitor import CallState, MonitorHub
from voxguard.daemon.twilio import TwilioAdapter
from voxguard.protocol import SCHEMAS, MonitorFilter, ProtocolError, parse_monitor_query, parse_subscribe

ENGINE = fake_engine({"alice", "bob"})


def start(call: CallSession, **over) -> list[dict]:
    msg = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "stream_id": "c1", **over}
    return call.receive_text(json.dumps(msg)).events


def silence_speech(seconds: float = 4.0, sr: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    speech = np.concatenate([np.zeros(int(0.5 * sr), np.float32), speech_like(seconds, sr, seed=3),
                             np.zeros(sr, np.float32)])
    return speech, np.zeros_like(speech)


def run(call: CallSession, data: bytes, chunk: int) -> tuple[list[dict], list]:
    events, jobs = [], []
    for i in range(0, len(data), chunk):
        out = call.receive_audio(data[i:i + chunk])
        events += out.events
        jobs += out.requests
    out = call.receive_text('{"type": "stop"}')
    return events + out.events, jobs + out.requests


# -- G.711 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["pcm_mulaw", "pcm_alaw"])
def test_g711_decodes_close_to_the_original(encoding):
    x = 0.5 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000).astype(np.float32)
    y = pcm_to_float(float_to_g711(x, encoding), encoding, 1)[:, 0]
    assert y.shape == x.shape and np.abs(y - x).max() < 0.02
    # a known code: µ-law 0xFF and A-law 0xD5 are (almost) zero
    assert abs(pcm_to_float(b"\xff" if encoding == "pcm_mulaw" else b"\xd5", encoding, 1)[0, 0]) < 1e-3


def test_mulaw_8khz_stream_makes_the_same_windows_as_16bit():
    speech, _ = silence_speech()
    narrow = resample(speech, 16000, 8000)
    a, b = CallSession(ENGINE), CallSession(ENGINE)
    start(a, sample_rate=8000, encoding="pcm_mulaw")
    start(b, sample_rate=8000)
    ev_a, jobs_a = run(a, float_to_g711(narrow, "pcm_mulaw"), 160)
    ev_b, jobs_b = run(b, float_to_int16(narrow).tobytes(), 320)
    assert len(jobs_a) >= 6 and abs(len(jobs_a) - len(jobs_b)) <= 1
    assert [e["type"] for e in ev_a] == [e["type"] for e in ev_b]


# -- channel modes ------------------------------------------------------------------------------------
def test_separate_channels_are_separate_tracks_and_events_carry_the_channel():
    speech, quiet = silence_speech()
    call = CallSession(ENGINE)
    ready = start(call, channels=2, channel_mode="separate", claimed_speakers={"1": "bob"})
    jsonschema.validate(ready[0], SCHEMAS["ready"])
    assert ready[0]["input"]["channels"] == 2 and ready[0]["channel_mode"] == "separate"
    assert ready[0]["claimed_speakers"] == {"1": "bob"}
    # speech on the right channel only: the left channel's track never hears it
    stereo = np.stack([quiet, speech], axis=1)
    events, jobs = run(call, float_to_int16(stereo).tobytes(), 4 * 1600)
    assert events and {e["channel"] for e in events} == {1}
    assert [e["type"] for e in events][:1] == ["speech_start"]
    assert [e["seq"] for e in ready + events] == list(range(len(ready) + len(events)))
    assert jobs and all(j.key == call.sessions[1].key and j.claimed == "bob" for j in jobs)
    summary = call.summary("stop")
    jsonschema.validate(summary, SCHEMAS["summary"])
    left, right = summary["channels"]
    assert (left["channel"], right["channel"]) == (0, 1)
    assert left["windows"]["emitted"] == 0 and right["windows"]["emitted"] == len(jobs)
    assert right["verification"]["claimed_speaker"] == "bob" and left["verification"] is None
    assert summary["identity"] is None and summary["seq"] == len(ready) + len(events)


def test_mix_mode_is_unchanged_one_track_without_channel_tags():
    speech, quiet = silence_speech()
    call = CallSession(ENGINE)
    ready = start(call, channels=2, claimed_speaker="alice")
    assert "channel" not in ready[0] and ready[0]["claimed_speaker"] == "alice"
    events, jobs = run(call, float_to_int16(np.stack([quiet, speech], axis=1)).tobytes(), 6400)
    assert jobs and all("channel" not in e for e in events)
    assert len(call.sessions) == 1 and call.summary("stop")["identity"] is not None


@pytest.mark.parametrize("over, code", [
    ({"channels": 2, "channel_mode": "stereo"}, "invalid_message"),
    ({"channels": 2, "channel_mode": "separate", "claimed_speakers": {"2": "alice"}}, "unknown_channel"),
    ({"channels": 1, "channel_mode": "separate", "claimed_speakers": {"1": "alice"}}, "unknown_channel"),
    ({"channels": 2, "channel_mode": "separate", "claimed_speakers": {"0": "mallory"}}, "unknown_speaker"),
    ({"channels": 2, "channel_mode": "separate", "claimed_speakers": {"left": "alice"}}, "invalid_message"),
    ({"channels": 2, "claimed_speakers": {"0": "alice"}}, "invalid_message"),  # claims need separate
    ({"channels": 2, "channel_mode": "separate", "claimed_speaker": "alice"}, "invalid_message"),
    ({"encoding": "pcm_ulaw"}, "unsupported_format"),
])
def test_bad_channel_options(over, code):
    with pytest.raises(ProtocolError) as e:
        start(CallSession(ENGINE), **over)
    assert e.value.code == code, e.value.message


def test_separate_stream_checks_whole_frames():
    call = CallSession(ENGINE)
    start(call, channels=2, channel_mode="separate", encoding="pcm_mulaw", sample_rate=8000)
    call.receive_audio(b"\xff" * 320)
    with pytest.raises(ProtocolError) as e:
        call.receive_audio(b"\xff" * 321)
    assert e.value.code == "partial_frame"


# -- Twilio ----------------------------------------------------------------------------------------------
def twilio_start(tracks=("inbound", "outbound"), params=None, **fmt) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ0123", "start": {
        "streamSid": "MZ0123", "accountSid": "AC1", "callSid": "CA1", "tracks": list(tracks),
        "customParameters": params or {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **fmt}}})


def twilio_media(track: str, payload: bytes | str, n: int = 1) -> str:
    if isinstance(payload, bytes):
        payload = base64.b64encode(payload).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(n + 1), "streamSid": "MZ0123",
                       "media": {"track": track, "chunk": str(n), "timestamp": str(20 * n), "payload": payload}})


def test_twilio_tracks_become_channels_with_the_claim_on_inbound():
    call = CallSession(ENGINE)
    tw = TwilioAdapter(call)
    assert tw.receive_text('{"event": "connected", "protocol": "Call", "version": "1.0.0"}').events == []
    ready = tw.receive_text(twilio_start(params={"claimed_speaker": "alice"})).events[0]
    assert ready["stream_id"] == "MZ0123" and ready["call_sid"] == "CA1"
    assert ready["channel_names"] == ["inbound", "outbound"] and ready["claimed_speakers"] == {"0": "alice"}
    speech, _ = silence_speech()
    mulaw = float_to_g711(resample(speech, 16000, 8000), "pcm_mulaw")
    events, jobs = [], []
    for i in range(0, len(mulaw), 160):  # 20 ms messages, the outbound track silent
        for track, chunk in (("inbound", mulaw[i:i + 160]), ("outbound", b"\xff" * len(mulaw[i:i + 160]))):
            out = tw.receive_text(twilio_media(track, chunk, i // 160))
            events += out.events
            jobs += out.requests
    tw.receive_text('{"event": "dtmf", "streamSid": "MZ0123", "sequenceNumber": "9", '
                    '"dtmf": {"track": "inbound_track", "digit": "1"}}')
    tw.receive_text('{"event": "mark", "streamSid": "MZ0123", "sequenceNumber": "9", "mark": {"name": "m"}}')
    out = tw.receive_text('{"event": "stop", "sequenceNumber": "99", "streamSid": "MZ0123", '
                          '"stop": {"accountSid": "AC1", "callSid": "CA1"}}')
    assert out.stop and tw.dtmf == ["1"] and tw.marks == ["m"]
    jobs += out.requests
    events += out.events
    assert {e["channel"] for e in events} == {0}
    assert jobs and all(j.key == call.sessions[0].key and j.claimed == "alice" for j in jobs)
    assert call.sessions[0].time == pytest.approx(len(mulaw) / 8000)


def test_twilio_token_from_custom_parameters():
    tw = TwilioAdapter(CallSession(ENGINE), token_check=lambda t: t == "s3cret-token-000000")
    with pytest.raises(ProtocolError) as e:
        tw.receive_text(twilio_start())
    assert e.value.code == "unauthorized" and "<Parameter name=\"token\"" in e.value.message
    with pytest.raises(ProtocolError) as e:
        tw.receive_text(twilio_start(params={"token": "guess"}))
    assert e.value.code == "unauthorized" and e.value.close_code == 4401
    ready = tw.receive_text(twilio_start(params={"token": "s3cret-token-000000", "x": "1"})).events[0]
    assert ready["custom_parameters"] == {"x": "1"}


@pytest.mark.parametrize("messages, code", [
    (["{not json"], "invalid_json"),
    (['{"event": "hangup"}'], "unknown_type"),
    (['{"start": {}}'], "unknown_type"),
    (['{"event": "start", "start": "MZ1"}'], "invalid_message"),
    ([twilio_start(tracks=("inbound", "sideways"))], "unknown_track"),
    ([twilio_start(), twilio_media("outbound_track", b"\xff" * 160)], "unknown_track"),
    ([twilio_start(tracks=("inbound",)), twilio_media("outbound", b"\xff" * 160)], "unknown_track"),
    ([twilio_start(), twilio_media("inbound", "not base64 at all!")], "invalid_payload"),
    ([twilio_media("inbound", b"\xff" * 160)], "not_started"),
    ([twilio_start(encoding="audio/x-opus")], "unsupported_format"),
    ([twilio_start(tracks=("outbound",), params={"claimed_speaker": "alice"})], "unknown_channel"),
    ([twilio_start(params={"claimed_speaker": "mallory"})], "unknown_speaker"),
    ([twilio_start(), twilio_start()], "already_started"),
])
def test_twilio_bad_messages(messages, code):
    tw = TwilioAdapter(CallSession(ENGINE))
    with pytest.raises(ProtocolError) as e:
        for m in messages:
            tw.receive_text(m)
    assert e.value.code == code, e.value.message
    with pytest.raises(ProtocolError):
        tw.receive_audio(b"\xff" * 160)


# -- monitor ------------------------------------------------------------------------------------------------
def test_monitor_filters_and_bounded_queue_drop_the_oldest():
    flt = parse_monitor_query({"token": ["t"], "stream_id": ["a,b"], "min_clone_level": ["medium"]})
    assert flt == MonitorFilter(frozenset({"a", "b"}), frozenset(), "medium")
    assert parse_subscribe(flt.to_json()) == flt
    assert flt.matches({"type": "identity", "stream_id": "a"}) and not flt.matches({"type": "identity",
                                                                                     "stream_id": "c"})
    assert not flt.matches({"type": "clone_suspicion", "stream_id": "a", "level": "low"})
    assert flt.matches({"type": "clone_suspicion", "stream_id": "b", "level": "high"})
    for bad in ({"types": ["identity,nope"]}, {"min_clone_level": ["severe"]}, {"stream": ["a"]}):
        with pytest.raises(ProtocolError):
            parse_monitor_query(bad)
    with pytest.raises(ProtocolError):
        parse_subscribe('{"type": "subscribe", "types": "identity"}')

    metrics = DaemonMetrics()

    async def scenario():
        hub = MonitorHub(queue_size=3, metrics=metrics)
        sub = hub.subscribe(MonitorFilter(types=frozenset({"identity"})))
        everything = hub.subscribe(MonitorFilter())
        assert metrics.monitor_subscribers._value.get() == 2
        for i in range(5):
            hub.publish({"type": "identity", "stream_id": "s", "seq": i})
            hub.publish({"type": "speech_start", "stream_id": "s", "seq": i})
        got = [json.loads(await sub.get())["seq"] for _ in range(3)]
        hub.unsubscribe(everything)
        return got, sub.dropped, everything.dropped

    assert asyncio.run(scenario()) == ([2, 3, 4], 2, 7)
    assert metrics.monitor_dropped._value.get() == 9 and metrics.monitor_subscribers._value.get() == 1


def identity(sid: str, speaker, windows: int, channel: int | None = None, score=0.5) -> dict:
    ev = {"type": "identity", "stream_id": sid, "seq": 1, "time": 1.0, "speaker": speaker, "score": score,
          "decision": {"speaker": speaker, "changed": False, "windows": windows, "candidate": speaker}}
    if channel is not None:
        ev["channel"] = channel
    return ev


def test_call_state_and_alert_rules_follow_the_events():
    ready = {"type": "ready", "stream_id": "s", "seq": 0, "time": 0.0, "input": {"channels": 2},
             "channel_mode": "separate", "claimed_speakers": {"0": "alice"}, "channel_names": ["inbound", "outbound"]}
    verif = {"type": "verification", "stream_id": "s", "seq": 2, "time": 2.0, "channel": 0, "threshold": 0.7,
             "window": {"score": 0.3}, "session": {"score": 0.31, "decision": "reject", "windows": 3}}
    clone = {"type": "clone_suspicion", "stream_id": "s", "seq": 3, "time": 2.0, "channel": 1, "level": "high",
             "score": 0.9, "speaker": "bob"}
    state, rules = CallState("twilio"), AlertRules("medium", unknown_windows=3)
    alerts = []
    for ev in [ready, identity("s", None, 2, 0), identity("s", None, 3, 0), identity("s", None, 4, 0), verif,
               verif, identity("s", "bob", 5, 1), clone, {**clone, "level": "medium"}]:
        state.apply(ev)
        alerts += rules.alerts(ev)
    assert [a["alert"] for a in alerts] == ["unknown_speaker", "claim_rejected", "clone_suspicion"]
    assert alerts[0]["channel"] == 0 and alerts[0]["claimed_speaker"] == "alice" and alerts[2]["level"] == "high"
    d = state.as_dict()
    assert d["stream_id"] == "s" and d["channel_mode"] == "separate"
    ch0, ch1 = d["channels"]
    assert (ch0["name"], ch0["verdict"], ch0["speaker"], ch0["scores"]) == ("inbound", "reject", None, [0.3, 0.3])
    assert (ch1["speaker"], ch1["clone_max_level"], ch1["clone_level"]) == ("bob", "high", "medium")
    assert [e["type"] for e in state.replay()] == ["ready", "identity", "verification", "identity",
                                                   "clone_suspicion"]
    assert sign("k", b"{}") == "sha256=" + __import__("hmac").new(b"k", b"{}", "sha256").hexdigest()
