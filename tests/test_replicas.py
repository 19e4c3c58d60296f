"""Replicas follow the store by themselves: real daemons (``voxguard serve`` subprocesses) on a
real PostgreSQL store (throwaway server, tests/pg_support.py) and on an SQLite file, real
WebSocket streams, enrollment through the real CLI — and the bad inputs of a store URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from daemon_support import DaemonProcess, free_port, held_out

from voxguard.clients import Client
from voxguard.clients.sources import ArraySource
from voxguard.embedders.base import EmbedderIdentity, l2_normalise
from voxguard.store import NewSample, open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FOLLOW_DEADLINE = 2.0  # seconds from the enrollment's commit to both replicas identifying the speaker


def seed(location: str, identity: EmbedderIdentity, speakers=("s1", "s2", "s3"), seed: int = 0) -> None:
    """Speakers with random voiceprints under ``identity`` (distractors; nothing to embed)."""
    rng = np.random.default_rng(seed)
    with open_store(location) as store:
        for name in speakers:
            samples = [NewSample(sha256=hashlib.sha256(f"{name}{i}".encode()).hexdigest(),
                                 embedding=l2_normalise(rng.standard_normal(identity.dim)).astype(np.float32),
                                 duration=2.0, source_path=f"/seed/{name}{i}.wav") for i in range(3)]
            store.add_samples(name, "genuine", samples, identity)


def readyz(d: DaemonProcess) -> dict:
    with urllib.request.urlopen(d.http + "/readyz", timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def metric(d: DaemonProcess, name: str) -> float:
    with urllib.request.urlopen(d.http + "/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def long_audio(an4_speakers, name: str, seconds: float) -> np.ndarray:
    clips = [sf.read(str(p), dtype="float32")[0] for p in held_out(an4_speakers, name)]
    reps = int(np.ceil(seconds / sum(len(c) / 16000 for c in clips)))
    return np.concatenate(clips * reps)


def commit_time(url: str, timeout: float = 180) -> float:
    """When the next write to the store at ``url`` committed: the NOTIFY it sends in its
    transaction, heard on a LISTEN connection of the test's own."""
    import psycopg

    from voxguard.store_pg import NOTIFY_CHANNEL

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"LISTEN {NOTIFY_CHANNEL}")
        for _ in db.notifies(timeout=timeout, stop_after=1):
            return time.monotonic()
    raise AssertionError("no write to the store was announced")


class Watch:
    """One stream to a daemon, recording when each speaker was first identified."""

    def __init__(self, d: DaemonProcess, audio: np.ndarray, speed: float = 1.0):
        self.d, self.audio, self.speed = d, audio, speed
        self.first: dict[str, float] = {}
        self.identities = 0
        self.events: list = []
        self.stop = asyncio.Event()
        self.summary = None

    async def run(self) -> None:
        client = Client(self.d.url)
        async for ev in client.stream(ArraySource(self.audio, 16000, speed=self.speed), stop=self.stop):
            self.events.append(ev)
            if ev.type == "identity":
                self.identities += 1
                if ev.speaker is not None:
                    self.first.setdefault(ev.speaker, time.monotonic())
            elif ev.type == "summary":
                self.summary = ev


