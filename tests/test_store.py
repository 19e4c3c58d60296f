"""voxguard.store: one test suite run against both engines — an SQLite file in a tmp dir and a
fresh database on a throwaway PostgreSQL server (tests/pg_support.py) — plus what is
particular to each (foreign files and migrations; URLs, foreign databases)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from voxguard.embedders.base import EmbedderIdentity, l2_normalise
from voxguard.errors import EmbedderMismatch, StoreError, StoreMissing, UnknownSpeaker
from voxguard.store import SCHEMA_VERSION, NewSample, SpeakerStore, open_store, parse_store_location

IDENT = EmbedderIdentity("resemblyzer", 8, "test-1")
OTHER = EmbedderIdentity("titanet", 8, "nemo-weights:abc")
rng = np.random.default_rng(0)


def sample(tag: str, audio: bool = False, dim: int = 8) -> NewSample:
    return NewSample(sha256=hashlib.sha256(tag.encode()).hexdigest(),
                     embedding=l2_normalise(rng.standard_normal(dim)), duration=1.25, source_path=f"/data/{tag}.wav",
                     provenance={"tag": tag},
                     audio=(0.1 * np.sin(np.arange(8000) / 10)).astype(np.float32) if audio else None)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Backend:
    """One store location of either engine, opened as often as a test likes."""

    def __init__(self, engine: str, location: str):
        self.engine, self.location = engine, location

    def open(self, **kw):
        return open_store(self.location, **kw)

    def exists(self) -> bool:
        return parse_store_location(self.location).exists()

    def raw(self, sql: str) -> None:
        """Run SQL behind the store's back (what another program could do)."""
        if self.engine == "sqlite":
            with sqlite3.connect(self.location) as db:
                db.execute(sql)
        else:
            import psycopg

            with psycopg.connect(self.location, autocommit=True) as db:
                db.execute(sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "sub" / "s.db"))
    return Backend("postgresql", request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend):
    with backend.open() as s:
        yield s


def test_new_store(backend):
    assert not backend.exists()
    with backend.open() as s:
        assert backend.exists() and s.embedder is None and s.speakers() == []
        rev, sid = s.revision, s.store_id
        assert len(sid) == 32 and s.state() == (sid, rev)
        st = s.stats()
        assert st["speakers"] == 0 and st["genuine_samples"] == 0 and st["embedder"] is None
        assert st["size_bytes"] > 0 and st["store"] == s.location
    with backend.open() as s:  # reopening keeps identity and revision
        assert (s.revision, s.store_id) == (rev, sid)


def test_add_list_show(store):
    r0 = store.revision
    assert store.add_samples("alice", "genuine", [sample("a1"), sample("a2")], IDENT) == 2
    assert store.add_samples("alice", "clone", [sample("a-fake", audio=True)], IDENT) == 1
    assert store.add_samples("bob", "genuine", [sample("b1")], IDENT) == 1
    assert store.revision == r0 + 3
    assert store.embedder == IDENT
    assert [(s.name, s.genuine, s.clones) for s in store.speakers()] == [("alice", 2, 1), ("bob", 1, 0)]
    assert store.speaker("alice").duration == pytest.approx(3.75)
    infos = store.samples("alice")
    assert [i.kind for i in infos] == ["genuine", "genuine", "clone"]
    assert infos[2].provenance == {"tag": "a-fake"} and infos[2].source_path == "/data/a-fake.wav"
    assert store.samples(kind="clone")[0].speaker == "alice"
    assert store.known_hashes("alice", "genuine") == {sample("a1").sha256, sample("a2").sha256}
    st = store.stats()
    assert (st["speakers"], st["genuine_samples"], st["clone_samples"]) == (2, 3, 1)
    table = store.embeddings()
    assert table.vectors.shape == (4, 8) and table.vectors.dtype == np.float32
    assert table.speakers == ["alice", "alice", "alice", "bob"] and table.kinds.count("clone") == 1
    assert len(store.embeddings("genuine").ids) == 3


