"""The terminal rendering shared by ``voxguard stream`` and ``voxguard mic``: one line per
event, each identity line carrying the whole current state (who is speaking and with what
score, the claimed speaker's verdict, the clone-suspicion level), and a summary block."""

from __future__ import annotations

from dataclasses import dataclass

from .events import (CloneSuspicion, Event, Identity, Ready, Reconnected, SpeechEnd, SpeechStart, Summary,
                     Verification, Warning)


def _score(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


@dataclass
class LiveState:
    """What the view remembers between events."""

    speaker: str | None = None  # smoothed decision
    score: float | None = None  # this speaker's latest window score
    claim: str | None = None
    verdict: str = "undecided"
    verify_score: float | None = None
    clone_level: str = "none"
    clone_score: float = 0.0


class LiveView:
    """Turns events into readable lines (``render`` returns ``None`` for nothing to print)."""

    def __init__(self):
        self.state = LiveState()  # the stream's one track (channel_mode mix)
        self.channels: dict[int, LiveState] = {}  # channel_mode separate: one per channel

    def _state(self, ev: Event) -> LiveState:
        ch = ev.channel
        return self.state if ch is None else self.channels.setdefault(ch, LiveState())

    def status(self, s: LiveState | None = None) -> str:
        s = s or self.state
        who = f"{s.speaker} {_score(s.score)}" if s.speaker else "nobody recognised"
        parts = [f"speaking: {who}"]
        if s.claim:
            parts.append(f"claim {s.claim}: {s.verdict} {_score(s.verify_score)}")
        parts.append(f"clone: {s.clone_level}")
        return " | ".join(parts)

    def render(self, ev: Event) -> str | None:
        s = self._state(ev)
        t = f"{ev.time:8.2f}s  " + ("" if ev.channel is None else f"ch{ev.channel} ")
        if isinstance(ev, Ready):
            s.claim = ev.claimed_speaker
            emb = ev.embedder
            th = ev.thresholds
            claim = f", claim {ev.claimed_speaker}" if ev.claimed_speaker else ""
            if ev.raw.get("channel_mode") == "separate":
                claims = ev.raw.get("claimed_speakers") or {}
                for c, name in claims.items():
                    self.channels.setdefault(int(c), LiveState()).claim = name
                claim = f", {ev.input['channels']} separate channels" + "".join(
                    f", ch{c} claims {n}" for c, n in sorted(claims.items()))
            cm = ev.raw.get("countermeasure") or {}
            cm_text = (f"; countermeasure {cm.get('calibration')}" if cm.get("available") else
                       f"; no clone countermeasure ({cm['reason']})" if cm.get("reason") else "")
            return (f"ready: stream {ev.stream_id}, {emb.get('name')} on {emb.get('device')}, "
                    f"{ev.index.get('enrolled_speakers')} enrolled speaker(s), accept >= "
                    f"{_score(th.get('accept'))}{claim}{cm_text}")
        if isinstance(ev, Reconnected):
            s.speaker, s.score, s.verdict, s.verify_score = None, None, "undecided", None
            return f"reconnected as stream {ev.stream_id} after {ev.attempt} failure(s): {ev.reason}"
        if isinstance(ev, SpeechStart):
            return f"{t}speech start"
        if isinstance(ev, SpeechEnd):
            return f"{t}speech end ({ev.duration:.2f} s)"
        if isinstance(ev, Identity):
            s.speaker = ev.current
            s.score = next((x["score"] for x in ev.top if x["speaker"] == s.speaker), None) if s.speaker else None
            window = f"window {ev.speaker or '-'} {_score(ev.score)}"
            return f"{t}{self.status(s)}   [{window}]"
        if isinstance(ev, Verification):
            s.claim = ev.claimed_speaker
            s.verdict = ev.decision
            s.verify_score = ev.session.get("score")
            return (f"{t}verify {ev.claimed_speaker}: {ev.decision} (mean {_score(s.verify_score)} over "
                    f"{ev.session.get('windows')} window(s), threshold {_score(ev.threshold)}; "
                    f"this window {_score(ev.window.get('score'))} {ev.window.get('decision')})")
        if isinstance(ev, CloneSuspicion):
            sess = ev.session or {}
            s.clone_level, s.clone_score = sess.get("level", ev.level), ev.score
            who = f" of {ev.speaker}" if ev.speaker else ""
            llr = sess.get("llr")
            check = ev.raw.get("check")
            if check:
                cms = sess.get("countermeasure") or {}
                return (f"{t}clone suspicion{who}: session {sess.get('level', '-')}; countermeasure check "
                        f"{check['start']:.1f}-{check['end']:.1f}s: {check['level']} (LLR {check['llr']:+.2f}; "
                        f"session CUSUM {'-' if cms.get('llr') is None else format(cms['llr'], '.2f')})")
            return (f"{t}clone suspicion{who}: session {sess.get('level', '-')} (LLR "
                    f"{'-' if llr is None else f'{llr:.2f}'}); this window {ev.level} ({_score(ev.score)})")
        if isinstance(ev, Warning):
            return f"{t}warning {ev.code}: {ev.message}"
        if isinstance(ev, Summary):
            return self.summary(ev)
        return None

    @staticmethod
    def summary(ev: Summary) -> str:
        w = ev.windows
        lines = [f"summary ({'stopped' if ev.reason == 'stop' else 'server shut down'}): {ev.duration:.2f} s of "
                 f"audio, {ev.speech_duration:.2f} s speech ({100 * ev.speech_ratio:.0f}%), {w.get('scored')} "
                 f"window(s) scored, {w.get('dropped')} dropped"]
        if ev.channels:
            for part in ev.channels:
                name = f" ({part['name']})" if part.get("name") else ""
                lines.append(f" channel {part['channel']}{name}:")
                lines += LiveView._track(part["identity"], part["verification"], part["clone"], "    ")
        else:
            lines += LiveView._track(ev.identity, ev.verification, ev.clone, "  ")
        return "\n".join(lines)

    @staticmethod
    def _track(ident: dict, v: dict | None, c: dict, pad: str) -> list[str]:
        dec = ident.get("decision") or {}
        who = ident.get("speaker") or f"nobody enrolled (closest: {ident.get('best') or '-'})"
        lines = [f"{pad}speaker: {who}, session LLR {_score(ident.get('llr'))} (threshold "
                 f"{_score(ident.get('threshold_llr'))}); last decision {dec.get('speaker') or 'nobody'}, "
                 f"{dec.get('changes', 0)} change(s)"]
        if v:
            lines.append(f"{pad}claim {v['claimed_speaker']}: {v['decision'].upper()} (session LLR "
                         f"{_score(v.get('llr'))} over {v.get('windows')} window(s), threshold "
                         f"{_score(v.get('threshold_llr'))}; {v.get('calibration') or 'uncalibrated'})")
        llr = c.get("llr")
        lines.append(f"{pad}clone suspicion: {c.get('level', c.get('max_level'))} (session LLR "
                     f"{'-' if llr is None else f'{llr:.2f}'}, highest {c.get('max_level')}, "
                     f"{c.get('suspicious_windows')} suspicious window(s))")
        cm = c.get("countermeasure")
        if cm:
            cov = cm.get("coverage")
            lines.append(f"{pad}countermeasure {cm.get('calibration')}: {cm.get('level')} (CUSUM "
                         f"{'-' if cm.get('llr') is None else format(cm['llr'], '.2f')}, highest {cm.get('max_level')}), "
                         f"{cm.get('checks')} check(s), {cm.get('skipped')} skipped, covered "
                         f"{'-' if cov is None else f'{100 * cov:.0f}%'} of {cm.get('voiced_s', 0):.1f} s of voice"
                         + (f"; {cm['verdict']}" if cm.get("verdict") else ""))
        return lines
