"""One batching embedder shared by every stream.

Streams submit :class:`~voxguard.daemon.session.WindowJob` s from the event loop; a
dedicated worker thread takes up to ``max_batch`` of them — waiting at most
``max_wait`` after the oldest one arrived for more to join — embeds them in one
call (on the embedder's device: CUDA when present), then, for each group of windows
that share a scoring snapshot and a band, scores them against every enrolled speaker
in one backend call (window trial type: ranking, LLRs and the claimed speaker's score
all come from that one score matrix), finds their nearest stored samples in one batched
FAISS call, assesses clone evidence, and hands the :class:`WindowResult` s to
``deliver`` (which the server routes back to the event loop).  While a batch runs,
new windows queue up, so batches grow with the load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Sequence

from .session import WindowJob, WindowResult
from .snapshot import ScoringSnapshot

log = logging.getLogger(__name__)


class Batcher:
    def __init__(self, embedder, snapshot: ScoringSnapshot,
                 deliver: Callable[[list[WindowResult]], None], max_batch: int = 64,
                 max_wait: float = 0.005, metrics=None):
        self.embedder = embedder
        self._snapshot = snapshot
        self.deliver = deliver
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.metrics = metrics
        self._queue: deque[tuple[float, WindowJob]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="voxguard-batcher", daemon=True)

    # -- control (event loop side) -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def snapshot(self) -> ScoringSnapshot:
        return self._snapshot

    def swap(self, snapshot: ScoringSnapshot) -> None:
        """Atomically replace the scoring state; the next batch uses the new one."""
        self._snapshot = snapshot

    def submit(self, jobs: Sequence[WindowJob]) -> None:
        if not jobs:
            return
        now = time.monotonic()
        with self._cond:
            self._queue.extend((now, j) for j in jobs)
            depth = len(self._queue)
            self._cond.notify()
        if self.metrics:
            self.metrics.queue_depth.set(depth)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- worker ------------------------------------------------------------------------------
    def _take(self) -> list[WindowJob] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._queue[0][0] + self.max_wait
            while len(self._queue) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                _, job = self._queue.popleft()
                if job.cancelled:
                    continue
                job.taken = True
                batch.append(job)
            depth = len(self._queue)
        if self.metrics:
            self.metrics.queue_depth.set(depth)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                results = self.process(batch)
            except Exception as e:  # a broken model must not kill the worker silently
                log.exception("embedding a batch of %d windows failed", len(batch))
                results = [WindowResult(job, error=f"{type(e).__name__}: {e}") for job in batch]
            self.deliver(results)

    def process(self, batch: list[WindowJob]) -> list[WindowResult]:
        """Embed, score and assess one batch (worker thread; also used by the benchmark)."""
        m = self.metrics
        t0 = time.perf_counter()
        vecs = self.embedder.embed([j.samples for j in batch])
        t1 = time.perf_counter()
        out: list[WindowResult | None] = [None] * len(batch)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, job in enumerate(batch):
            groups.setdefault((id(job.snapshot), job.band), []).append(i)
        for (_, band), rows in groups.items():
            snap = batch[rows[0]].snapshot
            jobs = [batch[i] for i in rows]
            if snap.scorer is None:
                for i in rows:
                    out[i] = WindowResult(batch[i])
                continue
            q = vecs[rows]
            scores = snap.scorer.score_all(q, band)
            found = snap.scorer.search(q, k=max(j.top_k for j in jobs), trial="window", band=band, scores=scores)
            clones = snap.detector.assess_batch(found, [j.claimed for j in jobs], [j.samples for j in jobs])
            for n, i in enumerate(rows):
                job = batch[i]
                col = None if job.claimed is None else snap.column(job.claimed)
                out[i] = WindowResult(job, found[n], None if col is None else float(scores[n, col]), clones[n])
        t2 = time.perf_counter()
        if m:
            m.batch_size.observe(len(batch))
            m.embedding_seconds.observe(t1 - t0)
            m.search_seconds.observe(t2 - t1)
            m.windows_embedded.inc(len(batch))
        return out
