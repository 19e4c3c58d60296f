"""NVIDIA NeMo TitaNet (``EncDecSpeakerLabelModel``) speaker embeddings.

The model comes from a local ``.nemo`` file, or — on a machine that can reach NGC /
Hugging Face — from a pretrained name such as
``nvidia/speakerverification_en_titanet_large`` (192-d).  Needs the optional extra
``pip install 'voxguard[nemo]'``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ModelError
from .base import EmbedderIdentity, group_by_length, l2_normalise, pick_device

DEFAULT_MODEL = "nvidia/speakerverification_en_titanet_large"
MODEL_ENV = "VOXGUARD_TITANET_MODEL"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def load_speaker_model(model: str, device: str):
    """Load an ``EncDecSpeakerLabelModel`` from a ``.nemo`` path or a pretrained name."""
    try:
        logging.getLogger("nemo_logger").setLevel(logging.ERROR)
        from nemo.collections.asr.models import EncDecSpeakerLabelModel
    except ImportError as e:
        raise ModelError(f"the titanet embedder needs NVIDIA NeMo: pip install 'voxguard[nemo]' ({e})") from None
    import torch

    path = Path(model).expanduser()
    if path.suffix == ".nemo" or path.exists():
        if not path.is_file():
            raise ModelError(f"TitaNet model file not found: {path}")
        try:
            return EncDecSpeakerLabelModel.restore_from(str(path), map_location=torch.device(device)), path
        except Exception as e:  # NeMo raises many kinds for a broken archive
            raise ModelError(f"cannot load TitaNet model from {path}: {e}") from None
    try:
        return EncDecSpeakerLabelModel.from_pretrained(model, map_location=torch.device(device)), None
    except Exception as e:
        raise ModelError(
            f"cannot load pretrained model {model!r} ({e}); offline, download the .nemo file "
            f"elsewhere and pass its path with --model or ${MODEL_ENV}") from None


class TitaNetEmbedder:
    name = "titanet"

    def __init__(self, model: str | None = None, device: str = "auto", max_batch: int = 64):
        import torch

        self._torch = torch
        self.device = pick_device(device)
        self.max_batch = max_batch
        model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self._model, path = load_speaker_model(model, self.device)
        self._model.eval()
        self._model.to(self.device)
        self.sample_rate = int(getattr(self._model.preprocessor, "_sample_rate", 16000))
        if self.sample_rate != 16000:
            raise ModelError(f"TitaNet model expects {self.sample_rate} Hz audio; voxguard feeds 16 kHz")
        self._version = f"file:{path.name}:{_file_digest(path)}" if path else f"pretrained:{model}"
        self.dim = int(self._forward([np.zeros(16000, dtype=np.float32)]).shape[1])

    @property
    def identity(self) -> EmbedderIdentity:
        return EmbedderIdentity(self.name, self.dim, self._version)

    def _forward(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.stack(batch).astype(np.float32)).to(self.device)
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            _, embs = self._model.forward(input_signal=x, input_signal_length=lengths)
        return embs.float().cpu().numpy()

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(windows), self.dim), dtype=np.float32)
        for _, idx in group_by_length(windows).items():
            for s in range(0, len(idx), self.max_batch):
                part = idx[s: s + self.max_batch]
                out[part] = self._forward([windows[i] for i in part])
        return l2_normalise(out)
