"""The speaker store: speakers, their genuine samples and known clones, each with its
embedding, source, content hash, duration and (FLAC) audio, the per-band window embeddings
of every sample, the embedder's identity, calibrations and a revision counter.

Two engines behind one interface (:class:`Store`): an SQLite file (:class:`SpeakerStore`,
the embedded default) and a PostgreSQL database (:class:`voxguard.store_pg.PostgresStore`,
shared by many daemon replicas).  :func:`open_store` picks one from a path or a
``postgresql://`` URL; any other URL scheme is refused.

Every write is one transaction (SQLite: ``BEGIN IMMEDIATE`` in WAL mode; PostgreSQL: one
transaction under an advisory lock), so a crash or ``SIGKILL`` mid-import leaves the store
as it was before the interrupted transaction, and concurrent readers see either the old or
the new state.  A ``revision`` counter is bumped by every write that changed something, so
derived state (the FAISS index, a daemon's loaded snapshot) can tell when it is stale.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from . import SAMPLE_RATE
from .embedders.base import EmbedderIdentity
from .errors import EmbedderMismatch, StoreError, StoreMissing, StoreReadOnly, UnknownSample, UnknownSpeaker

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# version 1 lacks sample_views, version 2 the audit table; both are migrated on the first write open
READABLE_SCHEMAS = ("1", "2", "3")
AUDIT_ACTIONS = ("enroll", "remove_speaker", "remove_sample")
KINDS = ("genuine", "clone")
INDEX_SUFFIX = ".faiss"  # the index file of a file store: <store>.faiss beside it
POSTGRES_SCHEMES = ("postgresql", "postgres")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    speaker_id INTEGER NOT NULL REFERENCES speakers(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('genuine', 'clone')),
    source_path TEXT,
    sha256 TEXT NOT NULL,
    duration REAL NOT NULL,
    provenance TEXT NOT NULL DEFAULT '{}',
    embedding BLOB NOT NULL,
    audio BLOB,
    created_at REAL NOT NULL,
    UNIQUE (speaker_id, kind, sha256)
);
CREATE INDEX IF NOT EXISTS samples_speaker ON samples (speaker_id, kind);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    embedder TEXT NOT NULL,
    store_revision INTEGER NOT NULL,
    data TEXT NOT NULL,
    blob BLOB
);
CREATE TABLE IF NOT EXISTS sample_views (
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    band TEXT NOT NULL,
    windows BLOB NOT NULL,
    PRIMARY KEY (sample_id, band)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    speaker TEXT NOT NULL,
    sample_ids TEXT NOT NULL DEFAULT '[]',
    actor TEXT NOT NULL,
    consent TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


@dataclass
class NewSample:
    """A sample ready to be stored (already embedded)."""

    sha256: str
    embedding: np.ndarray
    duration: float
    source_path: str | None = None
    provenance: dict = field(default_factory=dict)
    audio: np.ndarray | None = None  # 16 kHz mono float32, kept (as FLAC) for recalibration
    # window embeddings [n_windows, dim] of the sample per band (voxguard.bands): "wide" as
    # recorded, "telephone" through the telephone simulation; the utterance embedding of a
    # band is their normalised mean (``embedding`` is the wide one)
    views: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class SpeakerSummary:
    name: str
    genuine: int
    clones: int
    duration: float
    created_at: float
    updated_at: float | None = None  # when its newest sample was stored


@dataclass(frozen=True)
class SampleInfo:
    id: int
    speaker: str
    kind: str
    source_path: str | None
    sha256: str
    duration: float
    provenance: dict
    created_at: float
    bands: tuple[str, ...] = ()  # the bands it has window embeddings for


@dataclass(frozen=True)
class Audit:
    """Who changed the enrollment and why: written in the same transaction as the change.
    Holds no audio and no embedding."""

    actor: str  # "token:<fingerprint>", "cli:<user>", ...
    consent: str | None = None  # the consent reference the change was made under
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    action: str
    speaker: str
    sample_ids: list[int]
    actor: str
    consent: str | None
    detail: dict

    def as_dict(self) -> dict:
        return {"id": self.id, "at": self.at, "action": self.action, "speaker": self.speaker,
                "sample_ids": self.sample_ids, "actor": self.actor, "consent": self.consent, "detail": self.detail}


@dataclass
class EmbeddingTable:
    """All stored embeddings, row-aligned with their sample ids, speakers and kinds."""

    ids: np.ndarray  # int64 [n]
    speakers: list[str]
    kinds: list[str]
    vectors: np.ndarray  # float32 [n, d]


@dataclass
class ViewTable:
    """The window embeddings of one band, row-aligned with sample ids, speakers and kinds."""

    band: str
    ids: np.ndarray  # int64 [n]
    speakers: list[str]
    kinds: list[str]
    windows: list[np.ndarray]  # float32 [n_windows_i, d] each

    def utterances(self) -> np.ndarray:
        """Utterance embeddings of the band: the normalised mean of each sample's windows."""
        from .embedders.base import l2_normalise

        if not self.windows:
            return np.zeros((0, 0), dtype=np.float32)
        return l2_normalise(np.stack([w.mean(axis=0) for w in self.windows]).astype(np.float32))


