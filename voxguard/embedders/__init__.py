"""Pluggable speaker embedders behind one small interface (:class:`Embedder`).

``resemblyzer`` (default, offline, 256-d) and ``titanet`` (NeMo, 192-d for
TitaNet-large).  Backends are imported only when created, so the heavy
frameworks load only for the embedder in use.
"""

from __future__ import annotations

from ..errors import ModelError
from .base import Embedder, EmbedderIdentity, l2_normalise, pick_device

DEFAULT_EMBEDDER = "resemblyzer"
EMBEDDERS = ("resemblyzer", "titanet")

__all__ = ["Embedder", "EmbedderIdentity", "create_embedder", "l2_normalise", "pick_device",
           "DEFAULT_EMBEDDER", "EMBEDDERS"]


def create_embedder(name: str = DEFAULT_EMBEDDER, device: str = "auto", model: str | None = None,
                    max_batch: int = 64) -> Embedder:
    """Build the embedder called ``name``.  ``model`` is the TitaNet ``.nemo`` path or name."""
    if name == "resemblyzer":
        if model:
            raise ModelError("the resemblyzer embedder uses its bundled weights; --model is for titanet")
        from .resemblyzer import ResemblyzerEmbedder

        return ResemblyzerEmbedder(device=device, max_batch=max_batch)
    if name == "titanet":
        from .titanet import TitaNetEmbedder

        return TitaNetEmbedder(model=model, device=device, max_batch=max_batch)
    raise ModelError(f"unknown embedder {name!r}; choose one of: {', '.join(EMBEDDERS)}")
