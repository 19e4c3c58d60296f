"""``nemo-tts`` cloning backend: NVIDIA NeMo FastPitch + HiFi-GAN from local ``.nemo`` files.

Cloning with NeMo means either a *speaker-adapted* FastPitch (fine-tuned on the target's
recordings, e.g. with NeMo's ``fastpitch_finetune_adapters`` recipe) or a multi-speaker
FastPitch whose speaker ``--tts-speaker ID`` is the target.  Text comes from ``--text``
(default: Harvard sentences); the audio is resampled from the model's rate to 16 kHz.
Needs ``pip install 'voxguard[nemo]'`` (``nemo_toolkit[asr,tts]``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..audio import resample
from ..embedders.base import pick_device
from ..errors import ModelError
from .cloning import Clone, CloningError, TargetVoice, reject_options


def _checkpoint(path: str | None, what: str, flag: str) -> Path:
    if not path:
        raise CloningError(f"the nemo-tts backend needs {flag} {what.upper()}.nemo")
    p = Path(path).expanduser()
    if not p.is_file():
        raise CloningError(f"{what} checkpoint not found: {p}")
    return p


class NemoTtsCloner:
    """FastPitch (text -> mel) then HiFi-GAN (mel -> audio)."""

    name = "nemo-tts"

    def __init__(self, fastpitch: str | None, hifigan: str | None, speaker: int | None = None,
                 pace: float = 1.0, device: str = "auto"):
        fp_path = _checkpoint(fastpitch, "FastPitch", "--fastpitch")
        hg_path = _checkpoint(hifigan, "HiFi-GAN", "--hifigan")
        if not 0.2 <= pace <= 5.0:
            raise CloningError("--pace must be between 0.2 and 5")
        try:
            import torch

            logging.getLogger("nemo_logger").setLevel(logging.ERROR)
            from nemo.collections.tts.models import FastPitchModel, HifiGanModel
        except ImportError as e:
            raise ModelError(f"the nemo-tts backend needs NVIDIA NeMo TTS: pip install 'voxguard[nemo]' ({e})") from None
        self._torch = torch
        self.device = pick_device(device)
        loc = torch.device(self.device)
        self.fastpitch = self._restore(FastPitchModel, fp_path, "FastPitch", loc)
        self.hifigan = self._restore(HifiGanModel, hg_path, "HiFi-GAN", loc)
        self.paths = (fp_path, hg_path)
        self.n_speakers = int(self.fastpitch.cfg.get("n_speakers", 1) or 1)
        if self.n_speakers > 1:
            if speaker is None:
                raise CloningError(f"{fp_path.name} is a {self.n_speakers}-speaker FastPitch: choose the "
                                   f"target's voice with --tts-speaker 0..{self.n_speakers - 1}")
            if not 0 <= speaker < self.n_speakers:
                raise CloningError(f"--tts-speaker {speaker} is out of range 0..{self.n_speakers - 1}")
        elif speaker not in (None, 0):
            raise CloningError(f"{fp_path.name} is a single-speaker (or speaker-adapted) FastPitch: "
                               f"--tts-speaker does not apply")
        self.speaker = speaker if self.n_speakers > 1 else None
        self.pace = pace
        self.sample_rate = int(self.hifigan.cfg.preprocessor.sample_rate)
        fp_rate = int(self.fastpitch.cfg.get("sample_rate", self.sample_rate))
        if fp_rate != self.sample_rate:
            raise CloningError(f"FastPitch ({fp_rate} Hz) and HiFi-GAN ({self.sample_rate} Hz) do not match")

    @staticmethod
    def _restore(cls, path: Path, what: str, loc):
        try:
            model = cls.restore_from(str(path), map_location=loc).eval()
        except Exception as e:  # NeMo raises many kinds for a broken or foreign archive
            raise ModelError(f"cannot load {what} model from {path}: {e}") from None
        if not isinstance(model, cls):  # NeMo builds whatever class the archive names
            raise ModelError(f"cannot load {what} model from {path}: it holds a {type(model).__name__}")
        return model

    def params(self) -> dict:
        return {"fastpitch": self.paths[0].name, "hifigan": self.paths[1].name, "tts_speaker": self.speaker,
                "pace": self.pace, "model_sample_rate": self.sample_rate}

    def synthesise(self, text: str) -> np.ndarray:
        """16 kHz audio of ``text``."""
        torch = self._torch
        with torch.inference_mode():
            tokens = self.fastpitch.parse(text)
            spec = self.fastpitch.generate_spectrogram(tokens=tokens, speaker=self.speaker, pace=self.pace)
            audio = self.hifigan.convert_spectrogram_to_audio(spec=spec)
        y = audio.squeeze(0).float().cpu().numpy()
        return resample(y, self.sample_rate)

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        clones = []
        for i in range(count):
            text = texts[i % len(texts)]
            clones.append(Clone(self.synthesise(text), f"text: {text}", {"text": text}))
        return clones


def create(fastpitch: str | None = None, hifigan: str | None = None, tts_speaker: int | None = None,
           pace: float | None = None, device: str = "auto", **unused) -> NemoTtsCloner:
    reject_options("nemo-tts", unused)
    return NemoTtsCloner(fastpitch, hifigan, tts_speaker, 1.0 if pace is None else pace, device)
