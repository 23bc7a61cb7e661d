"""KD losses against a *cached* target: its top-k log-probabilities, never a ``[n, V]`` tensor.

Reads the draft's logits ``[n, V]`` at answer positions and the target's cached top-k
(``ids [n, k]``, ``logprobs [n, k]``, from :func:`draftalign.answers.load_topk`); writes
nothing. This module is the one home of the cached target: :func:`expand_topk` builds it as a
full distribution, :func:`restrict_topk` at a sub-vocabulary's tokens, and the closed forms
below use it without building it:
the k kept tokens with their probabilities, the rest of the mass ``1 - sum_k p_k`` spread
evenly over the other ``V - k`` tokens. Under that distribution every loss of
:mod:`draftalign.losses` has a closed form in a few sums over the draft's row, so this
module computes the same values and gradients as ``loss(draft, expand_topk(...))`` while
reading each ``[n, V]`` row a handful of times instead of building, normalising and
differencing two full distributions. On a 2-core CPU an FKL distillation step ran about
1.85 times as fast (Chapter 4 times each loss); tests check values and gradients against
the generic path.

With ``u`` the tail probability and ``q = softmax(d)``:

- ``fkl = sum_k p_k (log p_k - log q_k) + u sum_tail (log u - log q_j)``; gradient ``q - p``;
- ``rkl = sum_j q_j log q_j - sum_k q_k log p_k - (1 - sum_k q_k) log u``;
  gradient ``q_i (log q_i - log p_i - rkl)``;
- ``tvd = (1/2) sum_j |q_j - p_j|``; gradient ``(1/2) q_i (s_i - sum_j q_j s_j)``, ``s = sign(q - p)``;
- ``tvd++`` (the exact estimator of :func:`draftalign.losses.tvdpp`): value TVD, gradient
  ``-(w_i - q_i sum_j w_j)`` with ``w = q (r - b) / (s + eps)``, ``r = 1[p > q]``.
"""

from __future__ import annotations

import torch

from .losses import reward_baseline_and_scale

__all__ = ["CACHED_LOSSES", "cached_loss", "tail_logprob", "topk_top1", "expand_topk", "restrict_topk"]

CHUNK = 256  # rows per chunk: a [256, 49152] fp32 block is 48 MiB
CACHED_LOSSES = ("fkl", "rkl", "tvd", "tvd++")


