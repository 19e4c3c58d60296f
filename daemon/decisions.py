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
* :class:`CloneTracker` — accumulated clone evidence (a CUSUM of window LLRs) with session
  levels at stated false-alarm rates per hour of genuine speech.
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
    """Session-level clone evidence: a CUSUM of window LLRs (see
    :class:`voxguard.clone_detection.SessionRule`), not the maximum of window levels.

    Fed with one :class:`~voxguard.clone_detection.CloneAssessment` per window (the rule
    travels with it: a reloaded detector applies from the next window).  The session level
    is that of the accumulated LLR at the rule's edges, which are set for at most one false
    alarm per 1 / 20 / 100 hours of genuine speech (low / medium / high).  Windows without
    a clone assessment (no detector available) leave the level ``unavailable``.
    """

    def __init__(self):
        self.llr: float | None = None  # the CUSUM statistic
        self.level = "unavailable"
        self.max_llr: float | None = None
        self.max_score = 0.0
        self.max_level = "unavailable"  # the highest session level reached
        self.suspicious = 0  # windows whose own level is not none
        self.windows = 0
        self.alarms = 0  # times the session level rose to medium or high from below
        self.last_level = "none"
        self.rule = None

    def update(self, assessment) -> bool:
        """Record one window; returns whether a ``clone_suspicion`` event should be sent (the
        window is suspicious, the previous one was, or the session level changed)."""
        self.windows += 1
        level = assessment.level
        if assessment.llr is None or assessment.session is None:
            report = self.last_level not in ("none", "unavailable")
            self.last_level = level
            return report
        self.rule = assessment.session
        before = self.level
        self.llr = self.rule.step(self.llr or 0.0, assessment.llr)
        self.level = self.rule.level(self.llr)
        self.max_llr = self.llr if self.max_llr is None else max(self.max_llr, self.llr)
        self.max_score = max(self.max_score, assessment.score or 0.0)
        order = CLONE_LEVELS
        if self.max_level == "unavailable" or order.index(self.level) > order.index(self.max_level):
            self.max_level = self.level
        if order.index(self.level) >= order.index("medium") > order.index(before if before in order else "none"):
            self.alarms += 1
        self.suspicious += level != "none"
        report = level != "none" or self.last_level != "none" or self.level != (before if before != "unavailable" else "none")
        self.last_level = level
        return report

    def as_dict(self) -> dict:
        r = self.rule
        return {"llr": None if self.llr is None else round(self.llr, 3), "level": self.level,
                "max_llr": None if self.max_llr is None else round(self.max_llr, 3),
                "max_score": round(self.max_score, 4), "max_level": self.max_level,
                "suspicious_windows": self.suspicious, "alarms": self.alarms,
                "hours_per_false_alarm": None if r is None else dict(zip(CLONE_LEVELS[1:], r.hours_per_false_alarm))}
