"""The sampling primitives of speculative decoding: warped distributions and the
accept / reject / residual step.

Reads and writes nothing. :mod:`draftalign.speculative` calls these on every block;
Chapter 1 derives them (the acceptance rule, eq. ``accept``; the residual, eq.
``residual``) and the tests check them on hand-made distributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["warp", "sample", "verify_block", "verify_block_greedy", "BlockOutcome"]


def _check_sampling(temperature: float, top_p: float) -> None:
    if not temperature >= 0:  # also refuses NaN
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")


def warp(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities after temperature and nucleus (top-p) filtering, in fp32.

    ``logits`` ``[..., V]`` -> probabilities ``[..., V]``. The same warp is applied to
    the target's and the draft's logits, so speculative sampling reproduces the warped
    target distribution exactly. ``temperature`` must be > 0 here (greedy decoding does
    not sample). Top-p keeps the smallest set of most likely tokens whose mass reaches
    ``top_p`` (the token that crosses the threshold included) and renormalises.
    """
    _check_sampling(temperature, top_p)
    if temperature == 0:
        raise ValueError("warp() needs temperature > 0; greedy decoding uses argmax")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly better tokens
        sorted_p = torch.where(mass_before < top_p, sorted_p, torch.zeros_like(sorted_p))
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token id drawn from a ``[V]`` probability vector (on the generator's device: a
    CPU generator gives the same draws whichever device the probabilities live on)."""
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclass(frozen=True)
class BlockOutcome:
    """Result of verifying one block: ``n_accepted`` drafts kept, then ``next_token``
    (the residual sample after a rejection, or the bonus token if all were accepted)."""

    n_accepted: int
    next_token: int

    def tokens(self, draft_tokens) -> list[int]:
        return [int(t) for t in draft_tokens[: self.n_accepted]] + [self.next_token]


def verify_block(p: torch.Tensor, q: torch.Tensor, draft_tokens, generator=None) -> BlockOutcome:
    """The speculative sampling step (Leviathan et al. 2023; Chen et al. 2023).

    ``p``: target probabilities ``[gamma + 1, V]`` (row ``i`` is the distribution of the
    token after ``i`` drafts); ``q``: draft probabilities ``[gamma, V]`` from which
    ``draft_tokens`` (``gamma`` ids) were sampled. Draft ``x_i`` is accepted with
    probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection the next token is
    drawn from ``norm(max(0, p_i - q_i))``; if all are accepted, a bonus token is drawn
    from ``p_{gamma+1}``. The emitted tokens are distributed exactly as the target's.
    """
    gamma = len(draft_tokens)
    if p.shape[0] != gamma + 1 or q.shape[0] != gamma:
        raise ValueError(f"expected p [{gamma + 1}, V] and q [{gamma}, V], got "
                         f"{tuple(p.shape)} and {tuple(q.shape)}")
    for i, x in enumerate(draft_tokens):
        x = int(x)
        p_x, q_x = float(p[i, x]), float(q[i, x])
        u = float(torch.rand((), generator=generator, device=generator.device if generator is not None else p.device))
        # u < p/q  <=>  u * q < p; written without division (q_x > 0: x was drawn from q)
        if u * q_x < p_x:
            continue
        residual = torch.clamp(p[i] - q[i], min=0.0)
        total = residual.sum()
        if not total > 0:  # p == q up to rounding: rejection had probability ~0
            residual, total = p[i], p[i].sum()
        return BlockOutcome(i, sample(residual / total, generator))
    return BlockOutcome(gamma, sample(p[gamma], generator))


def verify_block_greedy(p_logits: torch.Tensor, draft_tokens) -> BlockOutcome:
    """Greedy verification: accept drafts while they equal the target's argmax.

    ``p_logits`` ``[gamma + 1, V]``. The output equals the target's own greedy decoding
    token for token (given the same logits).
    """
    gamma = len(draft_tokens)
    if p_logits.dim() != 2 or p_logits.shape[0] != gamma + 1:
        raise ValueError(f"expected p_logits [{gamma + 1}, V], got {tuple(p_logits.shape)}")
    best = p_logits.argmax(dim=-1).tolist()  # [gamma + 1]
    for i, x in enumerate(draft_tokens):
        if int(x) != best[i]:
            return BlockOutcome(i, best[i])
    return BlockOutcome(gamma, best[gamma])
