"""Schematic figures for the book: one speculative block, the book's pipeline, a KV cache.

Reads and writes nothing: each function draws boxes and arrows with matplotlib and returns
the Figure (drawn into ``ax`` when one is given). Chapter 1 shows all three. Token colours
match :mod:`draftalign.display`'s HTML rendering of real generations, so the schematic and
the coloured blocks of an actual run read the same way. Every coloured box carries its kind
as its ``gid`` (``"accepted"``, ``"cached"``...), which the tests count.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

__all__ = ["TOKEN_COLORS", "CACHE_COLORS", "draw_block", "draw_pipeline", "draw_kv_cache"]

# The backgrounds of display._STYLE (discarded drafts have none there: grey text, struck out).
TOKEN_COLORS = {
    "accepted": "#c8f0c8",  # green
    "rejected": "#f6c6c6",  # red
    "correction": "#ffd9a0",  # orange
    "bonus": "#bcd8ff",  # blue
    "discarded": "#e8e8e8",  # grey
}
TOKEN_LABELS = {
    "accepted": "draft accepted",
    "rejected": "draft rejected",
    "discarded": "draft after a rejection (never checked)",
    "correction": "target's token after a rejection",
    "bonus": "target's bonus token",
}
CACHE_COLORS = {
    "cached": "#d9e4f0",  # stored keys/values: read, not recomputed
    "new": "#ffe9a8",  # keys/values computed in this pass
    "cropped": "#f2f2f2",  # removed from the cache by the rollback
}
FONT = 10  # readable at the book's width with figures about 10 inches wide


def _axes(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    ax.set_axis_off()
    return ax.figure, ax


def _box(ax, x, y, w, h, text, *, kind=None, color="white", fontsize=FONT, edge="#555555",
         textcolor="black", hatch=None, **text_kw):
    """A rounded box centred on (x, y) with ``text`` in it; ``kind`` becomes its gid."""
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                           facecolor=color, edgecolor=edge, linewidth=1.0, hatch=hatch)
    patch.set_gid(kind)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=textcolor, **text_kw)
    return patch


def _arrow(ax, start, end, *, text=None, color="#444444", rad=0.0, fontsize=FONT, offset=(0, 0.12)):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=color,
                                 linewidth=1.2, connectionstyle=f"arc3,rad={rad}"))
    if text:
        mx, my = (start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1]
        ax.text(mx, my, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def draw_block(gamma: int = 4, accepted: int = 2, *, ax=None):
    """One draft-then-verify block with ``gamma`` drafts of which the first ``accepted``
    survive: the draft's ``gamma`` passes, the target's single pass over ``gamma + 1``
    positions, and the outcome (accepted, rejected, correction or bonus, discarded)."""
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma (the number of drafted tokens) must be an integer >= 1, got {gamma!r}")
    if int(accepted) != accepted or not 0 <= accepted <= gamma:
        raise ValueError(f"accepted must be an integer between 0 and gamma = {gamma}, got {accepted!r}")
    gamma, accepted = int(gamma), int(accepted)
    fig, ax = _axes(ax, (10, 4.6))
    w, h = 0.82, 0.5
    cols = [1.6 + i for i in range(gamma + 1)]  # x of positions 1 .. gamma + 1
    y_draft, y_target, y_out, y_fix = 3.0, 1.9, 0.85, -0.15

    ax.text(0.1, y_draft + 0.6, f"1. The draft proposes: $\\gamma$ = {gamma} cheap passes, one token each",
            fontsize=FONT + 1, ha="left", weight="bold")
    _box(ax, 0.55, y_draft, 0.9, h, "prefix", color="white")
    for i in range(gamma):
        _box(ax, cols[i], y_draft, w, h, f"$x_{{{i + 1}}} \\sim q_{{{i + 1}}}$", color="white")
        start = (0.55 + 0.45, y_draft) if i == 0 else (cols[i - 1] + w / 2, y_draft)
        _arrow(ax, start, (cols[i] - w / 2, y_draft))

    ax.text(0.1, y_target + 0.5, "2. The target scores all $\\gamma$ + 1 positions in ONE pass",
            fontsize=FONT + 1, ha="left", weight="bold")
    span = cols[-1] + w / 2 - 0.1
    _box(ax, span / 2 + 0.05, y_target, span, h,
         f"target: one pass over prefix + {gamma} drafts  ->  "
         f"$p_1, \\dots, p_{{{gamma + 1}}}$", color="#f4f4f4")

    ax.text(0.1, y_out + 0.5, "3. Accept $x_i$ with probability min(1, $p_i(x_i) / q_i(x_i)$), in order",
            fontsize=FONT + 1, ha="left", weight="bold")
    for i in range(gamma):
        kind = "accepted" if i < accepted else "rejected" if i == accepted else "discarded"
        mark = {"accepted": " \u2713", "rejected": " \u2717", "discarded": ""}[kind]
        _box(ax, cols[i], y_out, w, h, f"$x_{{{i + 1}}}$" + mark, kind=kind, color=TOKEN_COLORS[kind],
             textcolor="#888888" if kind == "discarded" else "black")
    if accepted == gamma:
        _box(ax, cols[gamma], y_out, w, h, f"$y \\sim p_{{{gamma + 1}}}$", kind="bonus",
             color=TOKEN_COLORS["bonus"])
        note = "all drafts accepted: the target's pass already gives a bonus token"
    else:
        x = cols[accepted]
        _box(ax, x, y_fix, w, h, "$y \\sim p'$", kind="correction", color=TOKEN_COLORS["correction"])
        _arrow(ax, (x, y_out - h / 2), (x, y_fix + h / 2))
        ax.text(x + w / 2 + 0.1, y_fix, "replaced by a sample of the residual norm(max(0, p - q))",
                fontsize=FONT, va="center")
        note = "drafts after the rejected one are discarded"
    ax.text(0.1, y_fix - 0.75,
            f"$\\tau$ = accepted + 1 = {accepted} + 1 = {accepted + 1} tokens for one target call ({note})",
            fontsize=FONT + 1, ha="left")
    kinds = ["accepted", "rejected", "correction", "bonus", "discarded"]
    ax.legend(handles=[Patch(facecolor=TOKEN_COLORS[k], edgecolor="#555555", label=TOKEN_LABELS[k])
                       for k in kinds], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=FONT - 1,
              frameon=False)
    ax.set(xlim=(0, cols[-1] + 0.6), ylim=(y_fix - 1.0, y_draft + 0.9))
    fig.tight_layout()
    return fig


_STAGES = [
    ("1. Pretrain a small draft\non a text corpus, with\nthe target's tokenizer\n(Chapter 2)", (1.3, 2.6)),
    ("2. The chat target answers\ninstruction prompts:\nthe distillation data\n(Chapter 3)", (1.3, 0.6)),
    ("3. Fine-tune the draft by\nknowledge distillation:\nFKL, RKL, TVD, TVD++\n(Chapter 4)", (4.9, 1.6)),
    ("Measure: speculative\ndecoding, $\\tau$, speed-up\n(Chapters 1 and 5)", (8.5, 1.6)),
]


def draw_pipeline(*, ax=None):
    """The book's pipeline: pretrain a draft, collect the target's answers, distil the
    draft on them, measure it by speculative decoding."""
    fig, ax = _axes(ax, (10, 3.6))
    w, h = 2.3, 1.35
    for i, (text, (x, y)) in enumerate(_STAGES):
        color = "#eef5e9" if i < 3 else "#eaf0fb"
        _box(ax, x, y, w, h, text, kind="stage", color=color)
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = (pos for _, pos in _STAGES)
    _arrow(ax, (x1 + w / 2, y1), (x3 - w / 2, y3 + 0.3), text="pretrained draft", offset=(0, 0.2))
    _arrow(ax, (x2 + w / 2, y2), (x3 - w / 2, y3 - 0.3), text="target's answers", offset=(0, -0.45))
    _arrow(ax, (x3 + w / 2, y3), (x4 - w / 2, y4), text="aligned draft")
    ax.set(xlim=(0.1, 9.7), ylim=(-0.25, 3.45))
    fig.tight_layout()
    return fig


def _cache_row(ax, y, kinds, labels, w=0.62, h=0.5, x0=2.3):
    """One row of token cells; returns the x of each cell."""
    xs = [x0 + w / 2 + i * w / 0.88 for i in range(len(kinds))]
    for x, kind, label in zip(xs, kinds, labels):
        _box(ax, x, y, w, h, label, kind=kind, color=CACHE_COLORS[kind],
             hatch="///" if kind == "cropped" else None,
             textcolor="#888888" if kind == "cropped" else "black")
    return xs


def _brace(ax, x_from, x_to, y, text, color="#333333"):
    ax.plot([x_from, x_from, x_to, x_to], [y - 0.08, y, y, y - 0.08], color=color, lw=1)
    if x_to - x_from > 0.11 * len(text):  # wide enough: centred, else from its left end
        ax.text((x_from + x_to) / 2, y + 0.05, text, ha="center", va="bottom", fontsize=FONT, color=color)
    else:
        ax.text(x_from, y + 0.05, text, ha="left", va="bottom", fontsize=FONT, color=color)


def draw_kv_cache(prefix: int = 5, new: int = 3, *, accepted: int | None = None, ax=None):
    """What a KV cache does, in three rows: a plain decoding step (1 new token), a
    verification pass (``new`` = gamma + 1 new tokens: the last emitted token and gamma
    drafts), and the rollback that crops the rejected drafts' keys/values.

    ``prefix``: tokens whose keys/values are already stored; ``accepted``: drafts of the
    verification pass that were accepted (default ``new - 2``: the last draft rejected).
    """
    if int(prefix) != prefix or prefix < 1:
        raise ValueError(f"prefix (tokens already in the cache) must be an integer >= 1, got {prefix!r}")
    if int(new) != new or new < 2:
        raise ValueError(f"new (gamma + 1 tokens of a verification pass) must be an integer >= 2, got {new!r}")
    prefix, new = int(prefix), int(new)
    accepted = new - 2 if accepted is None else accepted
    if int(accepted) != accepted or not 0 <= accepted <= new - 2:
        raise ValueError(f"accepted must be an integer between 0 and new - 2 = {new - 2} "
                         f"(at least one draft rejected, so that there is something to crop), "
                         f"got {accepted!r}")
    accepted = int(accepted)
    fig, ax = _axes(ax, (10, 5.6))
    x0, x_end = 2.5, 9.2  # cells between the row titles and the right edge (1 unit ~ 1 inch)
    w, h = min(0.62, 0.88 * (x_end - x0) / (prefix + new)), 0.5
    kept = ("no draft accepted" if accepted == 0 else "$x_1$ accepted" if accepted == 1
            else f"$x_1, \\dots, x_{{{accepted}}}$ accepted")
    kept += f", $x_{{{accepted + 1}}}$ rejected"
    pre = [f"$t_{{{i + 1}}}$" for i in range(prefix)]
    last = f"$t_{{{prefix + 1}}}$"
    drafts = [f"$x_{{{i + 1}}}$" for i in range(new - 1)]
    rows = [
        (4.6, "Plain decoding step", ["cached"] * prefix + ["new"], pre + [last],
         "1 new token: its K, V are computed and appended; its query reads the stored ones"),
        (2.6, "Verification pass", ["cached"] * prefix + ["new"] * new, pre + [last] + drafts,
         f"$\\gamma$ + 1 = {new} new tokens (the last token and {new - 1} drafts) in one pass; "
         "each attends to the cache and to the new tokens before it"),
        (0.6, "After the rollback",
         ["cached"] * (prefix + 1 + accepted) + ["cropped"] * (new - 1 - accepted),
         pre + [last] + drafts,
         f"{kept}: the cache is cropped back to the accepted length, {prefix + 1 + accepted} tokens; "
         "the next pass starts from the correction token"),
    ]
    for y, title, kinds, labels, caption in rows:
        ax.text(0.05, y, title, fontsize=FONT + 1, weight="bold", va="center")
        xs = _cache_row(ax, y, kinds, labels, w=w, h=h, x0=x0)
        ax.text(0.05, y - 0.62, caption, fontsize=FONT, va="center")
        n_cached = kinds.count("cached")
        if "new" in kinds:
            _brace(ax, xs[0] - w / 2, xs[prefix - 1] + w / 2, y + h / 2 + 0.08,
                   "stored K, V (read, not recomputed)")
            _brace(ax, xs[prefix] - w / 2, xs[-1] + w / 2, y + h / 2 + 0.08, "K, V computed now")
        else:
            _brace(ax, xs[0] - w / 2, xs[n_cached - 1] + w / 2, y + h / 2 + 0.08,
                   f"cache: {n_cached} tokens")
            _brace(ax, xs[n_cached] - w / 2, xs[-1] + w / 2, y + h / 2 + 0.08, "cropped")
    ax.legend(handles=[Patch(facecolor=CACHE_COLORS[k], edgecolor="#555555",
                             hatch="///" if k == "cropped" else None, label=label)
                       for k, label in [("cached", "K, V in the cache"), ("new", "K, V computed in this pass"),
                                        ("cropped", "K, V removed by the rollback")]],
              loc="upper right", fontsize=FONT - 1, frameon=False, ncol=3, bbox_to_anchor=(1.0, 1.06))
    ax.set(xlim=(0, 10), ylim=(-0.3, 5.6))
    fig.tight_layout()
    return fig
