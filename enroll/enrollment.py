"""Turning audio files into stored samples: hash, skip what is known, decode, embed
(all windows of a batch of files in one embedder call), then one store transaction
per speaker (with its audit row), and finally the index rebuilt atomically beside the store.

:func:`enroll_files` and :func:`remove_speaker` / :func:`remove_sample` are the one code path
of every enrollment change: ``voxguard enroll add|add-clone|remove`` and the daemon's speakers
API (``POST /v1/speakers/{speaker}/samples``, ``DELETE ...``) both call them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .. import SAMPLE_RATE
from ..audio import Audio, file_sha256, load_audio
from ..embedders.base import Embedder
from ..errors import AudioError, VoxguardError
from ..index import SpeakerIndex
from ..store import Audit, NewSample, Store
from ..bands import WIDE, detect_band
from ..utterance import embed_band_views, utterance_of
from ..vad import VadConfig, Voiced, VoiceActivityDetector
from ..windows import WindowConfig

log = logging.getLogger(__name__)

EMBED_FILES_PER_CALL = 32


class NoSpeech(VoxguardError):
    """A recording with too little voiced audio to enroll (nothing was stored)."""

    def __init__(self, source: str, voiced: float, needed: float):
        self.source, self.voiced, self.needed = source, voiced, needed
        super().__init__(f"{source}: {voiced:.2f} s of speech found, at least {needed:g} s needed")


@dataclass
class EnrollReport:
    speaker: str
    kind: str
    added: int = 0
    skipped: int = 0  # already in the store (same content)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    sample_ids: list[int] = field(default_factory=list)  # of the samples that were new
    # per recording embedded: source, seconds of audio and of speech (VAD), detected band
    recordings: list[dict] = field(default_factory=list)

    @property
    def voiced_seconds(self) -> float:
        return round(sum(r["voiced_seconds"] for r in self.recordings), 3)

    def as_dict(self) -> dict:
        return {"speaker": self.speaker, "kind": self.kind, "added": self.added, "skipped": self.skipped,
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


def voiced_seconds(samples, vad: VadConfig | None = None) -> float:
    """Seconds of speech the VAD finds in a 16 kHz recording (what streams see as voiced)."""
    det = VoiceActivityDetector(vad)
    n = sum(len(ev.samples) for ev in det.process(samples) + det.flush() if isinstance(ev, Voiced))
    return n / SAMPLE_RATE


class Enroller:
    """Adds recordings to a store with one embedder."""

    def __init__(self, store: Store, embedder: Embedder, vad: VadConfig | None = None,
                 windows: WindowConfig | None = None, keep_audio: bool = True, actor: str | None = None):
        store.check_embedder(embedder.identity)
        self.store = store
        self.embedder = embedder
        self.vad = vad
        self.windows = windows
        self.keep_audio = keep_audio
        self.actor = actor  # who enrolls (the audit rows' actor); None: no audit row

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
               preloaded: dict[str, tuple[str, Audio]] | None = None, consent: str | None = None,
               sources: dict[str, str] | None = None, min_voiced: float = 0.0) -> EnrollReport:
        """Embed and store ``paths`` for ``speaker`` in one transaction (with its audit row
        when the enroller has an ``actor``).

        With ``strict`` (the ``enroll add`` behaviour) any unusable file aborts the whole
        call before the store is touched; otherwise bad files are reported and skipped.
        ``preloaded`` maps a path to its (sha256, decoded audio) when the caller already
        decoded it; ``sources`` a path to what the sample's ``source_path`` says instead of
        the resolved path (an upload's name).  A recording with less than ``min_voiced``
        seconds of speech raises :class:`NoSpeech` (strict) or is reported as failed.
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
                if min_voiced > 0:
                    got = voiced_seconds(audio.samples, self.vad)
                    if got < min_voiced:
                        raise NoSpeech((sources or {}).get(str(p), str(p)), got, min_voiced)
            except (AudioError, NoSpeech) as e:
                if strict:
                    raise
                report.failed.append((str(p), getattr(e, "reason", None) or e.message))
                continue
            seen.add(digest)
            todo.append((p, digest, audio))
        if not todo:
            return report
        views = self.embed_audio([a for _, _, a in todo])
        src = lambda p: (sources or {}).get(str(p)) or str(p.resolve())  # noqa: E731
        prov = dict(provenance or {})
        if consent:
            prov["consent"] = consent
        samples = [NewSample(sha256=d, embedding=utterance_of(v[WIDE]), duration=a.duration,
                             source_path=src(p), provenance=dict(prov),
                             audio=a.samples if self.keep_audio else None, views=v)
                   for (p, d, a), v in zip(todo, views)]
        report.recordings = [{"source": src(p), "seconds": round(a.duration, 3),
                              "voiced_seconds": round(voiced_seconds(a.samples, self.vad), 3),
                              "band": detect_band(a.samples, a.source_rate)} for p, _, a in todo]
        audit = None if self.actor is None else Audit(self.actor, consent, {
            "sources": [r["source"] for r in report.recordings], "voiced_seconds": report.voiced_seconds})
        report.sample_ids = self.store.add_samples_ids(speaker, kind, samples, self.embedder.identity, audit)
        report.added = len(report.sample_ids)
        report.skipped += len(samples) - report.added
        return report

    def refresh_index(self) -> SpeakerIndex:
        """Rebuild the FAISS index for the current store revision and save it atomically
        beside a file store (a PostgreSQL store's readers build theirs in memory)."""
        idx = SpeakerIndex.build(self.store, use_gpu=False)
        idx.save_beside(self.store)
        return idx


def enroll_files(store: Store, embedder: Embedder, speaker: str, paths: Sequence[str | Path], *,
                 actor: str, kind: str = "genuine", provenance: dict | None = None, consent: str | None = None,
                 preloaded: dict[str, tuple[str, Audio]] | None = None, sources: dict[str, str] | None = None,
                 min_voiced: float = 0.0) -> EnrollReport:
    """Enroll ``paths`` as ``kind`` samples of ``speaker`` (all or nothing: one transaction,
    its audit row by ``actor`` inside it) and rebuild the index when something was new —
    what ``voxguard enroll add`` and ``POST /v1/speakers/{speaker}/samples`` both do."""
    enr = Enroller(store, embedder, actor=actor)
    report = enr.enroll(speaker, paths, kind=kind, provenance=provenance, strict=True, preloaded=preloaded,
                        consent=consent, sources=sources, min_voiced=min_voiced)
    if report.added:
        enr.refresh_index()
    return report


def _rebuild_index(store: Store) -> None:
    SpeakerIndex.build(store, use_gpu=False).save_beside(store)


def remove_speaker(store: Store, speaker: str, *, actor: str, consent: str | None = None) -> int:
    """Erase ``speaker`` (audio, embeddings, band views; audited) and rebuild the index;
    returns the number of samples removed."""
    n = store.remove_speaker(speaker, Audit(actor, consent))
    _rebuild_index(store)
    return n


def remove_sample(store: Store, speaker: str, sample_id: int, *, actor: str, consent: str | None = None) -> bool:
    """Erase one sample of ``speaker`` (audited) and rebuild the index; returns whether the
    speaker went with its last sample."""
    gone = store.remove_sample(speaker, sample_id, Audit(actor, consent))
    _rebuild_index(store)
    return gone


def cli_actor() -> str:
    """The audit rows' actor for a change made with the CLI: ``cli:<user>``."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 — no name for this uid
        import os

        user = str(os.getuid())
    return f"cli:{user}"
