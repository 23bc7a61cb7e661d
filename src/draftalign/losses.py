"""Knowledge-distillation losses between the target's and the draft's next-token
distributions, per position.

Reads logits ``[B, T, V]``; writes nothing. Every registered loss has the signature
``loss(draft_logits, target_logits, mask=None, *, labels=None, **options) -> [B, T]`` (``labels``
``[B, T]``: the next token in the data, which only some estimators read): ``p`` comes from the
target's logits, ``q`` from the draft's, masked positions (``mask == 0``) are exactly 0,
and gradients flow into the draft's logits only. Chapter 4 derives them (equations
``fkl``, ``rkl``, ``tvd``, ``tvd-grad``, ``tvdpp``) and trains a draft with each.

Memory: only masked-in positions are computed, in chunks of positions; when the selected
positions hold more than ``CHECKPOINT_ABOVE`` logits, each chunk's fp32 softmaxes are
recomputed in the backward pass (activation checkpointing) instead of being kept, so what
a loss adds to memory stays at a few ``[chunk, V]`` tensors whatever ``B * T`` is. The
logits themselves are the caller's: :func:`draftalign.distill.answer_logits` builds one
``[n, V]`` tensor for the draft (and one for an online target) before any loss runs. The
``textbook_*`` functions are the plain textbook versions the tests compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["fkl", "rkl", "tvd", "jsd", "tvdpp", "LOSSES", "get_loss", "check_options",
           "textbook_fkl", "textbook_rkl", "textbook_tvd"]

CHUNK = 512  # positions per chunk
CHECKPOINT_ABOVE = 2**28  # recompute chunks in backward only when N * V exceeds this (1 GiB of fp32)


def _select(draft_logits, target_logits, mask):
    """Flatten ``[B, T, V]`` to the masked-in rows ``[N, V]``; returns their flat indices."""
    if draft_logits.shape != target_logits.shape:
        raise ValueError(f"draft logits {tuple(draft_logits.shape)} and target logits "
                         f"{tuple(target_logits.shape)} differ in shape")
    if draft_logits.dim() != 3:
        raise ValueError(f"expected logits [B, T, V], got {tuple(draft_logits.shape)}")
    B, T, V = draft_logits.shape
    if mask is None:
        idx = torch.arange(B * T, device=draft_logits.device)
    else:
        if mask.shape != (B, T):
            raise ValueError(f"mask must be [B, T] = [{B}, {T}], got {tuple(mask.shape)}")
        idx = mask.reshape(-1).nonzero().squeeze(1)
    return draft_logits.reshape(-1, V), target_logits.reshape(-1, V).detach(), idx


def _scatter(values: torch.Tensor, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    B, T, _ = like.shape
    out = torch.zeros(B * T, dtype=values.dtype, device=values.device)
    return out.index_put((idx,), values).view(B, T)


def _chunked(fn, draft, target, idx, *extra) -> torch.Tensor:
    """Apply ``fn(draft_rows, target_rows, *extra_rows) -> [n]`` to the rows ``idx`` in chunks."""
    parts = []
    recompute = len(idx) * draft.shape[-1] > CHECKPOINT_ABOVE
    for start in range(0, len(idx), CHUNK):
        rows = idx[start:start + CHUNK]
        args = (draft[rows], target[rows], *(e[start:start + CHUNK] for e in extra))
        if recompute and torch.is_grad_enabled() and draft.requires_grad:
            parts.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            parts.append(fn(*args))
    return torch.cat(parts) if parts else draft.new_zeros(0, dtype=torch.float32)


def _per_position(fn, draft_logits, target_logits, mask):
    draft, target, idx = _select(draft_logits, target_logits, mask)
    return _scatter(_chunked(fn, draft, target, idx), idx, draft_logits)


# -- the losses, one row at a time (rows: [n, V] logits) ---------------------------------

def _fkl_rows(d, t):
    logq, logp = F.log_softmax(d.float(), -1), F.log_softmax(t.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def _rkl_rows(d, t):
    logq, logp = F.log_softmax(d.float(), -1), F.log_softmax(t.float(), -1)
    return (logq.exp() * (logq - logp)).sum(-1)


def _tvd_rows(d, t):
    return 0.5 * (F.softmax(d.float(), -1) - F.softmax(t.float(), -1)).abs().sum(-1)


def fkl(draft_logits, target_logits, mask=None, *, labels=None) -> torch.Tensor:
    """Forward KL, ``KL(p || q) = sum_x p log(p / q)`` (eq. ``fkl``): cross-entropy against
    the target's distribution minus its entropy; mass-covering."""
    return _per_position(_fkl_rows, draft_logits, target_logits, mask)


def rkl(draft_logits, target_logits, mask=None, *, labels=None) -> torch.Tensor:
    """Reverse KL, ``KL(q || p) = sum_x q log(q / p)`` (eq. ``rkl``); mode-seeking."""
    return _per_position(_rkl_rows, draft_logits, target_logits, mask)


