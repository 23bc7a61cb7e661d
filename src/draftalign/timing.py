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

import copy
import statistics
import time
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from tqdm.std import tqdm  # plain text bars: they render in executed notebooks too
from transformers import DynamicCache

from .metrics import acceptance_rate, pooled_tau
from .models import cache_kwargs, eos_ids, pad_id, vocab_size
from .speculative import GenerationResult, autoregressive_generate, speculative_generate

__all__ = ["pass_cost", "compare_decoders", "median_seconds", "timed_loss_and_grad", "hf_assisted", "hf_generate",
           "decoder_table", "wall_clock_by_gamma", "against_transformers", "output_agreement"]


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


# -- the decoders every benchmark compares -------------------------------------------------------------

def _counted_generate(target, ids, **kwargs) -> GenerationResult:
    """``target.generate`` on one prompt as a :class:`GenerationResult`: the new tokens up to
    and including EOS, and the target's forward passes (counted by a hook that lives only
    during the call)."""
    calls = [0]
    hook = target.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    start = time.perf_counter()
    try:
        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **kwargs)
    finally:
        hook.remove()
    toks = out[0, ids.shape[1]:].tolist()
    eos = eos_ids(target)
    stop = next((i for i, t in enumerate(toks) if t in eos), None)
    toks = toks if stop is None else toks[: stop + 1]
    return GenerationResult(tokens=toks, target_calls=calls[0], finish_reason="eos" if stop is not None else "length",
                            wall_time_s=time.perf_counter() - start)


def hf_generate(target, *, max_new_tokens: int, pad_token_id=None) -> Callable:
    """transformers' own greedy ``generate`` as a decoder ``fn([1, T] ids) -> GenerationResult``."""
    pad = pad_token_id if pad_token_id is not None else pad_id(target)
    return lambda ids: _counted_generate(target, ids, max_new_tokens=max_new_tokens, pad_token_id=pad)


def hf_assisted(target, draft, *, gamma: int, max_new_tokens: int, dynamic: bool = False,
                pad_token_id=None) -> Callable:
    """transformers' greedy assisted generation as a decoder ``fn([1, T] ids) -> GenerationResult``
    (``tokens`` up to and including EOS, ``target_calls`` the target's forward passes).

    Fixed: ``gamma`` assistant tokens per block (schedule ``"constant"``, no confidence
    stop). Dynamic: transformers' ``"heuristic"`` schedule from ``gamma`` (+2 after a block
    fully accepted, -1 otherwise) and its default confidence stop (0.4). Every call starts
    from these settings (the heuristic's count would otherwise carry over between calls).
    """
    config = copy.deepcopy(draft.generation_config)
    config.num_assistant_tokens = int(gamma)
    config.num_assistant_tokens_schedule = "heuristic" if dynamic else "constant"
    config.assistant_confidence_threshold = 0.4 if dynamic else 0.0
    pad = pad_token_id if pad_token_id is not None else pad_id(target)

    def run(ids):
        own, draft.generation_config = draft.generation_config, copy.deepcopy(config)
        try:
            return _counted_generate(target, ids, assistant_model=draft, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad)
        finally:
            draft.generation_config = own

    return run


def decoder_table(target, draft=None, *, gammas: Sequence[int] = (), max_new_tokens: int, label: str = "",
                  hf_gamma: int | None = None, hf_dynamic: bool = False, pad_token_id=None) -> dict[str, Callable]:
    """The decoders a benchmark compares, each ``fn([1, T] ids) -> GenerationResult``, greedy:
    ``plain`` (our plain decoding, the baseline) and, with ``draft``, ``<label>gamma=<g>`` for
    each gamma (our speculative decoding); with ``hf_gamma``, transformers' assisted generation
    with the same draft at that fixed gamma (``transformers, gamma=<g>``) and, with
    ``hf_dynamic``, its dynamic schedule (``transformers, dynamic``). A draft over a
    sub-vocabulary has no transformers rows (transformers drives a plain model)."""
    n = max_new_tokens
    table = {"plain": lambda ids: autoregressive_generate(target, ids, max_new_tokens=n)}
    if draft is None:
        return table
    for g in gammas:
        table[f"{label}gamma={g}"] = (lambda ids, g=int(g): speculative_generate(target, draft, ids, gamma=g,
                                                                                 max_new_tokens=n))
    if hf_gamma is not None and not hasattr(draft, "full_vocab_size"):
        table[f"transformers, gamma={hf_gamma}"] = hf_assisted(target, draft, gamma=hf_gamma, max_new_tokens=n,
                                                               pad_token_id=pad_token_id)
        if hf_dynamic:
            table["transformers, dynamic"] = hf_assisted(target, draft, gamma=hf_gamma, max_new_tokens=n,
                                                         dynamic=True, pad_token_id=pad_token_id)
    return table


def wall_clock_by_gamma(target, draft, prompts: list[torch.Tensor], gammas: Sequence[int], *,
                        max_new_tokens: int, rounds: int, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Plain decoding and greedy speculative decoding at each gamma, timed in interleaved
    rounds (:func:`compare_decoders`). The table gains ``gamma`` (0 for plain) and
    ``speed-up`` (1 / time relative to plain); results are keyed by gamma."""
    methods = decoder_table(target, draft, gammas=gammas, max_new_tokens=max_new_tokens)
    table, first = compare_decoders(methods, prompts, rounds=rounds, progress=progress)
    table.insert(0, "gamma", [0, *map(int, gammas)])
    table["speed-up"] = 1.0 / table["time_vs_plain"]
    return table, {0: first["plain"]} | {int(g): first[f"gamma={g}"] for g in gammas}


def against_transformers(target, draft, prompts: list[torch.Tensor], *, gamma: int, max_new_tokens: int,
                         rounds: int, pad_token_id=None, progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Plain decoding, our engine and transformers' assisted generation (fixed and
    dynamic), all greedy with the same full-vocabulary ``draft``, in interleaved rounds."""
    methods = decoder_table(target, draft, gammas=[gamma], max_new_tokens=max_new_tokens, label="ours, ",
                            hf_gamma=gamma, hf_dynamic=True, pad_token_id=pad_token_id)
    table, first = compare_decoders(methods, prompts, rounds=rounds, progress=progress)
    table["speed-up"] = 1.0 / table["time_vs_plain"]
    return table, first


def output_agreement(results: dict[str, list], reference: str = "plain") -> pd.DataFrame:
    """Per method: in how many prompts its tokens equal the reference's, and where the
    first differing token is in the others."""
    ref = results[reference]
    rows = {}
    for name, res in results.items():
        firsts = [next((i for i, (x, y) in enumerate(zip(r.tokens, b.tokens)) if x != y),
                       min(len(r.tokens), len(b.tokens))) for r, b in zip(res, ref) if r.tokens != b.tokens]
        rows[name] = {f"same tokens as {reference}": f"{len(res) - len(firsts)} of {len(res)}",
                      "first difference at token": ", ".join(map(str, firsts)) or "-"}
    return pd.DataFrame(rows).T
