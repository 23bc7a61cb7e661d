"""Block-by-block views of a speculative generation, as HTML for notebooks and the book.

Reads a :class:`draftalign.speculative.GenerationResult` and a tokenizer; writes nothing.
Chapter 1 uses it to show which drafts the target accepted, which it rejected, and which
token it added itself.
"""

from __future__ import annotations

import html

__all__ = ["blocks_html", "show_blocks"]

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
