"""Utterance embeddings: the normalised mean of the window embeddings over the voiced
audio of a recording — the same VAD and windowing code the daemon runs on streams."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .embedders.base import Embedder, l2_normalise
from .vad import VadConfig
from .windows import WindowConfig, speech_windows


def embed_utterances(embedder: Embedder, recordings: Sequence[np.ndarray],
                     vad: VadConfig | None = None, windows: WindowConfig | None = None) -> np.ndarray:
    """16 kHz mono recordings -> float32 ``[n, dim]`` utterance embeddings.

    All windows of all recordings go to the embedder in one call, so a batch of files
    is embedded as efficiently as the backend allows.
    """
    per: list[list[np.ndarray]] = [[w.samples for w in speech_windows(r, vad, windows)] for r in recordings]
    flat = [w for ws in per for w in ws]
    out = np.zeros((len(recordings), embedder.dim), dtype=np.float32)
    empty = [n for n, ws in enumerate(per) if not ws]
    if empty:
        raise ValueError(f"recording {empty[0]} holds no audio to embed")
    vecs = embedder.embed(flat)
    i = 0
    for n, ws in enumerate(per):
        out[n] = vecs[i: i + len(ws)].mean(axis=0)
        i += len(ws)
    return l2_normalise(out)


def embed_utterance(embedder: Embedder, samples: np.ndarray, vad: VadConfig | None = None,
                    windows: WindowConfig | None = None) -> np.ndarray:
    return embed_utterances(embedder, [samples], vad, windows)[0]
