"""The acceptance report: how well each draft serves the target, with intervals.

Reads a target, drafts and prompts; writes nothing. The target answers every prompt at each
temperature (greedy and sampled); each draft is scored along those answers by teacher
forcing: the exact per-token acceptance of speculative sampling at that temperature, the
expected block efficiency from the per-position acceptances, the engine's measured tau on a
few prompts, and 95% bootstrap intervals over prompts. Chapter 4 and the loss study
(``draftalign study``) decide between the losses with it
(:mod:`draftalign.compare`); :mod:`draftalign.evaluate` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.std import tqdm

from .chat import chat_input_ids
from .metrics import expected_target_calls, mbsu
from .models import count_parameters, eos_ids, pad_id
from .speculative import _budget, autoregressive_generate, speculative_generate

__all__ = ["target_answers", "answer_acceptance", "acceptance_report", "bootstrap_interval", "engine_check"]


def _prompt_ids(prompts, tokenizer) -> list[dict]:
    """Each prompt as a dict with ``id``, ``category`` and ``prompt_ids`` (the templated
    prompt): taken as given, or built from ``prompt`` text with ``tokenizer``."""
    out = []
    for i, p in enumerate(prompts):
        p = {"prompt": p} if isinstance(p, str) else dict(p)
        if "prompt_ids" not in p:
            if tokenizer is None:
                raise ValueError("prompts given as text need the tokenizer (tokenizer=...) to be templated")
            p["prompt_ids"] = chat_input_ids(tokenizer, p["prompt"])[0].tolist()
        ids = p["prompt_ids"]
        p["prompt_ids"] = ids[0].tolist() if isinstance(ids, torch.Tensor) and ids.dim() == 2 else list(map(int, ids))
        if not p["prompt_ids"]:
            raise ValueError(f"prompt {p.get('id', i)!r} is empty")
        p.setdefault("id", i)
        p.setdefault("category", None)
        out.append(p)
    if not out:
        raise ValueError("no prompts")
    return out


def _check_temperatures(temperatures) -> tuple[float, ...]:
    temps = tuple(float(t) for t in temperatures)
    if not temps or any(t < 0 or t != t for t in temps) or len(set(temps)) != len(temps):
        raise ValueError(f"temperatures must be distinct numbers >= 0 (0 is greedy), got {temperatures!r}")
    return temps


@torch.inference_mode()
def target_answers(target, prompts, *, temperatures: Sequence[float] = (0.0, 0.7, 1.0), max_new_tokens: int = 128,
                   seeds: Sequence[int] = (0,), tokenizer=None, batch_size: int = 16,
                   progress: bool = True) -> list[dict]:
    """The target's own answers to ``prompts`` at each temperature: one greedy answer per
    prompt at ``T = 0``, one sampled answer per prompt and seed at ``T > 0`` (pure
    temperature sampling: no top-p, no top-k).

    Answers are generated in left-padded batches (``target.generate``); a greedy answer that
    a plain, unpadded greedy decoding would not write (padding can flip a near-tie) is
    written again with :func:`draftalign.speculative.autoregressive_generate`, the engine's
    own, so a greedy answer is exactly what speculative decoding reproduces. Returns dicts
    with ``prompt`` (index into ``prompts``), ``id``, ``category``, ``temperature``, ``seed``,
    ``prompt_ids``, ``tokens`` (ending with EOS when the answer finished) and ``budget``.
    """
    prompts = _prompt_ids(prompts, tokenizer)
    temps = _check_temperatures(temperatures)
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    device = next(target.parameters()).device
    eos, pad = eos_ids(target), pad_id(target)
    jobs = [(t, s) for t in temps for s in ((None,) if t == 0 else tuple(seeds))]
    out = []
    bar = tqdm(total=len(jobs) * len(prompts), desc="target answers", disable=not progress, mininterval=5)
    for temp, seed in jobs:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = prompts[start:start + batch_size]
            width = max(len(p["prompt_ids"]) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):  # left padding: every prompt ends at the same column
                ids[j, width - len(p["prompt_ids"]):] = torch.tensor(p["prompt_ids"])
                mask[j, width - len(p["prompt_ids"]):] = 1
            sampling = ({"do_sample": False} if temp == 0 else
                        {"do_sample": True, "temperature": temp, "top_p": 1.0, "top_k": 0})
            if temp > 0:
                torch.manual_seed(1_000_003 * int(seed) + b)
            seqs = target.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                   pad_token_id=pad, **sampling)[:, width:].tolist()
            for j, p in enumerate(chunk):
                row = seqs[j]
                end = next((k for k, tok in enumerate(row) if tok in eos), None)
                tokens = row[: end + 1] if end is not None else row
                out.append({"prompt": start + j, "id": p["id"], "category": p["category"], "temperature": temp,
                            "seed": seed, "prompt_ids": p["prompt_ids"], "tokens": tokens,
                            "budget": _budget(target, len(p["prompt_ids"]), max_new_tokens)})
            bar.update(len(chunk))
    bar.close()
    for a in out:  # a greedy answer must be the engine's greedy answer, token for token
        if a["temperature"] == 0:
            logits = _answer_logits(target, a["prompt_ids"], a["tokens"])
            if not torch.equal(logits.argmax(-1).cpu(), torch.tensor(a["tokens"])):
                ids = torch.tensor([a["prompt_ids"]], device=device)
                a["tokens"] = autoregressive_generate(target, ids, max_new_tokens=max_new_tokens).tokens
    return out


def _answer_logits(model, prompt_ids: list[int], tokens: list[int]) -> torch.Tensor:
    """Teacher-forced logits ``[L, V]`` (fp32) that predict each answer token."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(tokens)], device=device)  # [1, T + L]
    return model(input_ids=ids, logits_to_keep=len(tokens) + 1).logits[0, :-1].float()  # [L, V]


