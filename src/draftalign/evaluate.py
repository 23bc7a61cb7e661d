"""Block efficiency of a draft on the evaluation prompts, per prompt and per category.

Reads a target, a draft, the tokenizer and prompt dicts (``id``, ``category``,
``prompt``); writes nothing. Every chapter that trains a draft reports tau with it.
Chapter 4's yardstick, the agreement of an n-gram table with the target's cached top-1
(:func:`ngram_agreement`, :func:`topk_labelled`), is here too.
tau is a count (tokens per target call), so it is immune to timing noise.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd
import torch
from tqdm.std import tqdm

from .cached_losses import topk_top1
from .chat import chat_input_ids
from .metrics import acceptance_rate
from .speculative import speculative_generate

__all__ = ["tau_table", "tau_by_category", "ngram_agreement", "topk_labelled", "greedy_agreement"]


def tau_table(target, draft, tokenizer, prompts: list[dict], *, gamma: int = 4, max_new_tokens: int = 48,
              temperature: float = 0.0, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """One row per prompt: ``id``, ``category``, ``tokens``, ``target_calls``, ``tau``, ``alpha``
    (pooled acceptance of the prompt's drafts), and the result object in ``result``."""
    rows = []
    for i, p in enumerate(tqdm(prompts, desc="tau", disable=not progress, mininterval=2)):
        ids = chat_input_ids(tokenizer, p["prompt"], device=target.device)
        res = speculative_generate(target, draft, ids, max_new_tokens=max_new_tokens, gamma=gamma,
                                   temperature=temperature, seed=seed + i)
        rows.append({"id": p.get("id", i), "category": p.get("category"), "tokens": len(res.tokens),
                     "target_calls": res.target_calls, "tau": res.tau, "alpha": acceptance_rate([res]),
                     "result": res})
    return pd.DataFrame(rows)


def tau_by_category(table: pd.DataFrame) -> pd.DataFrame:
    """Pooled tau per category (total tokens over total target calls), and overall."""
    grouped = table.groupby("category")[["tokens", "target_calls"]].sum()
    grouped.loc["all"] = table[["tokens", "target_calls"]].sum()
    grouped["tau"] = grouped.tokens / grouped.target_calls
    return grouped


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
    ``topk``: ``{index: (ids [L, k], logprobs [L, k])}`` (:func:`draftalign.generate.load_topk`).
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


@torch.inference_mode()
def greedy_agreement(draft, rows, *, batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """How often the draft's most likely next token is the token the target wrote, on the
    target's own greedy answers (teacher forcing): the acceptance of greedy drafting
    along those answers, one forward pass per batch instead of a decoding loop.

    ``rows``: dicts (or a dataset) with ``prompt_ids`` and ``response_ids`` (a greedy
    answer of the target) and optionally ``id``/``index`` and ``category``. Returns one
    row per answer: ``id``, ``category``, ``tokens`` (answer tokens scored), ``hits``
    (draft argmax equal to the target's token) and ``agreement``.
    """
    rows = list(rows)
    device = next(draft.parameters()).device
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc="agreement", disable=not progress, mininterval=5):
        chunk = rows[start:start + batch_size]
        seqs = [list(r["prompt_ids"]) + list(r["response_ids"]) for r in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for j, s in enumerate(seqs):  # right padding: positions are the same as unpadded
            ids[j, :len(s)] = torch.tensor(s)
            attn[j, :len(s)] = 1
        pred = draft(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.argmax(-1).cpu()  # [B, T]
        for j, r in enumerate(chunk):
            n_prompt, n_answer = len(r["prompt_ids"]), len(r["response_ids"])
            guess = pred[j, n_prompt - 1:n_prompt + n_answer - 1]
            hits = int((guess == torch.tensor(list(r["response_ids"]))).sum())
            out.append({"id": r.get("id", r.get("index", start + j)), "category": r.get("category"),
                        "tokens": n_answer, "hits": hits, "agreement": hits / max(1, n_answer)})
    return pd.DataFrame(out)
