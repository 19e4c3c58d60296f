"""Running one decision over many recordings: ``identify``, ``verify`` and ``check``.

Inputs are files, folders (their audio files, any depth) and NeMo manifests
(:func:`voxguard.enroll.importers.expand_inputs`).  The model and the store are loaded
once; recordings are decoded and embedded a chunk at a time and each result is printed
as soon as it is known — one JSON object per line with ``--json`` (JSON Lines; every
object has ``file``), one text block or line per file otherwise.  A file that cannot be
decoded gives one error object / line (``{"file": ..., "error": ...}``) and the others
are still processed; the exit status then is :data:`EXIT_SOME_FAILED`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable

from ..audio import Audio, load_audio
from ..errors import AudioError, VoxguardError
from ..recognizer import EMBED_FILES_PER_CALL, Embedded, Recognizer
from .importers import expand_inputs

EXIT_OK = 0
EXIT_REJECTED = 1  # verify/check: a claim or comparison was rejected
EXIT_SOME_FAILED = 2  # at least one file could not be processed


def _json_line(obj: dict) -> None:
    print(json.dumps(obj, separators=(",", ":"), allow_nan=False), flush=True)


def decoded(paths: Iterable[Path]) -> Iterable[tuple[Path, Audio | None, str | None]]:
    for p in paths:
        try:
            yield p, load_audio(p), None
        except AudioError as e:
            yield p, None, e.reason


def run_batch(ctx, inputs: list[str], recognizer: Recognizer,
              decide: Callable[[Embedded], dict], text: Callable[[dict, bool], str],
              rejection_exits: bool = True, notice: str | None = None) -> int:
    """Decide about every input file; returns the exit status (worst of all files).
    ``notice`` (e.g. that the store was never calibrated) is printed once to stderr before
    the first decision (not with --json: every JSON result names its calibration)."""
    files = expand_inputs(inputs)
    if not files:
        raise VoxguardError("no input files")
    single = len(files) == 1
    status = EXIT_OK
    pending: list[tuple[Path, Audio | None, str | None]] = []  # in input order, failures included

    def flush() -> None:
        nonlocal status, notice
        embedded = iter(recognizer.embed([a for _, a, _ in pending if a is not None]))
        for p, a, error in pending:
            if a is None:
                status = max(status, EXIT_SOME_FAILED)
                if ctx.json:
                    _json_line({"file": str(p), "speaker": None, "error": error})
                else:
                    print(f"voxguard: error: {p}: {error}", file=sys.stderr, flush=True)
                continue
            if notice and not ctx.json:
                print(f"voxguard: note: {notice}", file=sys.stderr, flush=True)
                notice = None
            result = {"file": str(p), "duration": round(a.duration, 3), **decide(next(embedded))}
            if rejection_exits and result.get("decision") == "reject":
                status = max(status, EXIT_REJECTED)
            if ctx.json:
                _json_line(result)
            else:
                print(text(result, single), flush=True)
        pending.clear()

    for item in decoded(files):
        pending.append(item)
        if len(pending) >= EMBED_FILES_PER_CALL:
            flush()
    if pending:
        flush()
    return status