@torch.inference_mode()
def answer_acceptance(target, drafts: dict, answer: dict) -> dict[str, dict]:
    """Per-position acceptance of each draft along one target answer (teacher forcing: one
    target pass and one pass per draft over the prompt and the answer).

    At ``T > 0``, with ``p_T``, ``q_T`` the temperature-warped next-token distributions
    of the target and the draft at answer position ``t``: ``alpha[t] = sum_x min(p_T, q_T)``
    (= 1 - TVD, the probability speculative sampling accepts a drafted token there) and
    ``accept[t] = min(1, q_T(x_t) / p_T(x_t))``, the probability that the token ``x_t`` the
    target wrote was an accepted draft (its mean over ``x_t ~ p_T`` is ``alpha[t]``). At
    ``T = 0`` both are 1 where the draft's argmax is the target's token, else 0. Returns
    ``{name: {"alpha": [L], "accept": [L]}}`` (numpy float arrays).
    """
    temp, tokens = float(answer["temperature"]), list(answer["tokens"])
    if not tokens:
        return {name: {"alpha": np.zeros(0), "accept": np.zeros(0)} for name in drafts}
    p_logits = _answer_logits(target, answer["prompt_ids"], tokens)  # [L, V]
    x = torch.tensor(tokens, device=p_logits.device)
    if temp > 0:
        p = (p_logits / temp).softmax(-1)
        p_x = p.gather(-1, x[:, None])[:, 0]
    out = {}
    for name, draft in drafts.items():
        q_logits = _answer_logits(draft, answer["prompt_ids"], tokens).to(p_logits.device)  # [L, V]
        if q_logits.shape != p_logits.shape:
            raise ValueError(f"draft {name!r} scores {q_logits.shape[-1]} ids, the target {p_logits.shape[-1]}")
        if temp == 0:
            hit = (q_logits.argmax(-1) == x).double().cpu().numpy()
            out[name] = {"alpha": hit, "accept": hit}
        else:
            q = (q_logits / temp).softmax(-1)
            alpha = torch.minimum(p, q).sum(-1).clamp(0, 1)
            accept = (q.gather(-1, x[:, None])[:, 0] / p_x).clamp(max=1)
            out[name] = {"alpha": alpha.double().cpu().numpy(), "accept": accept.double().cpu().numpy()}
    return out


