"""``speculative_generate`` and ``autoregressive_generate``: exactness and input checks.

Greedy speculative decoding must reproduce the target's own greedy decoding token for
token (checked against transformers' ``generate``), whatever the draft; sampling must
reproduce the target's (warped) distribution exactly, checked by a chi-square test on
every possible continuation of a 5-token-vocabulary model.
"""

from __future__ import annotations

import math

import pytest
import torch

from draftalign.drafts import make_draft
from draftalign.speculative import autoregressive_generate, speculative_generate

N_NEW = 24  # a multiple of gamma + 1 for gamma = 1, 2, 3, 5


def _hf_greedy(model, ids, max_new_tokens):
    """transformers' own greedy decoding: new tokens up to and including the first EOS."""
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False)[0, ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


def _check_bookkeeping(res, gamma):
    """Invariants of any speculative result: one target call per block (the prefill is
    fused with the first block), one draft call per drafted token, tokens = accepted + 1
    per block (fewer only when EOS cut the last block)."""
    assert res.target_calls == len(res.blocks) == len(res.accepted) == len(res.drafted)
    assert res.draft_calls == sum(res.drafted)
    assert all(0 <= a <= d <= gamma for a, d in zip(res.accepted, res.drafted))
    produced = sum(a + 1 for a in res.accepted)
    if res.finish_reason == "length":
        assert len(res.tokens) == produced
    else:
        assert res.finish_reason == "eos" and len(res.tokens) <= produced
    assert [b.n_accepted for b in res.blocks] == res.accepted
    assert res.tau == pytest.approx(len(res.tokens) / res.target_calls)


def _check_self_draft(res, gamma):
    """The target drafting for itself: every draft accepted, full blocks of gamma + 1."""
    assert res.accepted == res.drafted
    assert all(a == gamma for a, d in zip(res.accepted, res.drafted) if d == gamma)
    assert res.target_calls == math.ceil(len(res.tokens) / (gamma + 1))
    if res.finish_reason == "length" and len(res.tokens) % (gamma + 1) == 0:
        assert res.accepted == [gamma] * len(res.accepted)
        assert res.tau == gamma + 1


# ------------------------------------------------------------ greedy, tiny models

@pytest.fixture(scope="module", params=range(30), ids=lambda s: f"seed{s}")
def greedy_case(request, tiny_llama):
    """A random tiny target (vocab 8/16/64, 1-2 layers, flat to peaked), a random prompt,
    a random draft, and the target's greedy output from transformers."""
    seed = request.param
    target = tiny_llama(vocab_size=(8, 16, 64)[seed % 3], hidden_size=(16, 32)[seed % 2],
                        num_layers=1 + seed % 2, init_std=(0.02, 0.3, 1.0)[(seed // 3) % 3],
                        seed=seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, target.config.vocab_size, (1, 1 + seed % 8), generator=g)
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2, seed=1000 + seed)
    with torch.no_grad():
        ref = _hf_greedy(target, ids, N_NEW)
    return target, draft, ids, ref


def test_autoregressive_greedy_equals_transformers_generate(greedy_case):
    """Plain greedy decoding is transformers' greedy decoding, one target call per token."""
    target, _, ids, ref = greedy_case
    res = autoregressive_generate(target, ids, max_new_tokens=N_NEW)
    assert res.tokens == ref
    assert res.target_calls == len(res.tokens) and res.tau == 1.0
    assert res.finish_reason == ("eos" if 3 in ref else "length")


@pytest.mark.parametrize("gamma", range(1, 7))
def test_speculative_greedy_equals_target_greedy(greedy_case, gamma):
    """Greedy speculative decoding with a random draft, and with the target as its own
    draft, emits exactly the target's greedy tokens (stopping at the same EOS)."""
    target, draft, ids, ref = greedy_case
    res = speculative_generate(target, draft, ids, max_new_tokens=N_NEW, gamma=gamma)
    assert res.tokens == ref
    _check_bookkeeping(res, gamma)
    own = speculative_generate(target, target, ids, max_new_tokens=N_NEW, gamma=gamma)
    assert own.tokens == ref
    _check_bookkeeping(own, gamma)
    _check_self_draft(own, gamma)


@pytest.mark.parametrize("prompt_len, budget", [(60, 4), (62, 2), (63, 1)])
@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_generation_stops_at_the_context_limit(tiny_llama, prompt_len, budget, gamma):
    """Near ``max_position_embeddings`` (64) only ``64 - prompt_len`` tokens are made,
    the block size shrinks to fit, and the tokens still equal plain greedy decoding."""
    target = tiny_llama(vocab_size=16, eos_token_id=None, init_std=0.5, seed=11)
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2, seed=12)
    ids = torch.randint(0, 16, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    ref = autoregressive_generate(target, ids, max_new_tokens=20)
    assert len(ref.tokens) == budget
    for d in (draft, target):
        res = speculative_generate(target, d, ids, max_new_tokens=20, gamma=gamma)
        assert res.tokens == ref.tokens
        assert max(res.drafted) <= budget - 1
        _check_bookkeeping(res, gamma)


# ------------------------------------------------------------ greedy, real target

CHATS = [  # (user message, gamma with a random draft, gamma with the target as draft)
    ("Name three rivers.", 4, 3),
    ("What is 2 + 2?", 2, 5),
    ("Write a haiku about the sea.", 6, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize("text, gamma_random, gamma_self", CHATS)
def test_real_target_speculative_greedy_is_exact(real_target, chat_ids, text, gamma_random,
                                                 gamma_self):
    """On SmolLM2-135M-Instruct (fp32), greedy speculative decoding with a random draft
    and with the target drafting for itself equals ``generate`` and plain decoding
    (24 new tokens: a multiple of gamma + 1 for the self-drafting gammas 1, 3, 5)."""
    target, _ = real_target
    ids = chat_ids(text)
    with torch.no_grad():
        ref = _hf_greedy(target, ids, N_NEW)
    assert len(ref) > 0
    assert autoregressive_generate(target, ids, max_new_tokens=N_NEW).tokens == ref
    draft = make_draft(target, hidden_size=64, num_layers=1, seed=0)
    res = speculative_generate(target, draft, ids, max_new_tokens=N_NEW, gamma=gamma_random)
    assert res.tokens == ref
    _check_bookkeeping(res, gamma_random)
    own = speculative_generate(target, target, ids, max_new_tokens=N_NEW, gamma=gamma_self)
    assert own.tokens == ref
    _check_bookkeeping(own, gamma_self)
    _check_self_draft(own, gamma_self)


# ------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def pair(tiny_llama):
    target = tiny_llama(vocab_size=32, seed=0)
    return target, make_draft(target, hidden_size=16, num_layers=1, num_heads=2, seed=1)


def test_vocab_size_mismatch_names_both_sizes(tiny_llama):
    """A draft with another vocabulary size is refused, naming both sizes."""
    target, draft = tiny_llama(vocab_size=32), tiny_llama(vocab_size=48)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"vocab_size mismatch: target has 32, draft has 48"):
        speculative_generate(target, draft, ids, max_new_tokens=4)


@pytest.mark.parametrize("gamma", [0, -2, 1.5, 2.5])
def test_bad_gamma(pair, gamma):
    """gamma must be a positive integer."""
    with pytest.raises(ValueError, match=r"gamma must be a positive integer"):
        speculative_generate(*pair, torch.tensor([[1, 2]]), max_new_tokens=4, gamma=gamma)


@pytest.mark.parametrize("use_draft", [True, False], ids=["speculative", "autoregressive"])
@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, r"max_new_tokens must be a positive integer"),
    ({"max_new_tokens": -1}, r"max_new_tokens must be a positive integer"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens must be a positive integer"),
    ({"ids": torch.empty(1, 0, dtype=torch.long)}, r"prompt is empty"),
    ({"ids": torch.ones(1, 64, dtype=torch.long)}, r"64 tokens but the model's context holds 64"),
    ({"ids": torch.ones(1, 80, dtype=torch.long)}, r"80 tokens but the model's context holds 64"),
    ({"ids": torch.tensor([1, 2, 3])}, r"must be a \[1, T\] LongTensor, got \(3,\)"),
    ({"ids": torch.ones(2, 3, dtype=torch.long)}, r"must be a \[1, T\] LongTensor, got \(2, 3\)"),
    ({"ids": [[1, 2, 3]]}, r"must be a \[1, T\] LongTensor"),
    ({"ids": torch.tensor([[1.0, 2.0]])}, r"LongTensor \(torch.long\)"),
    ({"ids": torch.tensor([[1, 32]])}, r"outside the vocabulary \[0, 32\)"),
    ({"ids": torch.tensor([[-1, 2]])}, r"outside the vocabulary"),
    ({"temperature": -1.0}, r"temperature must be >= 0"),
    ({"temperature": 1.0, "top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
])
def test_bad_inputs_raise_clear_value_errors(pair, use_draft, kwargs, match):
    """Malformed prompts and settings raise ``ValueError`` with a message that says what
    is wrong, before any model is run."""
    kw = {"max_new_tokens": 4, **kwargs}
    ids = kw.pop("ids", torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=match):
        if use_draft:
            speculative_generate(*pair, ids, **kw)
        else:
            autoregressive_generate(pair[0], ids, **kw)
