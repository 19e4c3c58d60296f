"""Dataset layouts that ``voxguard enroll import`` understands.  Each yields
``(speaker, [audio files])`` pairs in a stable order.

* ``an4`` — the CMU AN4 tree: ``wav/an4_clstk/<speaker>/*.wav`` (or the Sphere
  ``.sph`` originals, or a folder of speaker folders directly under DIR);
* ``folders`` — one sub-folder per speaker, audio files inside (any depth);
* ``nemo-manifest`` — a NeMo JSON-lines manifest (``audio_filepath``, ``label`` or
  ``speaker``), relative paths resolved against the manifest's folder.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from ..errors import VoxguardError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".sph", ".webm", ".aif", ".aiff"}
LAYOUTS = ("an4", "folders", "nemo-manifest")


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def folders(root: Path) -> Iterator[tuple[str, list[Path]]]:
    if not root.is_dir():
        raise VoxguardError(f"{root}: not a directory")
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = _audio_files(d)
        if files:
            yield d.name, files


def an4(root: Path) -> Iterator[tuple[str, list[Path]]]:
    """AN4 in the WAV layout of ../shared, or as ``voxguard datasets an4 prepare`` writes it."""
    for candidate in (root / "wav" / "an4_clstk", root / "an4_clstk", root / "an4" / "wav" / "an4_clstk", root):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            yield from folders(candidate)
            return
    raise VoxguardError(f"{root}: no AN4 speaker folders found (expected wav/an4_clstk/<speaker>/*.wav)")


def nemo_manifest(path: Path) -> Iterator[tuple[str, list[Path]]]:
    if not path.is_file():
        raise VoxguardError(f"{path}: manifest file not found")
    groups: OrderedDict[str, list[Path]] = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                audio = Path(item["audio_filepath"])
                label = str(item.get("label", item.get("speaker")))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise VoxguardError(f"{path}:{n}: not a NeMo manifest line ({e})") from None
            if label in ("None", ""):
                raise VoxguardError(f"{path}:{n}: no 'label' or 'speaker' field")
            if not audio.is_absolute():
                audio = path.parent / audio
            groups.setdefault(label, []).append(audio)
    yield from groups.items()


def iter_layout(layout: str, root: Path) -> Iterator[tuple[str, list[Path]]]:
    if layout == "an4":
        return an4(root)
    if layout == "folders":
        return folders(root)
    if layout == "nemo-manifest":
        return nemo_manifest(root)
    raise VoxguardError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
