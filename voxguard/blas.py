"""Single-threaded BLAS around the small matrix products of the per-window hot path.

The daemon scores a batch of at most 64 windows at a time: products of a few dozen rows
by a few hundred columns (backend transform, AS-norm cohort, speaker models, FAISS search,
LFCC filterbank, GMM).  OpenBLAS splits even those across its threads, and its threads
busy-wait for work: on a machine whose cores are shared (with the embedder's own thread pool,
other streams' work, other processes) that turns a sub-millisecond product into tens of
milliseconds (measured: AS-norm scoring of 64 windows against 74 speakers 6.5 ms with one
BLAS thread, 46-104 ms with two on two loaded cores).  :func:`single_threaded` limits every
loaded BLAS (numpy's, FAISS's) to one thread for the duration of a ``with`` block; nested and
concurrent blocks share one limit (the first in sets it, the last out restores it).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import wraps
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_limiter = None
_controller = None
_unavailable = False


def _get_controller():
    global _controller, _unavailable
    if _controller is None and not _unavailable:
        try:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        except Exception:  # no threadpoolctl (an optional speed-up): leave BLAS as it is
            _unavailable = True
    return _controller


@contextmanager
def single_threaded() -> Iterator[None]:
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            ctl = _get_controller()
            if ctl is not None:
                try:
                    _limiter = ctl.limit(limits=1, user_api="blas")
                except Exception:
                    _limiter = None
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def single_threaded_blas(fn):
    """Decorator: run ``fn`` inside :func:`single_threaded`."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded():
            return fn(*args, **kwargs)

    return wrapper
