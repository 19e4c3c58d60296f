"""Making clones of an enrolled speaker: one small interface, several backends.

A :class:`Cloner` turns a :class:`TargetVoice` (the speaker's enrolled genuine audio,
16 kHz) into ``count`` synthetic recordings of that voice.  Backends (one module each):

``vocoder``   WORLD analysis/resynthesis of the target's own recordings (``clone_vocoder``)
``convert``   classical voice conversion of another utterance towards the target (``clone_convert``)
``nemo-tts``  NVIDIA NeMo FastPitch + HiFi-GAN from local ``.nemo`` files (``clone_nemo_tts``)
``griffinlim``  the target's recordings through a log-mel spectrogram and Griffin-Lim (``clone_griffinlim``)
``espeak``    espeak-ng formant speech at the target's pitch, no conversion (``clone_espeak``)
``command``   any external tool through a ``{ref}`` / ``{text}`` / ``{out}`` command template
              (``clone_command``)

:func:`generate_clones` makes every clone in memory first, so a failing backend leaves
nothing behind; :func:`write_clones` and :func:`enroll_clones` then write the files and
store them as known clones in one transaction, each with its provenance.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import soundfile as sf

from .. import SAMPLE_RATE
from ..audio import file_sha256
from ..errors import VoxguardError
from ..store import NewSample, Store


DEFAULT_TEXTS = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
)
"""Harvard sentences, used by text-driven backends when no ``--text`` is given."""

MIN_CLONE_S = 0.25


class CloningError(VoxguardError):
    """A clone could not be made (bad input, missing model, a failing external tool)."""


@dataclass(frozen=True)
class Reference:
    """One enrolled genuine recording of the target."""

    sample_id: int
    audio: np.ndarray = field(repr=False)  # 16 kHz mono float32
    source_path: str | None = None

    @property
    def label(self) -> str:
        return f"sample #{self.sample_id}"


@dataclass(frozen=True)
class TargetVoice:
    speaker: str
    references: tuple[Reference, ...]

    def references_in_turn(self, count: int, rng: np.random.Generator) -> list[Reference]:
        """``count`` references, each used in turn in a random order (one ``rng`` draw)."""
        refs = list(self.references)
        order = rng.permutation(len(refs))
        return [refs[order[i % len(refs)]] for i in range(count)]


def random_factor(rng: np.random.Generator, spread: float) -> float:
    """A factor drawn uniformly from ``[1 - spread, 1 + spread]`` (1.0, and no draw, for 0)."""
    return float(rng.uniform(1 - spread, 1 + spread)) if spread else 1.0


@dataclass
class Clone:
    """One synthetic recording and how it was made."""

    audio: np.ndarray  # 16 kHz mono float32
    source: str  # what it was made from ("sample #12", "text: ...", "file.wav")
    params: dict = field(default_factory=dict)  # per-clone parameters (pitch factor, ...)
    path: Path | None = None  # set by write_clones

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class Cloner(Protocol):
    name: str

    def params(self) -> dict:
        """Backend-level parameters, recorded in every clone's provenance."""
        ...

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        """Make ``count`` clones of ``target`` (16 kHz).  Raises :class:`CloningError`."""
        ...


BACKENDS: dict[str, str] = {
    "vocoder": "voxguard.enroll.clone_vocoder",
    "convert": "voxguard.enroll.clone_convert",
    "nemo-tts": "voxguard.enroll.clone_nemo_tts",
    "griffinlim": "voxguard.enroll.clone_griffinlim",
    "espeak": "voxguard.enroll.clone_espeak",
    "command": "voxguard.enroll.clone_command",
}
"""Backend name -> module exposing ``create(**options) -> Cloner``."""


def create_cloner(backend: str, **options) -> Cloner:
    """Build the named backend with its options (unknown options are an error)."""
    if backend not in BACKENDS:
        raise CloningError(f"unknown cloning backend {backend!r} (choose from {', '.join(BACKENDS)})")
    factory: Callable[..., Cloner] = importlib.import_module(BACKENDS[backend]).create
    return factory(**options)


def reject_options(backend: str, unused: dict) -> None:
    """Refuse options meant for another backend (instead of silently ignoring them)."""
    given = sorted(k for k, v in unused.items() if v not in (None, False, [], ()))
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CloningError(f"the {backend} backend does not take {flags}")


