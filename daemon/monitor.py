"""The monitor feed: every active stream's events, fanned out to ``/v1/monitor`` subscribers.

* :class:`CallState` — what the daemon knows about one active call, built only from the
  events it sends (a reducer, no I/O): per channel the current speaker, the claim's
  verdict, the clone-suspicion level and a short history of window scores.  It backs
  ``GET /v1/calls`` and is replayed to a monitor that subscribes mid-call.
* :class:`Subscriber` — one monitor's filter and bounded queue.  Publishing never waits:
  when a subscriber's queue is full the **oldest** queued event is dropped (counted per
  subscriber and in ``voxguard_monitor_events_dropped_total``), so a slow monitor never
  slows a stream; a monitor that does not read at all is disconnected by the server's
  write timeout.
* :class:`MonitorHub` — the subscribers; :meth:`publish` is called for every event the
  daemon emits.  The feed is a fan-out of the same events, never a second computation.
"""

from __future__ import annotations

import asyncio
from collections import deque

from voxguard.protocol import CLONE_LEVELS, MonitorFilter, wire_json

SCORE_HISTORY = 30  # window scores kept per channel for the monitor page's sparkline
REPLAY_TYPES = ("identity", "verification", "clone_suspicion")


class ChannelState:
    def __init__(self, claimed: str | None = None, name: str | None = None, clone_available: bool = True):
        self.claimed = claimed
        self.name = name
        self.speaker: str | None = None  # the smoothed decision
        self.window_speaker: str | None = None
        self.verdict: str | None = None  # session decision about the claim
        # nothing weighs clone evidence on this stream: say so, never "none"
        self.clone_level = "none" if clone_available else "unavailable"
        self.clone_max_level = self.clone_level
        self.scores: deque[float | None] = deque(maxlen=SCORE_HISTORY)
        self.windows = 0
        self.last: dict[str, dict] = {}  # latest event per REPLAY_TYPES

    def apply(self, ev: dict) -> None:
        t = ev["type"]
        if t in REPLAY_TYPES:
            self.last[t] = ev
        if t == "identity":
            self.speaker = ev["decision"]["speaker"]
            self.window_speaker = ev["speaker"]
            self.windows += 1
            if self.claimed is None:
                self.scores.append(ev["score"])
        elif t == "verification":
            self.verdict = ev["session"]["decision"]
            self.scores.append(ev["window"]["score"])
        elif t == "clone_suspicion":
            self.clone_level = ev["level"]
            order = ("unavailable", *CLONE_LEVELS)
            if order.index(ev["level"]) > order.index(self.clone_max_level):
                self.clone_max_level = ev["level"]

    def as_dict(self, channel: int) -> dict:
        return {"channel": channel, "name": self.name, "claimed_speaker": self.claimed, "speaker": self.speaker,
                "window_speaker": self.window_speaker, "verdict": self.verdict, "clone_level": self.clone_level,
                "clone_max_level": self.clone_max_level, "windows": self.windows, "scores": list(self.scores)}


class CallState:
    """One active stream, as its events describe it."""

    def __init__(self, source: str):
        self.source = source  # "stream" (/v1/stream) or "twilio"
        self.stream_id: str | None = None
        self.ready: dict | None = None
        self.channels: dict[int, ChannelState] = {}
        self.time = 0.0
        self.ended = False

    def apply(self, ev: dict) -> None:
        t = ev["type"]
        self.stream_id = ev.get("stream_id") or self.stream_id
        self.time = max(self.time, ev.get("time", 0.0))
        if t == "ready":
            self.ready = ev
            names = ev.get("channel_names") or []
            avail = (ev.get("clone_detection") or {}).get("available", True)
            if ev.get("channel_mode") == "separate":
                claims = ev.get("claimed_speakers") or {}
                for c in range(ev["input"]["channels"]):
                    self.channels[c] = ChannelState(claims.get(str(c)), names[c] if c < len(names) else None, avail)
            else:
                self.channels[0] = ChannelState(ev.get("claimed_speaker"), clone_available=avail)
            return
        if t in ("summary", "error"):
            self.ended = True
        ch = self.channels.get(ev.get("channel", 0))
        if ch is not None:
            ch.apply(ev)

    def replay(self) -> list[dict]:
        """The events that bring a new subscriber up to date: ``ready``, then the latest
        identity / verification / clone event of each channel."""
        if self.ready is None:
            return []
        out = [self.ready]
        for ch in self.channels.values():
            out += [ch.last[t] for t in REPLAY_TYPES if t in ch.last]
        return out

    def as_dict(self) -> dict:
        r = self.ready or {}
        return {"stream_id": self.stream_id, "source": self.source, "time": round(self.time, 3),
                "channel_mode": r.get("channel_mode", "mix"), "call_sid": r.get("call_sid"),
                "channels": [ch.as_dict(c) for c, ch in sorted(self.channels.items())]}


class Subscriber:
    """One monitor connection's filter and bounded queue of serialized events."""

    def __init__(self, flt: MonitorFilter, maxsize: int, on_drop=None):
        self.filter = flt
        self.maxsize = maxsize
        self.queue: deque[str | None] = deque()
        self.dropped = 0
        self._wake = asyncio.Event()
        self._on_drop = on_drop

    def offer(self, ev: dict, text: str) -> None:
        if not self.filter.matches(ev):
            return
        if len(self.queue) >= self.maxsize:
            self.queue.popleft()
            self.dropped += 1
            if self._on_drop:
                self._on_drop()
        self.queue.append(text)
        self._wake.set()

    def close(self) -> None:
        """After what is queued, the writer closes the connection (server shutdown)."""
        self.queue.append(None)
        self._wake.set()

    async def get(self) -> str | None:
        while not self.queue:
            self._wake.clear()
            await self._wake.wait()
        return self.queue.popleft()


class MonitorHub:
    def __init__(self, queue_size: int = 1000, metrics=None):
        self.queue_size = queue_size
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()

    def subscribe(self, flt: MonitorFilter) -> Subscriber:
        sub = Subscriber(flt, self.queue_size, self._dropped)
        self.subscribers.add(sub)
        if self.metrics:
            self.metrics.monitor_subscribers.set(len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if self.metrics:
            self.metrics.monitor_subscribers.set(len(self.subscribers))

    def _dropped(self) -> None:
        if self.metrics:
            self.metrics.monitor_dropped.inc()

    def publish(self, ev: dict) -> None:
        if not self.subscribers:
            return
        text = wire_json(ev)
        for sub in list(self.subscribers):
            sub.offer(ev, text)
