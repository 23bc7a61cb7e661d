"""Block efficiency of a draft measured by decoding: per prompt and per category, and at
several temperatures.

Reads a target, drafts, the tokenizer and prompt dicts (``id``, ``category``, ``prompt``);
writes nothing. Every chapter that trains a draft reports tau with it. tau is a count
(tokens per target call), so it is immune to timing noise. The acceptance report that
decides between drafts with intervals (:func:`acceptance_report`) lives in
:mod:`draftalign.acceptance` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from tqdm.std import tqdm

from .acceptance import acceptance_report, answer_acceptance, bootstrap_interval, engine_check, target_answers
from .chat import chat_input_ids
from .metrics import acceptance_rate, mean_tau
from .speculative import speculative_generate

__all__ = ["tau_table", "tau_by_category", "tau_per_temperature", "acceptance_report", "answer_acceptance",
           "target_answers", "bootstrap_interval", "engine_check"]


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


def tau_per_temperature(target, drafts: dict, prompts: list[torch.Tensor], *, temperatures: Sequence[float],
                        gamma: int, max_new_tokens: int, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Speculative decoding of ``prompts`` (``[1, T]`` ids) with each draft at each
    temperature (0: greedy; sampled otherwise, seed ``seed + i`` for prompt ``i``): one row
    per (draft, temperature) with pooled tau and alpha, and the results."""
    rows = []
    bar = tqdm(total=len(drafts) * len(temperatures) * len(prompts), desc="tau", disable=not progress)
    for name, draft in drafts.items():
        for temp in temperatures:
            res = []
            for i, ids in enumerate(prompts):
                res.append(speculative_generate(target, draft, ids, gamma=gamma, max_new_tokens=max_new_tokens,
                                                temperature=float(temp), seed=seed + i))
                bar.update()
            rows.append({"draft": name, "temperature": float(temp), "tau": mean_tau(res),
                         "alpha": acceptance_rate(res), "results": res})
    bar.close()
    return pd.DataFrame(rows)
