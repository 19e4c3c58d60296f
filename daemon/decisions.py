"""Rolling per-stream decisions, free of I/O: who is speaking (with hysteresis),
whether it is the claimed speaker, and how suspicious of cloning the stream is.

Every decision is made on calibrated log-likelihood ratios (:mod:`voxguard.llr`) of its
own trial type: a window's evidence under the *window* calibration, the mean of ``n``
window scores under the *session* calibration for ``n`` windows.

* :class:`IdentityTracker` — a window *supports* speaker S when S ranks first with an
  LLR at or above the open-set threshold (the window LLR that the best of N enrolled
  speakers reaches by chance with the configured probability), otherwise it supports
  "nobody".  S becomes the current speaker after ``enter`` consecutive supporting
  windows; the current speaker is dropped only after ``exit`` consecutive contradicting
  windows (then the candidate that has itself ``enter`` consecutive windows takes over,
  else nobody).  One odd window never flips the decision.
* :class:`VerificationTracker` — accept when the LLR is at least ``accept_llr + band``,
  reject below ``accept_llr - band``, undecided in between; the session decision applies
  the same rule to the session LLR (the mean of the window *scores*, mapped by the
  session calibration for that many windows) and stays undecided for its first
  ``min_windows`` windows.  (The mean of window scores, not the score of the mean
  *embedding*: averaging embeddings pulls every long session towards every centroid.)
* :class:`SessionEvidence` — running sums of each speaker's window scores (the top-k of
  every window), for the session-level open-set identity of the summary.
* :class:`CloneTracker` — the running maximum and count of suspicious windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from voxguard.llr import TrialCalibration
from voxguard.protocol import CLONE_LEVELS


@dataclass(frozen=True)
class IdentityDecision:
    speaker: str | None  # the current speaker after this window
    changed: bool  # this window changed it
    windows: int  # consecutive windows the current speaker has held (or nobody has)
    candidate: str | None  # what this window alone supports

    def as_dict(self) -> dict:
        return {"speaker": self.speaker, "changed": self.changed, "windows": self.windows,
                "candidate": self.candidate}


class IdentityTracker:
    """Hysteresis over per-window best speakers (``threshold``: the open-set window LLR)."""

    def __init__(self, threshold: float, enter: int = 2, exit: int = 3):
        if enter < 1 or exit < 1:
            raise ValueError("enter and exit must be at least 1 window")
        self.threshold = threshold
        self.enter = enter
        self.exit = exit
        self.current: str | None = None
        self._held = 0  # windows since the current decision was taken
        self._pending: str | None = None
        self._pending_run = 0
        self._against = 0  # consecutive windows contradicting the current speaker
        self.changes = 0

    def candidate_for(self, speaker: str | None, score: float | None) -> str | None:
        if speaker is None or score is None or score < self.threshold:
            return None
        return speaker

    def update(self, speaker: str | None, score: float | None) -> IdentityDecision:
        cand = self.candidate_for(speaker, score)
        if cand == self._pending:
            self._pending_run += 1
        else:
            self._pending, self._pending_run = cand, 1
        before = self.current
        if cand == self.current:
            self._against = 0
        else:
            self._against += 1
            if self.current is None:
                if self._pending_run >= self.enter:
                    self.current = cand
            elif self._against >= self.exit:
                self.current = self._pending if self._pending_run >= self.enter else None
        changed = self.current != before
        if changed:
            self.changes += 1
            self._against = 0
            self._held = 0
        self._held += 1
        return IdentityDecision(self.current, changed, self._held, cand)


def verdict(score: float | None, threshold: float, band: float) -> str:
    """accept / reject / undecided for one score."""
    if score is None:
        return "undecided"
    if score >= threshold + band:
        return "accept"
    if score < threshold - band:
        return "reject"
    return "undecided"


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


class VerificationTracker:
    """Decisions about one claimed speaker, per window and over the session.

    ``window`` calibrates one window's score; ``session_for(n)`` the mean of ``n`` window
    scores.  Either may be ``None`` (an uncalibrated store): decisions stay undecided."""

    def __init__(self, claimed: str, window: TrialCalibration | None,
                 session_for: Callable[[int], TrialCalibration | None], band: float = 0.5, min_windows: int = 3):
        self.claimed = claimed
        self.window_cal = window
        self.session_for = session_for
        self.band = band
        self.min_windows = min_windows
        self.windows = 0
        self.accepted = 0
        self.rejected = 0
        self.session_score: float | None = None  # mean of the window scores
        self.session_llr: float | None = None
        self.session_cal: TrialCalibration | None = None
        self.session_decision = "undecided"
        self._sum = 0.0
        self._scored = 0

    @property
    def threshold(self) -> float | None:
        return None if self.window_cal is None else self.window_cal.accept_llr

    def window_llr(self, score: float | None) -> float | None:
        return None if score is None or self.window_cal is None else float(self.window_cal.llr(score))

    def update(self, window_score: float | None) -> tuple[str, str]:
        """Record one window's backend score; returns (window decision, session decision)."""
        self.windows += 1
        llr = self.window_llr(window_score)
        w = verdict(llr, self.threshold, self.band) if llr is not None else "undecided"
        self.accepted += w == "accept"
        self.rejected += w == "reject"
        if window_score is not None:
            self._sum += window_score
            self._scored += 1
            self.session_score = self._sum / self._scored
            self.session_cal = self.session_for(self._scored)
            self.session_llr = None if self.session_cal is None else float(self.session_cal.llr(self.session_score))
        ready = self._scored >= self.min_windows and self.session_llr is not None
        self.session_decision = verdict(self.session_llr, self.session_cal.accept_llr, self.band) if ready \
            else "undecided"
        return w, self.session_decision

    def session_dict(self) -> dict:
        c = self.session_cal
        return {"score": _r(self.session_score), "llr": _r(self.session_llr), "decision": self.session_decision,
                "windows": self.windows, "threshold_llr": None if c is None else _r(c.accept_llr),
                "calibration": None if c is None else c.label()}

    def summary(self) -> dict:
        return {"claimed_speaker": self.claimed, "threshold": _r(self.threshold),
                **{k: v for k, v in self.session_dict().items() if k != "windows"},
                "windows": self.windows, "windows_accepted": self.accepted, "windows_rejected": self.rejected}