def tvd(draft_logits, target_logits, mask=None, *, labels=None) -> torch.Tensor:
    """Total variation distance ``(1/2) sum_x |p - q| = 1 - sum_x min(p, q)`` (eq. ``tvd``):
    one minus the probability that speculative sampling accepts the draft's token."""
    return _per_position(_tvd_rows, draft_logits, target_logits, mask)


def jsd(draft_logits, target_logits, mask=None, *, beta: float = 0.5, labels=None) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence ``beta KL(p || m) + (1 - beta) KL(q || m)``,
    ``m = beta p + (1 - beta) q`` (as in DistillSpec / GKD), ``beta`` in [0, 1].

    At the endpoints the divergence itself vanishes (``m`` becomes ``q`` or ``p``); what
    tends to a limit is ``JSD / beta -> KL(p || q)`` and ``JSD / (1 - beta) -> KL(q || p)``,
    so, as is usual (GKD, TRL), ``beta = 0`` gives FKL and ``beta = 1`` gives RKL.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta!r}")
    if beta == 0.0:
        return fkl(draft_logits, target_logits, mask)
    if beta == 1.0:
        return rkl(draft_logits, target_logits, mask)

    def rows(d, t):
        logq, logp = F.log_softmax(d.float(), -1), F.log_softmax(t.float(), -1)
        logm = torch.logsumexp(torch.stack([logp + torch.log(torch.tensor(beta)),
                                            logq + torch.log(torch.tensor(1 - beta))]), 0)
        return beta * (logp.exp() * (logp - logm)).sum(-1) + (1 - beta) * (logq.exp() * (logq - logm)).sum(-1)

    return _per_position(rows, draft_logits, target_logits, mask)


# -- TVD++ -------------------------------------------------------------------------------