def encode_audio(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_audio(blob: bytes) -> np.ndarray:
    data, _ = sf.read(io.BytesIO(blob), dtype="float32")
    return data


class Store(ABC):
    """The store interface and everything both engines share.

    Subclasses (:class:`SpeakerStore` for SQLite, :class:`voxguard.store_pg.PostgresStore`)
    supply the connection, :meth:`transaction` (one atomic write that bumps the revision when
    it changed anything), :meth:`wait_for_change` and the few statements whose dialects differ.
    SQL here is written with ``?`` placeholders and the subset both engines speak
    (``ON CONFLICT``, ``RETURNING``).  Use a store as a context manager.
    """

    location: str  # what messages call the store: a file path, or a URL without its password
    index_path: Path | None  # where the FAISS index file lives beside the store; None: memory only
    _has_views: bool = True
    _has_audit: bool = True

    # -- what each engine provides ---------------------------------------------------------
    @abstractmethod
    def _execute(self, sql: str, args: tuple | list = ()):
        """Run one statement, return a cursor (``fetchone``/``fetchall``/``rowcount``)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager:
        """One atomic write; bumps the store revision when it changed anything."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def consistent_read(self) -> AbstractContextManager:
        """Reads inside see one committed state of the store (what a daemon's snapshot is
        built from: its embeddings, calibration and revision must belong together)."""

    @abstractmethod
    def wait_for_change(self, timeout: float) -> None:
        """Block until the store may have changed (a notification, or ``timeout`` s passed).
        Callers then read :attr:`revision`; this never raises on a timeout."""

    @abstractmethod
    def _size_bytes(self) -> int: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create_schema(self) -> None:
        """Inside a transaction: the tables and the meta rows of a new store."""
        for stmt in self._schema_statements():
            self._execute(stmt)
        self._set_meta("schema_version", str(SCHEMA_VERSION))
        self._set_meta("store_id", uuid.uuid4().hex)
        self._set_meta("revision", "0")

    def _schema_statements(self) -> list[str]:
        return [s.strip() for s in _SCHEMA.split(";") if s.strip()]

    def _check_version(self) -> None:
        version = self._meta("schema_version")
        if version not in READABLE_SCHEMAS:
            raise StoreError(f"{self.location} has store schema version {version}; "
                             f"this voxguard reads versions {', '.join(READABLE_SCHEMAS)}")

    # -- meta ------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def store_id(self) -> str:
        return self._meta("store_id")

    @property
    def revision(self) -> int:
        return int(self._meta("revision"))

    def state(self) -> tuple[str, int]:
        """(store id, revision) in one read: what a follower compares with its index."""
        rows = dict(self._execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'revision')").fetchall())
        return rows["store_id"], int(rows["revision"])

    @property
    def embedder(self) -> EmbedderIdentity | None:
        raw = self._meta("embedder")
        return EmbedderIdentity(**json.loads(raw)) if raw else None

    def check_embedder(self, identity: EmbedderIdentity) -> None:
        """Refuse an embedder other than the one the store's embeddings came from."""
        bound = self.embedder
        if bound is not None and bound != identity:
            raise EmbedderMismatch(
                f"{self.location} holds embeddings from {bound}, not {identity}; embeddings from "
                f"different models cannot be compared. Use --embedder {bound.name} "
                f"(with the same model), or another --store.")

    # -- speakers --------------------------------------------------------------------
    def _speaker_id(self, name: str) -> int | None:
        row = self._execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def has_speaker(self, name: str) -> bool:
        return self._speaker_id(name) is not None

    def speakers(self) -> list[SpeakerSummary]:
        rows = self._execute("""
            SELECT sp.name,
                   COALESCE(SUM(CASE WHEN sa.kind = 'genuine' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(CASE WHEN sa.kind = 'clone' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(sa.duration), 0.0),
                   sp.created_at, MAX(sa.created_at)
            FROM speakers sp LEFT JOIN samples sa ON sa.speaker_id = sp.id
            GROUP BY sp.id, sp.name, sp.created_at ORDER BY sp.name""").fetchall()
        return [SpeakerSummary(r[0], int(r[1]), int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    def speaker_page(self, limit: int, after: str | None = None, contains: str | None = None) -> list[SpeakerSummary]:
        """At most ``limit`` speakers in name order, after the name ``after``, whose name holds
        ``contains`` (case-insensitive)."""
        sql = """
            SELECT sp.name,
                   COALESCE(SUM(CASE WHEN sa.kind = 'genuine' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(CASE WHEN sa.kind = 'clone' THEN 1 ELSE 0 END), 0),
                   COALESCE(SUM(sa.duration), 0.0),
                   sp.created_at, MAX(sa.created_at)
            FROM speakers sp LEFT JOIN samples sa ON sa.speaker_id = sp.id WHERE sp.name > ?"""
        args: list = [after or ""]
        if contains:
            sql += " AND lower(sp.name) LIKE ?"
            args.append("%" + contains.lower().replace("%", "").replace("_", "") + "%")
        rows = self._execute(sql + " GROUP BY sp.id, sp.name, sp.created_at ORDER BY sp.name LIMIT ?",
                             [*args, int(limit)]).fetchall()
        return [SpeakerSummary(r[0], int(r[1]), int(r[2]), float(r[3]), r[4], r[5]) for r in rows]

    def speaker(self, name: str) -> SpeakerSummary:
        for s in self.speakers():
            if s.name == name:
                return s
        raise UnknownSpeaker(name)

    def samples(self, speaker: str | None = None, kind: str | None = None) -> list[SampleInfo]:
        sql = ("SELECT sa.id, sp.name, sa.kind, sa.source_path, sa.sha256, sa.duration, sa.provenance, "
               "sa.created_at FROM samples sa JOIN speakers sp ON sp.id = sa.speaker_id WHERE 1=1")
        args: list = []
        if speaker is not None:
            if not self.has_speaker(speaker):
                raise UnknownSpeaker(speaker)
            sql += " AND sp.name = ?"
            args.append(speaker)
        if kind is not None:
            sql += " AND sa.kind = ?"
            args.append(kind)
        rows = self._execute(sql + " ORDER BY sp.name, sa.id", args).fetchall()
        bands: dict[int, list[str]] = {}
        if self._has_views and rows:
            vsql = "SELECT v.sample_id, v.band FROM sample_views v JOIN samples sa ON sa.id = v.sample_id"
            vargs: list = []
            if speaker is not None:
                vsql += " JOIN speakers sp ON sp.id = sa.speaker_id WHERE sp.name = ?"
                vargs.append(speaker)
            for sid, band in self._execute(vsql + " ORDER BY v.sample_id, v.band", vargs).fetchall():
                bands.setdefault(sid, []).append(band)
        return [SampleInfo(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7], tuple(bands.get(r[0], ())))
                for r in rows]

    def known_hashes(self, speaker: str, kind: str) -> set[str]:
        rows = self._execute(
            "SELECT sa.sha256 FROM samples sa JOIN speakers sp ON sp.id = sa.speaker_id "
            "WHERE sp.name = ? AND sa.kind = ?", (speaker, kind)).fetchall()
        return {r[0] for r in rows}

    def add_samples(self, speaker: str, kind: str, samples: list[NewSample],
                    identity: EmbedderIdentity, audit: Audit | None = None) -> int:
        """Store ``samples`` for ``speaker`` in one transaction; returns how many were new.

        The speaker is created if needed.  Samples whose content hash the speaker
        already has (for this kind) are skipped, so re-adding is a no-op.  With ``audit``,
        an ``enroll`` audit row naming the new samples is written in the same transaction
        (none when nothing was new).
        """
        return len(self.add_samples_ids(speaker, kind, samples, identity, audit))

    def add_samples_ids(self, speaker: str, kind: str, samples: list[NewSample],
                        identity: EmbedderIdentity, audit: Audit | None = None) -> list[int]:
        """:meth:`add_samples`, returning the ids of the samples that were new."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if not speaker or not speaker.strip() or len(speaker) > 200:
            raise StoreError("a speaker name must be 1 to 200 characters and not blank")
        self.check_embedder(identity)
        for s in samples:
            if s.embedding.shape != (identity.dim,) or not np.isfinite(s.embedding).all():
                raise StoreError(f"embedding for {s.source_path} is not a finite {identity.dim}-d vector")
            for band, w in s.views.items():
                _check_windows(w, identity.dim, f"{band} windows of {s.source_path}")
        now = time.time()
        added: list[int] = []
        with self.transaction():
            if self.embedder is None:
                self._set_meta("embedder", json.dumps(identity.as_dict()))
            else:  # re-checked under the write lock: another writer may have bound the store meanwhile
                self.check_embedder(identity)
            sid = self._speaker_id(speaker)
            if sid is None:
                sid = self._execute("INSERT INTO speakers (name, created_at) VALUES (?, ?) RETURNING id",
                                    (speaker, now)).fetchall()[0][0]
            for s in samples:
                row = self._execute(
                    "INSERT INTO samples (speaker_id, kind, source_path, sha256, duration, provenance, "
                    "embedding, audio, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (speaker_id, kind, sha256) DO NOTHING RETURNING id",
                    (sid, kind, s.source_path, s.sha256, float(s.duration), json.dumps(s.provenance),
                     np.asarray(s.embedding, dtype="<f4").tobytes(),
                     encode_audio(s.audio) if s.audio is not None else None, now)).fetchall()
                if row:
                    added.append(int(row[0][0]))
                    for band, w in s.views.items():
                        self._execute("INSERT INTO sample_views (sample_id, band, windows) VALUES (?, ?, ?)",
                                      (row[0][0], band, _windows_blob(w)))
            if audit is not None and added:
                self._audit("enroll", speaker, added, audit, {"kind": kind, **audit.detail})
        return added

    def remove_speaker(self, name: str, audit: Audit | None = None) -> int:
        """Delete a speaker and all its samples (audio, embeddings, band views); returns the
        number of samples removed.  The freed pages are overwritten (:meth:`_erase`)."""
        with self.transaction():
            sid = self._speaker_id(name)
            if sid is None:
                raise UnknownSpeaker(name)
            ids = [int(r[0]) for r in self._execute("SELECT id FROM samples WHERE speaker_id = ? ORDER BY id",
                                                    (sid,)).fetchall()]
            if self._has_views:
                self._execute("DELETE FROM sample_views WHERE sample_id IN "
                              "(SELECT id FROM samples WHERE speaker_id = ?)", (sid,))
            self._execute("DELETE FROM samples WHERE speaker_id = ?", (sid,))
            self._execute("DELETE FROM speakers WHERE id = ?", (sid,))
            if audit is not None:
                self._audit("remove_speaker", name, ids, audit, dict(audit.detail))
        self._erase()
        return len(ids)

    def remove_sample(self, speaker: str, sample_id: int, audit: Audit | None = None) -> bool:
        """Delete one sample of ``speaker``; returns whether the speaker went with it (it was
        the last).  :class:`UnknownSpeaker`, or :class:`UnknownSample` for a sample it lacks."""
        with self.transaction():
            sid = self._speaker_id(speaker)
            if sid is None:
                raise UnknownSpeaker(speaker)
            if not self._execute("SELECT 1 FROM samples WHERE id = ? AND speaker_id = ?",
                                 (int(sample_id), sid)).fetchone():
                raise UnknownSample(speaker, int(sample_id))
            if self._has_views:
                self._execute("DELETE FROM sample_views WHERE sample_id = ?", (int(sample_id),))
            self._execute("DELETE FROM samples WHERE id = ?", (int(sample_id),))
            gone = not self._execute("SELECT 1 FROM samples WHERE speaker_id = ?", (sid,)).fetchone()
            if gone:
                self._execute("DELETE FROM speakers WHERE id = ?", (sid,))
            if audit is not None:
                self._audit("remove_sample", speaker, [int(sample_id)], audit,
                            {**audit.detail, "speaker_removed": gone})
        self._erase()
        return gone

    # -- audit trail -----------------------------------------------------------------
    def _audit(self, action: str, speaker: str, sample_ids: list[int], audit: Audit, detail: dict) -> None:
        if not self._has_audit:
            raise StoreError(f"{self.location} has no audit table (open it for writing once to migrate it)")
        self._execute("INSERT INTO audit (at, action, speaker, sample_ids, actor, consent, detail) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (time.time(), action, speaker, json.dumps(sample_ids), audit.actor, audit.consent,
                       json.dumps(detail)))

    def audit(self, limit: int = 100, after: int | None = None, speaker: str | None = None) -> list[AuditRecord]:
        """Audit rows, oldest first, with ids above ``after`` (paging), at most ``limit``."""
        if not self._has_audit:
            return []
        sql = "SELECT id, at, action, speaker, sample_ids, actor, consent, detail FROM audit WHERE id > ?"
        args: list = [int(after or 0)]
        if speaker is not None:
            sql += " AND speaker = ?"
            args.append(speaker)
        rows = self._execute(sql + " ORDER BY id LIMIT ?", [*args, int(limit)]).fetchall()
        return [AuditRecord(int(r[0]), float(r[1]), r[2], r[3], json.loads(r[4]), r[5], r[6], json.loads(r[7]))
                for r in rows]

    def _erase(self) -> None:
        """After a deletion: leave no recoverable copy of what was deleted in the store's files
        where the engine allows it (SQLite: secure_delete pages plus a WAL truncation)."""

    # -- bulk reads ----------------------------------------------------------------
    def embeddings(self, kind: str | None = None) -> EmbeddingTable:
        sql = ("SELECT sa.id, sp.name, sa.kind, sa.embedding FROM samples sa "
               "JOIN speakers sp ON sp.id = sa.speaker_id")
        args: tuple = ()
        if kind:
            sql += " WHERE sa.kind = ?"
            args = (kind,)
        rows = self._execute(sql + " ORDER BY sa.id", args).fetchall()
        ident = self.embedder
        dim = ident.dim if ident else 0
        vecs = np.zeros((len(rows), dim), dtype=np.float32)
        for i, r in enumerate(rows):
            vecs[i] = np.frombuffer(r[3], dtype="<f4")
        return EmbeddingTable(np.array([r[0] for r in rows], dtype=np.int64),
                              [r[1] for r in rows], [r[2] for r in rows], vecs)

    def views(self, band: str, kind: str | None = None) -> ViewTable:
        """Window embeddings of ``band`` for every sample that has them (sample id order)."""
        if not self._has_views:
            return ViewTable(band, np.zeros(0, dtype=np.int64), [], [], [])
        sql = ("SELECT sa.id, sp.name, sa.kind, v.windows FROM sample_views v JOIN samples sa ON sa.id = v.sample_id "
               "JOIN speakers sp ON sp.id = sa.speaker_id WHERE v.band = ?")
        args: tuple = (band,)
        if kind:
            sql += " AND sa.kind = ?"
            args = (band, kind)
        rows = self._execute(sql + " ORDER BY sa.id", args).fetchall()
        dim = self.embedder.dim if self.embedder else 0
        return ViewTable(band, np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows],
                         [r[2] for r in rows], [np.frombuffer(r[3], dtype="<f4").reshape(-1, dim) for r in rows])

    def samples_without_view(self, band: str) -> list[int]:
        """Ids of samples that have no window embeddings for ``band`` yet."""
        if not self._has_views:
            return [r[0] for r in self._execute("SELECT id FROM samples ORDER BY id").fetchall()]
        return [r[0] for r in self._execute(
            "SELECT id FROM samples WHERE id NOT IN (SELECT sample_id FROM sample_views WHERE band = ?) "
            "ORDER BY id", (band,)).fetchall()]

    def add_views(self, band: str, views: dict[int, np.ndarray]) -> int:
        """Store window embeddings of ``band`` for existing samples, in one transaction
        (samples removed meanwhile are skipped); returns how many were stored."""
        dim = self.embedder.dim if self.embedder else 0
        for sid, w in views.items():
            _check_windows(w, dim, f"{band} windows of sample {sid}")
        n = 0
        with self.transaction():
            for sid, w in views.items():
                if self._execute("SELECT 1 FROM samples WHERE id = ?", (int(sid),)).fetchone():
                    self._execute("INSERT INTO sample_views (sample_id, band, windows) VALUES (?, ?, ?) "
                                  "ON CONFLICT (sample_id, band) DO UPDATE SET windows = excluded.windows",
                                  (int(sid), band, _windows_blob(w)))
                    n += 1
        return n

    def sample_audio(self, sample_id: int) -> np.ndarray | None:
        row = self._execute("SELECT audio FROM samples WHERE id = ?", (int(sample_id),)).fetchone()
        if row is None:
            raise StoreError(f"no sample with id {sample_id}")
        return decode_audio(row[0]) if row[0] is not None else None

    def stats(self) -> dict:
        n_spk = self._execute("SELECT count(*) FROM speakers").fetchone()[0]
        per_kind = dict(self._execute("SELECT kind, count(*) FROM samples GROUP BY kind").fetchall())
        dur = dict(self._execute("SELECT kind, COALESCE(SUM(duration), 0) FROM samples GROUP BY kind").fetchall())
        ident = self.embedder
        return {
            "store": self.location,
            "store_id": self.store_id,
            "revision": self.revision,
            "embedder": ident.as_dict() if ident else None,
            "speakers": int(n_spk),
            "genuine_samples": int(per_kind.get("genuine", 0)),
            "clone_samples": int(per_kind.get("clone", 0)),
            "genuine_seconds": round(float(dur.get("genuine", 0.0)), 3),
            "clone_seconds": round(float(dur.get("clone", 0.0)), 3),
            "size_bytes": self._size_bytes(),
        }

    # -- calibrations (written by `voxguard calibrate`) ---------------------------------
    def save_calibration(self, data: dict, blob: bytes | None = None) -> int:
        ident = self.embedder
        if ident is None:
            raise StoreError("the store is empty: nothing to calibrate")
        with self.transaction():
            return self._execute(
                "INSERT INTO calibrations (created_at, embedder, store_revision, data, blob) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (time.time(), json.dumps(ident.as_dict()), self.revision, json.dumps(data), blob)).fetchall()[0][0]

    def latest_calibration(self) -> tuple[int, dict, bytes | None] | None:
        """The newest calibration made with this store's embedder, as (id, data, blob)."""
        ident = self.embedder
        if ident is None:
            return None
        row = self._execute(
            "SELECT id, data, blob FROM calibrations WHERE embedder = ? ORDER BY id DESC LIMIT 1",
            (json.dumps(ident.as_dict()),)).fetchone()
        return (row[0], json.loads(row[1]), bytes(row[2]) if row[2] is not None else None) if row else None


def read_only_reason(path: Path) -> str | None:
    """Why an SQLite store at ``path`` (an existing file) cannot be written, or None.  SQLite
    writes the file and, in WAL mode, creates ``-wal``/``-shm`` files beside it (even to read,
    when they are not there), so the directory counts too."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    except OSError:
        pass
    if not os.access(path, os.W_OK):
        return "the file is not writable"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return "its directory is not writable"
    return None


class SpeakerStore(Store):
    """A voxguard store in one SQLite file.

    A store that cannot be written (read-only mount, file or directory: :func:`read_only_reason`)
    opens for reading only: ``readonly=True`` reads it (as an immutable file when SQLite could
    not otherwise read a WAL database there: it cannot create the ``-shm`` file), and a write
    open (``readonly=False``) raises :class:`~voxguard.errors.StoreReadOnly`.
    """

    immutable = False  # opened with SQLite's immutable=1 (a read-only location SQLite could not read otherwise)

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False):
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self.index_path = Path(str(self.path) + INDEX_SUFFIX)
        if not self.path.exists():
            if not create or readonly:
                raise StoreMissing(f"no store at {self.path} (enroll speakers first, or pass --store)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a voxguard store")
        elif not readonly and (why := read_only_reason(self.path)):
            raise StoreReadOnly(f"store {self.path} is read-only ({why}): it can be read (served, listed) but "
                                f"not changed; enroll into a writable copy and point the daemon at it")
        self._db = self._connect(readonly)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            self._db.close()
            why = read_only_reason(self.path) if readonly else None
            if why is None or not self._readable_immutable():
                raise StoreError(f"{self.path} is not a voxguard store: not an SQLite database ({e})") from None
            # a WAL database whose -shm file cannot be created: nobody can write it through this
            # path, so it is read as an immutable file (a reopen sees what changed)
            log.info("store %s is read-only (%s): reading it as an immutable file", self.path, why)
            self._db = self._connect(readonly, immutable=True)
            self.immutable = True
        try:
            self._check_or_init(readonly)
        except BaseException:
            self._db.close()
            raise

    def _execute(self, sql: str, args: tuple | list = ()):
        return self._db.execute(sql, args)

    def _connect(self, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        if immutable:
            uri += "&immutable=1"
        try:
            return sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open store {self.path}: {e}") from None

    def _readable_immutable(self) -> bool:
        try:
            db = self._connect(True, immutable=True)
        except StoreError:
            return False
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return True
        except sqlite3.DatabaseError:
            return False
        finally:
            db.close()

    # -- lifecycle -----------------------------------------------------------------
    def _check_or_init(self, readonly: bool) -> None:
        """Refuse foreign databases before writing anything (even the journal mode)."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables and tables:
            raise StoreError(f"{self.path} is an SQLite database but not a voxguard store "
                             f"(it has tables {', '.join(sorted(tables))})")
        if "meta" not in tables and readonly:
            raise StoreError(f"{self.path} is an empty database, not a voxguard store")
        if "meta" in tables:
            self._check_version()
        self._has_views = "sample_views" in tables
        self._has_audit = "audit" in tables
        if not readonly:
            self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            self._db.execute("PRAGMA synchronous = NORMAL")
            # deleted content (a removed speaker's audio) is overwritten with zeros, not left in free pages
            self._db.execute("PRAGMA secure_delete = ON")
            if "meta" in tables and self._meta("schema_version") != str(SCHEMA_VERSION):
                with self.transaction():  # version 1 -> 2: sample_views; 2 -> 3: audit
                    for stmt in self._schema_statements():
                        self._db.execute(stmt)
                    self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._has_views = self._has_audit = True
        if "meta" not in tables:
            with self.transaction():
                self._create_schema()
            self._has_views = self._has_audit = True

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SpeakerStore":
        return self

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; bumps the store revision when it changed anything."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            changes = self._db.total_changes
            yield self._db
            if self._db.total_changes != changes and self._meta("revision") is not None:
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def consistent_read(self) -> Iterator["SpeakerStore"]:
        self._db.execute("BEGIN")  # deferred: a WAL read transaction sees one snapshot
        try:
            yield self
        finally:
            self._db.execute("COMMIT")

    def wait_for_change(self, timeout: float) -> None:
        """SQLite has no notifications: a follower polls (``revision`` is one indexed read)."""
        time.sleep(timeout)
        if self.immutable:  # SQLite caches an immutable file: reopen to see a change (a remount)
            db, self._db = self._db, self._connect(True, immutable=True)
            db.close()

    def _size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    ERASE_TRIES = 3

    def _erase(self) -> None:
        """secure_delete zeroed the freed pages in the WAL's new frames; the older frames (the
        audio as it was written) are gone only once the WAL is checkpointed into the file and
        truncated, which waits for readers on an older snapshot (retried, then logged)."""
        for _ in range(self.ERASE_TRIES):
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.1)
        log.warning("store %s: readers kept the WAL from being truncated after a deletion; the deleted "
                    "audio leaves the -wal file at the next checkpoint", self.path)


def _windows_blob(w: np.ndarray) -> bytes:
    return np.ascontiguousarray(w, dtype="<f4").tobytes()


def _check_windows(w: np.ndarray, dim: int, what: str) -> None:
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] != dim or not np.isfinite(w).all():
        raise StoreError(f"{what}: not a finite [n, {dim}] array of window embeddings")