class SessionEvidence:
    """Each speaker's running mean window score over a stream, from the top-k of every window.

    A window where a speaker is not among its top-k counts with that window's k-th best
    score (an upper bound of the speaker's own), so no speaker is ever under-credited."""

    def __init__(self):
        self.windows = 0
        self._sums: dict[str, float] = {}
        self._floor = 0.0  # sum of every window's k-th best score
        self._seen: dict[str, float] = {}  # speaker -> sum of k-th best scores of the windows that had it

    def add(self, top: list[tuple[str, float]]) -> None:
        """One window's top-k (speaker, score), best first."""
        if not top:
            return
        self.windows += 1
        kth = top[-1][1]
        self._floor += kth
        for spk, score in top:
            self._sums[spk] = self._sums.get(spk, 0.0) + score
            self._seen[spk] = self._seen.get(spk, 0.0) + kth

    def ranking(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` best speakers by mean window score, best first."""
        if not self.windows:
            return []
        means = {s: (v + self._floor - self._seen[s]) / self.windows for s, v in self._sums.items()}
        return sorted(means.items(), key=lambda kv: -kv[1])[:k]


class CloneTracker:
    """Session-level clone suspicion: the worst window so far and how many were suspicious."""

    def __init__(self):
        self.max_score = 0.0
        self.max_level = "none"
        self.suspicious = 0
        self.last_level = "none"
        self.windows = 0

    def update(self, score: float, level: str) -> bool:
        """Record one window; returns whether a ``clone_suspicion`` event should be sent
        (the window is suspicious, or the previous one was and this one clears it)."""
        self.windows += 1
        if score > self.max_score:
            self.max_score = score
        if CLONE_LEVELS.index(level) > CLONE_LEVELS.index(self.max_level):
            self.max_level = level
        self.suspicious += level != "none"
        report = level != "none" or self.last_level != "none"
        self.last_level = level
        return report

    def as_dict(self) -> dict:
        return {"max_score": round(self.max_score, 4), "max_level": self.max_level,
                "suspicious_windows": self.suspicious}
