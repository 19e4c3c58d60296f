"""Trials of every type a decision is made on, among one group of speakers.

For one band's genuine samples (utterance embeddings and their window embeddings) and a
scoring backend, :func:`band_trials` returns target and non-target scores of:

* ``utterance`` — an utterance against its own speaker's model built without it
  (leave-one-out), and against every other speaker's model; also split by the utterance's
  number of windows (``utterance@<n>``: at least ``n`` windows, fewer than the next bin of
  :data:`UTTERANCE_WINDOW_BINS`), because a longer recording gives more extreme scores in
  both directions and one threshold cannot suit a 1 s answer and a 10 s sentence;
* ``window`` — each window of an utterance against the same models (its own speaker's
  model built without the window's utterance);
* ``session`` — for each window count ``n`` of :data:`SESSION_WINDOWS`, the mean of ``n``
  consecutive window scores of one speaker (utterances in random order, so a session
  spans several recordings as a call does), against the own and the other models;
* ``pair`` — one utterance against another (every same-speaker pair, a sample of
  different-speaker pairs).

Speaker models are the normalised mean of a speaker's utterance embeddings, as in the
index.  The caller scores a group with a backend that never saw it (cross-fitting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import ScoreBackend
from ..embedders.base import l2_normalise

SESSION_WINDOWS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
UTTERANCE_WINDOW_BINS = (1, 2, 3, 4, 6, 9)  # lower edges, in windows (1.5 s every 0.5 s)
SESSIONS_PER_SPEAKER = 24  # random session starts per speaker and window count
MAX_DIFFERENT_PAIRS = 5000  # per group (x folds x bands: enough for a 1 % operating point)


@dataclass
class BandSamples:
    """Genuine samples of one band: utterance embeddings, speakers, and (optionally) the
    window embeddings of each utterance."""

    utt: np.ndarray  # [n, d]
    spk: np.ndarray  # [n] speaker names
    windows: list[np.ndarray] | None = None  # [n_windows_i, d] per utterance

    def select(self, mask: np.ndarray) -> "BandSamples":
        rows = np.flatnonzero(mask)
        return BandSamples(self.utt[rows], self.spk[rows],
                           None if self.windows is None else [self.windows[i] for i in rows])


Trials = dict[str, tuple[np.ndarray, np.ndarray]]  # trial type (session: "session:<n>") -> (targets, non-targets)


def _models(utt: np.ndarray, spk: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    names, own = np.unique(spk, return_inverse=True)
    sums = np.zeros((len(names), utt.shape[1]), dtype=np.float64)
    np.add.at(sums, own, utt)
    return [str(n) for n in names], own, sums, l2_normalise(sums)


def band_trials(backend: ScoreBackend, data: BandSamples, rng: np.random.Generator,
                pairs: bool = True) -> Trials:
    """Every trial type among the speakers of ``data`` (see the module docstring)."""
    names, own, sums, models = _models(data.utt, data.spk)
    counts = np.bincount(own, minlength=len(names))
    out: Trials = {}
    # utterance vs model
    full = backend.score(data.utt, models, names)
    other = np.ones_like(full, dtype=bool)
    other[np.arange(len(own)), own] = False
    ok = counts[own] >= 2
    loo = l2_normalise(sums[own] - data.utt)  # each utterance's own model without it
    same = backend.score_pairs(data.utt[ok], loo[ok], [names[i] for i in own[ok]])
    out["utterance"] = (same, full[other])
    if data.windows is not None:
        n_win = np.array([len(w) for w in data.windows])
        edges = list(UTTERANCE_WINDOW_BINS) + [np.inf]
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows = (n_win >= lo) & (n_win < hi)
            out[f"utterance@{lo}"] = (same[rows[ok]], full[rows][other[rows]])
    # windows vs model, and sessions of consecutive windows
    if data.windows is not None and len(data.windows):
        w_utt = np.concatenate([np.full(len(w), i) for i, w in enumerate(data.windows)])
        w = np.concatenate(data.windows).astype(np.float32)
        w_own = own[w_utt]
        wfull = backend.score(w, models, names)  # [n_windows, n_models]
        wok = counts[w_own] >= 2
        wtar = np.full(len(w), np.nan)
        wtar[wok] = backend.score_pairs(w[wok], loo[w_utt[wok]], [names[i] for i in w_own[wok]])
        wother = np.ones_like(wfull, dtype=bool)
        wother[np.arange(len(w)), w_own] = False
        out["window"] = (wtar[wok], wfull[wother])
        for n, (tar, non) in session_trials(wfull, wtar, w_utt, own, rng).items():
            out[f"session:{n}"] = (tar, non)
    if pairs:
        out["pair"] = pair_trials(backend, data, own, rng)
    return out


def session_trials(wfull: np.ndarray, wtar: np.ndarray, w_utt: np.ndarray, own: np.ndarray,
                   rng: np.random.Generator) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Mean window scores of sessions of ``n`` consecutive windows of one speaker."""
    out: dict[int, tuple[list, list]] = {n: ([], []) for n in SESSION_WINDOWS}
    w_own = own[w_utt]
    for s in np.unique(own):
        utts = rng.permutation(np.unique(w_utt[w_own == s]))
        seq = np.concatenate([np.flatnonzero(w_utt == u) for u in utts])
        if np.isnan(wtar[seq]).any():
            continue  # a speaker with a single utterance has no leave-one-out model
        others = np.flatnonzero(np.arange(wfull.shape[1]) != s)
        for n in SESSION_WINDOWS:
            if len(seq) < n:
                continue
            starts = rng.choice(len(seq) - n + 1, size=min(SESSIONS_PER_SPEAKER, len(seq) - n + 1), replace=False)
            for st in starts:
                span = seq[st: st + n]
                out[n][0].append(wtar[span].mean())
                out[n][1].extend(wfull[np.ix_(span, others)].mean(axis=0).tolist())
    return {n: (np.asarray(t), np.asarray(x)) for n, (t, x) in out.items() if len(t) >= 2 and len(x) >= 2}


def pair_trials(backend: ScoreBackend, data: BandSamples, own: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Utterance-vs-utterance scores: every same-speaker pair, sampled different-speaker pairs."""
    n = len(own)
    iu, ju = np.triu_indices(n, 1)
    same = own[iu] == own[ju]
    di, dj = iu[~same], ju[~same]
    if len(di) > MAX_DIFFERENT_PAIRS:
        pick = rng.choice(len(di), MAX_DIFFERENT_PAIRS, replace=False)
        di, dj = di[pick], dj[pick]
    full = backend.pair_matrix(data.utt)
    return np.asarray(full[iu[same], ju[same]], np.float64), np.asarray(full[di, dj], np.float64)


def merge_trials(parts: list[Trials]) -> Trials:
    keys = sorted({k for p in parts for k in p})
    return {k: (np.concatenate([p[k][0] for p in parts if k in p]),
                np.concatenate([p[k][1] for p in parts if k in p])) for k in keys}
