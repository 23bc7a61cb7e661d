"""Chapter 4's figures: the training runs of every loss and seed, and the loss verdict.

Reads training histories (:func:`draftalign.train.train`) and acceptance reports
(:func:`draftalign.evaluate.acceptance_report`); draws with matplotlib and returns the
figure; writes nothing. Every loss keeps its colour (:mod:`draftalign.display`).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..compare import seed_summary
from .display import draft_colors

__all__ = ["MEASURES", "training_curves", "verdict_figure"]

# what the verdict shows: (metric, temperature, label)
MEASURES = (("alpha", 1.0, "alpha at T = 1"), ("alpha", 0.7, "alpha at T = 0.7"),
            ("expected_tau", 0.0, "greedy tau"))


def training_curves(histories: dict[tuple[str, int], pd.DataFrame], *, smooth: int = 10):
    """Three panels sharing the step axis, one colour per loss and one line per seed: the
    TVD of each training batch (mean of ``smooth`` steps; on one scale whatever the loss),
    the held-out TVD and the held-out top-1 agreement. ``histories``: ``{(loss, seed): history}``."""
    colors = draft_colors(dict.fromkeys(loss for loss, _ in histories))
    fig, ax = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    labelled = set()
    for (loss, seed), h in histories.items():
        kw = {"color": colors[loss], "alpha": 0.85, "lw": 1.2, "label": None if loss in labelled else loss}
        labelled.add(loss)
        ax[0].plot(h.step, h.tvd.rolling(smooth, min_periods=1).mean(), **kw)
        ev = h.dropna(subset=["eval_tvd"])
        ax[1].plot(ev.step, ev.eval_tvd, "o-", ms=3, **{**kw, "label": None})
        ax[2].plot(ev.step, ev.eval_top1, "o-", ms=3, **{**kw, "label": None})
    ax[0].set(ylabel=f"TVD (mean of {smooth})", title="Training batches: TVD")
    ax[1].set(ylabel="TVD, held-out", title="Held-out answers: 1 - expected acceptance at T = 1")
    ax[2].set(xlabel="step", ylabel="top-1 agreement", title="Held-out answers: greedy acceptance")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].legend(ncol=len(labelled), fontsize=9)
    fig.tight_layout()
    return fig


def verdict_figure(reports: dict[str, pd.DataFrame], groups: dict[str, list[str]], *, measures=MEASURES,
                   n_boot: int = 1000):
    """One panel per measure (``(metric, temperature, label)``), one row of panels per
    prompt set (``reports``: ``{set name: report}``): each group's mean over its seeds with
    its 95% interval over prompts and seeds (bar), and each seed's own value (dots)."""
    names = list(groups)
    colors = draft_colors(names)
    fig, axes = plt.subplots(len(reports), len(measures), figsize=(3.1 * len(measures), 2.9 * len(reports)),
                             squeeze=False)
    for row, (set_name, report) in enumerate(reports.items()):
        for col, (metric, temp, label) in enumerate(measures):
            ax = axes[row, col]
            s = seed_summary(report, groups, temperatures=[temp], metrics=(metric,), n_boot=n_boot).set_index("group")
            per_draft = report[report.temperature == temp].set_index("draft")[metric]
            for i, name in enumerate(names):
                mean, lo, hi = s.loc[name, [metric, f"{metric}_lo", f"{metric}_hi"]]
                ax.errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="s", color=colors[name], ms=6,
                            capsize=4, lw=1.6)
                seeds = per_draft.reindex(groups[name]).to_numpy(float)
                ax.plot(i + np.linspace(-0.18, 0.18, len(seeds)) if len(seeds) > 1 else [i], seeds, "o",
                        color=colors[name], ms=3, alpha=0.6, mfc="none")
            ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.set_title(f"{set_name}: {label}", fontsize=9)
    fig.tight_layout()
    return fig
