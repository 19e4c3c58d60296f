"""``command`` cloning backend: any external tool through a command template.

The template is split like a shell would (:func:`shlex.split`) but run *without* a
shell; in every argument ``{ref}`` becomes a WAV file of the target's enrolled voice
(16 kHz), ``{text}`` the sentence to say, ``{out}`` the WAV path the tool must write.
For example::

    voxguard clone alice --backend command \\
        --command 'tts --model_name xtts_v2 --speaker_wav {ref} --text {text} --out_path {out}'

The tool runs once per clone with a timeout (its whole process group is killed when it
hangs); a non-zero exit, a missing, empty or undecodable output file is a clear error.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from .. import SAMPLE_RATE
from ..audio import load_audio
from ..errors import AudioError
from .cloning import Clone, CloningError, TargetVoice, reject_options

DEFAULT_TIMEOUT_S = 600.0
PLACEHOLDERS = ("{ref}", "{text}", "{out}")


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


class CommandCloner:
    """Runs an external cloning tool once per clone."""

    name = "command"

    def __init__(self, template: str, timeout: float = DEFAULT_TIMEOUT_S):
        if not template or not template.strip():
            raise CloningError("the command backend needs --command 'TOOL ... {ref} {text} {out}'")
        try:
            self.argv = shlex.split(template)
        except ValueError as e:
            raise CloningError(f"cannot parse --command: {e}") from None
        if not any("{out}" in a for a in self.argv):
            raise CloningError("--command must contain {out}: the path the tool writes its audio to")
        if timeout <= 0:
            raise CloningError("--timeout must be positive")
        self.template = template
        self.timeout = float(timeout)

    def params(self) -> dict:
        return {"command": self.template, "timeout_s": self.timeout}

    def _run(self, argv: list[str]) -> None:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise CloningError(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise CloningError(f"command not executable: {argv[0]}") from None
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise CloningError(f"{argv[0]} did not finish within {self.timeout:g} s (killed); "
                               f"raise --timeout if the tool is just slow") from None
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            detail = (": " + " | ".join(tail)) if tail else ""
            raise CloningError(f"{argv[0]} exited with status {proc.returncode}{detail}")

    def clone(self, target: TargetVoice, count: int, texts: Sequence[str], rng: np.random.Generator) -> list[Clone]:
        clones = []
        with tempfile.TemporaryDirectory(prefix="voxguard-clone-") as tmp:
            tmpdir = Path(tmp)
            for i, ref in enumerate(target.references_in_turn(count, rng)):
                text = texts[i % len(texts)]
                ref_path = tmpdir / f"ref-{ref.sample_id}.wav"
                if not ref_path.exists():
                    sf.write(str(ref_path), ref.audio, SAMPLE_RATE, subtype="PCM_16")
                out = tmpdir / f"out-{i:03d}.wav"
                argv = [_fill(a, {"ref": str(ref_path), "text": text, "out": str(out)}) for a in self.argv]
                self._run(argv)
                if not out.exists():
                    raise CloningError(f"{argv[0]} exited normally but wrote no audio to {{out}} ({out.name})")
                try:
                    audio = load_audio(out).samples
                except AudioError as e:
                    raise CloningError(f"{argv[0]} wrote unusable audio: {e.reason}") from None
                clones.append(Clone(audio, ref.label, {"text": text}))
        return clones


def create(command: str | None = None, timeout: float | None = None, **unused) -> CommandCloner:
    reject_options("command", unused)
    return CommandCloner(command or "", DEFAULT_TIMEOUT_S if timeout is None else timeout)
