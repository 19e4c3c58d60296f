"""The speaker store: one SQLite file holding speakers, their genuine samples and known
clones, each with its embedding, source, content hash, duration and (FLAC) audio.

Every write is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) in WAL mode, so a
crash or ``SIGKILL`` mid-import leaves the store as it was before the interrupted
transaction, and concurrent readers see either the old or the new state.  A
``revision`` counter is bumped by every write so derived files (the FAISS index,
calibrations) can tell when they are stale.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from . import SAMPLE_RATE
from .embedders.base import EmbedderIdentity
from .errors import EmbedderMismatch, StoreError, UnknownSpeaker

SCHEMA_VERSION = 2
READABLE_SCHEMAS = ("1", "2")  # version 1 lacks sample_views; it is migrated on the first write open
KINDS = ("genuine", "clone")

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


class SpeakerStore:
    """A voxguard store in one SQLite file.  Use as a context manager."""

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False):
        self.path = Path(path).expanduser()
        if not self.path.exists():
            if not create or readonly:
                raise StoreError(f"no store at {self.path} (enroll speakers first, or pass --store)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.is_dir():
            raise StoreError(f"{self.path} is a directory, not a voxguard store")
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open store {self.path}: {e}") from None
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path} is not a voxguard store: not an SQLite database ({e})") from None
        try:
            self._check_or_init(readonly)
        except BaseException:
            self._db.close()
            raise

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
            version = self._meta("schema_version")
            if version not in READABLE_SCHEMAS:
                raise StoreError(f"{self.path} has store schema version {version}; "
                                 f"this voxguard reads versions {', '.join(READABLE_SCHEMAS)}")
        self._has_views = "sample_views" in tables
        if not readonly:
            self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            self._db.execute("PRAGMA synchronous = NORMAL")
            if "meta" in tables and self._meta("schema_version") != str(SCHEMA_VERSION):
                with self.transaction():  # version 1 -> 2: the sample_views table
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._has_views = True
        if "meta" not in tables:
            with self.transaction():
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("store_id", uuid.uuid4().hex)
                self._set_meta("revision", "0")
            self._has_views = True

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "SpeakerStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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

    # -- meta ------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def store_id(self) -> str:
        return self._meta("store_id")

    @property
    def revision(self) -> int:
        return int(self._meta("revision"))

    @property
    def embedder(self) -> EmbedderIdentity | None:
        raw = self._meta("embedder")
        return EmbedderIdentity(**json.loads(raw)) if raw else None

    def check_embedder(self, identity: EmbedderIdentity) -> None:
        """Refuse an embedder other than the one the store's embeddings came from."""
        bound = self.embedder
        if bound is not None and bound != identity:
            raise EmbedderMismatch(
                f"{self.path} holds embeddings from {bound}, not {identity}; embeddings from "
                f"different models cannot be compared. Use --embedder {bound.name} "
                f"(with the same model), or another --store.")

    # -- speakers --------------------------------------------------------------------
    def _speaker_id(self, name: str) -> int | None:
        row = self._db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def has_speaker(self, name: str) -> bool:
        return self._speaker_id(name) is not None

    def speakers(self) -> list[SpeakerSummary]:
        rows = self._db.execute("""
            SELECT sp.name,
                   COALESCE(SUM(sa.kind = 'genuine'), 0),
                   COALESCE(SUM(sa.kind = 'clone'), 0),
                   COALESCE(SUM(sa.duration), 0.0),
                   sp.created_at
            FROM speakers sp LEFT JOIN samples sa ON sa.speaker_id = sp.id
            GROUP BY sp.id ORDER BY sp.name""").fetchall()
        return [SpeakerSummary(*r) for r in rows]

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
        rows = self._db.execute(sql + " ORDER BY sp.name, sa.id", args).fetchall()
        return [SampleInfo(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), r[7]) for r in rows]

    def known_hashes(self, speaker: str, kind: str) -> set[str]:
        rows = self._db.execute(
            "SELECT sa.sha256 FROM samples sa JOIN speakers sp ON sp.id = sa.speaker_id "
            "WHERE sp.name = ? AND sa.kind = ?", (speaker, kind)).fetchall()
        return {r[0] for r in rows}

    def add_samples(self, speaker: str, kind: str, samples: list[NewSample],
                    identity: EmbedderIdentity) -> int:
        """Store ``samples`` for ``speaker`` in one transaction; returns how many were new.

        The speaker is created if needed.  Samples whose content hash the speaker
        already has (for this kind) are skipped, so re-adding is a no-op.
        """
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
        added = 0
        with self.transaction() as db:
            if self.embedder is None:
                self._set_meta("embedder", json.dumps(identity.as_dict()))
            sid = self._speaker_id(speaker)
            if sid is None:
                sid = db.execute("INSERT INTO speakers (name, created_at) VALUES (?, ?)", (speaker, now)).lastrowid
            for s in samples:
                cur = db.execute(
                    "INSERT OR IGNORE INTO samples (speaker_id, kind, source_path, sha256, duration, provenance, "
                    "embedding, audio, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, kind, s.source_path, s.sha256, float(s.duration), json.dumps(s.provenance),
                     np.asarray(s.embedding, dtype="<f4").tobytes(),
                     encode_audio(s.audio) if s.audio is not None else None, now))
                added += cur.rowcount
                if cur.rowcount:
                    for band, w in s.views.items():
                        db.execute("INSERT INTO sample_views (sample_id, band, windows) VALUES (?, ?, ?)",
                                   (cur.lastrowid, band, _windows_blob(w)))
        return added

    def remove_speaker(self, name: str) -> int:
        """Delete a speaker and all its samples; returns the number of samples removed."""
        with self.transaction() as db:
            sid = self._speaker_id(name)
            if sid is None:
                raise UnknownSpeaker(name)
            n = db.execute("SELECT count(*) FROM samples WHERE speaker_id = ?", (sid,)).fetchone()[0]
            db.execute("DELETE FROM samples WHERE speaker_id = ?", (sid,))
            db.execute("DELETE FROM speakers WHERE id = ?", (sid,))
        return n

    # -- bulk reads ----------------------------------------------------------------
    def embeddings(self, kind: str | None = None) -> EmbeddingTable:
        sql = ("SELECT sa.id, sp.name, sa.kind, sa.embedding FROM samples sa "
               "JOIN speakers sp ON sp.id = sa.speaker_id")
        args: tuple = ()
        if kind:
            sql += " WHERE sa.kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY sa.id", args).fetchall()
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
        rows = self._db.execute(sql + " ORDER BY sa.id", args).fetchall()
        dim = self.embedder.dim if self.embedder else 0
        return ViewTable(band, np.array([r[0] for r in rows], dtype=np.int64), [r[1] for r in rows],
                         [r[2] for r in rows], [np.frombuffer(r[3], dtype="<f4").reshape(-1, dim) for r in rows])

    def samples_without_view(self, band: str) -> list[int]:
        """Ids of samples that have no window embeddings for ``band`` yet."""
        if not self._has_views:
            return [r[0] for r in self._db.execute("SELECT id FROM samples ORDER BY id")]
        return [r[0] for r in self._db.execute(
            "SELECT id FROM samples WHERE id NOT IN (SELECT sample_id FROM sample_views WHERE band = ?) "
            "ORDER BY id", (band,))]

    def add_views(self, band: str, views: dict[int, np.ndarray]) -> int:
        """Store window embeddings of ``band`` for existing samples, in one transaction
        (samples removed meanwhile are skipped); returns how many were stored."""
        dim = self.embedder.dim if self.embedder else 0
        for sid, w in views.items():
            _check_windows(w, dim, f"{band} windows of sample {sid}")
        n = 0
        with self.transaction() as db:
            for sid, w in views.items():
                if db.execute("SELECT 1 FROM samples WHERE id = ?", (int(sid),)).fetchone():
                    db.execute("INSERT OR REPLACE INTO sample_views (sample_id, band, windows) VALUES (?, ?, ?)",
                               (int(sid), band, _windows_blob(w)))
                    n += 1
        return n

    def sample_audio(self, sample_id: int) -> np.ndarray | None:
        row = self._db.execute("SELECT audio FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if row is None:
            raise StoreError(f"no sample with id {sample_id}")
        return decode_audio(row[0]) if row[0] is not None else None

    def stats(self) -> dict:
        db = self._db
        n_spk = db.execute("SELECT count(*) FROM speakers").fetchone()[0]
        per_kind = dict(db.execute("SELECT kind, count(*) FROM samples GROUP BY kind").fetchall())
        dur = dict(db.execute("SELECT kind, COALESCE(SUM(duration), 0) FROM samples GROUP BY kind").fetchall())
        ident = self.embedder
        return {
            "store": str(self.path),
            "store_id": self.store_id,
            "revision": self.revision,
            "embedder": ident.as_dict() if ident else None,
            "speakers": n_spk,
            "genuine_samples": per_kind.get("genuine", 0),
            "clone_samples": per_kind.get("clone", 0),
            "genuine_seconds": round(dur.get("genuine", 0.0), 3),
            "clone_seconds": round(dur.get("clone", 0.0), 3),
            "size_bytes": self.path.stat().st_size if self.path.exists() else 0,
        }

    # -- calibrations (written by `voxguard calibrate`) ---------------------------------
    def save_calibration(self, data: dict, blob: bytes | None = None) -> int:
        ident = self.embedder
        if ident is None:
            raise StoreError("the store is empty: nothing to calibrate")
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO calibrations (created_at, embedder, store_revision, data, blob) VALUES (?, ?, ?, ?, ?)",
                (time.time(), json.dumps(ident.as_dict()), self.revision, json.dumps(data), blob)).lastrowid

    def latest_calibration(self) -> tuple[int, dict, bytes | None] | None:
        """The newest calibration made with this store's embedder, as (id, data, blob)."""
        ident = self.embedder
        if ident is None:
            return None
        row = self._db.execute(
            "SELECT id, data, blob FROM calibrations WHERE embedder = ? ORDER BY id DESC LIMIT 1",
            (json.dumps(ident.as_dict()),)).fetchone()
        return (row[0], json.loads(row[1]), row[2]) if row else None


def _windows_blob(w: np.ndarray) -> bytes:
    return np.ascontiguousarray(w, dtype="<f4").tobytes()


def _check_windows(w: np.ndarray, dim: int, what: str) -> None:
    w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] != dim or not np.isfinite(w).all():
        raise StoreError(f"{what}: not a finite [n, {dim}] array of window embeddings")
