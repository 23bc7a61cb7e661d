"""Speculative decoding metrics: block efficiency, speed-up, memory-bound speed-up.

Reads nothing from disk. Used by every chapter that measures a draft: Chapter 1 derives
the formulas (and checks eq. ``tau-iid`` against :func:`simulate_tau`), Chapters 2, 4 and
5 apply them to results of :func:`draftalign.speculative.speculative_generate`.

Notation (the book's): ``gamma`` drafted tokens per block, ``alpha`` the probability that
one drafted token is accepted, ``tau`` block efficiency (tokens produced per target
call), ``c`` the cost of one draft step relative to one target step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "expected_tau",
    "simulate_blocks",
    "simulate_tau",
    "tvd_probs",
    "speedup",
    "mbsu",
    "cost_ratio_from_params",
    "per_position_acceptance",
    "acceptance_rate",
    "mean_tau",
    "pooled_tau",
    "expected_target_calls",
]


def _check_gamma(gamma: int) -> int:
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    return int(gamma)


def expected_tau(alpha: float, gamma: int) -> float:
    """Expected block efficiency under i.i.d. acceptance (book eq. ``tau-iid``).

    ``E[tau] = (1 - alpha**(gamma + 1)) / (1 - alpha)``: a block yields the accepted
    prefix of the ``gamma`` drafts plus one token from the target (the correction or
    the bonus). ``alpha = 1`` gives ``gamma + 1``; ``alpha = 0`` gives 1.
    """
    gamma = _check_gamma(gamma)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if alpha == 1.0:
        return float(gamma + 1)
    return float((1.0 - alpha ** (gamma + 1)) / (1.0 - alpha))


def simulate_blocks(alpha: float, gamma: int, blocks: int, seed=0) -> np.ndarray:
    """Accepted drafts per block, ``[blocks]``, when each of the ``gamma`` drafts is accepted
    independently with probability ``alpha``: the run of acceptances before the first
    rejection, ``gamma`` if there is none.

    ``seed``: an int, or a ``numpy.random.Generator`` whose stream the draws continue (so
    that successive calls on one generator give independent blocks).
    """
    gamma = _check_gamma(gamma)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    rng = np.random.default_rng(seed)  # a Generator is returned as it is
    ok = rng.random((int(blocks), gamma)) < alpha  # [blocks, gamma]
    return np.where(ok.all(axis=1), gamma, ok.argmin(axis=1))  # first rejection, else gamma


def simulate_tau(alpha: float, gamma: int, blocks: int, seed=0) -> float:
    """Mean tokens per block (accepted drafts + the target's one) over ``blocks`` simulated
    blocks (:func:`simulate_blocks`): a Monte Carlo estimate of :func:`expected_tau`."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks!r}")
    return float((simulate_blocks(alpha, gamma, blocks, seed) + 1).mean())


def tvd_probs(p, q):
    """Total variation distance ``(1/2) sum_x |p(x) - q(x)|`` between probability vectors
    along the last axis (torch tensors or numpy arrays): ``1 - TVD`` is the probability
    that speculative sampling accepts a token drawn from ``q`` (book eq. ``beta``).

    Returns a float for two vectors, a tensor or array of the leading shape otherwise.
    :func:`draftalign.losses.tvd` is the same distance between *logits*, per position.
    """
    if p.shape != q.shape:
        raise ValueError(f"p {tuple(p.shape)} and q {tuple(q.shape)} differ in shape")
    d = 0.5 * abs(p - q).sum(-1)
    return float(d) if d.ndim == 0 else d


def speedup(tau: float, gamma: int, c: float) -> float:
    """Speed-up over plain decoding: ``tau / (gamma * c + 1)`` (book eq. ``speedup``).

    One block costs ``gamma`` draft steps (``c`` each, in units of a target step) and one
    target step, and produces ``tau`` tokens on average, where plain decoding produces
    one token per target step.
    """
    gamma = _check_gamma(gamma)
    if c < 0:
        raise ValueError(f"cost ratio c must be >= 0, got {c!r}")
    if not 1.0 <= tau <= gamma + 1 + 1e-9:
        raise ValueError(f"tau must lie in [1, gamma + 1] = [1, {gamma + 1}], got {tau!r}")
    return float(tau / (gamma * c + 1.0))


def cost_ratio_from_params(n_draft: int, n_target: int) -> float:
    """Memory-bound cost ratio ``c = N_draft / N_target``.

    When decoding is limited by reading the weights from memory, a step costs in
    proportion to the parameter count.
    """
    if n_draft <= 0 or n_target <= 0:
        raise ValueError(f"parameter counts must be positive, got {n_draft}, {n_target}")
    return float(n_draft) / float(n_target)


def mbsu(tau: float, gamma: int, n_draft: int, n_target: int) -> float:
    """Memory-bound speed-up: :func:`speedup` with ``c = N_draft / N_target``."""
    return speedup(tau, gamma, cost_ratio_from_params(n_draft, n_target))


