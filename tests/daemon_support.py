"""Helpers shared by the daemon tests: a small real store of AN4 speakers."""

from __future__ import annotations

from pathlib import Path

from voxguard.enroll.enrollment import Enroller
from voxguard.store import SpeakerStore

SPEAKERS = 4
FILES_PER_SPEAKER = 3


def build_store(path: Path, embedder, an4_speakers: dict[str, list[Path]], speakers: list[str] | None = None,
                files: int = FILES_PER_SPEAKER) -> list[str]:
    """Enroll ``files`` utterances of each speaker (default: the first SPEAKERS) into ``path``
    and save its index; returns the enrolled names."""
    names = speakers or sorted(an4_speakers)[:SPEAKERS]
    with SpeakerStore(path) as store:
        enroller = Enroller(store, embedder)
        for name in names:
            enroller.enroll(name, an4_speakers[name][:files])
        enroller.refresh_index()
    return names


def held_out(an4_speakers: dict[str, list[Path]], name: str, files: int = FILES_PER_SPEAKER) -> list[Path]:
    """Utterances of ``name`` that were not enrolled."""
    return an4_speakers[name][files:]
