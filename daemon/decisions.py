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
* :class:`CloneTracker` — accumulated clone evidence (a CUSUM of window LLRs) with session
  levels at stated false-alarm rates per hour of genuine speech.
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
        self.revoked: str | None = None  # why the claim can no longer be accepted

    def revoke(self, reason: str) -> None:
        """The claimed speaker is no longer enrolled: every decision from now on is ``reject``."""
        self.revoked = reason
        self.session_decision = "reject"

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
        if self.revoked is not None:
            w = "reject"
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
        if self.revoked is not None:
            self.session_decision = "reject"
        return w, self.session_decision

    def session_dict(self) -> dict:
        c = self.session_cal
        return {"score": _r(self.session_score), "llr": _r(self.session_llr), "decision": self.session_decision,
                "windows": self.windows, "threshold_llr": None if c is None else _r(c.accept_llr),
                "calibration": None if c is None else c.label(),
                **({"revoked": self.revoked} if self.revoked else {})}

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