# -- locations -------------------------------------------------------------------------------
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def redact_url(url: str) -> str:
    """``url`` without its password (in the authority or a ``password=`` parameter)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        m = _URL.match(url)
        return f"{m.group(0) if m else ''}<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class StoreLocation:
    """Where a store lives: an SQLite file path, or a PostgreSQL URL.  ``str()`` never
    shows a password."""

    engine: str  # "sqlite" | "postgresql"
    target: str  # the path, or the full URL (credentials included: never print it)

    def __str__(self) -> str:
        return self.target if self.engine == "sqlite" else redact_url(self.target)

    @property
    def path(self) -> Path | None:
        return Path(self.target) if self.engine == "sqlite" else None

    @property
    def index_path(self) -> Path | None:
        """The index file beside a file store; a PostgreSQL store's index lives in memory."""
        return Path(self.target + INDEX_SUFFIX) if self.engine == "sqlite" else None

    def exists(self) -> bool:
        """Whether a voxguard store is there (PostgreSQL: connects, so a bad URL raises
        :class:`StoreError` here)."""
        if self.engine == "sqlite":
            return Path(self.target).exists()
        from .store_pg import postgres_store_exists

        return postgres_store_exists(self.target)

    def open(self, create: bool = True, readonly: bool = False) -> Store:
        if self.engine == "sqlite":
            return SpeakerStore(self.target, create=create, readonly=readonly)
        from .store_pg import PostgresStore

        return PostgresStore(self.target, create=create, readonly=readonly)


def parse_store_location(value: str | Path | StoreLocation) -> StoreLocation:
    """A path means an SQLite file; ``postgresql://`` (or ``postgres://``) a PostgreSQL
    database; any other ``scheme://`` is refused rather than taken for a file name."""
    if isinstance(value, StoreLocation):
        return value
    if isinstance(value, Path):
        return StoreLocation("sqlite", str(value.expanduser()))
    m = _URL.match(value)
    if m is None:
        return StoreLocation("sqlite", str(Path(value).expanduser()))
    if m.group(1).lower() in POSTGRES_SCHEMES:
        return StoreLocation("postgresql", value)
    raise StoreError(f"unsupported store URL {redact_url(value)}: a store is an SQLite file (a path) or a "
                     f"PostgreSQL database (postgresql://USER@HOST[:PORT]/DBNAME)")


def open_store(location: str | Path | StoreLocation, create: bool = True, readonly: bool = False) -> Store:
    """Open the store at a path or URL (see :func:`parse_store_location`)."""
    return parse_store_location(location).open(create=create, readonly=readonly)
