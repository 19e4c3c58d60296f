"""Turning audio files into stored samples: hash, skip what is known, decode, embed
(all windows of a batch of files in one embedder call), then one store transaction
per speaker, and finally the index rebuilt atomically beside the store."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..audio import Audio, file_sha256, load_audio
from ..embedders.base import Embedder
from ..errors import AudioError
from ..index import SpeakerIndex
from ..store import NewSample, Store
from ..bands import WIDE
from ..utterance import embed_band_views, utterance_of
from ..vad import VadConfig
from ..windows import WindowConfig

log = logging.getLogger(__name__)

EMBED_FILES_PER_CALL = 32


@dataclass
class EnrollReport:
    speaker: str
    kind: str
    added: int = 0
    skipped: int = 0  # already in the store (same content)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def as_dict(self) -> dict:
        return {"speaker": self.speaker, "kind": self.kind, "added": self.added, "skipped": self.skipped,
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


class Enroller:
    """Adds recordings to a store with one embedder."""

    def __init__(self, store: Store, embedder: Embedder, vad: VadConfig | None = None,
                 windows: WindowConfig | None = None, keep_audio: bool = True):
        store.check_embedder(embedder.identity)
        self.store = store
        self.embedder = embedder
        self.vad = vad
        self.windows = windows
        self.keep_audio = keep_audio

    def embed_audio(self, audios: Sequence[Audio]) -> list[dict]:
        """Window embeddings of each recording in every band (see :mod:`voxguard.bands`)."""
        views = []
        for s in range(0, len(audios), EMBED_FILES_PER_CALL):
            part = audios[s: s + EMBED_FILES_PER_CALL]
            views.extend(embed_band_views(self.embedder, [a.samples for a in part], vad=self.vad,
                                          windows=self.windows))
        return views

    def enroll(self, speaker: str, paths: Iterable[str | Path], kind: str = "genuine",
               provenance: dict | None = None, strict: bool = True,
               preloaded: dict[str, tuple[str, Audio]] | None = None) -> EnrollReport:
        """Embed and store ``paths`` for ``speaker`` in one transaction.

        With ``strict`` (the ``enroll add`` behaviour) any unusable file aborts the whole
        call before the store is touched; otherwise bad files are reported and skipped.
        ``preloaded`` maps a path to its (sha256, decoded audio) when the caller already
        decoded it.
        """
        report = EnrollReport(speaker, kind)
        known = self.store.known_hashes(speaker, kind) if self.store.has_speaker(speaker) else set()
        todo: list[tuple[Path, str, Audio]] = []
        seen: set[str] = set()
        for p in map(Path, paths):
            try:
                if not p.is_file():
                    raise AudioError(p, "no such file" if not p.exists() else "not a regular file")
                digest, audio = (preloaded or {}).get(str(p), (None, None))
                digest = digest or file_sha256(p)
                if digest in known or digest in seen:
                    report.skipped += 1
                    continue
                audio = audio or load_audio(p)
            except AudioError as e:
                if strict:
                    raise
                report.failed.append((str(p), e.reason))
                continue
            seen.add(digest)
            todo.append((p, digest, audio))
        if not todo:
            return report
        views = self.embed_audio([a for _, _, a in todo])
        samples = [NewSample(sha256=d, embedding=utterance_of(v[WIDE]), duration=a.duration,
                             source_path=str(p.resolve()), provenance=dict(provenance or {}),
                             audio=a.samples if self.keep_audio else None, views=v)
                   for (p, d, a), v in zip(todo, views)]
        report.added = self.store.add_samples(speaker, kind, samples, self.embedder.identity)
        report.skipped += len(samples) - report.added
        return report

    def refresh_index(self) -> SpeakerIndex:
        """Rebuild the FAISS index for the current store revision and save it atomically
        beside a file store (a PostgreSQL store's readers build theirs in memory)."""
        idx = SpeakerIndex.build(self.store, use_gpu=False)
        idx.save_beside(self.store)
        return idx