async def _until(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return pred()


# -- two replicas on one PostgreSQL store ------------------------------------------------------------
@pytest.mark.an4
def test_two_replicas_identify_a_new_speaker_within_2_s_of_its_enrollment(pg_url, embedder, an4_speakers):
    """Both replicas serve a speaker enrolled through the CLI within 2 s of the commit, with no
    reload call; streams open across the reload keep running (a stream keeps the snapshot it
    started with — daemon/snapshot.py), and a stream opened on each replica once it has
    reloaded identifies the new speaker."""
    new = "fbbh"
    seed(pg_url, embedder.identity)
    daemons = [DaemonProcess(pg_url), DaemonProcess(pg_url)]
    try:
        with open_store(pg_url, readonly=True) as s:
            rev0 = s.revision
        for d in daemons:
            r = readyz(d)
            assert r["revision"] == rev0 and not r["degraded"] and r["store"]["engine"] == "postgresql"
            assert "@" in r["store"]["location"] and pg_url.split(":")[2].split("@")[0] not in json.dumps(r)
        audio = long_audio(an4_speakers, new, 150)
        enroll_files = [str(p) for p in an4_speakers[new][:3]]

        async def scenario():
            running = [Watch(d, audio) for d in daemons]  # open across the enrollment and the reload
            tasks = [asyncio.create_task(w.run()) for w in running]
            assert await _until(lambda: all(w.identities >= 2 for w in running), 60), "streams produce no identity"
            served: dict[int, float] = {}
            fresh = [Watch(d, audio[: 16000 * 20], speed=4.0) for d in daemons]

            async def follow(i: int) -> None:  # polls from before the enrollment starts
                end = time.monotonic() + 120
                while (await asyncio.to_thread(readyz, daemons[i]))["revision"] == rev0:
                    assert time.monotonic() < end, "replica did not reload"
                    await asyncio.sleep(0.02)
                served[i] = time.monotonic()
                await fresh[i].run()

            heard = asyncio.ensure_future(asyncio.to_thread(commit_time, pg_url))
            await asyncio.sleep(0.5)  # LISTEN is in place
            followers = asyncio.ensure_future(asyncio.gather(*(follow(i) for i in range(len(daemons)))))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "voxguard.cli", "--store", pg_url, "--device", "cpu", "enroll", "add",
                new, *enroll_files, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            committed = await heard
            await asyncio.wait_for(followers, 120)
            with open_store(pg_url, readonly=True) as st:
                rev = st.revision
            assert all(w.identities > 0 for w in running)
            for w in running:
                w.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # no stream raised (dropped / error event)
            return running, fresh, served, committed, rev

        running, fresh, served, committed, rev = asyncio.run(scenario())
        follow_s = [served[i] - committed for i in range(len(daemons))]
        ident_s = [w.first.get(new, float("inf")) - committed for w in fresh]
        print(f"\nreplicas serving the new revision {['%.2f s' % x for x in follow_s]} after the commit; "
              f"new streams identified the speaker {['%.2f s' % x for x in ident_s]} after it")
        assert all(x <= FOLLOW_DEADLINE for x in follow_s), follow_s
        assert all(x < float("inf") for x in ident_s), ident_s
        for w in running + fresh:
            assert w.summary is not None and not [e for e in w.events if e.type == "error"]
        for d in daemons:
            r = readyz(d)
            assert r["revision"] == rev > rev0 and r["index"]["enrolled_speakers"] == 4
            assert metric(d, 'voxguard_reloads_total{result="ok"}') >= 1
            assert metric(d, "voxguard_store_errors_total") == 0
    finally:
        for d in daemons:
            d.terminate()


# -- an SQLite store is polled ------------------------------------------------------------------------
def test_sqlite_replica_follows_a_cli_removal_without_a_reload_call(tmp_path, embedder):
    store = tmp_path / "vg.db"
    seed(str(store), embedder.identity)
    d = DaemonProcess(store)
    try:
        r = readyz(d)
        assert r["index"]["enrolled_speakers"] == 3 and r["store"]["engine"] == "sqlite"
        rc = run_cli("enroll", "remove", "s2", store=store)
        assert rc.returncode == 0, rc.stderr
        t0 = time.monotonic()
        while readyz(d)["index"]["enrolled_speakers"] != 2 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert took <= FOLLOW_DEADLINE, took
        with open_store(store, readonly=True) as s:
            assert readyz(d)["revision"] == s.revision
    finally:
        d.terminate()


# -- the database going away while serving -----------------------------------------------------------------
@pytest.mark.an4
def test_database_going_away_degrades_keeps_streams_and_reconnects(embedder, an4_speakers):
    from pg_support import MISSING, NoServerUser, PgCluster, pg_bindir

    if pg_bindir() is None:
        pytest.skip(MISSING)
    try:
        cluster = PgCluster(pg_bindir())  # its own server: this test stops and restarts it
    except NoServerUser as e:
        pytest.skip(str(e))
    d = None
    try:
        url = cluster.new_database()
        seed(url, embedder.identity)
        d = DaemonProcess(url, extra=("-v",))
        audio = long_audio(an4_speakers, "fash", 120)

        async def scenario():
            w = Watch(d, audio)
            task = asyncio.create_task(w.run())
            assert await _until(lambda: w.identities >= 2, 60)
            await asyncio.to_thread(cluster.stop, "fast")
            assert await _until(lambda: readyz(d)["degraded"], 10), readyz(d)
            r = readyz(d)
            assert r["store"]["state"] == "degraded" and r["store"]["reason"] and r["ready"]
            assert cluster.password not in json.dumps(r)
            before = w.identities
            assert await _until(lambda: w.identities >= before + 4, 30), "the stream stopped while degraded"
            assert metric(d, "voxguard_store_errors_total") >= 1 and metric(d, "voxguard_store_degraded") == 1
            await asyncio.to_thread(cluster.start)
            assert await _until(lambda: not readyz(d)["degraded"], 20), readyz(d)
            seed(url, embedder.identity, speakers=("late",), seed=1)  # heard through the new LISTEN
            with open_store(url, readonly=True) as s:
                rev = s.revision
            assert await _until(lambda: readyz(d)["revision"] == rev, FOLLOW_DEADLINE + 1), readyz(d)
            assert metric(d, "voxguard_store_degraded") == 0
            w.stop.set()
            await asyncio.wait_for(task, 60)
            return w

        w = asyncio.run(scenario())
        assert w.summary is not None
        log = d.log_tail(400)
        assert cluster.password not in log
        # one error line for the outage (not one per retry), one line when it is over
        assert len([ln for ln in log.splitlines() if "serving from the loaded index" in ln]) == 1, log
        assert "no longer degraded" in log
    finally:
        if d is not None:
            d.terminate()
        cluster.destroy()


# -- bad input ----------------------------------------------------------------------------------------------
def _one_error_line(r) -> str:
    err = r.stderr.decode().strip()
    assert r.returncode != 0 and r.stdout.decode().strip() == "", (r.returncode, r.stdout, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxguard: error: "), err
    return lines[0]


@pytest.mark.parametrize("url", ["mysql://root:pw@db/voxguard", "http://example.com/store", "sqlite3://x.db",
                                 "postgresq://x/y"])
def test_unsupported_store_url_is_refused_and_creates_nothing(tmp_path, url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, env in ((("enroll", "list"), None), (("enroll", "stats"), None), (("serve", "--port", "0"), None),
                      (("enroll", "list"), {"VOXGUARD_STORE": url})):
        r = run_cli(*args, "--store", url, env=env) if env is None else run_cli(*args, env=env)
        line = _one_error_line(r)
        assert "unsupported store URL" in line and "pw" not in line
    assert list(tmp_path.iterdir()) == []  # no folder named after the scheme


def test_unreachable_database_one_line_nonzero_exit():
    url = f"postgresql://voxguard:s3cret-pw@127.0.0.1:{free_port()}/voxguard"
    for args in (("enroll", "list"), ("serve", "--port", "0", "--device", "cpu")):
        t0 = time.monotonic()
        line = _one_error_line(run_cli(*args, "--store", url, timeout=120))
        assert "cannot connect to store postgresql://voxguard:***@127.0.0.1" in line
        assert "s3cret" not in line and time.monotonic() - t0 < 60


def test_wrong_password_one_line_without_the_password(pg_cluster, pg_url):
    seed(pg_url, EmbedderIdentity("resemblyzer", 8, "x"))
    wrong = pg_url.replace(pg_cluster.password, "Wr0ng-Passw0rd")
    for args in (("enroll", "list"), ("serve", "--port", "0", "--device", "cpu")):
        r = run_cli(*args, "--store", wrong)
        line = _one_error_line(r)
        assert "password authentication failed" in line
        assert "Wr0ng-Passw0rd" not in line and pg_cluster.password not in line


def test_postgres_store_of_another_embedder_is_refused(pg_url, tmp_path):
    other = EmbedderIdentity("resemblyzer", 256, "some-other-weights")
    seed(pg_url, other)
    with open_store(pg_url, readonly=True) as s:
        rev = s.revision
    wav = tmp_path / "a.wav"
    sf.write(str(wav), (0.1 * np.sin(np.arange(32000) / 7)).astype(np.float32), 16000)
    for args in (("serve", "--port", "0", "--device", "cpu", "--embedder", "resemblyzer"),
                 ("enroll", "add", "bob", str(wav), "--embedder", "resemblyzer", "--device", "cpu")):
        line = _one_error_line(run_cli(*args, "--store", pg_url))
        assert "holds embeddings from resemblyzer" in line and "some-other-weights" in line
    with open_store(pg_url, readonly=True) as s:
        assert s.revision == rev and [x.name for x in s.speakers()] == ["s1", "s2", "s3"]


def test_replica_started_on_an_empty_database_picks_up_the_first_enrollment(pg_url, embedder):
    d = DaemonProcess(pg_url)  # a fresh deployment: the database exists, the store not yet
    try:
        r = readyz(d)
        assert r["index"]["enrolled_speakers"] == 0 and not r["degraded"]
        assert r["store"]["state"] in ("starting", "missing")
        seed(pg_url, embedder.identity, speakers=("first",))
        t0 = time.monotonic()
        while readyz(d)["index"]["enrolled_speakers"] != 1 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert time.monotonic() - t0 <= FOLLOW_DEADLINE
        assert readyz(d)["store"]["state"] == "ok"
    finally:
        d.terminate()


def test_cli_commands_on_a_postgres_store(pg_url, embedder):
    """stats / list / show / calibrate / remove through the CLI against PostgreSQL."""
    from voxguard.bands import BANDS

    rng = np.random.default_rng(5)
    centres = l2_normalise(rng.standard_normal((12, embedder.identity.dim)))
    with open_store(pg_url) as store:
        for i, c in enumerate(centres):
            samples = []
            for j in range(4):
                views = {b: l2_normalise(c + 0.4 * rng.standard_normal((3, len(c)))).astype(np.float32) for b in BANDS}
                samples.append(NewSample(hashlib.sha256(f"{i}/{j}".encode()).hexdigest(),
                                         l2_normalise(views["wide"].mean(axis=0, keepdims=True))[0], 2.0,
                                         f"/seed/{i}/{j}.wav", views=views))
            store.add_samples(f"spk{i:02d}", "genuine", samples, embedder.identity)
    r = run_cli("--json", "enroll", "stats", "--store", pg_url)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["speakers"] == 12 and stats["genuine_samples"] == 48 and stats["size_bytes"] > 0
    assert stats["store"].startswith("postgresql://voxguard:***@")
    assert run_cli("enroll", "show", "spk03", "--store", pg_url).returncode == 0
    r = run_cli("--json", "calibrate", "--backend", "cosine", "--no-clone-detector", "--store", pg_url)
    assert r.returncode == 0, r.stderr.decode()
    with open_store(pg_url, readonly=True) as s:
        assert s.latest_calibration() is not None
    r = run_cli("enroll", "remove", "spk00", "--store", pg_url)
    assert r.returncode == 0, r.stderr
    with open_store(pg_url, readonly=True) as s:
        assert [x.name for x in s.speakers()][0] == "spk01"
