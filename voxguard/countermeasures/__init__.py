"""Pretrained spoofing countermeasures: one small protocol, one file per model.

A countermeasure is to clone detection what an embedder is to identity: it turns a stretch of
16 kHz voiced audio (its *context*, about 4 s for AASIST) into a raw spoof score and a hidden
vector; a :class:`CountermeasureCalibration` bound to the checkpoint's sha256 turns those into a
log-likelihood ratio ``log p(x | clone) / p(x | genuine)`` (larger = more clone-like).  The
package ships one calibration per supported checkpoint (``voxguard/data/``), made by
``python -m voxguard.enroll.countermeasure_adaptation`` and named in every output that uses it.

* :mod:`voxguard.countermeasures.aasist` — AASIST / AASIST-L (raw waveform, graph attention),
  the published checkpoints of :mod:`voxguard.models`.
* :mod:`voxguard.countermeasures.aasist_onnx` — the same AASIST network run by ONNX Runtime on
  the CPU (exported at first use, cached by the checkpoint's sha256, checked against PyTorch).

Audio shorter than a model's ``min_samples`` gets no verdict: :meth:`Countermeasure.outputs` is
never called with it (the callers check ``min_samples``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import VoxguardError

CALIBRATION_FORMAT = 1
LEVELS = ("none", "low", "medium", "high")


class CountermeasureError(VoxguardError):
    """A countermeasure checkpoint or calibration that cannot be used (one clear line)."""


@dataclass(frozen=True)
class CountermeasureIdentity:
    """What a calibration is bound to: the model's name and its checkpoint's sha256."""

    name: str
    architecture: str
    sha256: str

    def as_dict(self) -> dict:
        return {"name": self.name, "architecture": self.architecture, "sha256": self.sha256}

    @property
    def short(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"


@dataclass(frozen=True)
class CmOutput:
    """A countermeasure's outputs for a batch of contexts."""

    raw: np.ndarray  # [n] spoof-oriented raw score (AASIST: logit spoof - logit bona fide)
    hidden: np.ndarray  # [n, d] the last hidden vector before the output layer


@runtime_checkable
class Countermeasure(Protocol):
    name: str
    identity: CountermeasureIdentity
    context_samples: int  # samples of 16 kHz audio one forward pass reads
    min_samples: int  # shorter voiced audio gets no verdict
    device: str

    def outputs(self, contexts: Sequence[np.ndarray]) -> CmOutput:
        """Outputs of each 16 kHz context (each ``min_samples`` <= len; longer ones are cut to the
        last ``context_samples``, shorter ones tiled), batched."""
        ...


def segments(samples: np.ndarray, length: int, max_segments: int = 4) -> list[np.ndarray]:
    """Up to ``max_segments`` non-overlapping ``length``-sample stretches spread over a recording
    (one, tiled by the model, when it is shorter than ``length``)."""
    x = np.asarray(samples, dtype=np.float32)
    if len(x) <= length:
        return [x]
    n = min(max_segments, len(x) // length)
    starts = np.linspace(0, len(x) - length, n).astype(int) if n > 1 else [(len(x) - length) // 2]
    return [x[s: s + length] for s in starts]


@dataclass(frozen=True)
class CountermeasureCalibration:
    """Maps a countermeasure's outputs to a clone LLR, for one checkpoint (by sha256).

    ``head``: ``{"type": "affine", "a": .., "b": ..}`` (``llr = a * raw + b``) or
    ``{"type": "linear-hidden", "mean": [..], "scale": [..], "coef": [..], "intercept": ..}``
    (a logistic regression on the standardised hidden vector, classes balanced: an LLR).
    ``edges``: LLR edges of low / medium / high for one context (at the false-alarm rates in
    ``info["fa_rates"]`` on genuine audio).  ``info`` says what it was measured on.
    """

    identity: CountermeasureIdentity
    head: dict
    edges: tuple[float, float, float]
    source: str = "shipped"
    info: dict = field(default_factory=dict)

    def llr(self, out: CmOutput) -> np.ndarray:
        h = self.head
        if h["type"] == "affine":
            v = float(h["a"]) * np.asarray(out.raw, dtype=np.float64) + float(h["b"])
        elif h["type"] == "linear-hidden":
            z = (np.asarray(out.hidden, dtype=np.float64) - np.asarray(h["mean"])) / np.asarray(h["scale"])
            v = z @ np.asarray(h["coef"], dtype=np.float64) + float(h["intercept"])
        else:  # checked in from_dict
            raise CountermeasureError(f"unknown countermeasure head {h['type']!r}")
        return np.clip(v, -30.0, 30.0)

    def level(self, llr: float) -> str:
        return LEVELS[sum(llr >= e for e in self.edges)]

    @property
    def name(self) -> str:
        """How outputs name it: ``aasist@51d2d9cf0738 shipped``."""
        return f"{self.identity.short} {self.source}"

    def as_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "countermeasure": self.identity.as_dict(), "head": self.head,
                "edges": list(self.edges), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict, source: str = "shipped") -> "CountermeasureCalibration":
        if d.get("format") != CALIBRATION_FORMAT:
            raise CountermeasureError(f"countermeasure calibration format {d.get('format')!r} is not "
                                      f"{CALIBRATION_FORMAT}")
        if d["head"].get("type") not in ("affine", "linear-hidden"):
            raise CountermeasureError(f"unknown countermeasure head {d['head'].get('type')!r}")
        c = d["countermeasure"]
        return cls(CountermeasureIdentity(c["name"], c["architecture"], c["sha256"]), d["head"],
                   tuple(float(e) for e in d["edges"]), source, d.get("info", {}))

    def check(self, identity: CountermeasureIdentity) -> None:
        if identity.sha256 != self.identity.sha256:
            raise CountermeasureError(
                f"the countermeasure calibration is for {self.identity.short}, the loaded model is "
                f"{identity.short}: calibrate it for this checkpoint")


def shipped_calibration_name(model: str) -> str:
    return f"countermeasure_calibration_{model}.json"


def shipped_calibration(model: str) -> CountermeasureCalibration | None:
    """The calibration shipped in the package for ``model`` (``None`` if there is none)."""
    ref = resources.files("voxguard.data") / shipped_calibration_name(model)
    if not ref.is_file():
        return None
    return CountermeasureCalibration.from_dict(json.loads(ref.read_text()), source="shipped")