def tail_logprob(logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[n]``: the log-probability of each token outside a top-k ``[n, k]``, the remaining
    mass spread evenly over the other ``V - k`` tokens."""
    rest = (1 - logprobs.float().exp().sum(-1)).clamp(min=1e-8)
    return torch.log(rest / (vocab_size - logprobs.shape[-1]))


def topk_top1(ids: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """``[n]``: the target's most likely token at each position of a cached top-k ``[n, k]``
    (the greedy label the cache holds; the top-k need not be sorted)."""
    return ids.gather(1, logprobs.argmax(-1, keepdim=True))[:, 0].long()


def expand_topk(ids: torch.Tensor, logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Full log-probabilities ``[n, V]`` from a top-k ``[n, k]``: the k kept tokens get their
    log-probabilities, the remaining mass is spread evenly over the other ``V - k`` tokens.
    This is the cached-target approximation; Chapter 4 compares it with the exact target."""
    n = ids.shape[0]
    out = tail_logprob(logprobs, vocab_size)[:, None].expand(n, vocab_size).clone()
    return out.scatter_(1, ids.long(), logprobs.float())


def restrict_topk(ids: torch.Tensor, logprobs: torch.Tensor, vocab_size: int, to_sub: torch.Tensor,
                  sub_size: int) -> torch.Tensor:
    """The cached target's log-probabilities ``[n, K]`` at the ``K`` tokens of a
    sub-vocabulary (``to_sub``: the full vocabulary's ids to rows, ``K`` for tokens outside):
    the columns of :func:`expand_topk` that the sub-vocabulary keeps, without building
    ``[n, V]``. They sum to less than 1; the losses renormalise them."""
    n = ids.shape[0]
    out = tail_logprob(logprobs, vocab_size)[:, None].expand(n, sub_size + 1).clone()
    out.scatter_(1, to_sub[ids.long()], logprobs.float())  # kept top-k tokens; the others land in column K
    return out[:, :sub_size]


def _target_parts(logprobs: torch.Tensor, V: int):
    """Normalised top-k probabilities ``[c, k]``, their logs, tail probability ``u [c]`` and
    ``log u`` (as :func:`expand_topk` followed by a softmax gives them)."""
    p = logprobs.float().exp()
    if p.shape[-1] == V:  # every token kept: no tail (its terms vanish for any finite log u)
        p = p / p.sum(-1, keepdim=True)
        zero = p.new_zeros(len(p))
        return p, p.log(), zero, zero
    rest = (1 - p.sum(-1)).clamp(min=1e-8)  # the flat tail's mass, as tail_logprob spreads it
    total = p.sum(-1) + rest
    u = rest / (V - p.shape[-1]) / total
    p = p / total[:, None]
    return p, p.log(), u, u.log()


def _forward_rows(d, ids, logprobs, mode):
    """Per row ``[c]``: the loss value, log Z, the TVD, and (for tvd++, else zeros) the
    mean and variance of the reward ``r = 1[p > q]`` under ``q``."""
    V = d.shape[-1]
    p_k, logp_k, u, logu = _target_parts(logprobs, V)
    d = d.float()
    logz = torch.logsumexp(d, -1)  # [c]
    q = (d - logz[:, None]).exp_()  # [c, V]
    q_k = q.gather(1, ids)  # [c, k]
    # every token as if its target mass were u, then the k kept ones corrected
    tvd = 0.5 * ((q - u[:, None]).abs_().sum(-1) - (q_k - u[:, None]).abs().sum(-1) + (q_k - p_k).abs().sum(-1))
    if mode == "tvd++":  # E_q[r]: the tail's reward is 1[u > q], the kept tokens' 1[p > q]
        mean = (q * (q < u[:, None])).sum(-1) - (q_k * (q_k < u[:, None])).sum(-1) + (q_k * (p_k > q_k)).sum(-1)
    else:  # only TVD++ uses the reward's statistics
        mean = torch.zeros_like(tvd)
    if mode == "fkl":
        logq_k = d.gather(1, ids) - logz[:, None]
        sum_logq_tail = d.sum(-1) - V * logz - logq_k.sum(-1)
        value = (p_k * (logp_k - logq_k)).sum(-1) + u * ((V - ids.shape[-1]) * logu - sum_logq_tail)
    elif mode == "rkl":
        neg_entropy = (q * d).sum(-1) - logz
        value = neg_entropy - (q_k * logp_k).sum(-1) - (1 - q_k.sum(-1)) * logu
    else:  # tvd and tvd++ both report the TVD
        value = tvd
    return value, logz, tvd, mean, mean * (1 - mean)


def _grad_rows(d, ids, logprobs, mode, logz, value, b, scale):
    """The gradient ``[c, V]`` of each row's value (tvd++: of its surrogate) w.r.t. ``d``."""
    V = d.shape[-1]
    p_k, logp_k, u, logu = _target_parts(logprobs, V)
    d = d.float()
    q = (d - logz[:, None]).exp_()
    if mode == "fkl":  # q - p
        g = q.sub_(u[:, None])
        return g.scatter_add_(1, ids, u[:, None] - p_k)
    q_k = q.gather(1, ids)
    if mode == "rkl":  # q (log q - log p - rkl)
        g = q * (d - (logz + logu + value)[:, None])
        return g.scatter_add_(1, ids, -q_k * (logp_k - logu[:, None]))
    if mode == "tvd":  # (1/2) q (s - sum q s), s = sign(q - p)
        qs = q * torch.sign(q - u[:, None])
        qs.scatter_(1, ids, q_k * torch.sign(q_k - p_k))
        return 0.5 * (qs - q * qs.sum(-1, keepdim=True))
    # tvd++: surrogate -sum_x w_x log q_x with w = q (r - b) scale held constant
    r = (q < u[:, None]).float()
    r.scatter_(1, ids, (p_k > q_k).float())
    w = q * r.sub_(b[:, None]).mul_(scale[:, None])
    return w.sub_(q * w.sum(-1, keepdim=True)).neg_()


class _CachedLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, ids, logprobs, mode, normalize, baseline, eps):
        parts = [_forward_rows(d[s:s + CHUNK], ids[s:s + CHUNK], logprobs[s:s + CHUNK], mode)
                 for s in range(0, len(d), CHUNK)]
        value, logz, tvd, mean, var = (torch.cat(x) for x in zip(*parts))
        b, scale = reward_baseline_and_scale(mean, var, normalize, baseline, eps)
        ctx.save_for_backward(d, ids, logprobs, logz, value, b, scale)
        ctx.mode = mode
        ctx.mark_non_differentiable(tvd)
        return value, tvd

    @staticmethod
    def backward(ctx, grad_value, _grad_tvd):
        d, ids, logprobs, logz, value, b, scale = ctx.saved_tensors
        grad = torch.empty_like(d)
        for s in range(0, len(d), CHUNK):
            e = s + CHUNK
            g = _grad_rows(d[s:e], ids[s:e], logprobs[s:e], ctx.mode, logz[s:e], value[s:e], b[s:e], scale[s:e])
            grad[s:e] = g.mul_(grad_value[s:e, None])  # tvd++: the surrogate's, scaled alike
        return grad, None, None, None, None, None, None


def cached_loss(name: str, draft_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, *,
                normalize: str = "position", baseline: bool = True, eps: float = 1e-6, estimator: str = "exact"):
    """Per-row loss ``[n]`` and per-row TVD ``[n]`` (no gradient) of draft logits ``[n, V]``
    against the cached target top-k (``ids [n, k]``, ``logprobs [n, k]``).

    ``name``: one of :data:`CACHED_LOSSES`; ``tvd++`` is the exact estimator of
    :func:`draftalign.losses.tvdpp` with the same ``normalize``, ``baseline`` and ``eps``
    (other estimators need the full target: use :func:`draftalign.distill.expand_topk`).
    Values and gradients equal those of the registered loss on the expanded target.
    """
    if name not in CACHED_LOSSES:
        raise ValueError(f"no cached form of loss {name!r}; cached losses: {list(CACHED_LOSSES)}")
    if estimator != "exact":
        raise ValueError(f"the cached tvd++ supports only estimator='exact', got {estimator!r}")
    if normalize not in ("position", "batch", "none"):
        raise ValueError(f"normalize must be 'position', 'batch' or 'none', got {normalize!r}")
    if draft_logits.dim() != 2 or topk_ids.shape != topk_logprobs.shape or topk_ids.shape[0] != draft_logits.shape[0]:
        raise ValueError(f"expected logits [n, V] with top-k ids and log-probs [n, k], got "
                         f"{tuple(draft_logits.shape)}, {tuple(topk_ids.shape)}, {tuple(topk_logprobs.shape)}")
    return _CachedLoss.apply(draft_logits, topk_ids.long(), topk_logprobs, name, normalize, baseline, eps)
