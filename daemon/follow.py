"""Following the store: a daemon replica reloads by itself when the store's revision
changes, so every replica on a shared store serves what was just enrolled — no admin
call, no dropped stream (the reload is :meth:`Daemon.reload`, which swaps the scoring
snapshot between batches).

How a change is noticed is the store's business (:meth:`Store.wait_for_change`): a
PostgreSQL store LISTENs for the NOTIFY its writers send in the transaction that bumps the
revision; an SQLite file is polled (one indexed read of the revision every interval).
Either way the follower then reads ``(store id, revision)`` and reloads when it differs
from the loaded snapshot's, so notifications that arrive during a reload are never lost
(they are coalesced: one reload catches up with all of them, and a reload that took d
seconds is followed by at least d seconds without one).

A store that vanishes after it was loaded (its SQLite file deleted or moved away) is such a
failure too — never a reason to serve an empty index — and a file replaced by another one is
re-opened (the open connection would go on reading the old one).

When the store cannot be read (the database went away, a reload failed), the daemon keeps
serving every stream from the snapshot it has, reports ``degraded`` with the reason on
``/readyz``, counts each failure in ``voxguard_store_errors_total`` and reconnects by
itself, backing off from the interval to :data:`MAX_BACKOFF` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

from voxguard.errors import StoreMissing
from voxguard.store import Store, StoreLocation

from .metrics import DaemonMetrics

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0  # seconds between reconnection attempts, at most


class StoreFollower:
    def __init__(self, location: StoreLocation, interval: float, reload: Callable[[], Awaitable[dict]],
                 loaded: Callable[[], tuple[str | None, int]], metrics: DaemonMetrics):
        self.location = location
        self.interval = interval
        self._reload = reload
        self._loaded = loaded
        self.metrics = metrics
        self.state = "starting"  # ok | missing | degraded
        self.reason: str | None = None
        self.store_revision: int | None = None
        self.checked_at: float | None = None
        self._store: Store | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the SQLite file the store was opened on
        self._calm_until = 0.0  # no reload before this (monotonic): see _check

    @property
    def degraded(self) -> bool:
        return self.state == "degraded"

    def status(self) -> dict:
        """What ``/readyz`` says about the store."""
        return {"location": str(self.location), "engine": self.location.engine, "state": self.state,
                "reason": self.reason, "revision": self.store_revision,
                "checked_s_ago": None if self.checked_at is None else round(time.monotonic() - self.checked_at, 3)}

    def _open(self) -> Store | None:
        try:
            self._file = self._file_id()
            return self.location.open(create=False, readonly=True)
        except (StoreMissing, FileNotFoundError):
            return None

    def _file_id(self) -> tuple[int, int] | None:
        """(device, inode) of an SQLite store's file (FileNotFoundError when it is gone); None for PostgreSQL."""
        if self.location.engine != "sqlite":
            return None
        st = os.stat(self.location.target)
        return st.st_dev, st.st_ino

    def _missing(self) -> StoreMissing:
        return StoreMissing(f"store {self.location} is missing (deleted or moved away); serving the loaded "
                            f"index (revision {self._loaded()[1]}) until it is back")

    async def _reopen_if_moved(self) -> None:
        """An SQLite connection keeps reading a file that was deleted or replaced: look at the path."""
        try:
            now = await asyncio.to_thread(self._file_id)
        except FileNotFoundError:
            raise self._missing() from None
        if now != self._file:
            log.info("store %s was replaced by another file: reopening it", self.location)
            self._drop_store()
            self._store = await asyncio.to_thread(self._open)
            if self._store is None:
                raise self._missing()

    async def _check(self) -> None:
        if self._store is None:
            self._store = await asyncio.to_thread(self._open)
            if self._store is None:
                if self._loaded()[0] is not None:  # it was there: it vanished, which is a failure
                    raise self._missing()
                # nothing enrolled yet: served empty, not a failure
                self._mark("missing", None)
                await asyncio.sleep(self.interval)
                return
        else:
            await asyncio.to_thread(self._store.wait_for_change, self.interval)
            await self._reopen_if_moved()
        store_id, revision = await asyncio.to_thread(self._store.state)
        self.store_revision = revision
        if (store_id, revision) != self._loaded():
            # during a bulk import every speaker's commit announces a revision: reloading back to
            # back would keep a replica (and the database) busy reloading; after a reload that took
            # d seconds the next one waits d seconds, so at most half the time goes to reloading
            await asyncio.sleep(max(0.0, self._calm_until - time.monotonic()))
            log.info("store %s is at revision %d: reloading", self.location, revision)
            t0 = time.monotonic()
            await self._reload()
            self._calm_until = time.monotonic() + (time.monotonic() - t0)
        self._mark("ok", None)

    def _mark(self, state: str, reason: str | None) -> None:
        if state != "degraded" and self.state == "degraded":
            log.warning("store %s is readable again: no longer degraded", self.location)
        self.state, self.reason = state, reason
        self.checked_at = time.monotonic()
        self.metrics.store_degraded.set(1 if state == "degraded" else 0)

    def _drop_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:  # noqa: BLE001 — a broken connection may fail to close; it is gone anyway
                pass

    async def run(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self._check()
                backoff = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 — StoreError, EmbedderMismatch, a failed reload, ...
                reason = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
                if str(self.location) not in reason:
                    reason = f"store {self.location}: {reason}"
                if not self.degraded:  # one error line per outage; what changes during it, at lower levels
                    log.error("%s; serving from the loaded index (revision %s), retrying", reason, self._loaded()[1])
                else:
                    log.log(logging.WARNING if reason != self.reason else logging.DEBUG, "still degraded: %s", reason)
                self.metrics.store_errors.inc()
                self._mark("degraded", reason)
                self._drop_store()
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
