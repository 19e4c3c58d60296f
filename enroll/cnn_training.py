"""Training :class:`voxguard.countermeasure_cnn.CnnCountermeasure` on LFCC frames (torch, CPU).

Random 1.5 s crops (148 frames) of every recording's voiced LFCC frames, classes balanced
by weighting, Adam, a fixed number of epochs; deterministic for a seed.  Runs in a minute
or two on one CPU thread for a store of ~1000 recordings.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..errors import VoxguardError

CROP = 148
CROPS_PER_RECORDING = 4
EPOCHS = 8
BATCH = 64
LR = 1e-3
MIN_RECORDINGS = 20
"""Bona fide and spoof recordings (each) below which the CNN is not trained."""


def _crop(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(frames)
    if n >= CROP:
        s = int(rng.integers(0, n - CROP + 1))
        return frames[s: s + CROP]
    reps = int(np.ceil(CROP / max(1, n)))
    return np.tile(frames, (reps, 1))[:CROP]


def fit_cnn_countermeasure(bona_fide: Sequence[np.ndarray], spoof: Sequence[np.ndarray], seed: int = 0,
                           epochs: int = EPOCHS, progress: Callable[[str], None] | None = None):
    import torch

    from ..countermeasure_cnn import CnnCountermeasure, build_network

    bona = [f for f in bona_fide if len(f) >= 2]
    spf = [f for f in spoof if len(f) >= 2]
    need = MIN_RECORDINGS
    if len(bona) < need or len(spf) < need:
        raise VoxguardError(f"too little audio to train the CNN countermeasure: {len(bona)} bona fide and "
                            f"{len(spf)} spoof recordings, {need} of each needed: add about "
                            f"{max(0, need - len(bona)) + max(0, need - len(spf))} more recordings")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    allf = np.concatenate(bona + spf)
    mean, std = allf.mean(0), allf.std(0) + 1e-6
    recs = [(f, 0) for f in bona] + [(f, 1) for f in spf]
    w_pos = len(bona) / len(spf)
    net = build_network()
    opt = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=1e-4)
    t0 = time.perf_counter()
    for ep in range(epochs):
        X = np.stack([(_crop(f, rng) - mean) / std for f, _ in recs for _ in range(CROPS_PER_RECORDING)]).astype(np.float32)
        y = np.array([lab for _, lab in recs for _ in range(CROPS_PER_RECORDING)], dtype=np.float32)
        order = rng.permutation(len(X))
        net.train()
        total = 0.0
        for b in range(0, len(order), BATCH):
            idx = order[b: b + BATCH]
            xb, yb = torch.from_numpy(X[idx]), torch.from_numpy(y[idx])
            logit = net(xb)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logit, yb, pos_weight=torch.tensor(w_pos, dtype=torch.float32))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            progress(f"cnn epoch {ep + 1}/{epochs}: loss {total / len(order):.4f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return CnnCountermeasure(state, mean, std, {"epochs": epochs, "crops_per_recording": CROPS_PER_RECORDING,
                                                "recordings": len(recs), "seed": seed})
