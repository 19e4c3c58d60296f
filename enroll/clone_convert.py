"""``convert`` cloning backend: classical voice conversion towards the target.

A *source* utterance — another speaker's recording, or speech synthesised from text with
espeak-ng — is analysed with WORLD and mapped towards the target with statistics
learned from the target's enrolled audio:

* F0: log-F0 mean/variance mapping over voiced frames;
* spectral envelope: per-dimension mean/variance mapping of WORLD's coded (mel-cepstrum
  like) envelope, learned on voiced frames; the energy coefficient keeps the source's;
* aperiodicity: the source's.

This is a deliberately weak, honest baseline (no parallel data, no learned mapping): the
result carries the target's average timbre and pitch range but the source's phonetics,
prosody and much of its identity, plus WORLD's vocoder artefacts.  It is useful to test
detection on imperfect clones, not as a convincing forgery.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyworld as pw

from .. import SAMPLE_RATE
from ..audio import load_audio
from .clone_vocoder import WorldFeatures, world_analyse, world_synthesise
from .cloning import Clone, CloningError, TargetVoice, reject_options

ENVELOPE_DIMS = 40
ESPEAK_TIMEOUT_S = 60


@dataclass(frozen=True)
class Source:
    group: str  # statistics are pooled per group (a speaker, "espeak-ng")
    label: str  # provenance: file, sample or text
    audio: np.ndarray  # 16 kHz float32


@dataclass(frozen=True)
class VoiceStats:
    """Log-F0 and coded-envelope statistics over the voiced frames of some recordings."""

    lf0_mean: float
    lf0_std: float
    env_mean: np.ndarray
    env_std: np.ndarray

    @classmethod
    def of(cls, analyses: Sequence[WorldFeatures]) -> "VoiceStats":
        lf0 = np.concatenate([np.log(a.f0[a.f0 > 0]) for a in analyses])
        env = np.concatenate([code_envelope(a.sp)[a.f0 > 0] for a in analyses])
        if len(lf0) < 20:
            raise CloningError("too little voiced speech to learn a voice's statistics")
        return cls(float(lf0.mean()), float(lf0.std() + 1e-6), env.mean(0), env.std(0) + 1e-6)


def code_envelope(sp: np.ndarray) -> np.ndarray:
    return pw.code_spectral_envelope(np.ascontiguousarray(sp), SAMPLE_RATE, ENVELOPE_DIMS)


def convert(src: WorldFeatures, s: VoiceStats, t: VoiceStats) -> WorldFeatures:
    """Map one analysed source utterance from source statistics ``s`` to target ``t``."""
    voiced = src.f0 > 0
    f0 = np.zeros_like(src.f0)
    f0[voiced] = np.exp((np.log(src.f0[voiced]) - s.lf0_mean) / s.lf0_std * t.lf0_std + t.lf0_mean)
    env = code_envelope(src.sp)
    mapped = (env - s.env_mean) / s.env_std * t.env_std + t.env_mean
    mapped[:, 0] = env[:, 0]  # keep the source's energy contour
    fft_size = (src.sp.shape[1] - 1) * 2
    sp = pw.decode_spectral_envelope(np.ascontiguousarray(mapped), SAMPLE_RATE, fft_size)
    return WorldFeatures(f0, sp, src.ap)


def espeak(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng (``speed`` in words/minute, ``pitch`` 0-99), at 16 kHz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise CloningError("--text with the convert backend needs espeak-ng (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory(prefix="voxguard-espeak-") as tmp:
        out = Path(tmp) / "tts.wav"
        try:
            proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), "--", text], capture_output=True,
                                  text=True, timeout=ESPEAK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CloningError(f"espeak-ng did not finish within {ESPEAK_TIMEOUT_S} s") from None
        if proc.returncode != 0 or not out.exists():
            raise CloningError(f"espeak-ng failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        return load_audio(out).samples


class ConvertCloner:
    """Converts source utterances (recordings or espeak-ng speech) towards the target voice."""

    name = "convert"

    def __init__(self, sources: Sequence[Source] = (), texts: Sequence[str] = (), voice: str = "en-us",
                 f0_method: str = "dio"):
        """``texts`` (synthesised with espeak-ng) take precedence over ``sources``."""
        if not sources and not texts:
            raise CloningError("the convert backend needs source speech: --source FILE, --source-speaker "
                               "NAME, or --text (synthesised with espeak-ng)")
        self.sources = list(sources)
        self.texts = [t for t in texts if t.strip()]
        self.use_text = bool(texts)
        if texts and not self.texts:
            raise CloningError("--text is empty")
        self.voice = voice
        self.f0_method = f0_method

    def params(self) -> dict:
        return {"f0_mapping": "log-f0 mean/std", "envelope_mapping": f"mean/std of {ENVELOPE_DIMS}-d coded envelope",
                "source_kind": "espeak-ng" if self.use_text else "recordings",
                **({"espeak_voice": self.voice} if self.use_text else {}), "f0_method": self.f0_method}

    def _sources(self, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Source]:
        if self.use_text:
            out = []
            for t in texts[:count]:  # vary rate and pitch so repeated texts give different clones
                speed, pitch = int(rng.integers(150, 196)), int(rng.integers(35, 66))
                out.append(Source("espeak-ng", f"text: {t}", espeak(t, self.voice, speed, pitch)))
            return out
        order = rng.permutation(len(self.sources))
        return [self.sources[order[i % len(order)]] for i in range(count)]

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        if self.use_text:
            texts = [self.texts[i % len(self.texts)] for i in range(count)]
        target_stats = VoiceStats.of([world_analyse(r.audio, f0_method=self.f0_method) for r in target.references])
        chosen = self._sources(count, texts, rng)
        analyses = {id(s): world_analyse(s.audio, f0_method=self.f0_method) for s in chosen}
        group_stats = {}
        for group in {s.group for s in chosen}:
            members = {id(s): analyses[id(s)] for s in chosen if s.group == group}
            group_stats[group] = VoiceStats.of(list(members.values()))
        clones = []
        for s in chosen:
            y = world_synthesise(convert(analyses[id(s)], group_stats[s.group], target_stats))
            clones.append(Clone(y, s.label, {"source_group": s.group}))
        return clones


def create(sources: Sequence[Source] = (), text: Sequence[str] | None = None, espeak_voice: str = "en-us",
           f0_method: str = "dio", **unused) -> ConvertCloner:
    reject_options("convert", unused)
    return ConvertCloner(sources, texts=list(text or ()), voice=espeak_voice, f0_method=f0_method)
