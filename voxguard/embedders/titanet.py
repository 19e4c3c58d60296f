"""NVIDIA NeMo TitaNet (``EncDecSpeakerLabelModel``) speaker embeddings.

The model comes from a local ``.nemo`` file, or — on a machine that can reach NGC /
Hugging Face — from a pretrained name such as
``nvidia/speakerverification_en_titanet_large`` (192-d).  Needs the optional extra
``pip install 'voxguard[nemo]'``.

The embedder's identity (what a store records) is the SHA-256 of the model's weights,
so the same model loaded from a file or by name is recognised, and any retrained or
different model is refused by a store made with another.
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


def _import_nemo():
    """Import NeMo's speaker model class with its console chatter kept off stdout."""
    # NeMo logs INFO to stdout by default, which would corrupt `--json` output.
    os.environ.setdefault("NEMO_REDIRECT_LOGS_TO_STDERR", "1")
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    if quiet:
        logging.getLogger("nv_one_logger").setLevel(logging.ERROR)
    try:
        from nemo.collections.asr.models import EncDecSpeakerLabelModel
        from nemo.utils import logging as nemo_logging
    except ImportError as e:
        raise ModelError(f"the titanet embedder needs NVIDIA NeMo: pip install 'voxguard[nemo]' ({e})") from None
    if quiet:
        nemo_logging.setLevel(logging.ERROR)
    return EncDecSpeakerLabelModel


def _looks_like_path(model: str) -> bool:
    """A file path rather than a pretrained model name."""
    return (model.endswith(".nemo") or model.startswith((".", "~", os.sep))
            or (os.altsep is not None and os.altsep in model) or Path(model).expanduser().exists())


def load_speaker_model(model: str, device: str):
    """Load an ``EncDecSpeakerLabelModel`` from a ``.nemo`` path or a pretrained name.

    Returns ``(model, path)``; ``path`` is None for a pretrained name.
    """
    path = Path(model).expanduser() if _looks_like_path(model) else None
    if path is not None:  # checked before the (slow) NeMo import
        if not path.exists():
            raise ModelError(f"TitaNet model file not found: {path}")
        if not path.is_file():
            raise ModelError(f"TitaNet model {path} is not a file (expected a .nemo archive)")
    cls = _import_nemo()
    import torch

    if path is not None:
        try:
            loaded = cls.restore_from(str(path), map_location=torch.device(device))
        except Exception as e:  # NeMo raises many kinds for a broken archive
            raise ModelError(f"cannot load TitaNet model from {path}: not a usable .nemo speaker model "
                             f"({type(e).__name__}: {e})") from None
        return loaded, path
    try:
        return cls.from_pretrained(model, map_location=torch.device(device)), None
    except Exception as e:
        raise ModelError(
            f"cannot load pretrained model {model!r} ({type(e).__name__}: {e}); offline, download the "
            f".nemo file elsewhere and pass its path with --model or ${MODEL_ENV}") from None


def weights_digest(module) -> str:
    """SHA-256 (first 12 hex digits) of a torch module's parameters and buffers, in key order."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class TitaNetEmbedder:
    """Batched TitaNet embeddings of 16 kHz windows (L2-normalised)."""

    name = "titanet"
    runtime = "torch"

    def __init__(self, model: str | None = None, device: str = "auto", max_batch: int = 64):
        import torch

        self._torch = torch
        self.device = pick_device(device)
        self.max_batch = max_batch
        self.model_ref = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self._model, self.model_path = load_speaker_model(self.model_ref, self.device)
        if not (hasattr(self._model, "preprocessor") and hasattr(self._model, "decoder")):
            raise ModelError(f"{self.model_ref} is not a speaker embedding model")
        self._model.eval()
        self._model.to(self.device)
        self.sample_rate = int(getattr(self._model.preprocessor, "_sample_rate", 16000))
        if self.sample_rate != 16000:
            raise ModelError(f"TitaNet model expects {self.sample_rate} Hz audio; voxguard feeds 16 kHz")
        self._version = f"nemo-weights:{weights_digest(self._model)}"
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
