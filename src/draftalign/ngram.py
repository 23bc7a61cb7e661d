"""A draft-free yardstick: how often a back-off n-gram table agrees with the target.

Reads distillation rows and the target's cached top-k; writes nothing. Chapter 4 sets the
distilled drafts' greedy agreement beside it: a table built in seconds from the same
answers says how much of that agreement short memorised contexts already carry.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .cached_losses import topk_top1

__all__ = ["ngram_agreement", "topk_labelled"]


def ngram_agreement(train: list[dict], held_out: list[dict], *, n: int = 4) -> float:
    """How often a back-off n-gram table agrees with the target's most likely next token
    on held-out answers: a draft-free reference for the greedy acceptance a trained draft
    reaches on the same data.

    Rows are dicts with ``prompt_ids``, ``response_ids`` and ``labels`` (the target's most
    likely token at each answer position, e.g. the first of the cached top-k). The table
    maps the last ``n - 1`` tokens of context to the label seen most often after them in
    ``train`` (ties: the label seen first); an unseen context backs off to shorter ones,
    down to the most common label overall.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tables = [defaultdict(Counter) for _ in range(n)]  # tables[m]: contexts of m tokens

    def contexts(row):
        full = list(row["prompt_ids"]) + list(row["response_ids"])
        if len(row["labels"]) != len(row["response_ids"]):
            raise ValueError("labels must hold one token per answer token")
        for j, label in enumerate(row["labels"]):
            at = len(row["prompt_ids"]) + j
            yield [tuple(full[max(0, at - m):at]) for m in range(n)], int(label)

    for row in train:
        for ctxs, label in contexts(row):
            for m, ctx in enumerate(ctxs):
                if len(ctx) == m:
                    tables[m][ctx][label] += 1
    if not tables[0]:
        raise ValueError("no training positions")
    hits = total = 0
    for row in held_out:
        for ctxs, label in contexts(row):
            m = next(m for m in range(n - 1, -1, -1) if len(ctxs[m]) == m and ctxs[m] in tables[m])
            hits += tables[m][ctxs[m]].most_common(1)[0][0] == label
            total += 1
    if not total:
        raise ValueError("no held-out positions")
    return hits / total


def topk_labelled(rows, topk: dict) -> list[dict]:
    """Rows for :func:`ngram_agreement`: ``prompt_ids``, ``response_ids`` and ``labels``, the
    target's most likely token at each answer position, read from its cached top-k.

    ``rows``: dicts (or a dataset) with ``index``, ``prompt_ids`` and ``response_ids``;
    ``topk``: ``{index: (ids [L, k], logprobs [L, k])}`` (:func:`draftalign.answers.load_topk`).
    The answer is cut to the positions the cache covers.
    """
    out = []
    for r in rows:
        if r["index"] not in topk:
            raise ValueError(f"no cached top-k for row {r['index']}")
        ids, logprobs = topk[r["index"]]
        best = topk_top1(ids, logprobs)  # [L]
        n = min(len(best), len(r["response_ids"]))
        out.append({"prompt_ids": r["prompt_ids"], "response_ids": r["response_ids"][:n],
                    "labels": best[:n].tolist()})
    return out
