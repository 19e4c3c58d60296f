"""Where voxguard keeps things by default."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

STORE_ENV = "VOXGUARD_STORE"


def default_store_path() -> Path:
    """``voxguard.db`` in the user's data directory (used when ``$VOXGUARD_STORE`` is unset)."""
    return Path(platformdirs.user_data_dir("voxguard", appauthor=False)) / "voxguard.db"


def default_store() -> str | Path:
    """``$VOXGUARD_STORE`` (a path or a ``postgresql://`` URL) or :func:`default_store_path`."""
    return os.environ.get(STORE_ENV) or default_store_path()


def default_cache_dir() -> Path:
    """voxguard's user cache directory (ONNX exports, downloaded model checkpoints)."""
    return Path(platformdirs.user_cache_dir("voxguard", appauthor=False))