def target_voice(store: Store, speaker: str, max_references: int | None = None) -> TargetVoice:
    """The speaker's enrolled genuine recordings that still have their audio."""
    infos = store.samples(speaker, "genuine")  # raises UnknownSpeaker
    refs = []
    for info in infos:
        audio = store.sample_audio(info.id)
        if audio is not None and len(audio) >= MIN_CLONE_S * SAMPLE_RATE:
            refs.append(Reference(info.id, audio.astype(np.float32), info.source_path))
        if max_references and len(refs) >= max_references:
            break
    if not refs:
        why = "no genuine samples" if not infos else "no stored audio for its genuine samples"
        raise CloningError(f"speaker {speaker!r} has {why}: enroll genuine recordings first "
                           f"('voxguard enroll add {speaker} FILE...')")
    return TargetVoice(speaker, tuple(refs))


def _check_clone(backend: str, c: Clone) -> Clone:
    a = np.asarray(c.audio, dtype=np.float32)
    if a.ndim != 1 or len(a) < MIN_CLONE_S * SAMPLE_RATE:
        raise CloningError(f"{backend}: produced {len(a) / SAMPLE_RATE:.2f} s of audio "
                           f"(at least {MIN_CLONE_S} s expected)")
    if not np.isfinite(a).all():
        raise CloningError(f"{backend}: produced non-finite samples")
    peak = float(np.abs(a).max())
    if peak == 0.0:
        raise CloningError(f"{backend}: produced silence")
    if peak > 0.99:
        a = a * (0.99 / peak)
    # 16-bit, as written and stored: detectors must not tell clones by their quantisation
    c.audio = (np.round(a * 32767.0) / 32767.0).astype(np.float32)
    return c


def generate_clones(cloner: Cloner, target: TargetVoice, count: int, texts: Sequence[str] | None = None,
                    seed: int = 0) -> list[Clone]:
    """Make ``count`` clones in memory (nothing is written until all of them exist)."""
    if count < 1:
        raise CloningError("--count must be at least 1")
    rng = np.random.default_rng(seed)
    clones = cloner.clone(target, count, list(texts or DEFAULT_TEXTS), rng)
    if len(clones) != count:
        raise CloningError(f"{cloner.name}: made {len(clones)} clones, {count} asked for")
    return [_check_clone(cloner.name, c) for c in clones]


def write_clones(clones: list[Clone], out_dir: Path, speaker: str, backend: str) -> list[Path]:
    """Write 16 kHz 16-bit WAVs ``<speaker>-<backend>-NNN.wav`` (never overwriting) into ``out_dir``."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise CloningError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in speaker)
    n = 0
    paths = []
    for c in clones:
        while True:
            p = out_dir / f"{safe}-{backend}-{n:03d}.wav"
            n += 1
            if not p.exists():
                break
        sf.write(str(p), np.clip(c.audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")
        c.path = p
        paths.append(p)
    return paths


def clone_provenance(cloner: Cloner, clone: Clone) -> dict:
    return {"backend": cloner.name, "params": {**cloner.params(), **clone.params}, "source": clone.source}


def enroll_clones(enroller, speaker: str, cloner: Cloner, clones: list[Clone]) -> int:
    """Store written clones as known clones of ``speaker`` in one transaction; returns how many were new.

    Embeds the audio as written (the 16-bit file, re-read), so the stored sample is
    exactly the file on disk.  Each clone keeps its own provenance.
    """
    from ..audio import load_audio

    if any(c.path is None for c in clones):
        raise ValueError("write the clones before enrolling them")
    audios = [load_audio(c.path) for c in clones]
    from ..bands import WIDE
    from ..utterance import utterance_of

    views = enroller.embed_audio(audios)
    samples = [NewSample(sha256=file_sha256(c.path), embedding=utterance_of(v[WIDE]), duration=a.duration,
                         source_path=str(c.path.resolve()), provenance=clone_provenance(cloner, c),
                         audio=a.samples, views=v)
               for c, a, v in zip(clones, audios, views)]
    from ..store import Audit

    audit = None if enroller.actor is None else Audit(enroller.actor, None, {"generated_by": cloner.name})
    return enroller.store.add_samples(speaker, "clone", samples, enroller.embedder.identity, audit)