def test_embedding_and_audio_round_trip(store):
    s = sample("x", audio=True)
    store.add_samples("x", "genuine", [s], IDENT)
    table = store.embeddings()
    np.testing.assert_array_equal(table.vectors[0], s.embedding)
    back = store.sample_audio(int(table.ids[0]))
    np.testing.assert_allclose(back, s.audio, atol=1 / 32000)  # stored as 16-bit FLAC
    assert store.add_samples("y", "genuine", [sample("y")], IDENT) == 1
    assert store.sample_audio(int(store.embeddings().ids[1])) is None
    with pytest.raises(StoreError):
        store.sample_audio(999)


def test_re_adding_is_a_no_op(store):
    store.add_samples("alice", "genuine", [sample("a1")], IDENT)
    rev = store.revision
    assert store.add_samples("alice", "genuine", [sample("a1")], IDENT) == 0
    assert store.revision == rev  # nothing changed, nothing to rebuild
    assert store.speaker("alice").genuine == 1
    # the same audio as a clone of alice, or as another speaker's sample, is a different sample
    assert store.add_samples("alice", "clone", [sample("a1")], IDENT) == 1
    assert store.add_samples("bob", "genuine", [sample("a1")], IDENT) == 1


def test_other_embedder_is_refused(store):
    store.add_samples("alice", "genuine", [sample("a1")], IDENT)
    rev = store.revision
    for other in (OTHER, EmbedderIdentity("resemblyzer", 8, "test-2"), EmbedderIdentity("resemblyzer", 16, "test-1")):
        with pytest.raises(EmbedderMismatch, match="holds embeddings from resemblyzer"):
            store.add_samples("alice", "genuine", [sample("a2", dim=other.dim)], other)
    assert store.revision == rev and store.speaker("alice").genuine == 1
    store.check_embedder(IDENT)


def test_invalid_samples_write_nothing(store):
    bad_dim = sample("bad", dim=4)
    nan = sample("nan")
    nan.embedding[0] = np.nan
    for bad in (bad_dim, nan):
        with pytest.raises(StoreError, match="finite 8-d vector"):
            store.add_samples("alice", "genuine", [sample("ok"), bad], IDENT)
    for name in ("", "   ", "x" * 201):
        with pytest.raises(StoreError, match="speaker name"):
            store.add_samples(name, "genuine", [sample("ok")], IDENT)
    with pytest.raises(ValueError):
        store.add_samples("alice", "fake", [sample("ok")], IDENT)
    assert store.speakers() == [] and store.embedder is None


def test_transaction_rolls_back_on_error(store):
    store.add_samples("alice", "genuine", [sample("a1")], IDENT)
    rev = store.revision
    with pytest.raises(RuntimeError):
        with store.transaction() as db:
            db.execute("INSERT INTO speakers (name, created_at) VALUES ('ghost', 0)")
            db.execute("DELETE FROM samples")
            raise RuntimeError("crash in the middle of a write")
    assert [s.name for s in store.speakers()] == ["alice"]
    assert store.speaker("alice").genuine == 1 and store.revision == rev


def test_concurrent_reader_sees_old_or_new_state(backend):
    with backend.open() as writer:
        writer.add_samples("alice", "genuine", [sample("a1")], IDENT)
        with backend.open(readonly=True) as reader:
            with writer.transaction() as db:
                db.execute("INSERT INTO speakers (name, created_at) VALUES ('bob', 0)")
                assert [s.name for s in reader.speakers()] == ["alice"]  # uncommitted: old state
            assert [s.name for s in reader.speakers()] == ["alice", "bob"]


def test_remove_speaker(store):
    store.add_samples("alice", "genuine", [sample("a1"), sample("a2")], IDENT)
    store.add_samples("alice", "clone", [sample("af")], IDENT)
    store.add_samples("bob", "genuine", [sample("b1")], IDENT)
    rev = store.revision
    assert store.remove_speaker("alice") == 3
    assert store.revision == rev + 1
    assert [s.name for s in store.speakers()] == ["bob"]
    assert len(store.embeddings().ids) == 1
    with pytest.raises(UnknownSpeaker, match="'alice'"):
        store.remove_speaker("alice")
    with pytest.raises(UnknownSpeaker):
        store.speaker("carol")
    with pytest.raises(UnknownSpeaker):
        store.samples("carol")
    assert store.revision == rev + 1


