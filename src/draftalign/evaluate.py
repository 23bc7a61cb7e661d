"""Block efficiency of a draft on the evaluation prompts, per prompt and per category.

Reads a target, a draft, the tokenizer and prompt dicts (``id``, ``category``,
``prompt``); writes nothing. Every chapter that trains a draft reports tau with it.
tau is a count (tokens per target call), so it is immune to timing noise.
"""

from __future__ import annotations

import pandas as pd
from tqdm.std import tqdm

from .chat import chat_input_ids
from .metrics import acceptance_rate
from .speculative import speculative_generate

__all__ = ["tau_table", "tau_by_category"]


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
