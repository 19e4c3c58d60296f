"""The shared worker: pure functions that embed and score window requests, and the one
queue that batches every stream's requests for them.

* :func:`embed` — the model, on a batch of :class:`~voxguard.daemon.session.WindowRequest` s
  (on the embedder's device: CUDA when present).
* :func:`score` — for each group of requests that share a scoring snapshot and a band,
  one backend call against every enrolled speaker (window trial type: ranking, LLRs and
  the claimed speaker's score all come from that one score matrix) and one batched clone
  assessment; returns immutable :class:`~voxguard.daemon.session.WindowResult` s.

Neither touches any stream's state: requests and results are immutable, and a stream's
session (on the event loop) decides what a result means — or ignores it, when the window
was dropped meanwhile.

:class:`Batcher` runs them as a pipeline: each *embed* thread (one per embedder replica,
``workers``) takes up to ``max_batch`` requests from the queue (waiting at most
``max_wait`` after the oldest arrived for more to join) and embeds them, while the *score*
thread scores finished batches — strictly in the order they were taken, so every stream
gets its results in window order however many embed threads there are — and hands the
results to ``deliver`` (which the server routes back to the event loop).  On a CPU, two
single-threaded ONNX Runtime replicas keep both cores busy where one two-threaded model
stalls whenever another thread (the event loop, scoring) takes a core.  The worker threads
run at a lower priority (nice +5) than the event loop, so events and HTTP answers go out
promptly while batches run.  While a batch runs, new requests queue up, so batches grow with the load.  The
queue has one lock; :meth:`Batcher.withdraw` removes requests a stream dropped before the
model saw them, and ``on_taken`` tells the streams which requests a batch took (those are
answered for sure, so a stream never drops them: no model time is spent on a window whose
result would be thrown away).

Off-stream work (embedding an uploaded enrollment recording) goes through the same embed
threads and replicas as *jobs* (:meth:`Batcher.run_job`, :class:`QueuedEmbedder`): an embed
thread takes a job only when no stream window is waiting, and a job is a slice of at most
:data:`JOB_WINDOWS` windows, so stream windows wait at most one slice for an upload.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from .session import WindowRequest, WindowResult

log = logging.getLogger(__name__)


def embed(embedder, requests: Sequence[WindowRequest]) -> np.ndarray:
    """[n, dim] embeddings of the requests' windows, in one model call."""
    return embedder.embed([r.samples for r in requests])


def score(vectors: np.ndarray, requests: Sequence[WindowRequest]) -> list[WindowResult]:
    """Score embedded windows against each one's pinned snapshot (grouped: one backend call
    and one clone assessment per snapshot and band)."""
    out: list[WindowResult | None] = [None] * len(requests)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((id(r.snapshot), r.band), []).append(i)
    for (_, band), rows in groups.items():
        snap = requests[rows[0]].snapshot
        reqs = [requests[i] for i in rows]
        if snap.scorer is None:
            for i in rows:
                out[i] = WindowResult(requests[i].key, requests[i].index, vectors[i])
            continue
        q = vectors[rows]
        scores = snap.scorer.score_all(q, band)
        found = snap.scorer.search(q, k=max(r.top_k for r in reqs), trial="window", band=band, scores=scores)
        clones = snap.detector.assess_batch(found, [r.claimed for r in reqs], [r.samples for r in reqs],
                                            window=True)
        for n, i in enumerate(rows):
            r = requests[i]
            col = None if r.claimed is None else snap.column(r.claimed)
            out[i] = WindowResult(r.key, r.index, vectors[i], found[n],
                                  None if col is None else float(scores[n, col]), clones[n])
    return out


def failed(requests: Sequence[WindowRequest], e: BaseException) -> list[WindowResult]:
    return [WindowResult(r.key, r.index, error=f"{type(e).__name__}: {e}") for r in requests]


_DONE = object()
JOB_WINDOWS = 8  # windows per off-stream job slice (an upload's embedding is cut into these)
WORKER_NICE = 5  # the worker threads yield the CPU to the event loop (event latency) when both want it


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux schedules threads by their own niceness)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


