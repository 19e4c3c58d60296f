"""Pluggable speaker embedders behind one small interface (:class:`Embedder`).

``resemblyzer`` (default, offline, 256-d) and ``titanet`` (NeMo, 192-d for
TitaNet-large).  Backends are imported only when created, so the heavy
frameworks load only for the embedder in use.

``runtime`` (``auto`` / ``torch`` / ``onnx`` / ``onnx-int8``, default ``$VOXGUARD_EMBEDDER_RUNTIME``
else ``auto``) chooses what runs Resemblyzer's encoder: ONNX Runtime (``auto`` on CPU when it is
installed: faster, same embeddings, same identity; ``onnx-int8`` partly quantised, opt-in) or
PyTorch.  TitaNet runs on PyTorch only.
"""

from __future__ import annotations

from ..errors import ModelError
from .base import Embedder, EmbedderIdentity, l2_normalise, pick_device
from .onnx_runtime import RUNTIMES, resolve_runtime

DEFAULT_EMBEDDER = "resemblyzer"
EMBEDDERS = ("resemblyzer", "titanet")

__all__ = ["Embedder", "EmbedderIdentity", "create_embedder", "l2_normalise", "pick_device",
           "DEFAULT_EMBEDDER", "EMBEDDERS", "RUNTIMES"]


def create_embedder(name: str = DEFAULT_EMBEDDER, device: str = "auto", model: str | None = None,
                    max_batch: int = 64, runtime: str | None = None) -> Embedder:
    """Build the embedder called ``name``.  ``model`` is the TitaNet ``.nemo`` path or name;
    ``runtime`` is ``auto``, ``torch`` or ``onnx`` (see the module's doc)."""
    if name == "resemblyzer":
        if model:
            raise ModelError("the resemblyzer embedder uses its bundled weights; --model is for titanet")
        from .resemblyzer import ResemblyzerEmbedder

        return ResemblyzerEmbedder(device=device, max_batch=max_batch, runtime=runtime)
    if name == "titanet":
        if resolve_runtime(runtime).startswith("onnx"):
            raise ModelError("the onnx runtime is for the resemblyzer embedder; titanet runs on torch "
                             "(--runtime auto or torch)")
        from .titanet import TitaNetEmbedder

        return TitaNetEmbedder(model=model, device=device, max_batch=max_batch)
    raise ModelError(f"unknown embedder {name!r}; choose one of: {', '.join(EMBEDDERS)}")
