"""Loading a countermeasure by its registry name, with its calibration.

``load_countermeasure("aasist")`` finds the installed checkpoint (``voxguard models fetch``),
checks its sha256, builds the architecture its :class:`voxguard.models.ModelSpec` names and loads
the weights strictly.  :func:`installed_countermeasure` is what the daemon and ``check`` use by
default: the default model when it is installed, else ``None`` (and the reason), never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import CountermeasureCalibration, CountermeasureError, CountermeasureIdentity, shipped_calibration

log = logging.getLogger(__name__)


RUNTIMES = ("auto", "torch", "onnx")


def load_countermeasure(name: str, device: str = "auto", threads: int | None = None, path=None,
                        runtime: str = "torch"):
    """The countermeasure ``name`` of :data:`voxguard.models.MODELS` (its installed, verified file, or
    ``path``, verified against the registry's sha256 too).  ``runtime``: ``torch``; ``onnx`` (ONNX
    Runtime on the CPU, the same outputs at about a third of the CPU time:
    :mod:`voxguard.countermeasures.aasist_onnx`); ``auto``: ONNX Runtime on a CPU (PyTorch if that
    fails, logged), PyTorch on CUDA.  Raises :class:`CountermeasureError` /
    :class:`voxguard.models.ModelError` with one clear line."""
    from .. import models

    spec = models.spec(name)
    if path is None:
        path = models.require(name)
    else:
        models.verify(path, spec)
    identity = CountermeasureIdentity(spec.name, spec.architecture, spec.sha256)
    if spec.architecture == "aasist":
        from .aasist import AasistConfig, AasistCountermeasure

        cm = AasistCountermeasure.load(path, AasistConfig.from_dict(spec.config), identity, device=device,
                                       threads=threads)
        if runtime == "torch" or (runtime == "auto" and str(cm.device).startswith("cuda")):
            return cm
        from .aasist_onnx import AasistOnnxCountermeasure

        try:
            return AasistOnnxCountermeasure(cm, threads=threads)
        except Exception as e:  # noqa: BLE001 - auto falls back; an explicit onnx is an error
            if runtime == "onnx":
                raise CountermeasureError(f"{name}: ONNX Runtime failed ({type(e).__name__}: {e})") from None
            log.warning("countermeasure %s: ONNX Runtime failed (%s); using PyTorch", name, e)
            return cm
    raise CountermeasureError(f"model {name!r} has architecture {spec.architecture!r}, which is not a countermeasure")


@dataclass(frozen=True)
class InstalledCountermeasure:
    """A loaded countermeasure and the calibration that turns its outputs into LLRs."""

    model: object  # a voxguard.countermeasures.Countermeasure
    calibration: CountermeasureCalibration

    @property
    def name(self) -> str:
        return self.calibration.name


def installed_countermeasure(name: str | None = None, device: str = "auto", threads: int | None = None,
                             runtime: str = "auto") -> tuple[InstalledCountermeasure | None, str | None]:
    """``(countermeasure, None)`` for ``name`` (default: the registry's default) when it is installed and
    a calibration for its checkpoint ships; else ``(None, why)``.  A broken installation (a wrong hash,
    a file that does not load) raises: it must be fixed, not silently skipped."""
    from .. import models

    name = name or models.DEFAULT_COUNTERMEASURE
    spec = models.spec(name)
    if models.installed_path(name) is None:
        return None, (f"no countermeasure installed: run `voxguard models fetch {name}` "
                      f"(or `voxguard models fetch {name} --from FILE` offline)")
    cal = shipped_calibration(name)
    if cal is None:
        return None, f"no calibration ships for countermeasure {name!r}"
    model = load_countermeasure(name, device=device, threads=threads, runtime=runtime)
    cal.check(CountermeasureIdentity(spec.name, spec.architecture, spec.sha256))
    return InstalledCountermeasure(model, cal), None
