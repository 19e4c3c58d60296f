"""Utterance embeddings: the normalised mean of the window embeddings over the voiced
audio of a recording — the same VAD and windowing code the daemon runs on streams.

:func:`embed_window_sets` keeps each recording's window embeddings (what window-level
calibration scores); :func:`embed_band_views` embeds each recording in every band
(:mod:`voxguard.bands`), as enrollment stores them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .bands import BANDS, TELEPHONE, telephone_simulation
from .embedders.base import Embedder, l2_normalise
from .vad import VadConfig
from .windows import WindowConfig, speech_windows


def embed_window_sets(embedder: Embedder, recordings: Sequence[np.ndarray], vad: VadConfig | None = None,
                      windows: WindowConfig | None = None) -> list[np.ndarray]:
    """16 kHz mono recordings -> each one's window embeddings, float32 ``[n_i, dim]``.

    All windows of all recordings go to the embedder in one call, so a batch of files
    is embedded as efficiently as the backend allows.
    """
    per: list[list[np.ndarray]] = [[w.samples for w in speech_windows(r, vad, windows)] for r in recordings]
    empty = [n for n, ws in enumerate(per) if not ws]
    if empty:
        raise ValueError(f"recording {empty[0]} holds no audio to embed")
    vecs = embedder.embed([w for ws in per for w in ws]) if per else np.zeros((0, embedder.dim), np.float32)
    out, i = [], 0
    for ws in per:
        out.append(np.asarray(vecs[i: i + len(ws)], dtype=np.float32))
        i += len(ws)
    return out


def utterance_of(windows: np.ndarray) -> np.ndarray:
    """An utterance embedding from its window embeddings."""
    return l2_normalise(np.asarray(windows, dtype=np.float32).mean(axis=0, keepdims=True))[0]


def embed_utterances(embedder: Embedder, recordings: Sequence[np.ndarray],
                     vad: VadConfig | None = None, windows: WindowConfig | None = None) -> np.ndarray:
    """16 kHz mono recordings -> float32 ``[n, dim]`` utterance embeddings."""
    sets = embed_window_sets(embedder, recordings, vad, windows)
    if not sets:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.stack([utterance_of(w) for w in sets])


def embed_utterance(embedder: Embedder, samples: np.ndarray, vad: VadConfig | None = None,
                    windows: WindowConfig | None = None) -> np.ndarray:
    return embed_utterances(embedder, [samples], vad, windows)[0]


def embed_band_views(embedder: Embedder, recordings: Sequence[np.ndarray], bands: Sequence[str] = BANDS,
                     vad: VadConfig | None = None, windows: WindowConfig | None = None) -> list[dict[str, np.ndarray]]:
    """Each recording's window embeddings in each band: ``[{band: [n, dim]}, ...]``."""
    views: list[dict[str, np.ndarray]] = [{} for _ in recordings]
    for band in bands:
        audio = [telephone_simulation(r) for r in recordings] if band == TELEPHONE else list(recordings)
        for v, w in zip(views, embed_window_sets(embedder, audio, vad, windows)):
            v[band] = w
    return views
