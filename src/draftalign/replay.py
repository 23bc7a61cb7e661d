"""Greedy speculative decoding replayed from the target's greedy answers.

Reads a target, drafts and prompts; writes nothing. Greedy speculative decoding is
deterministic given the target's greedy answer ``y``: the drafts that survive are ``y``'s
own tokens, so the draft's proposal at answer position ``t`` is its argmax after the prompt
and ``y[:t]``, and the blocks follow from where that argmax agrees with ``y``. One
teacher-forced draft pass per answer (:func:`agreements`) therefore gives tau for every
draft and every gamma (:func:`replay_greedy`), without decoding again; Chapter 5 checks the
replay against the engine (:func:`replay_check`) and the reference run measures tau with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from .chat import chat_input_ids
from .metrics import acceptance_rate, expected_tau, mbsu, mean_tau, per_position_acceptance
from .speculative import GenerationResult, _budget, autoregressive_generate

__all__ = ["greedy_answers", "agreements", "greedy_agreement", "replay_greedy", "replay_table", "tau_from_positions",
           "acceptance_summary", "gamma_sweep", "replay_check"]


# -- greedy answers and their replay -----------------------------------------------------------------

def greedy_answers(target, tokenizer, prompts: list[dict], *, max_new_tokens: int,
                   progress: bool = False) -> list[dict]:
    """The target's greedy answer to each prompt (plain decoding): dicts with ``id``,
    ``category``, ``input_ids`` ``[1, T]``, ``tokens`` (the answer), ``budget`` (the
    engine's token budget) and ``result``."""
    out = []
    for i, p in enumerate(tqdm(prompts, desc="answers", disable=not progress, mininterval=2)):
        ids = chat_input_ids(tokenizer, p["prompt"], device=target.device)  # [1, T]
        res = autoregressive_generate(target, ids, max_new_tokens=max_new_tokens)
        out.append({"id": p.get("id", i), "category": p.get("category"), "input_ids": ids,
                    "tokens": list(res.tokens), "budget": _budget(target, ids.shape[1], max_new_tokens),
                    "result": res})
    return out


@torch.inference_mode()
def _argmax_hits(draft, sequences: list[tuple[list[int], list[int]]], batch_size: int,
                 labels: list[list[int]] | None = None) -> list[np.ndarray]:
    """Per (prompt ids, answer ids): whether the draft's argmax after the prompt and
    ``answer[:t]`` is ``answer[t]`` (or ``labels[i][t]`` where given), by teacher forcing;
    ``batch_size`` sequences per pass, right-padded (positions as unpadded)."""
    device = next(draft.parameters()).device
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (p, a) in enumerate(chunk):
            ids[j, :len(p) + len(a)] = torch.tensor(list(p) + list(a))
            attn[j, :len(p) + len(a)] = 1
        if len(chunk) == 1:  # the output layer at the answer's positions only
            p, a = chunk[0]
            guesses = [draft(input_ids=ids.to(device), logits_to_keep=len(a) + 1).logits[0, :-1].argmax(-1).cpu()]
        else:
            pred = draft(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.argmax(-1).cpu()  # [B, T]
            guesses = [pred[j, len(p) - 1:len(p) + len(a) - 1] for j, (p, a) in enumerate(chunk)]
        for j, (guess, (_, a)) in enumerate(zip(guesses, chunk)):
            want = labels[start + j] if labels is not None else a
            out.append((guess == torch.tensor(list(want), dtype=torch.long)).numpy())
    return out


def agreements(draft, answers: list[dict], *, batch_size: int = 1) -> list[np.ndarray]:
    """Per answer (dicts with ``input_ids`` ``[1, T]`` and ``tokens``), whether the draft's
    argmax after the prompt and ``tokens[:t]`` is ``tokens[t]``: ``bool [L]`` arrays (one
    unpadded pass per answer by default, as exact as the engine's own passes in fp32)."""
    return _argmax_hits(draft, [(a["input_ids"][0].tolist(), list(a["tokens"])) for a in answers], batch_size)


def greedy_agreement(draft, rows, *, batch_size: int = 16, progress: bool = False) -> pd.DataFrame:
    """How often the draft's most likely next token is the token the target wrote, on the
    target's own greedy answers (teacher forcing): the acceptance of greedy drafting along
    those answers, one forward pass per batch instead of a decoding loop.

    ``rows``: dicts (or a dataset) with ``prompt_ids`` and ``response_ids`` (a greedy answer
    of the target) and optionally ``id``/``index`` and ``category``; rows that carry
    ``labels`` (the target's most likely token at each answer position, e.g. from
    :func:`draftalign.ngram.topk_labelled`) are scored against those instead, so answers the
    target sampled measure greedy agreement too. Returns one row per answer: ``id``,
    ``category``, ``tokens`` (answer tokens scored), ``hits`` (draft argmax equal to the
    target's token) and ``agreement``.
    """
    rows = list(rows)
    hits = []
    for start in tqdm(range(0, len(rows), 8 * batch_size), desc="agreement", disable=not progress, mininterval=5):
        part = rows[start:start + 8 * batch_size]
        labels = [list(r["labels"]) for r in part] if part and "labels" in part[0] else None
        hits += _argmax_hits(draft, [(list(r["prompt_ids"]), list(r["response_ids"])) for r in part], batch_size,
                             labels)
    return pd.DataFrame([{"id": r.get("id", r.get("index", i)), "category": r.get("category"),
                          "tokens": len(h), "hits": int(h.sum()), "agreement": float(h.sum()) / max(1, len(h))}
                         for i, (r, h) in enumerate(zip(rows, hits))])


def replay_greedy(tokens: Sequence[int], agree: Sequence[bool], *, gamma: int,
                  budget: int | None = None) -> GenerationResult:
    """The blocks greedy speculative decoding makes on an answer ``tokens`` with a draft
    whose argmax agrees with it where ``agree`` is true (:func:`agreements`).

    Follows :func:`~draftalign.speculative.speculative_generate` step for step: a block at
    answer position ``t`` drafts ``g = min(gamma, budget - t - 1)`` tokens, accepts the
    leading ones that agree and adds one target token. ``budget``: the engine's (default
    ``len(tokens)``). Drafts past the end of an answer that stopped at EOS count as
    rejected (the engine compares them with target predictions no answer records), so
    only the last block's ``accepted`` can differ from the engine's; tau cannot.
    """
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    n = len(tokens)
    if len(agree) != n:
        raise ValueError(f"{len(agree)} agreement flags for {n} tokens")
    budget = n if budget is None else int(budget)
    if budget < n:
        raise ValueError(f"budget {budget} is below the answer's {n} tokens")
    accepted, drafted, t = [], [], 0
    while t < n:
        g = min(int(gamma), budget - t - 1)
        k = 0
        while k < g and t + k < n and agree[t + k]:
            k += 1
        accepted.append(k)
        drafted.append(g)
        t += k + 1
    return GenerationResult(tokens=list(tokens), target_calls=len(accepted), draft_calls=sum(drafted),
                            accepted=accepted, drafted=drafted, gamma=int(gamma))


def replay_table(answers: list[dict], agree: list[np.ndarray], *, gamma: int,
                 max_new_tokens: int | None = None) -> pd.DataFrame:
    """:func:`draftalign.evaluate.tau_table`'s table from replays: one row per answer with
    ``id``, ``category``, ``tokens``, ``target_calls``, ``tau``, ``alpha`` and ``result``.
    ``max_new_tokens``: replay decoding with this smaller budget (the greedy answer's first
    tokens are the shorter greedy answer)."""
    rows = []
    for a, ok in zip(answers, agree, strict=True):
        budget = a.get("budget") or len(a["tokens"])
        n = budget if max_new_tokens is None else min(budget, int(max_new_tokens))
        res = replay_greedy(a["tokens"][:n], ok[:n], gamma=gamma, budget=n)
        rows.append({"id": a["id"], "category": a["category"], "tokens": len(res.tokens),
                     "target_calls": res.target_calls, "tau": res.tau, "alpha": acceptance_rate([res]),
                     "result": res})
    return pd.DataFrame(rows)


# -- where acceptance is lost ------------------------------------------------------------------------

def tau_from_positions(acceptance: Sequence[float]) -> float:
    """``E[tau] = 1 + sum_i prod_{j <= i} a_j`` with ``a_j`` the acceptance at position ``j``
    given the earlier drafts were accepted (no independence assumed); unreached positions
    (``nan``) count as 0."""
    a = np.nan_to_num(np.asarray(acceptance, dtype=float), nan=0.0)
    return float(1.0 + np.cumprod(a).sum())


def acceptance_summary(tables: dict[str, pd.DataFrame], *, gamma: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each draft's table (:func:`replay_table` or ``tau_table``): measured tau, pooled
    alpha, E[tau] from alpha (book eq. tau-iid) and from the per-position acceptance; and
    the per-position acceptance itself (rows: positions 1..gamma, columns: drafts)."""
    rows, positions = {}, {}
    for name, table in tables.items():
        res = list(table.result)
        pos = per_position_acceptance(res, gamma)
        alpha = acceptance_rate(res)
        positions[name] = pos
        rows[name] = {"tau (measured)": mean_tau(res), "alpha (pooled)": alpha,
                      "E[tau] from alpha, i.i.d.": expected_tau(alpha, gamma) if alpha == alpha else np.nan,
                      "E[tau] from per-position acceptance": tau_from_positions(pos)}
    pos_df = pd.DataFrame(positions, index=pd.RangeIndex(1, gamma + 1, name="draft position"))
    return pd.DataFrame(rows).T.rename_axis("draft"), pos_df


# -- gamma ---------------------------------------------------------------------------------------------

def gamma_sweep(answers: list[dict], agree_by_draft: dict[str, list], gammas: Sequence[int], *,
                parameters: dict[str, int], n_target: int) -> pd.DataFrame:
    """tau, alpha and the memory-bound speed-up (MBSU) of every draft at every gamma, from
    replays: one row per (draft, gamma)."""
    rows = []
    for name, agree in agree_by_draft.items():
        for g in gammas:
            res = list(replay_table(answers, agree, gamma=g).result)
            tau = mean_tau(res)
            rows.append({"draft": name, "gamma": int(g), "tau": tau, "alpha": acceptance_rate(res),
                         "mbsu": mbsu(tau, int(g), parameters[name], n_target)})
    return pd.DataFrame(rows)


def replay_check(engine: dict[int, list], answers: list[dict], agree: list[np.ndarray]) -> pd.DataFrame:
    """The engine's results (``{gamma: [result per answer]}``, e.g. from
    :func:`wall_clock_by_gamma`) against the replays of the same answers: tau of both, and
    in how many answers the tokens and the accepted counts are the same."""
    rows = []
    for g, results in engine.items():
        if g == 0:
            continue
        replays = [replay_greedy(a["tokens"], ok, gamma=g, budget=a.get("budget"))
                   for a, ok in zip(answers, agree)]
        rows.append({"gamma": g, "tau (engine)": mean_tau(results), "tau (replay)": mean_tau(replays),
                     "same tokens": sum(r.tokens == p.tokens for r, p in zip(results, replays)),
                     "same blocks": sum(r.accepted == p.accepted for r, p in zip(results, replays)),
                     "answers": len(results)})
    return pd.DataFrame(rows).set_index("gamma")
