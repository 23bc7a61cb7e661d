"""Block-by-block views of a speculative generation, as HTML for notebooks and the book.

Reads a :class:`draftalign.speculative.GenerationResult` and a tokenizer; writes nothing.
Chapter 1 uses it to show which drafts the target accepted, which it rejected, and which
token it added itself.
"""

from __future__ import annotations

import html

__all__ = ["blocks_html", "show_blocks", "DRAFT_COLORS", "draft_color", "draft_colors"]

_STYLE = {
    "accepted": "background:#c8f0c8;",
    "rejected": "background:#f6c6c6;text-decoration:line-through;",
    "discarded": "color:#999;text-decoration:line-through;",
    "correction": "background:#ffd9a0;font-weight:bold;",
    "bonus": "background:#bcd8ff;font-weight:bold;",
}
_LEGEND = [("accepted", "draft accepted"), ("rejected", "draft rejected"),
           ("discarded", "draft after a rejection (never checked)"),
           ("correction", "target's token after a rejection"), ("bonus", "target's bonus token")]


def _token(tokenizer, tok: int, kind: str) -> str:
    text = tokenizer.decode([tok]).replace("\n", "\u21b5")
    return f'<span style="{_STYLE[kind]}padding:0 1px;white-space:pre">{html.escape(text)}</span>'


def blocks_html(tokenizer, result, *, max_blocks: int | None = None) -> str:
    """An HTML rendering of ``result.blocks``: one bordered group per target call."""
    parts = []
    for block in result.blocks[:max_blocks]:
        spans = []
        for i, tok in enumerate(block.drafts):
            kind = ("accepted" if i < block.n_accepted
                    else "rejected" if i == block.n_accepted else "discarded")
            spans.append(_token(tokenizer, tok, kind))
        all_accepted = block.n_accepted == len(block.drafts)
        spans.append(_token(tokenizer, block.next_token, "bonus" if all_accepted else "correction"))
        parts.append('<span style="border:1px solid #bbb;border-radius:3px;margin:1px;'
                     f'padding:1px;display:inline-block">{"".join(spans)}</span>')
    legend = " ".join(f'<span style="{_STYLE[k]}padding:0 3px">{label}</span>' for k, label in _LEGEND)
    return (f'<div style="font-family:monospace;line-height:1.9">{"".join(parts)}</div>'
            f'<div style="font-size:85%;margin-top:4px">{legend}</div>')


def show_blocks(tokenizer, result, **kw):
    """Display :func:`blocks_html` in a notebook."""
    from IPython.display import HTML

    return HTML(blocks_html(tokenizer, result, **kw))


# One colour per loss (and per named draft) in every figure of the book: a reader who has
# learnt that TVD++ is red in Chapter 4 finds it red in Chapter 5.
DRAFT_COLORS = {
    "pretrained": "#7f7f7f",  # grey: the starting point
    "fkl": "#1f77b4",  # blue
    "rkl": "#ff7f0e",  # orange
    "tvd": "#2ca02c",  # green
    "tvd++": "#d62728",  # red
    "finetuned": "#9467bd",  # purple: the reference drafter and its stages
    "smollm2-135m-instruct-drafter": "#9467bd",
    "reference drafter": "#9467bd",
    "layer-skip": "#8c564b",  # brown
    "target": "#000000",
}
_SPARE = ("#e377c2", "#bcbd22", "#17becf", "#8c564b", "#aec7e8", "#ffbb78")


def _key(name) -> str:
    """A draft's name as the colour table spells it: ``"draft-TVD++"`` -> ``"tvd++"``."""
    return str(name).lower().strip().removeprefix("draft-")


def draft_color(name: str, index: int = 0) -> str:
    """The book's colour for a loss or draft ``name`` (``"fkl"``, ``"draft-tvd++"``,
    ``"FKL"``...); names it does not know take the ``index``-th spare colour."""
    return DRAFT_COLORS.get(_key(name), _SPARE[index % len(_SPARE)])


def draft_colors(names) -> dict:
    """``{name: colour}`` for several drafts: known names keep their colour, the others take
    distinct spare colours in order."""
    out, spare = {}, 0
    for name in names:
        if (key := _key(name)) in DRAFT_COLORS:
            out[name] = DRAFT_COLORS[key]
        else:
            out[name] = _SPARE[spare % len(_SPARE)]
            spare += 1
    return out
