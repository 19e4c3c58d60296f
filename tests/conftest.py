"""Shared fixtures.  AN4 comes from ../shared/datasets/an4 (or $VOXGUARD_AN4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
AN4 = Path(os.environ.get("VOXGUARD_AN4", REPO.parent / "shared" / "datasets" / "an4"))
AN4_WAV = AN4 / "wav" / "an4_clstk"
SHARED = REPO.parent / "shared"
AASIST_DIR = SHARED / "models" / "aasist"
# Tests are hermetic about pretrained models: none is installed unless a test points $VOXGUARD_MODELS at
# ../shared/models/aasist (whose file names are the registry's) — a developer's own cache never leaks in.
EMPTY_MODELS = Path(os.environ.get("PYTEST_EMPTY_MODELS", "/tmp")) / f"voxguard-test-no-models-{os.getpid()}"
EMPTY_MODELS.mkdir(parents=True, exist_ok=True)
os.environ["VOXGUARD_MODELS"] = str(EMPTY_MODELS)


def aasist_available() -> bool:
    return (AASIST_DIR / "AASIST.pth").is_file()


def an4_available() -> bool:
    return AN4_WAV.is_dir()


@pytest.fixture(scope="session")
def an4_root() -> Path:
    if not an4_available():
        pytest.skip(f"AN4 not found at {AN4} (set VOXGUARD_AN4)")
    return AN4


@pytest.fixture(scope="session")
def an4_speakers(an4_root) -> dict[str, list[Path]]:
    """speaker -> sorted list of WAV files."""
    return {d.name: sorted(d.glob("*.wav")) for d in sorted(AN4_WAV.iterdir()) if d.is_dir()}


@pytest.fixture(scope="session")
def embedder():
    from voxguard.embedders import create_embedder

    return create_embedder("resemblyzer", device="cpu")


def run_cli(*args: str, store: Path | None = None, env: dict | None = None, input: bytes | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``voxguard ARGS`` in a subprocess, as a user would."""
    e = dict(os.environ)
    e.pop("VOXGUARD_STORE", None)
    if env:
        e.update(env)
    cmd = [sys.executable, "-m", "voxguard.cli", *args]
    if store is not None:
        cmd += ["--store", str(store)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, input=input, env=e)


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Harmonic, amplitude-modulated noise that webrtcvad classifies as speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.2 * x * env + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the whole session (see tests/pg_support.py)."""
    from pg_support import MISSING, NoServerUser, PgCluster, pg_bindir

    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(MISSING)
    try:
        cluster = PgCluster(bindir)
    except NoServerUser as e:
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a fresh, empty database (with its password)."""
    return pg_cluster.new_database()