def _blocks(results: Sequence) -> tuple[list[int], list[int]]:
    accepted: list[int] = []
    drafted: list[int] = []
    for r in results:
        acc = list(getattr(r, "accepted"))
        dr = list(getattr(r, "drafted", None) or [None] * len(acc))  # None: gamma drafted
        if len(dr) != len(acc):
            raise ValueError(f"a result has {len(acc)} accepted counts but {len(dr)} drafted counts")
        for a, d in zip(acc, dr):
            accepted.append(int(a))
            drafted.append(int(d) if d is not None else -1)
    return accepted, drafted


def per_position_acceptance(results: Sequence, gamma: int | None = None) -> np.ndarray:
    """Acceptance rate at each draft position, given that the position was reached.

    ``out[i]`` is the fraction of blocks in which the draft token at position ``i + 1``
    was accepted, among blocks that drafted at least ``i + 1`` tokens and accepted the
    first ``i``. Positions never reached are ``nan``. ``results`` are speculative results
    (objects with ``accepted`` and ``drafted`` lists, one entry per verification block).
    """
    accepted, drafted = _blocks(results)
    if gamma is None:
        gamma = max([d for d in drafted if d >= 0] + accepted + [1])
    gamma = _check_gamma(gamma)
    reached = np.zeros(gamma)
    passed = np.zeros(gamma)
    for a, d in zip(accepted, drafted):
        n_drafted = gamma if d < 0 else min(d, gamma)
        # positions 0..a-1 accepted; position a (if drafted) reached and rejected
        top = min(a + 1, n_drafted)
        reached[:top] += 1
        passed[: min(a, n_drafted)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(reached > 0, passed / np.maximum(reached, 1), np.nan)


def acceptance_rate(results: Sequence) -> float:
    """Pooled per-token acceptance ``alpha``: accepted drafts over reached drafts.

    This is the maximum-likelihood ``alpha`` of the i.i.d. model behind
    :func:`expected_tau` (each reached draft is one Bernoulli trial).
    """
    accepted, drafted = _blocks(results)
    trials = sum(min(a + 1, d if d >= 0 else a + 1) for a, d in zip(accepted, drafted))
    if trials == 0:
        return float("nan")
    return float(sum(accepted) / trials)


def mean_tau(results: Sequence) -> float:
    """Block efficiency pooled over results: total tokens over total target calls."""
    return pooled_tau(sum(len(r.tokens) for r in results), sum(r.target_calls for r in results))


def pooled_tau(tokens, target_calls) -> float:
    """Block efficiency pooled over prompts: total tokens over total target calls (not the
    mean of per-prompt tau, which would weigh a short answer like a long one). Takes counts
    or sequences of counts (e.g. the ``tokens`` and ``target_calls`` columns of a tau table)."""
    tokens = float(sum(tokens)) if hasattr(tokens, "__iter__") else float(tokens)
    calls = float(sum(target_calls)) if hasattr(target_calls, "__iter__") else float(target_calls)
    if calls == 0:
        raise ValueError("no target calls")
    return tokens / calls


def expected_target_calls(accept: Sequence[float], gamma: int, *, budget: int | None = None) -> float:
    """Expected target calls speculative decoding makes to write an answer of
    ``L = len(accept)`` tokens, when the draft at answer position ``t`` is accepted with
    probability ``accept[t]``, independently given the answer.

    Follows :func:`draftalign.speculative.speculative_generate` block for block: a block at
    position ``t`` drafts ``g = min(gamma, budget - t - 1)`` tokens, accepts a leading run
    of them and adds one target token (a correction or the bonus), so it moves ``k + 1``
    positions when ``k`` drafts are accepted; the answer's end (its last token, EOS or the
    budget) ends the last block. ``E[t] = 1 + sum_k P_t(k) E[t + k + 1]``, ``E[>= L] = 0``;
    ``L / E[0]`` is the answer's expected tau. With 0/1 entries (greedy: does the draft's
    argmax equal the target's token) this is the exact count of a greedy replay.

    Given the target's answer, the acceptance at a drafted position is exactly
    ``min(1, q(x_t) / p(x_t))`` for the token ``x_t`` the target wrote (speculative sampling
    accepts with probability ``min(p, q)(x)`` and outputs ``x`` with probability ``p(x)``),
    and these events are independent given the answer: with those entries the expected
    calls are exact, their mean over the target's sampled answers unbiased.
    """
    gamma = _check_gamma(gamma)
    a = np.asarray(accept, dtype=float)
    n = len(a)
    if n == 0:
        return 0.0
    if ((a < 0) | (a > 1) | np.isnan(a)).any():
        raise ValueError("acceptance probabilities must lie in [0, 1]")
    budget = n if budget is None else int(budget)
    if budget < n:
        raise ValueError(f"budget {budget} is below the answer's {n} tokens")
    calls = np.zeros(n + gamma + 2)  # calls[t]: expected calls from position t (0 at and past the end)
    for t in range(n - 1, -1, -1):
        g = min(gamma, budget - t - 1)
        total, reach = 1.0, 1.0  # reach: probability the first k drafts were all accepted
        for k in range(g + 1):
            if t + k >= n:  # the answer ended inside this block: nothing left to write
                break
            stop = reach * (1.0 - a[t + k]) if k < g else reach  # k drafts accepted, then a rejection (or all g)
            total += stop * calls[min(n, t + k + 1)]
            reach *= a[t + k]
        calls[t] = total
    return float(calls[0])
