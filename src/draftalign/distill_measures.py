"""Chapter 4's measurements of distillation: how noisy each gradient estimator of a loss is,
how many answer tokens a run trains on, and the acceptance ceilings a sub-vocabulary head
puts on held-out answers.

Reads logits, distillation examples and the target; writes nothing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from .distill import answer_logits, distill_examples
from .train import Batches

__all__ = ["token_budget", "logit_gradient", "gradient_variance", "sub_vocab_ceilings"]


def token_budget(examples: Sequence[dict]) -> int:
    """Answer tokens in a list of examples (what one epoch of distillation trains on)."""
    return sum(sum(e["loss_mask"]) for e in examples)


def logit_gradient(loss: Callable, draft_logits: torch.Tensor, target_logits: torch.Tensor, *,
                   labels: torch.Tensor | None = None, seed: int = 0, **options) -> torch.Tensor:
    """The gradient of ``loss(draft_logits, target_logits).sum()`` with respect to the
    draft's logits ``[B, T, V]``, flattened to ``[B * T * V]``.

    ``loss``: a registered loss (:data:`draftalign.losses.LOSSES`); ``labels [B, T]`` and
    ``options`` are passed on, and a generator seeded with ``seed`` to losses that sample
    (``generator`` in their signature), so each seed is one draw of a sampled estimator.
    """
    z = draft_logits.detach().clone().requires_grad_(True)
    params = inspect.signature(loss).parameters
    if "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        options = {**options, "generator": torch.Generator().manual_seed(seed)}  # CPU: the same draws on any device
    loss(z, target_logits, None, labels=labels, **options).sum().backward()
    return z.grad.flatten()


def gradient_variance(estimators: dict[str, tuple[Callable, dict]], draft_logits: torch.Tensor,
                      target_logits: torch.Tensor, *, labels: torch.Tensor | None = None,
                      seeds: int = 16) -> pd.DataFrame:
    """How noisy, and how far from TVD's, each gradient estimator is on one batch.

    ``estimators``: ``{name: (loss, options)}``, e.g. ``(tvdpp, {"estimator": "sampled"})``.
    Each is evaluated with seeds ``0 .. seeds - 1`` (:func:`logit_gradient`). One row per
    estimator: ``relative variance`` ``E||g - g_mean||^2 / ||g_mean||^2`` across seeds (0 up to
    rounding for an exact estimator) and ``cosine of mean with TVD gradient`` (the exact
    gradient of :func:`draftalign.losses.tvd`, book eq. ``tvd-grad``); both ``nan`` when
    the mean gradient is 0 (every sampled reward the same: no signal). An estimator whose
    first two seeds give the same gradient bit for bit draws nothing (exact, or the data's
    token): it is not evaluated again, and its variance is 0.
    """
    from .losses import tvd

    reference = logit_gradient(tvd, draft_logits, target_logits, labels=labels)  # [B * T * V]
    rows = []
    for name, (loss, options) in estimators.items():
        first = [logit_gradient(loss, draft_logits, target_logits, labels=labels, seed=seed, **options)
                 for seed in range(min(seeds, 2))]
        if len(first) == 2 and torch.equal(*first):  # deterministic: the mean is any one of them
            mean, spread = first[0], 0.0
        else:
            grads = torch.stack(first + [logit_gradient(loss, draft_logits, target_logits, labels=labels,
                                                        seed=seed, **options)
                                         for seed in range(2, seeds)])  # [seeds, B * T * V]
            mean = grads.mean(0)
            spread = ((grads - mean) ** 2).sum(1).mean().item()
        size = (mean.norm() ** 2).item()
        rows.append({"estimator": name,
                     "relative variance": spread / size if size else float("nan"),
                     "cosine of mean with TVD gradient":
                         # in fp64: an fp32 cosine of two equal long vectors can print 1.001
                         torch.nn.functional.cosine_similarity(mean.double(), reference.double(), 0).item()
                         if size else float("nan")})
    return pd.DataFrame(rows).set_index("estimator")


@torch.no_grad()
def sub_vocab_ceilings(target, rows, keep: torch.Tensor, *, max_length: int | None = None, pad_id: int = 0,
                       batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ceilings a sub-vocabulary ``S = keep`` puts on acceptance (book eq.
    ``subvocab-ceiling``), at every answer position of ``rows`` (a distillation dataset),
    with the exact target.

    Returns ``p(S)`` ``[n]``, the target's probability on the kept tokens (``1 - TVD`` of a
    draft that is 0 outside ``S`` cannot exceed it: the ceiling on sampled acceptance), and
    ``[n]`` 1.0 where the target's most likely token is in ``S``, else 0.0 (the ceiling on
    greedy acceptance). Positions as in training: :func:`distill_examples` with ``max_length``.
    """
    device = next(target.parameters()).device
    data = Batches(distill_examples(rows, max_length=max_length), pad_id=pad_id)
    in_s = None
    mass, top_in = [], []
    for start in range(0, len(data), batch_size):
        b = {k: v.to(device) for k, v in data.get(list(range(start, min(len(data), start + batch_size)))).items()}
        pos = b["loss_mask"][:, 1:].bool()
        probs = answer_logits(target, b["input_ids"], b["attention_mask"], pos)[0].float().softmax(-1)  # [n, V]
        if in_s is None:
            in_s = torch.zeros(probs.shape[-1], dtype=torch.bool, device=device)
            in_s[torch.as_tensor(keep, device=device)] = True
        mass.append(probs[:, in_s].sum(-1))
        top_in.append(in_s[probs.argmax(-1)])
    return torch.cat(mass), torch.cat(top_in).float()
