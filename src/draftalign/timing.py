"""Honest wall-clock measurements: the cost of one target pass over k new tokens, and
decoders compared in interleaved rounds.

Reads models and prompts; writes nothing. Used by Chapter 1 (why decoding is memory-bound;
the two bounds), by the later chapters' speed measurements (Chapter 4 times a loss and its
gradient, and a training step, with :func:`timed_loss_and_grad` and :func:`median_seconds`)
and by ``benchmarks/``.

Timings on a shared 2-core machine drift by several times over minutes. Two habits keep
them honest: report medians of repeats, and run the things being compared interleaved
(A, B, A, B, ...), in a rotating order, so a drift hits all of them alike; then compare
ratios measured within one round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from tqdm.std import tqdm  # plain text bars: they render in executed notebooks too
from transformers import DynamicCache

from .metrics import acceptance_rate, pooled_tau
from .models import cache_kwargs, vocab_size

__all__ = ["pass_cost", "compare_decoders", "median_seconds", "timed_loss_and_grad"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], *, repeats: int = 3, device: torch.device | None = None) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls (waiting for a CUDA
    ``device`` to finish each)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = torch.device(device or "cpu")
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_loss_and_grad(loss: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, *,
                        repeats: int = 3) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One loss-and-gradient evaluation, ``loss(z).sum().backward()``, timed: each of
    ``repeats`` runs starts from a fresh leaf copy ``z`` of ``logits`` (the copy is not
    timed). Returns the last run's value (detached) and gradient (both shaped as ``loss``'s
    output and ``logits``), and the median seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        z = logits.detach().clone().requires_grad_(True)
        _sync(z.device)
        start = time.perf_counter()
        value = loss(z)
        value.sum().backward()
        _sync(z.device)
        times.append(time.perf_counter() - start)
    return value.detach(), z.grad, statistics.median(times)


@torch.inference_mode()
def pass_cost(model, *, prefix_len: int = 64, ks: Sequence[int] = (1, 2, 4, 8, 16),
              repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Time one forward pass over ``k`` new tokens after a cached prefix of ``prefix_len``.

    This is the cost of verifying ``k - 1`` drafts at once (plus the bonus position).
    Returns one row per ``k``: median and minimum milliseconds over ``repeats``, and
    ``vs_k1``, the median relative to the first ``k`` of ``ks`` (a one-token pass with the
    default ``ks``, which start at 1). The ``k`` values are interleaved within each repeat.
    """
    device = next(model.parameters()).device
    vocab = vocab_size(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, prefix_len + max(ks)), generator=gen, device="cpu").to(device)
    cache = DynamicCache(config=model.config)
    kw = cache_kwargs(model, cache)
    model(input_ids=ids[:, :prefix_len], use_cache=True, logits_to_keep=1, **kw)
    model(input_ids=ids[:, prefix_len:prefix_len + 1], use_cache=True, **kw)  # warm-up
    cache.crop(-1)
    times = {k: [] for k in ks}
    for r in range(repeats):
        order = list(ks) if r % 2 == 0 else list(reversed(ks))
        for k in order:
            _sync(device)
            start = time.perf_counter()
            model(input_ids=ids[:, prefix_len:prefix_len + k], use_cache=True, **kw)
            _sync(device)
            times[k].append(1000 * (time.perf_counter() - start))
            cache.crop(-k)
    base = statistics.median(times[ks[0]])
    return pd.DataFrame([{"k": k, "ms_median": statistics.median(t), "ms_min": min(t),
                          "vs_k1": statistics.median(t) / base} for k, t in times.items()])


def compare_decoders(methods: dict[str, Callable], prompts: Sequence[torch.Tensor], *,
                     rounds: int = 3, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Run every decoder on every prompt, ``rounds`` times, interleaved and rotated.

    ``methods`` maps a name to ``fn(input_ids) -> GenerationResult``. The first method
    is the baseline. Returns a table (tau, acceptance alpha where drafts exist, tokens/s
    from the median round, and ``time_vs_<baseline>``: the median over rounds of the
    per-round time ratio) and the first round's results per method.
    """
    names = list(methods)
    seconds = {n: [] for n in names}
    first = {n: [] for n in names}
    bar = tqdm(total=rounds * len(names) * len(prompts), desc="decoding", disable=not progress)
    for r in range(rounds):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            total = 0.0
            for ids in prompts:
                start = time.perf_counter()
                res = methods[n](ids)
                total += time.perf_counter() - start
                if r == 0:
                    first[n].append(res)
                bar.update()
            seconds[n].append(total)
    bar.close()
    base = names[0]
    rows = []
    for n in names:
        res = first[n]
        tokens = sum(len(x.tokens) for x in res)
        calls = sum(x.target_calls for x in res)
        has_drafts = any(getattr(x, "drafted", None) for x in res)
        rows.append({
            "method": n,
            "tokens": tokens,
            "target_calls": calls,
            "tau": pooled_tau(tokens, calls),
            "alpha": acceptance_rate(res) if has_drafts else float("nan"),
            "tokens_per_s": tokens / statistics.median(seconds[n]),
            f"time_vs_{base}": statistics.median(a / b for a, b in zip(seconds[n], seconds[base])),
        })
    return pd.DataFrame(rows).set_index("method"), first
