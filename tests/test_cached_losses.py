"""The closed-form losses against a cached top-k target (:mod:`draftalign.cached_losses`).

Each is checked against the generic loss of :mod:`draftalign.losses` applied to the
expanded target (:func:`draftalign.distill.expand_topk`): values, per-row TVD and
gradients, for every normalisation of TVD++, across chunk boundaries, with a full top-k
(no tail) and with a draft equal to the target.
"""

from __future__ import annotations

import pytest
import torch

import draftalign.cached_losses as cl
from draftalign.cached_losses import cached_loss, CACHED_LOSSES
from draftalign.distill import expand_topk
from draftalign.losses import get_loss, textbook_tvd


def _case(n=23, V=300, k=8, seed=0, spread=2.0):
    """Draft logits [n, V] and a target top-k. Draft probabilities are kept away from the
    target's (a reward 1[p > q] at a near-tie could flip with rounding)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, V, generator=g) * 3
    lp, ids = t.log_softmax(-1).topk(k, -1)
    p_full = expand_topk(ids, lp, V).softmax(-1)
    while True:
        d = torch.randn(n, V, generator=g) * spread
        q = d.softmax(-1)
        if ((q - p_full).abs() / p_full > 1e-3).all():
            return d, ids, lp


def _grads(fn, d, weights):
    d = d.clone().requires_grad_()
    value = fn(d)
    (value * weights).sum().backward()
    return value.detach(), d.grad


@pytest.mark.parametrize("name,options", [
    ("fkl", {}), ("rkl", {}), ("tvd", {}),
    ("tvd++", {}), ("tvd++", {"normalize": "batch"}), ("tvd++", {"normalize": "none"}),
    ("tvd++", {"baseline": False}), ("tvd++", {"normalize": "none", "baseline": False}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_gradients_equal_the_expanded_target(name, options, seed):
    d, ids, lp = _case(seed=seed)
    V = d.shape[-1]
    full = expand_topk(ids, lp, V)
    w = torch.rand(len(d), generator=torch.Generator().manual_seed(seed + 7))
    ref_value, ref_grad = _grads(lambda x: get_loss(name)(x[None], full[None], None, **options)[0], d, w)
    value, grad = _grads(lambda x: cached_loss(name, x, ids, lp, **options)[0], d, w)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    tvd_rows = cached_loss(name, d, ids, lp, **options)[1]
    torch.testing.assert_close(tvd_rows, textbook_tvd(d, full), rtol=1e-5, atol=1e-6)
    assert not tvd_rows.requires_grad


@pytest.mark.parametrize("name", CACHED_LOSSES)
def test_chunked_equals_one_chunk(name, monkeypatch):
    d, ids, lp = _case(n=50, seed=3)
    w = torch.rand(len(d))
    whole = _grads(lambda x: cached_loss(name, x, ids, lp)[0], d, w)
    monkeypatch.setattr(cl, "CHUNK", 7)  # 50 rows in 8 chunks, the last one short
    parts = _grads(lambda x: cached_loss(name, x, ids, lp)[0], d, w)
    for a, b in zip(parts, whole):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", CACHED_LOSSES)
def test_full_topk_has_no_tail(name):
    d, ids, lp = _case(n=9, V=40, k=40, seed=4)
    full = expand_topk(ids, lp, 40)
    w = torch.rand(9)
    ref = _grads(lambda x: get_loss(name)(x[None], full[None], None)[0], d, w)
    got = _grads(lambda x: cached_loss(name, x, ids, lp)[0], d, w)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd"])
def test_zero_when_the_draft_is_the_expanded_target(name):
    _, ids, lp = _case(n=6, seed=5)
    d = expand_topk(ids, lp, 300)  # q = p exactly (log-probabilities as logits)
    value, tvd_rows = cached_loss(name, d, ids, lp)
    assert value.abs().max() < 1e-5 and tvd_rows.abs().max() < 1e-5


def test_tvdpp_finite_when_every_reward_is_equal():
    """A row where the reward r = 1[p > q] is the same for every token has reward std 0
    under q, and TVD++ divides by that std: here q = p exactly (r = 0 everywhere), and the
    value and gradient must stay finite (the eps in the scale), the gradient 0."""
    V = 50
    ids = torch.arange(V)[None]
    lp = torch.full((1, V), -torch.log(torch.tensor(float(V))))
    d = lp.clone().requires_grad_()  # q = p: r = 0 everywhere, std 0
    value, _ = cached_loss("tvd++", d, ids, lp)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(d.grad).all()
    assert d.grad.abs().max() < 1e-6


def test_bad_inputs_are_refused():
    d, ids, lp = _case(n=4, seed=6)
    with pytest.raises(ValueError, match="no cached form"):
        cached_loss("jsd", d, ids, lp)
    with pytest.raises(ValueError, match="estimator='exact'"):
        cached_loss("tvd++", d, ids, lp, estimator="sampled")
    with pytest.raises(ValueError, match="normalize"):
        cached_loss("tvd++", d, ids, lp, normalize="row")
    with pytest.raises(ValueError, match=r"\[n, V\]"):
        cached_loss("fkl", d[None], ids, lp)
    with pytest.raises(ValueError, match=r"\[n, k\]"):
        cached_loss("fkl", d, ids[:3], lp)


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd"])
def test_full_vocabulary_size_agrees_with_float64(name):
    """At V = 49,152 the closed form stays within fp32 rounding of a float64 computation."""
    V, k = 49_152, 16
    g = torch.Generator().manual_seed(8)
    d = torch.randn(6, V, generator=g)
    lp, ids = (torch.randn(6, V, generator=g) * 3).log_softmax(-1).topk(k, -1)
    top = lp.double().exp()
    p = ((1 - top.sum(-1, keepdim=True)) / (V - k)).expand(6, V).clone().scatter_(1, ids, top)
    logp, logq = p.log(), d.double().log_softmax(-1)
    q = logq.exp()
    exact = {"fkl": (p * (logp - logq)).sum(-1), "rkl": (q * (logq - logp)).sum(-1),
             "tvd": 0.5 * (p - q).abs().sum(-1)}[name]
    value = cached_loss(name, d, ids, lp)[0].double()
    torch.testing.assert_close(value, exact, rtol=2e-5, atol=1e-6)


def test_topk_top1_takes_the_most_likely_cached_token_whatever_the_order():
    from draftalign.cached_losses import topk_top1

    ids = torch.tensor([[5, 7, 9], [2, 4, 6]])
    logprobs = torch.tensor([[-2.0, -0.1, -3.0], [-0.5, -1.0, -0.7]])
    assert topk_top1(ids, logprobs).tolist() == [7, 2]