class Batcher:
    def __init__(self, embedder, deliver: Callable[[list[WindowResult]], None], max_batch: int = 64,
                 max_wait: float = 0.005, metrics=None,
                 on_taken: Callable[[list[tuple[int, int]]], None] | None = None, workers: Sequence | None = None,
                 nice: int = WORKER_NICE):
        self.embedder = embedder
        self.workers = list(workers) if workers else [embedder]  # one embed thread per replica
        self.nice = nice
        self.deliver = deliver
        self.on_taken = on_taken  # told (key, index) of every batch the embed thread takes
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.metrics = metrics
        self._queue: deque[tuple[float, WindowRequest]] = deque()
        self._jobs: deque[tuple[Callable, concurrent.futures.Future]] = deque()  # off-stream work
        self._cond = threading.Condition()
        self._stopping = False
        self._seq = 0  # batches taken so far (the score thread delivers in this order)
        self._embedded: queue.Queue = queue.Queue(maxsize=len(self.workers))  # embed threads -> score thread
        self._threads = [threading.Thread(target=self._embed_loop, args=(w,), name=f"voxguard-embed-{i}", daemon=True)
                         for i, w in enumerate(self.workers)]
        self._threads.append(threading.Thread(target=self._score_loop, name="voxguard-score", daemon=True))

    # -- control (event loop side) -------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish what is queued, then end the worker threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def submit(self, requests: Sequence[WindowRequest]) -> None:
        if not requests:
            return
        now = time.monotonic()
        with self._cond:
            self._queue.extend((now, r) for r in requests)
            depth = len(self._queue)
            self._cond.notify()
        if self.metrics:
            self.metrics.queue_depth.set(depth)

    def withdraw(self, windows: Sequence[tuple[int, int]]) -> int:
        """Remove requests (key, index) still waiting in the queue; returns how many were.
        (A request the embed thread already took is answered anyway, and ignored by its session.)"""
        if not windows:
            return 0
        gone = set(windows)
        with self._cond:
            before = len(self._queue)
            self._queue = deque(item for item in self._queue if (item[1].key, item[1].index) not in gone)
            return before - len(self._queue)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def run_job(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(embedder)`` on an embed thread (with its replica) when no stream window is
        waiting; blocks the calling thread (never the event loop's) until it is done."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the worker is stopping")
            self._jobs.append((fn, fut))
            self._cond.notify()
        return fut.result()

    # -- worker threads ----------------------------------------------------------------------
    def _take(self) -> tuple[int, list[WindowRequest]] | tuple[Callable, concurrent.futures.Future] | None:
        with self._cond:
            while True:
                while not self._queue and not self._jobs:
                    if self._stopping:
                        return None
                    self._cond.wait()
                if not self._queue:  # stream windows first: a job only when none waits
                    return self._jobs.popleft()
                deadline = self._queue[0][0] + self.max_wait
                while len(self._queue) < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._queue:
                        break
                    self._cond.wait(left)
                if self._queue:  # (withdraw may have emptied it meanwhile)
                    break
            n = min(self.max_batch, len(self._queue))
            batch = [self._queue.popleft()[1] for _ in range(n)]
            seq, self._seq = self._seq, self._seq + 1
            depth = len(self._queue)
        if self.metrics:
            self.metrics.queue_depth.set(depth)
        return seq, batch

    def _embed_loop(self, embedder) -> None:
        _lower_priority(self.nice)
        while True:
            taken = self._take()
            if taken is None:
                self._embedded.put(_DONE)
                return
            if callable(taken[0]):
                fn, fut = taken
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(embedder))
                    except BaseException as e:  # noqa: BLE001 — handed to the job's caller
                        fut.set_exception(e)
                continue
            seq, batch = taken
            if self.on_taken is not None:
                self.on_taken([(r.key, r.index) for r in batch])
            t0 = time.perf_counter()
            try:
                vecs = embed(embedder, batch)
            except Exception as e:  # a broken model must not kill the worker silently
                log.exception("embedding a batch of %d windows failed", len(batch))
                self._embedded.put((seq, batch, None, e, 0.0))
                continue
            self._embedded.put((seq, batch, vecs, None, time.perf_counter() - t0))

    def _in_order(self):
        """Embedded batches in the order they were taken (until every embed thread ended)."""
        waiting: dict[int, tuple] = {}
        expect, running = 0, len(self.workers)
        while running:
            item = self._embedded.get()
            if item is _DONE:
                running -= 1
                continue
            waiting[item[0]] = item
            while expect in waiting:
                yield waiting.pop(expect)
                expect += 1
        for seq in sorted(waiting):
            yield waiting.pop(seq)

    def _score_loop(self) -> None:
        _lower_priority(self.nice)
        for item in self._in_order():
            _, batch, vecs, err, embed_s = item
            if err is None:
                t0 = time.perf_counter()
                try:
                    results = score(vecs, batch)
                except Exception as e:
                    log.exception("scoring a batch of %d windows failed", len(batch))
                    results, err = failed(batch, e), e
                self._observe(len(batch), embed_s, time.perf_counter() - t0)
            else:
                results = failed(batch, err)
            self.deliver(results)

    def _observe(self, n: int, embed_s: float, score_s: float) -> None:
        m = self.metrics
        if m:
            m.batch_size.observe(n)
            m.embedding_seconds.observe(embed_s)
            m.search_seconds.observe(score_s)
            m.windows_embedded.inc(n)

    def process(self, requests: Sequence[WindowRequest]) -> list[WindowResult]:
        """Embed and score one batch on the calling thread (tests, benchmarks)."""
        t0 = time.perf_counter()
        vecs = embed(self.embedder, requests)
        t1 = time.perf_counter()
        results = score(vecs, requests)
        self._observe(len(requests), t1 - t0, time.perf_counter() - t1)
        return results


class QueuedEmbedder:
    """The daemon's embedder for off-stream work: ``embed`` runs on the batcher's embed threads,
    :data:`JOB_WINDOWS` windows per job, each taken only when no stream window waits (so an
    upload never starves the streams); everything else is the embedder's."""

    def __init__(self, batcher: Batcher, embedder, windows_per_job: int = JOB_WINDOWS):
        self._batcher = batcher
        self._embedder = embedder
        self._per_job = windows_per_job

    def embed(self, samples: Sequence[np.ndarray]) -> np.ndarray:
        parts = [self._batcher.run_job(lambda e, part=list(samples[i:i + self._per_job]): e.embed(part))
                 for i in range(0, len(samples), self._per_job)]
        if not parts:
            return np.zeros((0, self._embedder.dim), dtype=np.float32)
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])

    def __getattr__(self, name: str):
        return getattr(self._embedder, name)