def bootstrap_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap replicates (percentiles)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _resample(n_prompts: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n_prompts]`` prompt indices drawn with replacement (the same draws for
    every draft: intervals of differences between drafts are paired)."""
    return np.random.default_rng(seed).integers(0, n_prompts, size=(n_boot, n_prompts))


def acceptance_report(target, drafts: dict, prompts, *, temperatures=(0.0, 0.7, 1.0), gamma: int = 4,
                      max_new_tokens: int = 128, seeds=(0,), n_boot: int = 1000, tokenizer=None,
                      answers: list[dict] | None = None, engine_prompts: int | None = None,
                      engine_drafts: Sequence[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """How well each draft serves the target, with 95% bootstrap intervals over prompts.

    ``drafts``: ``{name: model}``, any draft the package loads (a sub-vocabulary draft
    too); ``prompts``: dicts with ``prompt`` text (templated with ``tokenizer``) or
    ``prompt_ids``, and optionally ``id`` and ``category``. The target answers every prompt
    at every temperature (:func:`target_answers`, or ``answers`` it returned earlier); each
    draft is then scored along those answers by teacher forcing (:func:`answer_acceptance`).

    One row per (draft, temperature), with:

    - ``alpha``: per-token acceptance, pooled over every answer position: at ``T > 0`` the
      mean of ``sum_x min(p_T, q_T)`` (exact, not sampled), at ``T = 0`` the top-1
      agreement with the target's greedy answer;
    - ``expected_tau``: block efficiency at ``gamma`` from the per-position acceptances
      (:func:`draftalign.metrics.expected_target_calls`: total tokens over expected calls;
      at ``T = 0`` exactly the greedy replay's tau);
    - ``tau``: block efficiency measured by the engine
      (:func:`~draftalign.speculative.speculative_generate`), greedy or sampled at ``T``,
      averaged over ``seeds``, on the first ``engine_prompts`` prompts (all when ``None``, no
      run when 0) for the drafts named in ``engine_drafts`` (all when ``None``);
    - ``cost_ratio`` (parameters of the draft over the target's) and ``mbsu``, the
      memory-bound speed-up at ``expected_tau``;
    - ``prompts``, ``tokens`` (answer tokens scored), ``engine_prompts``, ``engine_tokens``;
    - ``alpha_lo``/``alpha_hi``, ``expected_tau_lo``/``_hi``, ``mbsu_lo``/``_hi`` and
      ``tau_lo``/``tau_hi``: 95% intervals from ``n_boot`` resamplings of the prompts (the
      same resamplings for every draft).

    The per-answer numbers are kept in ``report.attrs["per_prompt"]`` (one row per draft,
    temperature, seed and prompt: ``positions``, ``alpha_sum``, ``accept_sum``,
    ``expected_calls``, ``tokens``), from which :func:`loss_summary`-style aggregates and
    paired differences follow.
    """
    if not drafts:
        raise ValueError("no drafts to report on")
    temps = _check_temperatures(temperatures)
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    prompts = _prompt_ids(prompts, tokenizer)
    if answers is None:
        answers = target_answers(target, prompts, temperatures=temps, max_new_tokens=max_new_tokens, seeds=seeds,
                                 progress=progress)
    answers = [a for a in answers if a["temperature"] in temps and (a["temperature"] == 0 or a["seed"] in seeds)]
    per = []
    for a in tqdm(answers, desc="acceptance", disable=not progress, mininterval=5):
        scored = answer_acceptance(target, drafts, a)
        for name, s in scored.items():
            per.append({"draft": name, "temperature": a["temperature"], "seed": a["seed"], "prompt": a["prompt"],
                        "id": a["id"], "category": a["category"], "positions": len(s["alpha"]),
                        "alpha_sum": float(s["alpha"].sum()), "accept_sum": float(s["accept"].sum()),
                        "expected_calls": expected_target_calls(s["accept"], gamma, budget=a["budget"]),
                        "tokens": len(a["tokens"])})
    per = pd.DataFrame(per)
    engine = _engine_taus(target, drafts, prompts, temps, seeds, gamma=gamma, max_new_tokens=max_new_tokens,
                          n=len(prompts) if engine_prompts is None else int(engine_prompts),
                          names=list(drafts) if engine_drafts is None else list(engine_drafts), progress=progress)
    n_target = count_parameters(target)
    draws = _resample(len(prompts), n_boot)
    rows = []
    for name, draft in drafts.items():
        c = count_parameters(draft) / n_target
        for temp in temps:
            sums = (per[(per.draft == name) & (per.temperature == temp)]
                    .groupby("prompt")[["positions", "alpha_sum", "expected_calls", "tokens"]].sum()
                    .reindex(range(len(prompts)), fill_value=0.0))
            pos, a_sum, calls, toks = (sums[k].to_numpy(float) for k in ("positions", "alpha_sum",
                                                                           "expected_calls", "tokens"))
            with np.errstate(invalid="ignore", divide="ignore"):
                alpha_b = a_sum[draws].sum(1) / pos[draws].sum(1)
                tau_b = toks[draws].sum(1) / calls[draws].sum(1)
            tau = toks.sum() / calls.sum() if calls.sum() else float("nan")
            row = {"draft": name, "temperature": temp, "gamma": int(gamma), "prompts": len(prompts),
                   "tokens": int(pos.sum()), "alpha": a_sum.sum() / pos.sum() if pos.sum() else float("nan"),
                   "expected_tau": tau, "cost_ratio": c,
                   "mbsu": mbsu(tau, gamma, count_parameters(draft), n_target) if tau == tau else float("nan")}
            row["alpha_lo"], row["alpha_hi"] = bootstrap_interval(alpha_b)
            row["expected_tau_lo"], row["expected_tau_hi"] = bootstrap_interval(tau_b)
            row["mbsu_lo"], row["mbsu_hi"] = (t / (gamma * c + 1) for t in bootstrap_interval(tau_b))
            row.update(_engine_columns(engine.get((name, temp)), n_boot))
            rows.append(row)
    report = pd.DataFrame(rows)
    report.attrs["per_prompt"] = per
    return report


def _engine_taus(target, drafts, prompts, temps, seeds, *, gamma, max_new_tokens, n, names, progress) -> dict:
    """``{(draft, T): [(tokens, calls) per prompt, summed over seeds]}`` from the engine."""
    unknown = sorted(set(names) - set(drafts))
    if unknown:
        raise ValueError(f"engine_drafts names drafts not in drafts: {unknown}")
    if n < 0:
        raise ValueError(f"engine_prompts must be >= 0, got {n}")
    chosen = prompts[:n]
    out = {}
    jobs = [(name, t) for name in names for t in temps] if chosen else []
    bar = tqdm(total=len(jobs) * len(chosen), desc="engine tau", disable=not progress, mininterval=5)
    device = next(target.parameters()).device
    for name, temp in jobs:
        counts = []
        for i, p in enumerate(chosen):
            ids = torch.tensor([p["prompt_ids"]], device=device)
            tokens = calls = 0
            for seed in ((0,) if temp == 0 else seeds):
                res = speculative_generate(target, drafts[name], ids, max_new_tokens=max_new_tokens, gamma=gamma,
                                           temperature=temp, seed=1_000_003 * seed + i)
                tokens, calls = tokens + len(res.tokens), calls + res.target_calls
            counts.append((tokens, calls))
            bar.update()
        out[(name, temp)] = counts
    bar.close()
    return out


def _engine_columns(counts, n_boot: int) -> dict:
    if not counts:
        return {"tau": float("nan"), "tau_lo": float("nan"), "tau_hi": float("nan"), "engine_prompts": 0,
                "engine_tokens": 0}
    toks, calls = (np.array(v, dtype=float) for v in zip(*counts))
    draws = _resample(len(toks), n_boot, seed=1)
    lo, hi = bootstrap_interval(toks[draws].sum(1) / calls[draws].sum(1))
    return {"tau": toks.sum() / calls.sum(), "tau_lo": lo, "tau_hi": hi, "engine_prompts": len(toks),
            "engine_tokens": int(toks.sum())}


def engine_check(report: pd.DataFrame) -> pd.DataFrame:
    """For every (draft, temperature) the engine decoded in :func:`acceptance_report`: its
    measured tau beside the expected tau on the same prompts (the first ``engine_prompts``).
    Greedy, the two are equal in fp32 (the replay is exact); sampled, the engine's tau is one
    draw per prompt and seed, the expected tau its mean."""
    per = report.attrs.get("per_prompt")
    if per is None:
        raise ValueError("the report has no per-prompt table (attrs['per_prompt']): make it with acceptance_report")
    rows = []
    for r in report[report.engine_prompts > 0].itertuples():
        sub = per[(per.draft == r.draft) & (per.temperature == r.temperature) & (per.prompt < r.engine_prompts)]
        rows.append({"draft": r.draft, "temperature": r.temperature, "prompts": int(r.engine_prompts),
                     "tau, engine": r.tau, "expected tau, same prompts": sub.tokens.sum() / sub.expected_calls.sum()})
    return pd.DataFrame(rows)
