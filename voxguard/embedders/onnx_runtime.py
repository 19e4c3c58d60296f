"""Running a PyTorch encoder through ONNX Runtime: exported once, cached by its weights' hash.

The exported graph is checked against the PyTorch module on a fixed probe input every time
it is loaded (a stale or damaged cache file is re-exported), so what ONNX Runtime computes is
the same function as the PyTorch path; embedders keep their identity whichever runs them.
"""

from __future__ import annotations

import copy

import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
RUNTIME_ENV = "VOXGUARD_EMBEDDER_RUNTIME"
CACHE_ENV = "VOXGUARD_ONNX_CACHE"
OPSET = 17
EXPORT_FORMAT = 1  # bump when the export itself changes, so old cache files are not reused
PROBE_MIN_COSINE = 0.9999
PROBE_MIN_COSINE_INT8 = 0.999


def resolve_runtime(runtime: str | None) -> str:
    """``runtime``, else ``$VOXGUARD_EMBEDDER_RUNTIME``, else ``auto``; checked."""
    value = (runtime or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if value not in RUNTIMES:
        raise ModelError(f"unknown embedder runtime {value!r}; choose one of: {', '.join(RUNTIMES)}")
    return value


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise ModelError(f"the onnx embedder runtime needs ONNX Runtime: pip install onnxruntime ({e}); "
                         f"or choose --runtime torch") from None
    return onnxruntime


def cpu_session(ort, model: bytes, threads: int | None, what: str, arena: bool = True):
    """An ONNX Runtime CPU session for ``model`` as voxguard runs them (``None`` if it does not load:
    a truncated or foreign cache file, which the caller exports again)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    # no busy-waiting between runs: on a few shared cores, spinning pool threads take CPU from
    # the event loop, the other model and other processes (and measured no faster here)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # without the arena, a run's peak activations are given back (the countermeasure's 4 s contexts)
    so.enable_cpu_mem_arena = arena
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        log.warning("cannot load the ONNX %s (%s)", what, e)
        return None


def cache_dir() -> Path:
    """``$VOXGUARD_ONNX_CACHE``, else ``onnx/`` in the user cache directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("voxguard", appauthor=False)) / "onnx"


def _export(module, example, input_name: str, output_name: str) -> bytes:
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch", 1: "frames"}, output_name: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class OnnxEncoder:
    """An ONNX Runtime session computing what ``module`` computes on ``[batch, frames, features]``.

    ``key`` names the weights (their hash): the cached export is ``<name>-<key>-...onnx`` in
    :func:`cache_dir`, written at first use; when the cache cannot be written the export is
    kept in memory only.  ``threads`` is ONNX Runtime's intra-op thread count (the embedder
    passes PyTorch's, so ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` before loading
    apply to both runtimes alike).  ``int8``: the export dynamically quantised by
    :func:`quantize_lstm_int8`, checked to cosine >= 0.999 (instead of 0.9999) on ``probe``
    (inputs like the real ones; default: random positive values).
    """

    input_name = "mels"
    output_name = "embeds"

    def __init__(self, module, name: str, key: str, features: int, threads: int | None = None,
                 directory: Path | None = None, int8: bool = False, probe: list[np.ndarray] | None = None):
        ort = import_onnxruntime()
        self._ort = ort
        self.threads = threads
        self.int8 = int8
        suffix = "-int8" if int8 else ""
        self.path = (directory or cache_dir()) / f"{name}-{key}-opset{OPSET}-f{EXPORT_FORMAT}{suffix}.onnx"
        self._module = module
        self._features = features
        self._probe = probe
        self._min_cosine = PROBE_MIN_COSINE_INT8 if int8 else PROBE_MIN_COSINE
        model, cached = self._read_cache()
        self._session = self._session_for(model) if model is not None else None
        if self._session is not None and not self._agrees():
            log.warning("cached ONNX export %s does not match the PyTorch weights; exporting again", self.path)
            self._session = None
        if self._session is None:
            model = self._export()
            self._session = self._session_for(model)
            if not self._agrees():
                raise ModelError(f"the ONNX export{' (int8)' if int8 else ''} of {name} does not reproduce the "
                                 f"PyTorch encoder (probe cosine below {self._min_cosine}); use --runtime torch")
            self._save(model)
        elif cached:
            log.debug("ONNX encoder loaded from %s", self.path)
        self._model = model  # the checked export, for sessions with other thread counts

    def with_threads(self, threads: int) -> "OnnxEncoder":
        """Another session of the same (already checked) export with ``threads`` intra-op threads."""
        twin = copy.copy(self)
        twin.threads = threads
        twin._session = self._session_for(self._model)
        return twin

    def _read_cache(self) -> tuple[bytes | None, bool]:
        try:
            return self.path.read_bytes(), True
        except OSError:
            return None, False

    def _export(self) -> bytes:
        import torch

        example = torch.zeros(2, 151, self._features)
        log.info("exporting the encoder to ONNX (%s)", self.path)
        model = _export(self._module, example, self.input_name, self.output_name)
        return quantize_lstm_int8(model) if self.int8 else model

    def _save(self, model: bytes) -> None:
        try:
            _write_atomic(self.path, model)
        except OSError as e:
            log.warning("cannot cache the ONNX export at %s (%s); it is kept in memory only", self.path, e)

    def _session_for(self, model: bytes):
        ort = self._ort
        return cpu_session(ort, model, self.threads, "encoder")

    def _agrees(self) -> bool:
        import torch

        if self._session is None:
            return False
        rng = np.random.default_rng(12345)
        probes = self._probe or [rng.gamma(0.5, 0.02, size=shape).astype(np.float32)  # small, positive
                                 for shape in ((1, 151, self._features), (3, 57, self._features))]
        for x in probes:
            with torch.inference_mode():
                ref = self._module(torch.from_numpy(x)).float().cpu().numpy()
            got = self(x)
            cos = np.sum(ref * got, axis=1) / np.maximum(
                np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
            if not np.all(cos >= self._min_cosine):
                log.warning("ONNX encoder probe: cosine %.5f to PyTorch (needs %s)", cos.min(), self._min_cosine)
                return False
        return True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


def quantize_lstm_int8(model: bytes) -> bytes:
    """ONNX Runtime's dynamic int8 quantisation (per-channel weights) of every LSTM layer but the
    first.  The first layer reads raw mel power, whose range (1e-8 .. 1e2) one per-tensor int8
    scale cannot hold: quantising it drops the embeddings to cosine ~0.5; the later layers read
    activations in [-1, 1] and hold most of the work (input 256 wide instead of 40)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load_from_string(model)
    lstms = [n.name for n in proto.graph.node if n.op_type == "LSTM"]
    if len(lstms) < 2:
        raise ModelError("int8: expected a multi-layer LSTM in the exported encoder")
    with tempfile.TemporaryDirectory(prefix="voxguard-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = logging.getLogger()  # quantize_dynamic logs its "run pre-processing first" advice there
            was, root.disabled = root.disabled, True
            try:
                quantize_dynamic(proto, out, weight_type=QuantType.QInt8, per_channel=True,
                                 nodes_to_quantize=lstms[1:])
            finally:
                root.disabled = was
        return out.read_bytes()
