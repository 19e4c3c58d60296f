"""Countermeasure checks of one track, free of I/O: what to check, and what the checks add up to.

A pretrained countermeasure (AASIST) reads about 4 s of audio and costs far more than an
identity window (``bench/bench_countermeasure_cost.py``), so it does not run per window.  Each
track keeps a rolling *context* of its latest voiced audio (:class:`ContextScheduler`):

* the **first check** is requested as soon as one whole context of voiced speech has arrived
  (4.04 s for AASIST), so every call gets a first verdict early;
* a **re-check** whenever another whole context of *new* voiced audio has arrived (contexts do not
  overlap: each second of speech is checked at most once); a real-time stream's waiting re-check may
  be superseded under load, a lossless stream's (``realtime: false``) never is;
* at the end of the stream, a **final check** of the voiced audio not yet covered when there is at
  least ``min_samples`` of it — or, when the stream never reached one whole context, of what there
  is (tiled by the model) if that is at least ``min_samples``; less gets no verdict, said so.

The shared worker (:mod:`.countermeasure_worker`) runs the checks under a CPU budget, first
verdicts and final checks before re-checks; a re-check still waiting when the same track asks
for the next one is *superseded* (answered ``skipped``), so a loaded daemon checks fewer spans
rather than falling behind.  The summary reports the share of voiced speech covered.

:class:`CountermeasureTracker` accumulates the calibrated context LLRs with the same one-sided
CUSUM as window clone evidence (:class:`voxguard.clone_detection.SessionRule`): weight 1 (contexts
do not overlap), the offset from the shipped calibration, edges for at most one false alarm per
1 / 20 / 100 hours of genuine speech at one context every ``context_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from voxguard import SAMPLE_RATE
from voxguard.clone_detection import SessionRule
from voxguard.protocol import CLONE_LEVELS


@dataclass(frozen=True)
class CountermeasureInfo:
    """What a stream needs to know of the daemon's countermeasure (no model: that is the worker's)."""

    name: str  # e.g. "aasist@51d2d9cf0738 shipped": model, checkpoint, calibration
    context_samples: int
    min_samples: int
    edges: tuple[float, float, float]  # per-context LLR edges low / medium / high
    rule: SessionRule
    device: str = "cpu"
    runtime: str = "torch"

    def as_dict(self) -> dict:
        return {"calibration": self.name, "context_s": round(self.context_samples / SAMPLE_RATE, 3),
                "min_s": round(self.min_samples / SAMPLE_RATE, 3), "device": self.device, "runtime": self.runtime,
                "context_edges": [round(e, 3) for e in self.edges],
                "session_edges": [round(e, 3) for e in self.rule.edges]}

    def level(self, llr: float) -> str:
        return CLONE_LEVELS[sum(llr >= e for e in self.edges)]


@dataclass(frozen=True, eq=False)
class ContextRequest:
    """One context to check: immutable, everything the worker needs."""

    key: int  # the track
    index: int  # the check's number in its track
    start: float  # stream time of the context's first and last voiced sample
    end: float
    samples: np.ndarray = field(repr=False)  # 16 kHz float32, read-only
    new_s: float  # seconds of voiced audio in it that no earlier check covered
    kind: str  # "first" | "recheck" | "final"
    supersede: bool = True  # a real-time stream's waiting re-check may be superseded (not a lossless one's)
    voiced_s: float = 0.0  # seconds of the track's voiced audio when the check was due

    @property
    def priority(self) -> int:  # lower runs first: a summary waits on a final check
        return {"final": 0, "first": 1}.get(self.kind, 2)


@dataclass(frozen=True, eq=False)
class ContextResult:
    key: int
    index: int
    raw: float | None = None
    llr: float | None = None
    skipped: bool = False  # superseded by the same track's next check before the model saw it
    error: str | None = None


class ContextScheduler:
    """The rolling voiced context of one track and when it is due for a check."""

    def __init__(self, key: int, context_samples: int, min_samples: int, supersede: bool = True):
        self.key = key
        self.supersede = supersede
        self.n = context_samples
        self.min = min_samples
        self._chunks: list[tuple[float, np.ndarray]] = []  # (stream time of first sample, samples)
        self._held = 0  # samples in _chunks
        self.voiced = 0  # voiced samples seen
        self.uncovered = 0  # voiced samples since the last requested check
        self.requested = 0

    def _trim(self) -> None:
        while self._chunks and self._held - len(self._chunks[0][1]) >= self.n:
            self._held -= len(self._chunks.pop(0)[1])

    def _context(self, kind: str, new: int) -> ContextRequest:
        x = np.concatenate([c for _, c in self._chunks])
        take = min(len(x), self.n)
        x = np.array(x[-take:], dtype=np.float32)
        x.flags.writeable = False
        # the first kept sample's time: walk back from the end
        skip = self._held - take
        t0, i = self._chunks[0][0], 0
        while i < len(self._chunks) and skip >= len(self._chunks[i][1]):
            skip -= len(self._chunks[i][1])
            i += 1
        if i < len(self._chunks):
            t0 = self._chunks[i][0] + skip / SAMPLE_RATE
        t_last, last = self._chunks[-1]
        req = ContextRequest(self.key, self.requested, round(t0, 4), round(t_last + len(last) / SAMPLE_RATE, 4), x,
                             round(new / SAMPLE_RATE, 4), kind, self.supersede, round(self.voiced / SAMPLE_RATE, 4))
        self.requested += 1
        self.uncovered = 0
        return req

    def push(self, samples: np.ndarray, start: float) -> list[ContextRequest]:
        """Voiced audio (a VAD ``Voiced`` event): the checks now due (at most one per context)."""
        out: list[ContextRequest] = []
        x = np.asarray(samples, dtype=np.float32)
        pos = 0
        while pos < len(x):
            # feed up to the next context boundary, so each request holds exactly its new audio
            room = self.n - self.uncovered
            part = x[pos: pos + room]
            self._chunks.append((start + pos / SAMPLE_RATE, part))
            self._held += len(part)
            self.voiced += len(part)
            self.uncovered += len(part)
            pos += len(part)
            if self.uncovered >= self.n:
                self._trim()
                out.append(self._context("first" if self.requested == 0 else "recheck", self.uncovered))
            else:
                self._trim()
        return out

    def flush(self) -> ContextRequest | None:
        """End of the stream: the final check, if enough voiced audio is uncovered."""
        if self.uncovered >= self.min and self._chunks:
            return self._context("final", self.uncovered)
        return None


class CountermeasureTracker:
    """A track's countermeasure verdicts: per-context LLRs, their CUSUM, what was covered."""

    def __init__(self, info: CountermeasureInfo):
        self.info = info
        self.llr: float | None = None  # the CUSUM statistic
        self.level = "none"
        self.max_level = "none"
        self.max_llr: float | None = None  # the highest context LLR
        self.checks: list[dict] = []  # the spans checked: start, end, llr, level
        self.skipped = 0
        self.failed = 0
        self.covered_s = 0.0
        self.first_at_voiced_s: float | None = None  # voiced seconds into the track the first verdict is about

    def update(self, req: ContextRequest, res: ContextResult) -> dict | None:
        """Record one answered check; returns the check's event fields (None when skipped or failed)."""
        if res.skipped:
            self.skipped += 1
            return None
        if res.error is not None or res.llr is None:
            self.failed += 1
            return None
        rule = self.info.rule
        before = self.level
        self.llr = rule.step(self.llr or 0.0, res.llr)
        self.level = rule.level(self.llr)
        if CLONE_LEVELS.index(self.level) > CLONE_LEVELS.index(self.max_level):
            self.max_level = self.level
        self.max_llr = res.llr if self.max_llr is None else max(self.max_llr, res.llr)
        self.covered_s += req.new_s
        if self.first_at_voiced_s is None:
            self.first_at_voiced_s = round(req.voiced_s, 3)
        check = {"index": req.index, "start": req.start, "end": req.end, "kind": req.kind,
                 "llr": round(res.llr, 3), "raw": None if res.raw is None else round(res.raw, 3),
                 "level": self.info.level(res.llr)}
        self.checks.append(check)
        return {"check": check, "changed": self.level != before}

    def as_dict(self, voiced_s: float | None = None) -> dict:
        d = {"calibration": self.info.name, "llr": None if self.llr is None else round(self.llr, 3),
             "level": self.level if self.checks else "none", "max_level": self.max_level,
             "max_context_llr": None if self.max_llr is None else round(self.max_llr, 3),
             "checks": len(self.checks), "skipped": self.skipped, "failed": self.failed,
             "covered_s": round(self.covered_s, 3), "first_verdict_at_voiced_s": self.first_at_voiced_s,
             "hours_per_false_alarm": dict(zip(CLONE_LEVELS[1:], self.info.rule.hours_per_false_alarm))}
        if voiced_s is not None:
            d["voiced_s"] = round(voiced_s, 3)
            d["coverage"] = round(min(1.0, self.covered_s / voiced_s), 4) if voiced_s > 0 else 0.0
            if not self.checks:
                d["verdict"] = ("none: less voiced audio than the countermeasure's minimum "
                                f"({voiced_s:.2f} s < {self.info.min_samples / SAMPLE_RATE:g} s)"
                                if voiced_s * SAMPLE_RATE < self.info.min_samples else "none yet")
        return d