def test_readonly(backend):
    for kw in ({"readonly": True}, {"create": False}):
        with pytest.raises(StoreMissing, match="no (voxguard )?store (at|in)"):
            backend.open(**kw)
    assert not backend.exists()
    with backend.open() as s:
        s.add_samples("alice", "genuine", [sample("a1")], IDENT)
        rev = s.revision
    before = sha(Path(backend.location)) if backend.engine == "sqlite" else None
    with backend.open(readonly=True) as ro:
        assert ro.speaker("alice").genuine == 1 and ro.embedder == IDENT
        with pytest.raises(Exception, match="read-?only"):
            ro.add_samples("bob", "genuine", [sample("b1")], IDENT)
    if before is not None:
        assert sha(Path(backend.location)) == before
    with backend.open() as s:
        assert s.revision == rev and [x.name for x in s.speakers()] == ["alice"]


@pytest.mark.parametrize("readonly", [False, True])
def test_not_a_store(tmp_path, readonly):
    junk = tmp_path / "junk.db"
    junk.write_bytes(np.random.default_rng(1).bytes(8192))
    before = sha(junk)
    with pytest.raises(StoreError, match="not an SQLite database"):
        SpeakerStore(junk, readonly=readonly)
    assert sha(junk) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"]  # no -wal / -shm left behind

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
    before = sha(other)
    with pytest.raises(StoreError, match="not a voxguard store .*notes"):
        SpeakerStore(other, readonly=readonly)
    assert sha(other) == before

    with pytest.raises(StoreError, match="is a directory"):
        SpeakerStore(tmp_path, readonly=readonly)