def tvdpp(draft_logits, target_logits, mask=None, *, estimator: str = "exact", normalize: str = "position",
          baseline: bool = True, num_samples: int = 4, labels=None, eps: float = 1e-6,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """TVD++: TVD's policy gradient with a baseline and a normalised advantage (eq. ``tvdpp``).

    The gradient of TVD is ``-E_{x~q}[r(x) grad log q(x)]`` with reward
    ``r(x) = 1[p(x) > q(x)]`` (eq. ``tvd-grad``). TVD++ replaces ``r`` by the advantage
    ``A = (r - b) / (sigma + eps)``: baseline ``b`` (the mean reward, if ``baseline``) and
    scale ``sigma`` (the reward's standard deviation), both held constant
    (computed without gradient: a stop-gradient).

    ``estimator`` says how the expectation over ``x`` is taken:

    - ``"exact"`` (default): in closed form over the whole vocabulary, ``b`` and ``sigma`` the
      mean and standard deviation of ``r`` under ``q_t`` at each position. Its gradient is
      ``grad TVD_t / sigma_t``: TVD's, reweighted towards positions where the reward under the
      draft is nearly constant.
    - ``"sampled"``: ``num_samples`` tokens drawn from ``q_t`` per position (REINFORCE).
    - ``"data"``: the token that follows in the data (``labels [B, T]``, the target's own
      sample), which makes the estimate a reward-weighted forward KL.

    ``normalize``: ``"position"`` (statistics per position; for ``"sampled"``/``"data"`` the
    reward's exact mean/std under ``q_t``), ``"batch"`` (over all masked-in positions and
    samples), or ``"none"`` (``sigma = 1``). With the exact estimator a batch-level baseline and
    scale cannot change the gradient's direction (``sum_x grad q(x) = 0``); they matter only
    for sampled estimates.

    The returned per-position *value* is TVD itself (1 - acceptance, for logging); its
    gradient is the TVD++ estimate.
    """
    if estimator not in ("exact", "sampled", "data"):
        raise ValueError(f"estimator must be 'exact', 'sampled' or 'data', got {estimator!r}")
    if normalize not in ("position", "batch", "none"):
        raise ValueError(f"normalize must be 'position', 'batch' or 'none', got {normalize!r}")
    if estimator == "data" and labels is None:
        raise ValueError("estimator='data' needs labels [B, T]: the next token at each position")
    draft, target, idx = _select(draft_logits, target_logits, mask)

    # 1. rewards and their statistics under q, without gradient: [n] each
    def stats_rows(d, t):
        q, p = F.softmax(d.float(), -1), F.softmax(t.float(), -1)
        r = (p > q).float()
        mean = (q * r).sum(-1)
        return torch.stack([mean, mean * (1 - mean)], -1)  # mean and variance of a Bernoulli

    with torch.no_grad():
        st = _chunked(lambda d, t: stats_rows(d, t), draft.detach(), target, idx)
        st = st.view(-1, 2) if st.numel() else st.new_zeros(0, 2)
        mean_t, var_t = st[:, 0], st[:, 1]
        if estimator == "exact":
            tokens = None
        elif estimator == "sampled":
            # drawn on the generator's device (a CPU generator gives the same tokens on any device)
            where = generator.device if generator is not None else draft.device
            tokens = torch.cat([torch.multinomial(F.softmax(draft[idx[s:s + CHUNK]].detach().float(), -1).to(where),
                                                  num_samples, replacement=True, generator=generator).to(draft.device)
                                for s in range(0, len(idx), CHUNK)]) if len(idx) else idx.new_zeros(0, num_samples)
        else:
            tokens = labels.reshape(-1)[idx].unsqueeze(1)  # [n, 1]
        if normalize == "batch" and len(idx) and tokens is not None:  # over the sampled rewards
            r = _rewards(draft.detach(), target, idx, tokens)
            b, sigma = r.mean().expand_as(mean_t), r.std(unbiased=False).expand_as(mean_t)
            b = b if baseline else torch.zeros_like(b)
            scale = 1.0 / (sigma + eps)
        else:
            b, scale = reward_baseline_and_scale(mean_t, var_t, normalize, baseline, eps)

    # 2. the surrogate whose gradient is the estimate; its value is replaced by TVD
    def surrogate_rows(d, t, b_rows, scale_rows, *tok):
        logq = F.log_softmax(d.float(), -1)
        # q exactly as in the statistics above: exp(log_softmax) can round differently, and a
        # reward flipped by rounding where p == q would meet a scale of 1 / eps
        q, p = F.softmax(d.float(), -1), F.softmax(t.float(), -1)
        value = 0.5 * (q - p).abs().sum(-1)
        if not tok:
            adv = ((p > q).float() - b_rows[:, None]) * scale_rows[:, None]  # [n, V]
            surr = -((q * adv).detach() * logq).sum(-1)
        else:
            x = tok[0]  # [n, K]
            r = (p.gather(-1, x) > q.gather(-1, x)).float()
            adv = (r - b_rows[:, None]) * scale_rows[:, None]
            surr = -(adv.detach() * logq.gather(-1, x)).mean(-1)
        return value.detach() + surr - surr.detach()

    extra = (b, scale) if tokens is None else (b, scale, tokens)
    out = _chunked(surrogate_rows, draft, target, idx, *extra)
    return _scatter(out, idx, draft_logits)


def reward_baseline_and_scale(mean, var, normalize: str, baseline: bool, eps: float):
    """TVD++'s baseline ``b`` and ``1 / (sigma + eps)`` per position (``[n]`` each) from the
    reward's exact mean and variance under ``q`` at each position: per position, over the
    batch (q-weighted: the mixture's mean and variance), or unscaled (``"none"``)."""
    if normalize == "batch" and len(mean):
        b = mean.mean().expand_as(mean)
        sigma = (var + (mean - b) ** 2).mean().sqrt().expand_as(mean)
    elif normalize == "position":
        b, sigma = mean, var.sqrt()
    else:
        b, sigma = mean, torch.ones_like(mean)
    if not baseline:
        b = torch.zeros_like(b)
    return b, 1.0 / (sigma + eps)


def _rewards(draft, target, idx, tokens) -> torch.Tensor:
    """``1[p(x) > q(x)]`` for the given tokens ``[n, K]`` at rows ``idx``."""
    out = []
    for s in range(0, len(idx), CHUNK):
        rows, x = idx[s:s + CHUNK], tokens[s:s + CHUNK]
        q, p = F.softmax(draft[rows].float(), -1), F.softmax(target[rows].float(), -1)
        out.append((p.gather(-1, x) > q.gather(-1, x)).float())
    return torch.cat(out)


LOSSES = {"fkl": fkl, "rkl": rkl, "tvd": tvd, "tvd++": tvdpp, "jsd": jsd}


def get_loss(name: str):
    """A registered loss by name (``fkl``, ``rkl``, ``tvd``, ``tvd++``, ``jsd``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
    return LOSSES[name]


def check_options(name: str, options: dict) -> None:
    """Raise ``ValueError`` naming any option the loss ``name`` does not take (a misspelt
    ``normalise="batch"`` must not be ignored)."""
    import inspect

    params = inspect.signature(get_loss(name)).parameters
    allowed = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "labels")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"loss {name!r} takes no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(allowed) or 'none'}")


# -- plain textbook versions (full [B, T, V] tensors, no chunking) ------------------------

def textbook_fkl(draft_logits, target_logits, mask=None):
    logp, logq = target_logits.float().log_softmax(-1), draft_logits.float().log_softmax(-1)
    out = (logp.exp() * (logp - logq)).sum(-1)
    return out if mask is None else out * mask


def textbook_rkl(draft_logits, target_logits, mask=None):
    logp, logq = target_logits.float().log_softmax(-1), draft_logits.float().log_softmax(-1)
    out = (logq.exp() * (logq - logp)).sum(-1)
    return out if mask is None else out * mask


def textbook_tvd(draft_logits, target_logits, mask=None):
    out = 0.5 * (draft_logits.float().softmax(-1) - target_logits.float().softmax(-1)).abs().sum(-1)
    return out if mask is None else out * mask
