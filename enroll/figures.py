"""Calibration figures (matplotlib, Agg): score distributions with thresholds, a t-SNE
map of chosen speakers and their clones, and a DET curve.  Each is written as PNG and SVG.

Files are written to a temporary name and renamed, so a folder never holds half a figure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import VoxguardError
from ..store import EmbeddingTable
from .calibration import CalibrationResult, TrialScores

FORMATS = ("png", "svg")
DEFAULT_TSNE_SPEAKERS = 11


class FigureError(VoxguardError):
    """Figures cannot be written (e.g. the output folder is not writable)."""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_output_dir(out: str | Path) -> Path:
    """Create ``out`` if needed and make sure files can be written there."""
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".voxguard-write-test-"):
            pass
    except OSError as e:
        raise FigureError(f"cannot write figures to {out}: {e.strerror or e}") from None
    return out


def save_figure(fig, out: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` atomically; returns the paths."""
    paths = []
    try:
        for fmt in FORMATS:
            path = out / f"{stem}.{fmt}"
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".{fmt}", dir=out)
            try:
                with os.fdopen(fd, "wb") as f:
                    fig.savefig(f, format=fmt, dpi=130, bbox_inches="tight")
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            paths.append(path)
    except OSError as e:
        raise FigureError(f"cannot write figure {stem} to {out}: {e.strerror or e}") from None
    finally:
        _plt().close(fig)
    return paths


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def distributions_figure(trials: TrialScores, thresholds: dict, title: str = ""):
    """The three score distributions (histogram + KDE) with labelled threshold lines."""
    from scipy.stats import gaussian_kde

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5))
    sets = [("same speaker", trials.same, "tab:green"), ("different speakers", trials.different, "tab:red"),
            ("genuine vs clone", trials.clone, "tab:purple")]
    allv = np.concatenate([v for _, v, _ in sets if len(v)])
    grid = np.linspace(allv.min(), allv.max(), 400)
    bins = np.linspace(allv.min(), allv.max(), 60)
    for label, v, color in sets:
        if len(v) == 0:
            continue
        ax.hist(v, bins=bins, density=True, alpha=0.3, color=color, label=f"{label} (n={len(v)})")
        if len(v) > 2 and np.std(v) > 0:
            ax.plot(grid, gaussian_kde(v)(grid), color=color, lw=2)
    lines = [("eer_threshold", f"EER {_pct(thresholds['eer'])}", "black", "--"),
             ("far_threshold", f"FAR {_pct(thresholds['far_at_far_threshold'])} / "
                               f"FRR {_pct(thresholds['frr_at_far_threshold'])}", "tab:blue", "-")]
    if thresholds.get("clone_upper") is not None:
        lines.append(("clone_upper", f"clone accept {_pct(thresholds['clone_accept_at_clone_upper'])} / "
                                     f"FRR {_pct(thresholds['genuine_frr_at_clone_upper'])}", "tab:purple", ":"))
    for key, text, color, style in lines:
        x = thresholds[key]
        ax.axvline(x, color=color, ls=style, lw=1.5, label=f"{key} = {x:.3f}: {text}")
    ax.set_xlabel(f"score ({thresholds['backend']})")
    ax.set_ylabel("density")
    ax.set_title(title or "Score distributions: utterance vs speaker model")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def det_figure(curves: dict[str, TrialScores]):
    """DET curves (false-reject vs false-accept, normal-deviate axes) per backend."""
    from scipy.stats import norm
    from sklearn.metrics import det_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6))
    ticks = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4]
    for name, t in curves.items():
        y = np.r_[np.ones(len(t.same)), np.zeros(len(t.different))]
        fpr, fnr, _ = det_curve(y, np.r_[t.same, t.different])
        eps = 1e-4
        ax.plot(norm.ppf(np.clip(fpr, eps, 1 - eps)), norm.ppf(np.clip(fnr, eps, 1 - eps)), lw=2, label=name)
    tk = norm.ppf(ticks)
    ax.set_xticks(tk, [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(tk, [f"{100 * t:g}" for t in ticks])
    ax.set_xlim(tk[0], tk[-1])
    ax.set_ylim(tk[0], tk[-1])
    ax.plot(tk, tk, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("false-accept rate (%)")
    ax.set_ylabel("false-reject rate (%)")
    ax.set_title("DET: same vs different speaker")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def pick_speakers(names: list[str], n: int, seed: int) -> list[str]:
    names = sorted(set(names))
    if n >= len(names):
        return names
    return sorted(np.random.default_rng(seed).choice(names, n, replace=False).tolist())


def vivid_palette(n: int) -> list:
    """``n`` saturated colours: tab10, then Set1 and Dark2 (no pale shades: pale means clone)."""
    plt = _plt()
    colors = [plt.get_cmap(name)(i) for name, k in (("tab10", 10), ("Set1", 9), ("Dark2", 8)) for i in range(k)]
    if n > len(colors):
        colors += [plt.get_cmap("hsv")(i / (n - len(colors))) for i in range(n - len(colors))]
    return colors[:n]


def tsne_figure(table: EmbeddingTable, speakers: list[str], seed: int = 0, transform=None):
    """t-SNE of ``speakers``' genuine samples (vivid hue each) and their clones (same hue, paler)."""
    from matplotlib.colors import to_rgb
    from sklearn.manifold import TSNE

    plt = _plt()
    spk = np.asarray(table.speakers)
    kinds = np.asarray(table.kinds)
    sel = np.isin(spk, speakers)
    x = table.vectors[sel]
    if transform is not None:
        x = transform(x)
    if len(x) < 3:
        raise FigureError("t-SNE needs at least 3 samples of the chosen speakers")
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    palette = vivid_palette(len(speakers))
    fig, ax = plt.subplots(figsize=(8, 7))
    s_sel, k_sel = spk[sel], kinds[sel]
    handles = []
    for i, name in enumerate(speakers):
        color = np.array(to_rgb(palette[i]))
        g = (s_sel == name) & (k_sel == "genuine")
        c = (s_sel == name) & (k_sel == "clone")
        h = ax.scatter(xy[g, 0], xy[g, 1], color=color, s=36, marker="o", edgecolor="black", lw=0.4, label=name)
        handles.append(h)
        if c.any():
            pale = color + (1 - color) * 0.55
            ax.scatter(xy[c, 0], xy[c, 1], color=pale, s=46, marker="^", alpha=0.8, edgecolor=color, lw=0.8)
    if (k_sel == "clone").any():
        handles.append(ax.scatter([], [], color="lightgrey", marker="^", s=46, edgecolor="grey", label="clones (paler)"))
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), title="speaker")
    ax.set_title(f"t-SNE of {len(speakers)} speakers' utterance embeddings")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def write_calibration_figures(out: str | Path, result: CalibrationResult, table: EmbeddingTable,
                              tsne_speakers: int = DEFAULT_TSNE_SPEAKERS, seed: int = 0) -> dict[str, list[str]]:
    """Write the distributions, t-SNE and DET figures for ``result`` into ``out``."""
    out = check_output_dir(out)
    figures: dict[str, list[str]] = {}
    th = result.thresholds
    fig = distributions_figure(result.trials, th, f"Score distributions ({th['backend']}, cross-fitted)")
    figures["distributions"] = [str(p) for p in save_figure(fig, out, "distributions")]
    if th["backend"] != "cosine":
        cos_th = {"backend": "cosine", **_cosine_thresholds(result)}
        fig = distributions_figure(result.cosine_trials, cos_th, "Score distributions (raw cosine)")
        figures["distributions_cosine"] = [str(p) for p in save_figure(fig, out, "distributions_cosine")]
    genuine = [s for s, k in zip(table.speakers, table.kinds) if k == "genuine"]
    chosen = pick_speakers(genuine, tsne_speakers, seed)
    fig = tsne_figure(table, chosen, seed)
    figures["tsne"] = [str(p) for p in save_figure(fig, out, "tsne")]
    curves = {"cosine": result.cosine_trials}
    if th["backend"] != "cosine":
        curves[th["backend"]] = result.trials
    figures["det"] = [str(p) for p in save_figure(det_figure(curves), out, "det")]
    figures["tsne_speakers"] = chosen
    return figures


def _cosine_thresholds(result: CalibrationResult) -> dict:
    from .calibration import CalibrationConfig, derive_thresholds

    far = result.thresholds["far_target"]
    return derive_thresholds(result.cosine_trials, CalibrationConfig(backend="cosine", far_target=far), "cosine")