def test_other_schema_version_is_refused(backend):
    backend.open().close()
    backend.raw("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=f"version 99.*version.*{SCHEMA_VERSION}"):
        backend.open()


def test_calibrations(store):
    with pytest.raises(StoreError, match="empty"):
        store.save_calibration({"x": 1})
    assert store.latest_calibration() is None
    store.add_samples("alice", "genuine", [sample("a1")], IDENT)
    first = store.save_calibration({"thresholds": {"accept": 0.5}})
    second = store.save_calibration({"thresholds": {"accept": 0.6}}, b"model-bytes")
    assert second > first
    cid, data, blob = store.latest_calibration()
    assert (cid, data, blob) == (second, {"thresholds": {"accept": 0.6}}, b"model-bytes")


def test_band_views_roundtrip_backfill_and_cascade(store):
    s1 = sample("v1")
    s1.views = {"wide": rng.standard_normal((3, 8)).astype(np.float32),
                "telephone": rng.standard_normal((2, 8)).astype(np.float32)}
    store.add_samples("alice", "genuine", [s1, sample("v2")], IDENT)
    tel = store.views("telephone")
    assert len(tel.ids) == 1 and tel.windows[0].shape == (2, 8) and tel.speakers == ["alice"]
    np.testing.assert_allclose(tel.windows[0], s1.views["telephone"])
    assert np.allclose(np.linalg.norm(tel.utterances(), axis=1), 1.0)
    missing = store.samples_without_view("telephone")
    assert len(missing) == 1
    assert store.add_views("telephone", {missing[0]: np.ones((1, 8), np.float32)}) == 1
    assert store.samples_without_view("telephone") == []
    with pytest.raises(StoreError, match="window embeddings"):
        store.add_views("wide", {missing[0]: np.ones((1, 7), np.float32)})
    store.remove_speaker("alice")
    assert len(store.views("telephone").ids) == 0  # removed with their samples


def test_schema_1_store_is_migrated_on_write_and_readable_read_only(tmp_path):
    path = tmp_path / "old.db"
    with SpeakerStore(path) as s:
        s.add_samples("bob", "genuine", [sample("b1")], IDENT)
    with sqlite3.connect(path) as db:  # what a version-1 store looks like
        db.execute("DROP TABLE sample_views")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with SpeakerStore(path, readonly=True) as s:
        assert len(s.views("wide").ids) == 0 and len(s.samples_without_view("wide")) == 1
    with SpeakerStore(path) as s:
        assert s._meta("schema_version") == str(SCHEMA_VERSION)
        assert s.samples()[0].speaker == "bob" and len(s.samples_without_view("wide")) == 1


def test_wait_for_change_then_state_shows_another_writers_commit(backend):
    import threading
    import time

    with backend.open() as follower, backend.open() as writer:
        before = follower.state()

        def write():
            time.sleep(0.3)
            writer.add_samples("alice", "genuine", [sample("w1")], IDENT)

        t = threading.Thread(target=write)
        t0 = time.monotonic()
        t.start()
        seen = before
        while seen == before and time.monotonic() - t0 < 5:
            follower.wait_for_change(0.5)
            seen = follower.state()
        t.join()
        assert seen == (before[0], before[1] + 1)
        if backend.engine == "postgresql":  # woken by the NOTIFY, not by the timeout
            assert time.monotonic() - t0 < 0.3 + 0.45


def test_concurrent_writers_queue_and_both_land(backend):
    """Two processes' connections adding the same new speaker at once (the write lock)."""
    import threading

    stores = [backend.open() for _ in range(2)]
    stores[0].close()  # created; now two writers race on a fresh speaker
    stores = [backend.open() for _ in range(2)]
    errors: list[BaseException] = []

    def add(s, tag):
        try:
            s.add_samples("carol", "genuine", [sample(tag)], IDENT)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=add, args=(s, f"c{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    with backend.open(readonly=True) as s:
        assert s.speaker("carol").genuine == 2


@pytest.mark.parametrize("value", ["mysql://u:pw@h/db", "http://example.com/x", "sqlite://x.db", "s3://b/k"])
def test_unsupported_url_schemes_are_refused(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="unsupported store URL") as e:
        open_store(value)
    assert "pw" not in e.value.message and list(tmp_path.iterdir()) == []


def test_locations():
    loc = parse_store_location("postgresql://vg:secret@db.example:5433/voxguard?sslmode=require")
    assert loc.engine == "postgresql" and loc.index_path is None and loc.path is None
    assert str(loc) == "postgresql://vg:***@db.example:5433/voxguard?sslmode=require"
    assert str(parse_store_location("postgres://h/db?password=secret&x=1")) == "postgres://h/db?password=***&x=1"
    assert parse_store_location("POSTGRESQL://h/db").engine == "postgresql"
    f = parse_store_location("~/x/s.db")
    assert f.engine == "sqlite" and f.path == Path("~/x/s.db").expanduser()
    assert f.index_path == Path(str(f.path) + ".faiss")
    assert parse_store_location("rel:colon.db").engine == "sqlite"  # no '//': a file name


def test_postgres_database_of_another_application_is_refused(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
    for kw in ({}, {"readonly": True}):
        with pytest.raises(StoreError, match="not a voxguard store .*notes"):
            open_store(pg_url, **kw)
    with psycopg.connect(pg_url, autocommit=True) as db:  # nothing was created
        assert db.execute("SELECT count(*) FROM information_schema.tables "
                          "WHERE table_schema = 'public'").fetchone()[0] == 1


def test_postgres_store_in_its_own_schema(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
        db.execute("CREATE SCHEMA vg")
    url = pg_url + "?options=-csearch_path%3Dvg"
    with open_store(url) as s:
        s.add_samples("alice", "genuine", [sample("a1")], IDENT)
    with open_store(url, readonly=True) as s:
        assert [x.name for x in s.speakers()] == ["alice"]


# -- audit trail and erasure ------------------------------------------------------------------------
def test_changes_are_audited_in_their_transaction(store):
    from voxguard.errors import UnknownSample
    from voxguard.store import Audit

    ids = store.add_samples_ids("alice", "genuine", [sample("a1", audio=True), sample("a2")], IDENT,
                                Audit("token:abcd1234", "REF-1", {"sources": ["x"]}))
    assert len(ids) == 2
    rev = store.revision
    # nothing new: no audit row, no revision bump
    assert store.add_samples_ids("alice", "genuine", [sample("a1")], IDENT, Audit("cli:bob")) == []
    assert store.revision == rev
    assert store.remove_sample("alice", ids[0], Audit("cli:bob", "ERASE-7")) is False
    with pytest.raises(UnknownSample):
        store.remove_sample("alice", ids[0], Audit("cli:bob"))
    with pytest.raises(UnknownSpeaker):
        store.remove_sample("nobody", ids[1], Audit("cli:bob"))
    assert store.remove_sample("alice", ids[1], Audit("cli:bob")) is True  # the last one: the speaker goes
    assert not store.has_speaker("alice")
    store.add_samples("carol", "clone", [sample("c1")], IDENT, Audit("cli:bob"))
    assert store.remove_speaker("carol", Audit("token:ffff0000", "ERASE-8")) == 1
    rows = store.audit()
    assert [(r.action, r.speaker, r.actor, r.consent) for r in rows] == [
        ("enroll", "alice", "token:abcd1234", "REF-1"), ("remove_sample", "alice", "cli:bob", "ERASE-7"),
        ("remove_sample", "alice", "cli:bob", None), ("enroll", "carol", "cli:bob", None),
        ("remove_speaker", "carol", "token:ffff0000", "ERASE-8")]
    assert rows[0].sample_ids == ids and rows[0].detail == {"kind": "genuine", "sources": ["x"]}
    assert rows[2].detail == {"speaker_removed": True}
    assert [r.id for r in store.audit(limit=2, after=rows[1].id)] == [rows[2].id, rows[3].id]
    assert [r.action for r in store.audit(speaker="carol")] == ["enroll", "remove_speaker"]
    # a failed write leaves neither the change nor its audit row
    with pytest.raises(StoreError):
        store.add_samples("dave", "genuine", [sample("ok"), sample("bad", dim=7)], IDENT, Audit("cli:bob"))
    assert not store.has_speaker("dave") and len(store.audit()) == len(rows)


def test_removed_audio_leaves_no_copy_in_the_sqlite_files(tmp_path):
    from voxguard.store import Audit

    path = tmp_path / "erase.db"
    t = np.arange(16000 * 3) / 16000
    distinctive = (0.3 * np.sin(2 * np.pi * 317 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    s = sample("secret")
    s.audio = distinctive
    with SpeakerStore(path) as st:
        st.add_samples("bob", "genuine", [sample("b1", audio=True)], IDENT)
        st.add_samples("victim", "genuine", [s], IDENT)
        blob = st._execute("SELECT audio FROM samples WHERE source_path = '/data/secret.wav'").fetchone()[0]
        needles = [bytes(blob[i:i + 48]) for i in range(len(blob) // 4, len(blob), len(blob) // 4)[:3]]

        def on_disk() -> bytes:
            return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())

        assert all(n in on_disk() for n in needles)  # the check can fail: the audio is there before
        st.remove_speaker("victim", Audit("cli:test"))
        raw = on_disk()
        assert not any(n in raw for n in needles)
        assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
        assert st.samples("bob")[0].speaker == "bob" and st.sample_audio(st.samples("bob")[0].id) is not None
        assert [r.action for r in st.audit()] == ["remove_speaker"]
        assert blob not in b"".join(str(r.as_dict()).encode() for r in st.audit())


def test_schema_2_store_gets_its_audit_table_on_write(backend):
    with backend.open() as s:
        s.add_samples("bob", "genuine", [sample("b1")], IDENT)
    backend.raw("DROP TABLE audit")
    backend.raw("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with backend.open(readonly=True) as s:
        assert s.audit() == [] and s.speakers()[0].name == "bob"
    with backend.open() as s:
        assert s._meta("schema_version") == str(SCHEMA_VERSION) == "3"
        from voxguard.store import Audit

        s.remove_speaker("bob", Audit("cli:x"))
        assert [r.action for r in s.audit()] == ["remove_speaker"]
