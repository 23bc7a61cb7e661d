"""Plain and speculative decoding for any pair of transformers causal LMs.

Reads a target, a draft and a ``[1, T]`` prompt; writes nothing. Every measurement in the
book (Chapter 1's algorithm, tau of each trained draft in Chapters 2 and 4, the analysis of
Chapter 5) goes through :func:`speculative_generate` and :func:`autoregressive_generate`.

Both models keep a KV cache across blocks. After a rejection the caches are cropped back
to the accepted prefix, so no prefix is ever re-encoded. The prompt's prefill is fused
with the first verification pass: the target's first call reads the prompt and the first
``gamma`` drafts at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .models import cache_kwargs, check_compatible, eos_ids, vocab_size
from .sampling import BlockOutcome, _check_sampling, sample, verify_block, verify_block_greedy, warp

__all__ = ["GenerationResult", "Block", "autoregressive_generate", "speculative_generate"]


@dataclass(frozen=True)
class Block:
    """One draft-then-verify block: the drafted ids, how many were accepted, and the
    token the target added (the residual sample after a rejection, or the bonus)."""

    drafts: tuple[int, ...]
    n_accepted: int
    next_token: int


@dataclass
class GenerationResult:
    """What one generation produced and what it cost.

    ``tokens``: new token ids (EOS included when produced). ``target_calls``: target
    forward passes, the prompt's prefill included. ``accepted`` / ``drafted``: per
    verification block, drafted tokens accepted (``0..gamma``) and drafted (``gamma``,
    fewer in a last block cut short by ``max_new_tokens``). Times are wall-clock seconds.
    """

    tokens: list[int]
    target_calls: int
    draft_calls: int = 0
    accepted: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    finish_reason: str = "length"
    gamma: int | None = None
    wall_time_s: float = 0.0
    target_time_s: float = 0.0
    draft_time_s: float = 0.0

    @property
    def tau(self) -> float:
        """Block efficiency: tokens produced per target call (1.0 for plain decoding)."""
        return len(self.tokens) / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.wall_time_s if self.wall_time_s > 0 else float("nan")


class _CachedModel:
    """A model with its own KV cache, fed only the tokens its cache has not seen."""

    def __init__(self, model):
        self.model = model
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=model.config)
        self.cache_kw = cache_kwargs(model, self.cache)
        self.calls = 0
        self.seconds = 0.0

    @property
    def length(self) -> int:
        return self.cache.get_seq_length()

    def __call__(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        """Feed ``ids`` after the cached prefix; logits of the last ``keep`` positions ``[keep, V]``."""
        start = time.perf_counter()
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, k]
        out = self.model(input_ids=x, use_cache=True, logits_to_keep=keep, **self.cache_kw)
        logits = out.logits[0, -keep:]  # [keep, V]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return logits

    def rollback(self, length: int) -> None:
        surplus = self.length - length
        if surplus > 0:
            self.cache.crop(-surplus)  # a negative count removes that many tokens


def _check_inputs(model, input_ids, max_new_tokens: int, temperature: float, top_p: float) -> list[int]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a [1, T] LongTensor, got {shape}")
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a LongTensor (torch.long), got {input_ids.dtype}")
    if input_ids.shape[1] == 0:
        raise ValueError("the prompt is empty: input_ids has shape [1, 0]")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    _check_sampling(temperature, top_p)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and input_ids.shape[1] >= context:
        raise ValueError(f"the prompt has {input_ids.shape[1]} tokens but the model's context "
                         f"holds {context}: nothing can be generated")
    vocab = vocab_size(model)
    if int(input_ids.max()) >= vocab or int(input_ids.min()) < 0:
        raise ValueError(f"input_ids hold ids outside the vocabulary [0, {vocab})")
    return input_ids[0].tolist()


def _budget(model, prompt_len: int, max_new_tokens: int) -> int:
    context = getattr(model.config, "max_position_embeddings", None)
    return max_new_tokens if context is None else min(max_new_tokens, context - prompt_len)


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()  # on the CPU: the same seed gives the same tokens on any device
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


@torch.inference_mode()
def autoregressive_generate(model, input_ids, *, max_new_tokens: int, temperature: float = 0.0,
                            top_p: float = 1.0, seed: int | None = None) -> GenerationResult:
    """Plain decoding, one target call per token (the first call is the prefill).

    ``temperature = 0`` is greedy; otherwise tokens are sampled from the warped
    distribution (:func:`draftalign.sampling.warp`).
    """
    seq = _check_inputs(model, input_ids, max_new_tokens, temperature, top_p)
    budget = _budget(model, len(seq), max_new_tokens)
    eos, gen = eos_ids(model), _generator(seed)
    target = _CachedModel(model)
    start = time.perf_counter()
    new: list[int] = []
    finish = "length"
    while len(new) < budget:
        logits = target(seq[target.length:])[-1]  # [V]
        tok = int(logits.argmax()) if temperature == 0 else sample(warp(logits, temperature, top_p).cpu(), gen)
        new.append(tok)
        seq.append(tok)
        if tok in eos:
            finish = "eos"
            break
    return GenerationResult(tokens=new, target_calls=target.calls, finish_reason=finish,
                            wall_time_s=time.perf_counter() - start, target_time_s=target.seconds)


@torch.inference_mode()
def speculative_generate(target, draft, input_ids, *, max_new_tokens: int, gamma: int = 4,
                         temperature: float = 0.0, top_p: float = 1.0,
                         seed: int | None = None) -> GenerationResult:
    """Speculative decoding: the draft proposes ``gamma`` tokens, the target verifies
    them in one pass (the algorithm of Chapter 1).

    Greedy (``temperature = 0``): drafts are the draft's argmax and are accepted while
    they equal the target's argmax, so the output is the target's greedy output token for
    token. Sampling: drafts are *sampled* from the draft's warped distribution ``q`` and
    accepted by :func:`draftalign.sampling.verify_block`, so the output is distributed
    exactly as the target's warped distribution ``p`` (temperature and top-p apply
    identically to both).
    """
    check_compatible(target, draft)
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be a positive integer, got {gamma!r}")
    seq = _check_inputs(target, input_ids, max_new_tokens, temperature, top_p)
    budget = _budget(target, len(seq), max_new_tokens)
    eos, gen = eos_ids(target), _generator(seed)
    greedy = temperature == 0
    tgt, drf = _CachedModel(target), _CachedModel(draft)
    result = GenerationResult(tokens=[], target_calls=0, gamma=int(gamma))
    start = time.perf_counter()
    new = result.tokens
    while len(new) < budget and result.finish_reason != "eos":
        g = min(int(gamma), budget - len(new) - 1)  # the block adds up to g + 1 tokens
        base = len(seq)
        # 1. draft g tokens autoregressively with the draft's cache
        drafts: list[int] = []
        qs = []
        pending = seq[drf.length:]
        for _ in range(g):
            logits = drf(pending)[-1]  # [V]
            if greedy:
                x = int(logits.argmax())
            else:
                q = warp(logits, temperature, top_p).cpu()
                x = sample(q, gen)
                qs.append(q)
            drafts.append(x)
            pending = [x]
        # 2. one target pass scores all g + 1 prefixes
        p_logits = tgt(seq[tgt.length:] + drafts, keep=g + 1)  # [g + 1, V]
        if greedy:
            outcome = verify_block_greedy(p_logits, drafts)
        elif g == 0:
            outcome = BlockOutcome(0, sample(warp(p_logits[0], temperature, top_p).cpu(), gen))
        else:
            p = warp(p_logits, temperature, top_p).cpu()
            outcome = verify_block(p, torch.stack(qs), drafts, gen)
        result.blocks.append(Block(tuple(drafts), outcome.n_accepted, outcome.next_token))
        result.accepted.append(outcome.n_accepted)
        result.drafted.append(g)
        # 3. commit, stopping at EOS
        for tok in outcome.tokens(drafts):
            new.append(tok)
            seq.append(tok)
            if tok in eos:
                result.finish_reason = "eos"
                break
        # 4. roll both caches back to the accepted prefix
        tgt.rollback(base + outcome.n_accepted)
        drf.rollback(base + outcome.n_accepted)
    result.target_calls, result.draft_calls = tgt.calls, drf.calls
    result.target_time_s, result.draft_time_s = tgt.seconds, drf.seconds
    result.wall_time_s = time.perf_counter() - start
    return result
