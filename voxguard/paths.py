"""Where voxguard keeps things by default."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

STORE_ENV = "VOXGUARD_STORE"


def default_store_path() -> Path:
    """``$VOXGUARD_STORE`` or ``voxguard.db`` in the user's data directory."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("voxguard", appauthor=False)) / "voxguard.db"
