"""Alert webhooks: ``--webhook URL`` (repeatable), ``--webhook-secret``.

* :class:`AlertRules` (no I/O) turns the daemon's events into alerts, once per change:

  - ``clone_suspicion`` — a window's clone level reaches ``min_clone_level`` (default
    ``medium``) or climbs above the highest level already alerted for that channel;
  - ``claim_rejected`` — the session verdict about a claimed speaker becomes ``reject``;
  - ``unknown_speaker`` — on a claimed channel, the smoothed identity has been "no
    enrolled speaker" for ``unknown_windows`` consecutive windows (re-armed once an
    enrolled speaker is recognised again).

* :class:`WebhookSender` POSTs each alert as JSON to every URL, signed with
  HMAC-SHA256 of the body (``X-Voxguard-Signature: sha256=<hex>``) when a secret is set.
  One worker per URL; each has a bounded queue — when full, the **oldest** waiting alert is
  dropped (``voxguard_webhook_alerts_total{result="dropped"}``).  A POST times out after
  ``timeout`` seconds and is retried with exponential backoff (0.5 s, 1 s, 2 s, ...) up to
  ``attempts`` times on connection errors, timeouts, 408, 429 and 5xx; any other status is
  final.  Results are counted as ``sent`` / ``failed`` / ``dropped``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass

from voxguard.protocol import CLONE_LEVELS, wire_json

log = logging.getLogger(__name__)

ALERT_KINDS = ("clone_suspicion", "claim_rejected", "unknown_speaker")
SIGNATURE_HEADER = "X-Voxguard-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class _Track:
    clone_rank: int = 0
    verdict: str = "undecided"
    unknown_alerted: bool = False


class AlertRules:
    def __init__(self, min_clone_level: str = "medium", unknown_windows: int = 3):
        if min_clone_level not in CLONE_LEVELS[1:]:
            raise ValueError(f"min_clone_level must be one of {CLONE_LEVELS[1:]}")
        self.min_rank = CLONE_LEVELS.index(min_clone_level)
        self.unknown_windows = unknown_windows
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._claims: dict[tuple[str, int], str] = {}

    def forget(self, stream_id: str) -> None:
        for key in [k for k in self._tracks if k[0] == stream_id]:
            del self._tracks[key]
        for key in [k for k in self._claims if k[0] == stream_id]:
            del self._claims[key]

    def alerts(self, ev: dict) -> list[dict]:
        t, sid, ch = ev["type"], ev["stream_id"], ev.get("channel", 0)
        if t == "ready":
            self.forget(sid)
            claims = ({int(c): n for c, n in (ev.get("claimed_speakers") or {}).items()}
                      if ev.get("channel_mode") == "separate" else {0: ev.get("claimed_speaker")})
            self._claims.update({(sid, c): n for c, n in claims.items() if n})
            return []
        if t in ("summary", "error"):
            self.forget(sid)
            return []
        tr = self._tracks.setdefault((sid, ch), _Track())
        base = {"stream_id": sid, "time": ev["time"], "claimed_speaker": self._claims.get((sid, ch))}
        if "channel" in ev:
            base["channel"] = ch
        out = []
        if t == "clone_suspicion":
            rank = CLONE_LEVELS.index(ev["level"])
            if rank >= self.min_rank and rank > tr.clone_rank:
                tr.clone_rank = rank
                out.append({"alert": "clone_suspicion", **base, "level": ev["level"], "score": ev["score"],
                            "speaker": ev["speaker"]})
        elif t == "verification":
            verdict = ev["session"]["decision"]
            if verdict == "reject" and tr.verdict != "reject":
                out.append({"alert": "claim_rejected", **base, "score": ev["session"]["score"],
                            "threshold": ev["threshold"], "windows": ev["session"]["windows"]})
            tr.verdict = verdict
        elif t == "identity" and (sid, ch) in self._claims:
            d = ev["decision"]
            if d["speaker"] is not None:
                tr.unknown_alerted = False
            elif d["windows"] >= self.unknown_windows and not tr.unknown_alerted:
                tr.unknown_alerted = True
                out.append({"alert": "unknown_speaker", **base, "windows": d["windows"],
                            "best_guess": ev["speaker"], "score": ev["score"]})
        for a in out:
            a["event"] = ev
        return out


class WebhookSender:
    """POSTs alerts to URLs from worker tasks on the event loop (the HTTP call itself runs
    in a thread: urllib, no extra dependency)."""

    def __init__(self, urls: list[str], secret: str | None = None, timeout: float = 5.0, attempts: int = 4,
                 backoff: float = 0.5, queue_size: int = 100, metrics=None):
        self.urls = list(urls)
        self.secret = secret
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.queue_size = queue_size
        self.metrics = metrics
        self._queues = {u: deque() for u in self.urls}
        self._wake = {u: asyncio.Event() for u in self.urls}
        self._tasks: list[asyncio.Task] = []
        self._busy = 0  # alerts being delivered

    def _count(self, result: str) -> None:
        if self.metrics:
            self.metrics.webhook_alerts.labels(result).inc()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(u)) for u in self.urls]

    async def stop(self, grace: float = 5.0) -> None:
        """Give queued alerts ``grace`` seconds, then cancel the workers."""
        deadline = time.monotonic() + grace
        while (any(self._queues.values()) or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def submit(self, alert: dict) -> None:
        body = wire_json({**alert, "sent_at": round(time.time(), 3)}).encode()
        for u in self.urls:
            q = self._queues[u]
            if len(q) >= self.queue_size:
                q.popleft()
                self._count("dropped")
            q.append(body)
            self._wake[u].set()

    def _post(self, url: str, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "User-Agent": "voxguard-webhook"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    async def _deliver(self, url: str, body: bytes) -> bool:
        for attempt in range(self.attempts):
            try:
                status = await asyncio.to_thread(self._post, url, body)
                if 200 <= status < 300:
                    return True
                if status not in (408, 429) and status < 500:
                    log.warning("webhook %s answered %d; not retried", url, status)
                    return False
                log.warning("webhook %s answered %d (attempt %d)", url, status, attempt + 1)
            except (OSError, urllib.error.URLError) as e:
                log.warning("webhook %s failed (attempt %d): %s", url, attempt + 1, e)
            if attempt + 1 < self.attempts:
                await asyncio.sleep(self.backoff * 2 ** attempt)
        return False

    async def _worker(self, url: str) -> None:
        q, wake = self._queues[url], self._wake[url]
        while True:
            while not q:
                wake.clear()
                await wake.wait()
            body = q.popleft()
            self._busy += 1
            try:
                ok = await self._deliver(url, body)
            finally:
                self._busy -= 1
            self._count("sent" if ok else "failed")
