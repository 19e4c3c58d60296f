"""The embedder interface: a batch of 16 kHz windows in, L2-normalised vectors out."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EmbedderIdentity:
    """What a store records so that embeddings from different models never mix."""

    name: str
    dim: int
    version: str

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name} ({self.dim}-d, {self.version})"


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int
    device: str
    runtime: str  # what computes the model: "torch", or "onnx" / "onnx-int8" (ONNX Runtime)

    @property
    def identity(self) -> EmbedderIdentity: ...

    def embed(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Embed 16 kHz mono float32 windows (any lengths) -> float32 ``[n, dim]``, rows L2-normalised."""
        ...


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def group_by_length(windows: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Indices of equal-length windows, so each group runs as one tensor batch."""
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault(len(w), []).append(i)
    return groups


def pick_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
