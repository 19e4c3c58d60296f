"""A tiny TitaNet: the architecture of NeMo's ``titanet-large.yaml`` (mel preprocessor,
``ConvASREncoder`` of separable SE blocks with residual repeats, ``SpeakerDecoder`` with
attentive statistics pooling) at a fraction of the width, with random weights, saved as a
real ``.nemo`` archive.  Used by the TitaNet tests and the embedder benchmark.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np


def titanet_config(filters: int = 1024, repeat: int = 3, enc_feat_out: int = 3072, emb_size: int = 192,
                   num_classes: int = 7205, n_mels: int = 80, kernels: tuple[int, ...] = (3, 7, 11, 15),
                   attention_channels: int = 128) -> dict:
    """The ``model`` section of ``titanet-large.yaml`` (defaults = TitaNet-large), without datasets."""

    def block(filters_: int, repeat_: int, kernel: int, residual: bool, dropout: float) -> dict:
        return {"filters": filters_, "repeat": repeat_, "kernel": [kernel], "stride": [1], "dilation": [1],
                "dropout": dropout, "residual": residual, "separable": True, "se": True, "se_context_size": -1}

    first, *middle = kernels
    jasper = [block(filters, 1, first, False, 0.0)]
    jasper += [block(filters, repeat, k, True, 0.1) for k in middle]
    jasper.append(block(enc_feat_out, 1, 1, False, 0.0))
    return {
        "sample_rate": 16000,
        "train_ds": None,
        "validation_ds": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "normalize": "per_feature", "window_size": 0.025, "sample_rate": 16000, "window_stride": 0.01,
            "window": "hann", "features": n_mels, "n_fft": 512, "frame_splicing": 1, "dither": 0.00001,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConvASREncoder",
            "feat_in": n_mels, "activation": "relu", "conv_mask": True, "jasper": jasper,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.SpeakerDecoder",
            "feat_in": enc_feat_out, "num_classes": num_classes, "pool_mode": "attention",
            "emb_sizes": emb_size, "attention_channels": attention_channels,
        },
        "loss": {"_target_": "nemo.collections.asr.losses.angularloss.AngularSoftmaxLoss",
                 "scale": 30, "margin": 0.2},
    }


TINY = dict(filters=32, repeat=2, enc_feat_out=64, emb_size=32, num_classes=8, n_mels=40, kernels=(3, 5, 7),
            attention_channels=16)
"""A miniature with every kind of block (first, residual SE repeats, 1x1 expansion) kept."""


def synthetic_audio(n: int, seconds: float = 1.5, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """``[n, samples]`` varied signals: voiced harmonic tones (random pitch, vibrato,
    syllable rate, level), noise and pure tones."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros((n, len(t)), dtype=np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            f0 = rng.uniform(80, 300) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t))
            phase = 2 * np.pi * np.cumsum(f0) / sr
            x = sum(np.sin(k * phase) * rng.uniform(0.2, 1) / k for k in range(1, 15))
            x *= 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(2, 6) * t))
        elif kind == 1:
            x = rng.standard_normal(len(t))
        else:
            x = np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        out[i] = rng.uniform(0.02, 0.3) * x / np.max(np.abs(x))
    return out


def estimate_batchnorm(model, audio: np.ndarray) -> None:
    """Set every BatchNorm's running statistics from a forward pass over ``audio`` (no weight
    changes).  With freshly initialised statistics a random TitaNet maps every input to almost
    the same vector; estimated ones make its embeddings depend on the input, as a trained
    model's do."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch
    model.train()
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.no_grad():
        model.forward(input_signal=x, input_signal_length=torch.full((len(x),), x.shape[1], dtype=torch.long))
    model.eval()


def build_speaker_model(seed: int = 0, estimate_bn: bool = True, **overrides):
    """An ``EncDecSpeakerLabelModel`` in eval mode with random (seeded) weights."""
    import torch
    from omegaconf import OmegaConf

    os.environ.setdefault("NEMO_REDIRECT_LOGS_TO_STDERR", "1")
    from nemo.collections.asr.models import EncDecSpeakerLabelModel
    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)
    torch.manual_seed(seed)
    model = EncDecSpeakerLabelModel(cfg=OmegaConf.create(titanet_config(**overrides)), trainer=None)
    if estimate_bn:
        estimate_batchnorm(model, synthetic_audio(48, seed=seed))
    return model.eval()


def save_tiny_titanet(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny model and ``save_to`` a ``.nemo`` file at ``path``."""
    path = Path(path)
    build_speaker_model(seed, **TINY).save_to(str(path))
    return path


if __name__ == "__main__":
    import sys

    print(save_tiny_titanet(sys.argv[1] if len(sys.argv) > 1 else "tiny_titanet.nemo"))
