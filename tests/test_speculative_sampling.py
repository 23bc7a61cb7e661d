"""Speculative *sampling* reproduces the target's distribution exactly (a chi-square test).

A tiny target and a different tiny draft share a 5-token vocabulary and never stop early
(EOS unset in both ``config`` and ``generation_config``). For ``L`` new tokens the exact
target probability of each of the ``5 ** L`` continuations is the product of the warped
next-token probabilities (:func:`draftalign.sampling.warp`) along it, computed by running
the target on every prefix. Thousands of seeded generations are then binned by
continuation and compared with these probabilities. Controls: plain sampling passes the
same test, while samples from the draft's distribution, and a speculative sampler with a
wrong residual, fail it; so the test has the power to see a wrong distribution.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import draftalign.speculative as spec
from draftalign.sampling import BlockOutcome, sample, warp
from draftalign.speculative import autoregressive_generate, speculative_generate

V, PROMPT, N_SAMPLES = 5, [0, 1, 2], 2500


@pytest.fixture(scope="module")
def models(tiny_llama):
    """Target and draft: independent random 5-token models (TVD between their 3-token
    continuation distributions about 0.3 at temperature 1)."""
    target = tiny_llama(vocab_size=V, eos_token_id=None, init_std=0.1, seed=3)
    draft = tiny_llama(vocab_size=V, eos_token_id=None, init_std=0.1, seed=4)
    for m in (target, draft):
        assert m.config.eos_token_id is None and m.generation_config.eos_token_id is None
    return target, draft


@torch.no_grad()
def exact_distribution(model, length, temperature, top_p):
    """``{continuation: probability}`` over all ``V ** length`` continuations of PROMPT."""
    nxt = {}
    for k in range(length):
        for prefix in itertools.product(range(V), repeat=k):
            logits = model(torch.tensor([PROMPT + list(prefix)])).logits[0, -1]
            nxt[prefix] = warp(logits, temperature, top_p).double().numpy()
    probs = {}
    for seq in itertools.product(range(V), repeat=length):
        probs[seq] = float(np.prod([nxt[seq[:i]][seq[i]] for i in range(length)]))
    total = sum(probs.values())
    assert total == pytest.approx(1.0, abs=1e-5)
    return {k: v / total for k, v in probs.items()}


def _counts(samples, probs):
    index = {seq: i for i, seq in enumerate(probs)}
    counts = np.zeros(len(probs))
    for seq in samples:
        counts[index[tuple(seq)]] += 1
    return counts


def _speculative_samples(target, draft, length, gamma, temperature, top_p, n=N_SAMPLES):
    ids = torch.tensor([PROMPT])
    results = [speculative_generate(target, draft, ids, max_new_tokens=length, gamma=gamma,
                                    temperature=temperature, top_p=top_p, seed=s)
               for s in range(n)]
    assert all(len(r.tokens) == length and r.finish_reason == "length" for r in results)
    return results


CASES = [  # (length, gamma, temperature, top_p)
    pytest.param(3, 2, 1.0, 1.0, id="L3-gamma2-T1"),
    pytest.param(3, 1, 1.0, 1.0, id="L3-gamma1-T1-multiblock"),
    pytest.param(3, 3, 0.7, 0.8, id="L3-gamma3-T0.7-topp0.8"),
]


@pytest.mark.parametrize("length, gamma, temperature, top_p", CASES)
def test_speculative_sampling_matches_target_distribution(models, chi2, length, gamma,
                                                          temperature, top_p):
    """Speculative samples pass a chi-square test against the exact warped target
    distribution, although many drafts are rejected (and many accepted). The gamma = 1
    case needs several blocks per sequence, so it also checks the KV-cache rollback
    after rejections."""
    target, draft = models
    probs = exact_distribution(target, length, temperature, top_p)
    results = _speculative_samples(target, draft, length, gamma, temperature, top_p)
    blocks = [(a, d) for r in results for a, d in zip(r.accepted, r.drafted)]
    assert any(a < d for a, d in blocks), "no rejection: the test would prove nothing"
    assert any(a == d > 0 for a, d in blocks), "no accepted block"
    if gamma == 1:
        assert any(len(r.blocks) >= 2 and r.accepted[0] == 0 for r in results)
    counts = _counts([r.tokens for r in results], probs)
    pvalue = chi2(counts, list(probs.values()))
    assert pvalue > 1e-3, (pvalue, counts)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_autoregressive_sampling_matches_target_distribution(models, chi2, temperature, top_p):
    """Control: plain sampling from the target passes the same test."""
    target, _ = models
    probs = exact_distribution(target, 3, temperature, top_p)
    ids = torch.tensor([PROMPT])
    samples = [autoregressive_generate(target, ids, max_new_tokens=3, temperature=temperature,
                                       top_p=top_p, seed=s).tokens for s in range(N_SAMPLES)]
    pvalue = chi2(_counts(samples, probs), list(probs.values()))
    assert pvalue > 1e-3, pvalue


def test_chi_square_rejects_the_drafts_distribution(models, chi2):
    """Negative control: samples of the *draft's* distribution (plain sampling from the
    draft, same sample size) are rejected, so the test can tell the two apart."""
    target, draft = models
    probs = exact_distribution(target, 3, 1.0, 1.0)
    ids = torch.tensor([PROMPT])
    samples = [autoregressive_generate(draft, ids, max_new_tokens=3, temperature=1.0,
                                       seed=s).tokens for s in range(N_SAMPLES)]
    counts = _counts(samples, probs)
    assert chi2(counts, list(exact_distribution(draft, 3, 1.0, 1.0).values())) > 1e-3
    assert chi2(counts, list(probs.values())) < 1e-6


def _verify_without_residual(p, q, draft_tokens, generator=None):
    """A classic bug: after a rejection, resample from ``p`` instead of the residual."""
    for i, x in enumerate(draft_tokens):
        u = float(torch.rand((), generator=generator))
        if u * float(q[i, int(x)]) < float(p[i, int(x)]):
            continue
        return BlockOutcome(i, sample(p[i], generator))
    return BlockOutcome(len(draft_tokens), sample(p[-1], generator))


def test_chi_square_detects_a_wrong_residual(models, chi2, monkeypatch):
    """Negative control: the same speculative loop with the residual replaced by ``p``
    (biased toward tokens the draft over-proposes) is rejected by the test."""
    target, draft = models
    monkeypatch.setattr(spec, "verify_block", _verify_without_residual)
    probs = exact_distribution(target, 3, 1.0, 1.0)
    results = _speculative_samples(target, draft, 3, 2, 1.0, 1.0)
    assert chi2(_counts([r.tokens for r in results], probs), list(probs.values())) < 1e-6


def test_sampling_is_reproducible_by_seed(models):
    """Equal seeds give equal samples and bookkeeping; different seeds differ."""
    target, draft = models
    ids = torch.tensor([PROMPT])
    run = lambda s: speculative_generate(target, draft, ids, max_new_tokens=8, gamma=3,  # noqa: E731
                                         temperature=1.0, seed=s)
    a, b = run(5), run(5)
    assert a.tokens == b.tokens and a.accepted == b.accepted and a.blocks == b.blocks
    assert len({tuple(run(s).tokens) for s in range(10)}) > 1


def test_target_as_its_own_draft_accepts_everything_when_sampling(models):
    """With ``q == p`` (the target drafting for itself) every sampled draft is accepted
    (up to fp rounding between the one-token and the block forward passes)."""
    target, _ = models
    ids = torch.tensor([PROMPT])
    for s in range(20):
        res = speculative_generate(target, target, ids, max_new_tokens=14, gamma=3,
                                   temperature=1.0, seed=s)
        assert res.accepted == res.drafted == [3, 3, 3, 1]
        assert res.target_calls == 4 and len(res.tokens) == 14
