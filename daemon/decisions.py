"""Rolling per-stream decisions, free of I/O: who is speaking (with hysteresis),
whether it is the claimed speaker, and how suspicious of cloning the stream is.

* :class:`IdentityTracker` — a window *supports* speaker S when S ranks first with a
  score at or above the accept threshold, otherwise it supports "nobody".  S becomes the
  current speaker after ``enter`` consecutive supporting windows; the current speaker is
  dropped only after ``exit`` consecutive contradicting windows (then the candidate that
  has itself ``enter`` consecutive windows takes over, else nobody).  One odd window never
  flips the decision.
* :class:`VerificationTracker` — accept when the score is at least ``threshold + band``,
  reject below ``threshold - band``, undecided in between; the session decision applies
  the same rule to the mean of the window scores and stays undecided for its first
  ``min_windows`` windows.  (The mean of window *scores*, not the score of the mean
  *embedding*: averaging embeddings pulls every long session towards every centroid —
  on AN4 an impostor's mean-embedding score climbs from 0.60 to 0.70 over 15 windows
  while its window scores stay near 0.62.)
* :class:`CloneTracker` — the running maximum and count of suspicious windows.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Hysteresis over per-window best speakers."""

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


class VerificationTracker:
    """Decisions about one claimed speaker, per window and over the session."""

    def __init__(self, claimed: str, threshold: float, band: float = 0.02, min_windows: int = 3):
        self.claimed = claimed
        self.threshold = threshold
        self.band = band
        self.min_windows = min_windows
        self.windows = 0
        self.accepted = 0
        self.rejected = 0
        self.session_score: float | None = None  # mean of the window scores
        self.session_decision = "undecided"
        self._sum = 0.0
        self._scored = 0

    def update(self, window_score: float | None) -> tuple[str, str]:
        """Record one window; returns (window decision, session decision)."""
        self.windows += 1
        w = verdict(window_score, self.threshold, self.band)
        self.accepted += w == "accept"
        self.rejected += w == "reject"
        if window_score is not None:
            self._sum += window_score
            self._scored += 1
            self.session_score = self._sum / self._scored
        self.session_decision = (verdict(self.session_score, self.threshold, self.band)
                                 if self._scored >= self.min_windows else "undecided")
        return w, self.session_decision

    def summary(self) -> dict:
        return {"claimed_speaker": self.claimed, "threshold": self.threshold,
                "score": None if self.session_score is None else round(self.session_score, 4),
                "decision": self.session_decision, "windows": self.windows,
                "windows_accepted": self.accepted, "windows_rejected": self.rejected}


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
