"""The countermeasure's worker thread: every track's checks, batched, under a CPU budget.

Checks (:class:`~.countermeasure_checks.ContextRequest`) wait in one queue; a newer check from
a track *supersedes* that track's waiting re-check (answered ``skipped``), never a first or final
check.  The thread takes up to ``max_batch``
checks — final checks first (a summary waits on them), then first verdicts, then re-checks, each
oldest first — runs the model once on the batch and the calibration on its outputs, and hands
:class:`~.countermeasure_checks.ContextResult` s to ``deliver``.

**Budget.**  On a CPU the model runs single-threaded at nice +10 (below the identity worker's
+5 and the event loop), and after a batch that took ``t`` seconds the thread rests
``t * (1 / budget - 1)`` (new checks do not cut the rest short; a final check, on which a
summary waits, does): it uses at most ``budget`` of one core, whatever the load, so identity
windows are never starved; coverage falls instead (re-checks are superseded).  On a CPU it takes
one context at a time (a batch is no cheaper per context there, and a first or final check would
wait behind it); on CUDA the budget does not apply and batches are up to 32.  With no real-time
track speaking (only lossless streams, which wait for their results anyway) it does not rest.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from .batcher import _lower_priority
from .countermeasure_checks import ContextRequest, ContextResult

log = logging.getLogger(__name__)

CM_NICE = 10
REALTIME_QUIET_S = 10.0
"""The budget holds while real-time tracks are speaking (one asked for a check this recently); with only
lossless streams (files, which wait for their results anyway) the countermeasure runs at its full core."""


def check(installed, requests: Sequence[ContextRequest]) -> list[ContextResult]:
    """Run the countermeasure and its calibration on a batch of contexts (pure: no state)."""
    out = installed.model.outputs([r.samples for r in requests])
    llrs = installed.calibration.llr(out)
    return [ContextResult(r.key, r.index, float(raw), float(llr)) for r, raw, llr in zip(requests, out.raw, llrs)]


class CountermeasureWorker:
    def __init__(self, installed, deliver: Callable[[list[ContextResult]], None], budget: float = 0.5,
                 max_batch: int | None = None, metrics=None, nice: int = CM_NICE):
        self.installed = installed
        self.deliver = deliver
        on_gpu = str(installed.model.device).startswith("cuda")
        self.budget = 1.0 if on_gpu else max(0.01, min(1.0, budget))
        # on a CPU a batch computes no faster per context (bench_countermeasure_cost.py) and only makes a
        # waiting final or first check wait longer: one context at a time
        self.max_batch = max_batch or (32 if on_gpu else 1)
        self.metrics = metrics
        self.nice = nice
        self._pending: list[tuple[float, ContextRequest]] = []  # (arrival, check) waiting
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="voxguard-countermeasure", daemon=True)
        self._realtime_at = -1e9  # when a real-time track last asked for a check
        self.busy_s = 0.0  # model time spent (for the benchmark's cost figures)
        self.checked = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def submit(self, requests: Sequence[ContextRequest]) -> None:
        skipped: list[ContextResult] = []
        now = time.monotonic()
        with self._cond:
            for r in requests:
                if r.supersede:
                    self._realtime_at = now
                # the track's waiting re-check is superseded by its newer check
                for old in [o for o in self._pending if o[1].key == r.key and o[1].kind == "recheck"
                            and o[1].supersede]:
                    self._pending.remove(old)
                    skipped.append(ContextResult(old[1].key, old[1].index, skipped=True))
                self._pending.append((now, r))
            depth = len(self._pending)
            self._cond.notify()
        if self.metrics is not None:
            self.metrics.cm_queue_depth.set(depth)
        if skipped:
            if self.metrics is not None:
                self.metrics.cm_checks.labels("skipped").inc(len(skipped))
            self.deliver(skipped)

    def withdraw(self, keys: Sequence[int]) -> None:
        """Tracks ended without a summary: forget their waiting checks."""
        gone = set(keys)
        with self._cond:
            self._pending = [o for o in self._pending if o[1].key not in gone]

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def _take(self) -> list[ContextRequest] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            self._pending.sort(key=lambda o: (o[1].priority, o[0]))
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            if self.metrics is not None:
                self.metrics.cm_queue_depth.set(len(self._pending))
            return [r for _, r in batch]

    def _loop(self) -> None:
        _lower_priority(self.nice)
        while True:
            batch = self._take()
            if batch is None:
                return
            t0 = time.perf_counter()
            try:
                results = check(self.installed, batch)
                outcome = "ok"
            except Exception as e:  # noqa: BLE001 - reported to the streams, the worker goes on
                log.exception("countermeasure failed on a batch of %d", len(batch))
                results = [ContextResult(r.key, r.index, error=f"{type(e).__name__}: {e}") for r in batch]
                outcome = "failed"
            dt = time.perf_counter() - t0
            self.busy_s += dt
            self.checked += len(batch)
            if self.metrics is not None:
                self.metrics.cm_checks.labels(outcome).inc(len(batch))
                self.metrics.cm_seconds.observe(dt)
                self.metrics.cm_audio_seconds.inc(sum(r.new_s for r in batch))
            self.deliver(results)
            if self.budget < 1.0 and time.monotonic() - self._realtime_at < REALTIME_QUIET_S:
                self._rest(dt * (1.0 / self.budget - 1.0))

    def _rest(self, seconds: float) -> None:
        """Keep the budget: rest ``seconds`` — cut short only by a stop or by a waiting final check (a
        summary waits on it; one per stream end, so the budget holds but for those)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not self._stopping and not any(r.kind == "final" for _, r in self._pending):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
