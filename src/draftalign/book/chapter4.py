"""Chapter 4's and Appendix A's glue: the tables and the prose each builds from its run.

The measurements are the library's (:mod:`draftalign.evaluate`, :mod:`draftalign.compare`,
:mod:`draftalign.distill_measures`); this module only shapes their results for the page,
so that a reader of the notebook sees the calls that matter and not the sentence
building. Reads nothing from disk but what its callers pass; writes nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics

__all__ = ["training_table", "verdict_markdown", "speed_reading", "acceptance_for_tau", "budget_reading",
           "takeaways", "reference_comparison", "study_histories", "study_curve_figure"]


def training_table(runs: dict) -> pd.DataFrame:
    """One row per trained draft (``runs``: ``{(loss, seed): (draft, history, manifest)}``):
    answer tokens seen, training seconds, final held-out TVD and top-1."""
    table = pd.DataFrame({f"{loss}, seed {seed}": {
        "answer tokens seen": m["inputs"]["answer_tokens_seen"], "training seconds": m["results"]["train_seconds"],
        "held-out TVD": m["results"]["final_eval_tvd"], "held-out top-1": m["results"]["final_eval_top1"]}
        for (loss, seed), (_, _, m) in runs.items()}).T
    table["answer tokens seen"] = table["answer tokens seen"].astype(int)
    return table


def verdict_markdown(verdicts: dict[str, list[str]]) -> str:
    """One bullet per prompt set, its verdict sentences (:func:`draftalign.compare.verdict`)."""
    return "\n".join(f"- **{name}.** " + " ".join(f"{v[0].upper()}{v[1:]}." for v in lines)
                     for name, lines in verdicts.items())


def speed_reading(speed: pd.DataFrame, draft_name: str) -> str:
    """What the timed comparison of plain and speculative decoding says (the last row of
    :func:`draftalign.timing.compare_decoders`' table, with a ``speed-up`` column)."""
    row = speed.iloc[-1]
    if row["speed-up"] < 1:
        return (f"Here speculative decoding with the {draft_name} draft is slower than plain decoding "
                f"(speed-up {row['speed-up']:.2f} at tau {row['tau']:.2f}): the draft steps cost more than the "
                "target calls they save. A draft pays off only once its acceptance is high enough to outrun its "
                "cost on the machine at hand (Chapter 5 maps where).")
    return (f"Here speculative decoding with the {draft_name} draft is faster than plain decoding "
            f"(speed-up {row['speed-up']:.2f} at tau {row['tau']:.2f}), by less than MBSU predicts: the draft's "
            "real cost on this machine is above its parameter ratio.")


def acceptance_for_tau(tau: float, gamma: int, *, grid: int = 10_001) -> float:
    """The smallest per-token acceptance whose E[tau] (book eq. tau-iid) reaches ``tau``."""
    alphas = np.linspace(0, 1, grid)
    return float(alphas[np.argmax([metrics.expected_tau(a, gamma) >= tau for a in alphas])])


def budget_reading(trained: pd.DataFrame, train_answer_tokens: int, best_agreement: float, best_loss: str,
                   gamma: int) -> str:
    """The "how to read it" list under the verdict: the budget the drafts had, and what
    TVD++ against TVD, RKL under the cached target and the paper's numbers mean here."""
    seen = trained["answer tokens seen"].max()
    needed = acceptance_for_tau(2.0, gamma)
    budget = (f"- **Budget.** Each draft saw {seen:,.0f} answer tokens, {seen / train_answer_tokens:.1f} passes over "
              f"the {train_answer_tokens:,} answer tokens of the training split, in at most "
              f"{trained['training seconds'].max():.0f} s of training; the dataset is itself tiny next to the "
              f"paper's. At this budget every draft stays weak: the best held-out greedy agreement "
              f"({best_loss}) is {best_agreement:.3f}, below the {needed:.3f} that $\\tau = 2$ needs at "
              f"$\\gamma = {gamma}$ (eq. tau-iid).")
    return "How to read it:\n\n" + budget + "\n" + r'''
- **TVD++ versus TVD.** With the full distributions at hand, the policy-gradient view
  adds no variance reduction to an estimator that has no variance; what TVD++ can change
  is the *weighting* of positions (each position's gradient divided by its $\sigma_t$).
  The verdict says whether that helped here, at each temperature.
- **RKL and the cached target.** RKL weighs the target's tail by the draft's mass, and
  the cache replaces that tail by a flat one (Appendix A compares the two); a poor RKL
  result with the cached target is therefore no verdict on RKL itself. The loss study
  below measures how far the cached target's verdict is from the exact one's.
- **The paper's numbers.** $\tau \approx 2$ at $\gamma = 4$ needs a per-token acceptance
  far above what a few minutes of CPU distillation gives; Appendix A sets an $n$-gram table
  built from the same answers beside the drafts as a yardstick.
'''


def takeaways(*, policy_gap: float, reinforce: pd.Series, no_baseline: float, with_baseline: float,
              cosine: float, verdict_lines: list[str], best: str, speed_up: float, reference_tau: float) -> str:
    """The chapter's key takeaways as a bullet list, every number from the run."""
    bullets = [
        f"$1 - \\mathrm{{TVD}}$ is the acceptance probability of a sampled draft token, and TVD's gradient is a "
        f"policy gradient with reward $r = \\mathbf 1[p > q]$ and objective $\\mathbb E_{{x\\sim q}}[r(x)]$ "
        f"(autograd agrees with that form to {policy_gap:.0e}).",
        f"With the full distributions, the exact gradient has no variance; REINFORCE with 4 samples per position "
        f"has a relative variance of {reinforce.min():.2f} to {reinforce.max():.2f} on the same batch; a baseline "
        + (f"lowers it from {no_baseline:.2f} to {with_baseline:.2f}." if with_baseline < no_baseline - 0.005
           else f"does not lower it here ({no_baseline:.2f} to {with_baseline:.2f})."),
        f"TVD++ as implemented here changes TVD's gradient only by weighting positions (each divided by its "
        f"$\\sigma_t$): the cosine between the two gradients on a batch of real answers is {cosine:.3f}.",
        "A loss is judged on what it optimises: TVD and TVD++ on the acceptance of speculative sampling, every "
        "loss also on greedy $\\tau$; the verdict of this run, with intervals over prompts and seeds: "
        + " ".join(f"{v[0].upper()}{v[1:]}." for v in verdict_lines),
        f"On this machine the best distilled draft for greedy decoding ({best}) gives a wall-clock speed-up of "
        f"{speed_up:.2f} over plain greedy decoding; the reference drafter, trained far longer on far more answers, "
        f"reaches a greedy $\\tau$ of {reference_tau:.2f} on the same held-out prompts.",
    ]
    return "\n".join(f"- {b}" for b in bullets)


def reference_comparison(*, n_reference: int, n_pretrained: int, n_distilled: int, shares_pretraining: bool,
                         reference_train_tokens: int, reference_seen: int, train_answer_tokens: int,
                         seen: int) -> str:
    """How the reference drafter differs from the profile's distilled drafts."""
    if shares_pretraining and n_reference == n_pretrained:
        body = ("The reference drafter shares the body of Chapter 4's drafts (the same width and layers) and "
                "starts from the same pretrained weights; it keeps the full-vocabulary output layer, like the "
                f"pretrained draft ({n_reference:,} parameters"
                + (f", against {n_distilled:,} for the distilled drafts with the sub-vocabulary head). "
                   if n_distilled != n_reference else "). "))
    else:
        body = (f"The reference drafter has {n_reference:,} parameters, this profile's pretrained draft "
                f"{n_pretrained:,}: this profile pretrains a draft of its own, while the `cpu` and `colab` profiles "
                "start from the reference drafter's pretraining stage (the same width, layers and weights). ")
    return (body + f"What differs is the data and the training: {reference_train_tokens / train_answer_tokens:,.0f} "
            f"times as many training answer tokens as this profile's training split, and "
            f"{reference_seen / seen:,.0f} times as many answer tokens seen in training as each distilled draft. "
            "Its model card (`README.md` in its folder) holds its $\\tau$ for every $\\gamma$ on all 72 evaluation "
            "prompts and the 80 MT-Bench questions and its wall clock against plain decoding; Chapter 5 analyses it.")


def study_histories(study: dict, mode: str = "offline") -> dict[tuple[str, int], pd.DataFrame]:
    """The held-out curves of the loss study's runs of one ``mode`` (``offline`` or
    ``onpolicy``; ``data/results/loss_study.json``'s ``curves``) as ``{(loss, seed): history}``
    with ``step``, ``eval_tvd`` and ``eval_top1``, the form :func:`draftalign.compare.flattening`
    reads."""
    found = {}
    for key, curve in study.get("curves", {}).items():
        run_mode, _, name = key.partition("/")
        loss, _, seed = name.rpartition("-s")
        if run_mode != mode or not seed.isdigit():
            continue
        found[(loss if mode == "offline" else f"{loss} on-policy", int(seed))] = pd.DataFrame(
            {"step": curve["step"], "eval_tvd": curve["eval_tvd"], "eval_top1": curve["eval_top1"]})
    return found


def study_curve_figure(study: dict):
    """Two panels sharing the step axis: the held-out TVD (1 - acceptance at T = 1) and
    top-1 agreement of every run of the loss study, one colour per loss, one line per seed;
    on-policy runs dashed."""
    import matplotlib.pyplot as plt

    from .display import draft_colors

    runs = {**study_histories(study, "offline"), **study_histories(study, "onpolicy")}
    colors = draft_colors(dict.fromkeys(loss.removesuffix(" on-policy") for loss, _ in runs))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    labelled = set()
    for (loss, _), h in runs.items():
        base = loss.removesuffix(" on-policy")
        kw = {"color": colors[base], "lw": 1.2, "alpha": 0.85, "ls": "--" if loss != base else "-",
              "label": None if loss in labelled else loss}
        labelled.add(loss)
        ax[0].plot(h.step, h.eval_tvd, "o", ms=2.5, **kw)
        ax[1].plot(h.step, h.eval_top1, "o", ms=2.5, **{**kw, "label": None})
    ax[0].set(xlabel="step", ylabel="held-out TVD", title="1 - acceptance at T = 1")
    ax[1].set(xlabel="step", ylabel="held-out top-1", title="greedy acceptance")
    for a in ax:
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
