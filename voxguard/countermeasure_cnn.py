"""A small convolutional countermeasure over LFCC frames (the stronger model measured against
the LFCC-GMM baseline; ``model="lfcc-cnn"`` in training).

Standardised LFCC + deltas (60 values per 10 ms frame, :func:`voxguard.countermeasure.lfcc`)
go through three 1-D convolutions over time (64 channels, kernel 5, dilations 1 / 2 / 4:
a 25-frame receptive field, ~50 k weights), then mean and standard-deviation pooling over
the whole stretch and one linear output: a logit, above 0 looks synthetic.  Any length
works (a 1.5 s daemon window or a whole recording).  Trained by
:mod:`voxguard.enroll.cnn_training`; weights serialise to plain lists (JSON, no pickles).
"""

from __future__ import annotations

import numpy as np

from typing import Sequence

from .countermeasure import FEATURE_DIM, lfcc, lfcc_batch, voiced_audio

CHANNELS = 64
KERNEL = 5
DILATIONS = (1, 2, 4)


def build_network():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c_in = [], FEATURE_DIM
            for d in DILATIONS:
                layers += [nn.Conv1d(c_in, CHANNELS, KERNEL, dilation=d, padding=d * (KERNEL - 1) // 2), nn.ReLU()]
                c_in = CHANNELS
            self.body = nn.Sequential(*layers)
            self.out = nn.Linear(2 * CHANNELS, 1)

        def forward(self, x):  # x [batch, frames, 60]
            h = self.body(x.transpose(1, 2))
            pooled = torch.cat([h.mean(2), h.std(2, unbiased=False)], 1)
            return self.out(pooled).squeeze(1)

    return Net()


class CnnCountermeasure:
    name = "lfcc-cnn"

    def __init__(self, state: dict, feature_mean: np.ndarray, feature_std: np.ndarray, info: dict | None = None):
        import torch

        self.net = build_network()
        self.net.load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in state.items()})
        self.net.eval()
        self.feature_mean = np.asarray(feature_mean, dtype=np.float32)
        self.feature_std = np.asarray(feature_std, dtype=np.float32)
        self.info = info or {}

    def score_frames(self, frames: np.ndarray) -> float:
        """Logit of (unstandardised) LFCC frames; 0.0 for fewer than 2 frames."""
        import torch

        if len(frames) < 2:
            return 0.0
        x = (np.asarray(frames, np.float32) - self.feature_mean) / self.feature_std
        with torch.no_grad():
            return float(self.net(torch.from_numpy(x[None]))[0])

    def score(self, samples: np.ndarray) -> float:
        return self.score_frames(lfcc(samples))

    def score_recording(self, samples: np.ndarray) -> float:
        return self.score(voiced_audio(samples))

    def score_batch(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`score` of each stretch of audio (daemon windows: already voiced, no VAD here):
        features vectorised (:func:`lfcc_batch`), the network run once per distinct length."""
        return self.score_frames_batch(lfcc_batch(windows))

    def score_frames_batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """:meth:`score_frames` of each item: items of equal length (no padding, which would change
        the convolution edges and the pooled statistics) go through the network as one batch."""
        import torch

        out = np.zeros(len(frames))
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(frames):
            if len(f) >= 2:
                groups.setdefault(len(f), []).append(i)
        with torch.no_grad():
            for rows in groups.values():
                x = (np.stack([np.asarray(frames[i], np.float32) for i in rows]) - self.feature_mean) / self.feature_std
                out[rows] = self.net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
        return out

    def as_dict(self) -> dict:
        return {"type": self.name, "state": {k: v.detach().cpu().numpy().tolist() for k, v in self.net.state_dict().items()},
                "feature_mean": self.feature_mean.tolist(), "feature_std": self.feature_std.tolist(),
                "architecture": {"channels": CHANNELS, "kernel": KERNEL, "dilations": list(DILATIONS)},
                "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "CnnCountermeasure":
        if d.get("type") != cls.name:
            raise ValueError(f"not an {cls.name} countermeasure: {d.get('type')!r}")
        arch = d.get("architecture", {})
        if arch and (arch.get("channels"), arch.get("kernel"), tuple(arch.get("dilations", ()))) != \
                (CHANNELS, KERNEL, DILATIONS):
            raise ValueError(f"CNN countermeasure architecture {arch} is not this voxguard's")
        return cls(d["state"], np.asarray(d["feature_mean"]), np.asarray(d["feature_std"]), d.get("info"))
