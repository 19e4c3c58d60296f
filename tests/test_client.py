"""The client library against a real ``voxguard serve`` on loopback (real Resemblyzer,
real store of AN4 speakers): typed events, any audio format, errors as exceptions with the
server's codes, and reconnection after the server goes away."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import soxr

from client_support import (IMPOSTOR, SPEAKER, TOKEN, client_store, daemon, free_port,  # noqa: F401 (fixtures)
                            held_out_audio, spare_daemon)
from voxguard.clients import (ArraySource, AuthRefused, Client, ConnectFailed, ConnectionLost, Identity,
                              QueueSource, Ready, Reconnected, ServerError, Summary, Verification,
                              backoff_delay, encode_block, file_source)
from voxguard.protocol import SCHEMAS

pytestmark = pytest.mark.an4


async def collect(client: Client, source, **kwargs) -> list:
    return [ev async for ev in client.stream(source, **kwargs)]


def test_stream_identifies_and_verifies_any_format(daemon, an4_speakers):
    """float32 stereo at 44.1 kHz and int16 mono at 22.05 kHz both end with the right speaker accepted.
    (Not 8 kHz: band-limited audio against 16 kHz enrollments scores ~0.69 instead of ~0.86.)"""
    jsonschema = pytest.importorskip("jsonschema")
    x = held_out_audio(an4_speakers)
    stereo = soxr.resample(x, 16000, 44100)
    stereo = np.stack([stereo, 0.5 * stereo], axis=1).astype(np.float32)
    narrow = (soxr.resample(x, 16000, 22050) * 32767).astype(np.int16)
    client = Client(daemon.url, TOKEN)

    async def both():
        return await asyncio.gather(
            collect(client, ArraySource(stereo, 44100, speed=None), claimed_speaker=SPEAKER, stream_id="stereo"),
            collect(client, ArraySource(narrow, 22050, speed=None), claimed_speaker=SPEAKER, stream_id="narrow"))

    for events, sid, rate, channels in zip(asyncio.run(both()), ("stereo", "narrow"), (44100, 22050), (2, 1)):
        assert isinstance(events[0], Ready) and events[0].input == {"sample_rate": rate, "encoding": "pcm_s16le",
                                                                     "channels": channels}
        assert isinstance(events[-1], Summary) and events[-1].reason == "stop"
        assert [e.seq for e in events] == list(range(len(events)))
        assert {e.stream_id for e in events} == {sid}
        for e in events:
            jsonschema.validate(e.raw, SCHEMAS[e.type])
        idents = [e for e in events if isinstance(e, Identity)]
        assert len(idents) >= 5 and idents[-1].current == SPEAKER
        assert [e for e in events if isinstance(e, Verification)][-1].decision == "accept"
        assert events[-1].verdict == "accept" and events[-1].identity["speaker"] == SPEAKER


def test_run_file_source_and_impostor_claim(daemon, an4_speakers, tmp_path):
    from client_support import write_wav

    wav = write_wav(tmp_path / "call.wav", held_out_audio(an4_speakers))
    seen = []
    summary = asyncio.run(Client(daemon.url, TOKEN).run(file_source(wav, speed=None), seen.append,
                                                        claimed_speaker=IMPOSTOR))
    assert summary.verdict == "reject"
    assert summary.verification["claimed_speaker"] == IMPOSTOR
    assert seen[-1] is summary and isinstance(seen[0], Ready)


def test_server_error_event_raises_with_codes(daemon, an4_speakers):
    x = held_out_audio(an4_speakers, files=1)
    with pytest.raises(ServerError) as e:
        asyncio.run(collect(Client(daemon.url, TOKEN), ArraySource(x, 16000, speed=None), claimed_speaker="nobody"))
    assert e.value.code == "unknown_speaker" and e.value.close_code == 4404
    assert "not enrolled" in e.value.message and e.value.exit_code == 4


def test_token_refused(daemon, an4_speakers):
    x = held_out_audio(an4_speakers, files=1)
    for token, status in ((None, 401), ("wrong-token-wrong-token", 403)):
        client = Client(daemon.url, token, reconnect=True)  # a refused token is never retried
        with pytest.raises(AuthRefused) as e:
            asyncio.run(collect(client, ArraySource(x, 16000, speed=None)))
        assert e.value.status == status and e.value.exit_code == 6 and not e.value.retryable


def test_server_down_with_backoff(an4_speakers):
    x = held_out_audio(an4_speakers, files=1)
    url = f"ws://127.0.0.1:{free_port()}/v1/stream"
    with pytest.raises(ConnectFailed) as e:
        asyncio.run(collect(Client(url), ArraySource(x, 16000)))
    assert "Connection refused" in e.value.message and e.value.exit_code == 5
    delays: list[float] = []

    async def record(d: float) -> None:
        delays.append(d)

    client = Client(url, reconnect=True, max_attempts=4, backoff=0.01, max_backoff=0.02)
    client.sleep = record
    with pytest.raises(ConnectFailed):
        asyncio.run(collect(client, ArraySource(x, 16000)))
    assert len(delays) == 3 and all(0.005 <= d <= 0.02 for d in delays)


def test_backoff_is_exponential_with_jitter():
    rng = random.Random(1)
    for attempt, (lo, hi) in enumerate([(0.25, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.5, 5.0)], start=1):
        d = [backoff_delay(attempt, 0.5, 5.0, rng) for _ in range(50)]
        assert lo <= min(d) and max(d) <= hi and max(d) - min(d) > (hi - lo) / 4


def test_encode_block_formats():
    f = np.array([0.5, -0.5, 2.0], dtype=np.float32)
    assert np.frombuffer(encode_block(f, "pcm_s16le", 1), "<i2").tolist() == [16383, -16383, 32767]
    assert np.frombuffer(encode_block(f, "pcm_f32le", 1), "<f4").tolist() == [0.5, -0.5, 2.0]
    i = np.array([[1000, -1000]], dtype=np.int16)
    assert np.frombuffer(encode_block(i, "pcm_s16le", 2), "<i2").tolist() == [1000, -1000]
    with pytest.raises(ValueError, match="NaN"):
        encode_block(np.array([np.nan], dtype=np.float32), "pcm_f32le", 1)
    with pytest.raises(ValueError, match="sample frames"):
        encode_block(b"\0\0\0", "pcm_s16le", 1)
    with pytest.raises(ValueError, match="channel"):
        encode_block(i, "pcm_s16le", 1)


def test_connection_lost_and_reconnect(spare_daemon, an4_speakers):
    """The daemon is killed mid-stream: a plain client raises ConnectionLost (1006); a client
    with reconnect=True opens stream '<id>~1' on the restarted daemon and finishes there."""
    x = held_out_audio(an4_speakers)
    port = free_port()
    first = spare_daemon(port)
    plain = Client(first.url)
    patient = Client(first.url, reconnect=True, max_attempts=60, backoff=0.2, max_backoff=0.5)
    identities = asyncio.Event()

    async def watch(client, source, sid):
        events = []
        async for ev in client.stream(source, stream_id=sid, claimed_speaker=SPEAKER):
            events.append(ev)
            if isinstance(ev, Identity):
                identities.set()
        return events

    async def scenario():
        # a live source fed block by block: it keeps producing while the daemon is down
        live = QueueSource(16000)
        plain_task = asyncio.create_task(watch(plain, ArraySource(x, 16000), "plain"))
        patient_task = asyncio.create_task(watch(patient, live, "patient"))
        blocks = [x[i:i + 1600] for i in range(0, len(x), 1600)]
        fed = 0
        while not identities.is_set():
            live.put(blocks[fed % len(blocks)])
            fed += 1
            await asyncio.sleep(0.1)
        first.kill()
        with pytest.raises(ConnectionLost) as lost:
            await plain_task
        restarted = await asyncio.to_thread(spare_daemon, port)
        for block in blocks * 2:  # enough audio on the new stream for a verdict
            live.put(block)
            await asyncio.sleep(0.02)
        live.close()
        return lost.value, await patient_task, restarted

    lost, events, restarted = asyncio.run(scenario())
    assert lost.close_code in (None, 1006) and "dropped" in lost.message and lost.exit_code == 7
    reconnected = [e for e in events if isinstance(e, Reconnected)]
    assert len(reconnected) == 1 and reconnected[0].stream_id == "patient~1"
    after = events[events.index(reconnected[0]) + 1:]
    assert isinstance(after[0], Ready) and after[0].stream_id == "patient~1"
    assert isinstance(after[-1], Summary) and after[-1].stream_id == "patient~1"
    assert after[-1].identity["decision"]["speaker"] == SPEAKER and after[-1].verdict == "accept"
    restarted.kill()


class FailingSource:
    """Real audio, then the capture fails (an unplugged device) or yields NaN samples."""

    sample_rate, channels = 16000, 1

    def __init__(self, samples, error: Exception | None):
        self.samples, self.error = samples, error

    async def __aiter__(self):
        for i in range(0, 16000, 1600):
            yield self.samples[i:i + 1600]
        if self.error is not None:
            raise self.error
        yield np.full(1600, np.nan, dtype=np.float32)  # a block the protocol cannot carry


@pytest.mark.parametrize("error", [OSError("capture device unplugged"), None])
def test_source_failure_is_raised_and_not_retried(daemon, an4_speakers, error):
    source = FailingSource(held_out_audio(an4_speakers, files=1), error)
    client = Client(daemon.url, TOKEN, reconnect=True)
    with pytest.raises(OSError if error else ValueError) as e:
        asyncio.run(collect(client, source))
    assert ("unplugged" if error else "NaN") in str(e.value)
