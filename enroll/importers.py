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


def manifest_entries(path: Path) -> Iterator[tuple[Path, str | None]]:
    """``(audio file, label or None)`` of each line of a NeMo JSON-lines manifest; relative
    paths are resolved against the manifest's folder."""
    if not path.is_file():
        raise VoxguardError(f"{path}: manifest file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                audio = Path(item["audio_filepath"])
                label = item.get("label", item.get("speaker"))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise VoxguardError(f"{path}:{n}: not a NeMo manifest line ({e})") from None
            yield (audio if audio.is_absolute() else path.parent / audio), (None if label in (None, "") else str(label))


def nemo_manifest(path: Path) -> Iterator[tuple[str, list[Path]]]:
    groups: OrderedDict[str, list[Path]] = OrderedDict()
    for n, (audio, label) in enumerate(manifest_entries(path), 1):
        if label is None:
            raise VoxguardError(f"{path}: entry {n} ({audio}) has no 'label' or 'speaker' field")
        groups.setdefault(label, []).append(audio)
    yield from groups.items()


def expand_inputs(items: list[str]) -> list[Path]:
    """Command-line inputs -> audio files: a folder gives its audio files (any depth, sorted),
    a ``.json``/``.jsonl`` file is read as a NeMo manifest, anything else is a file."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            files = _audio_files(p)
            if not files:
                raise VoxguardError(f"{p}: no audio files in this folder")
            out.extend(files)
        elif p.suffix.lower() in (".json", ".jsonl") and p.is_file():
            out.extend(audio for audio, _ in manifest_entries(p))
        else:
            out.append(p)
    return out


def iter_layout(layout: str, root: Path) -> Iterator[tuple[str, list[Path]]]:
    if layout == "an4":
        return an4(root)
    if layout == "folders":
        return folders(root)
    if layout == "nemo-manifest":
        return nemo_manifest(root)
    raise VoxguardError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
