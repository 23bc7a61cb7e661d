"""The knowledge-distillation losses of :mod:`draftalign.losses`.

Everything runs on small random logits ``[B, T, V]`` whose answers are known in closed
form: ``TVD = 1 - sum min(p, q)``, ``FKL = H(p, q) - H(p)``, ``RKL`` is ``FKL`` with its
arguments swapped, the gradient of TVD is ``0.5 q_j (s_j - E_q s)`` with
``s = sign(q - p)``, and TVD++ with the exact estimator, no baseline and no scale has
exactly TVD's gradient (the policy-gradient identity).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import draftalign.losses as L
from draftalign.losses import (LOSSES, fkl, get_loss, jsd, rkl, textbook_tvd, tvd,
                               tvdpp)

ALL = sorted(LOSSES)
ESTIMATORS = ["exact", "sampled", "data"]
NORMALIZE = ["position", "batch", "none"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(B=2, T=5, V=11, seed=0, scale=2.0) -> torch.Tensor:
    return torch.randn(B, T, V, generator=_gen(seed)) * scale


def _pair(B=2, T=5, V=11, seed=0, scale=2.0):
    return _logits(B, T, V, seed, scale), _logits(B, T, V, seed + 1000, scale)


def _mask(B=2, T=5, seed=0) -> torch.Tensor:
    m = (torch.rand(B, T, generator=_gen(seed + 7)) > 0.4).long()
    m[0, 0], m[-1, -1] = 1, 0  # at least one position in and one out
    return m


def _labels(B=2, T=5, V=11, seed=0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=_gen(seed + 3))


def _options(name: str) -> dict:
    """Per-loss options: a fixed generator for TVD++ (its default estimator is exact anyway)."""
    if name == "tvd++":
        return {"generator": _gen(5)}
    return {}


def _grad(fn, d, t, mask=None, weights=None, **options):
    """``(value, d/d draft of sum(weights * value))`` for fresh leaf copies of ``d`` and ``t``;
    the target's copy must get no gradient (except through the ``textbook_*`` versions)."""
    d = d.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    out = fn(d, t, mask, **options)
    w = torch.ones_like(out) if weights is None else weights
    (out * w).sum().backward()
    if not fn.__name__.startswith("textbook_"):
        assert t.grad is None
    return out.detach(), d.grad


def _cos(a, b) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# ------------------------------------------------------------------ every registered loss


def test_registry_has_the_five_losses():
    assert set(LOSSES) == {"fkl", "rkl", "tvd", "tvd++", "jsd"}
    for name in LOSSES:
        assert get_loss(name) is LOSSES[name]
    with pytest.raises(ValueError):
        get_loss("kl")


@pytest.mark.parametrize("name", ALL)
def test_zero_when_distributions_equal(name):
    d = _logits(seed=1)
    out = LOSSES[name](d, d.clone(), None, **_options(name))
    assert out.shape == (2, 5)
    torch.testing.assert_close(out, torch.zeros(2, 5), rtol=0, atol=1e-6)
    # a constant shift of the logits is the same distribution
    out = LOSSES[name](d, d + 3.0, None, **_options(name))
    torch.testing.assert_close(out, torch.zeros(2, 5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_nonnegative_and_positive_on_random_inputs(name):
    for seed in range(4):
        d, t = _pair(B=3, T=4, V=9, seed=seed, scale=3.0)
        out = LOSSES[name](d, t, None, **_options(name))
        assert out.shape == (3, 4)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert (out >= 0).all()
        assert (out > 1e-4).all()  # different distributions are a positive distance apart


@pytest.mark.parametrize("name", ALL)
def test_masked_positions_are_exactly_zero_and_isolated(name):
    d, t = _pair(seed=2)
    mask = _mask(seed=2)
    out, g = _grad(LOSSES[name], d, t, mask, **_options(name))
    off = mask == 0
    assert (out[off] == 0).all()
    assert (out[~off] > 0).all()
    assert (g[off] == 0).all()
    # changing the logits at masked positions changes nothing at the others
    d2, t2 = d.clone(), t.clone()
    d2[off] = torch.randn(int(off.sum()), d.shape[-1], generator=_gen(9)) * 10
    t2[off] = torch.randn(int(off.sum()), d.shape[-1], generator=_gen(10)) * 10
    out2, g2 = _grad(LOSSES[name], d2, t2, mask, **_options(name))
    assert torch.equal(out2, out)
    torch.testing.assert_close(g2, g, rtol=0, atol=0)
    # the unmasked values equal those computed without a mask
    full = LOSSES[name](d, t, None, **_options(name))
    if name != "tvd++":
        torch.testing.assert_close(out[~off], full[~off], rtol=1e-6, atol=1e-7)
    else:  # the value is TVD; the gradient depends on the (batch) statistics
        torch.testing.assert_close(out[~off], tvd(d, t)[~off], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_bool_and_float_masks_agree(name):
    d, t = _pair(seed=3)
    mask = _mask(seed=3)
    a = LOSSES[name](d, t, mask, **_options(name))
    b = LOSSES[name](d, t, mask.bool(), **_options(name))
    c = LOSSES[name](d, t, mask.float(), **_options(name))
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("name", ALL)
def test_gradient_flows_to_draft_only(name):
    d, t = _pair(seed=4)
    d = d.requires_grad_(True)
    t = t.requires_grad_(True)
    out = LOSSES[name](d, t, None, **_options(name))
    assert out.requires_grad
    out.sum().backward()
    assert t.grad is None
    assert d.grad is not None and torch.isfinite(d.grad).all()
    assert d.grad.abs().sum() > 0
    # softmax is shift-invariant: each position's gradient sums to 0 over the vocabulary
    torch.testing.assert_close(d.grad.sum(-1), torch.zeros(2, 5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_gradient_to_a_model_not_to_a_target_model(name):
    """Through parameters: the draft's receive a gradient, the target's none at all."""
    torch.manual_seed(0)
    draft_w = torch.nn.Parameter(torch.randn(6, 11))
    target_w = torch.nn.Parameter(torch.randn(6, 11))
    x = torch.randn(2, 5, 6, generator=_gen(1))
    out = LOSSES[name](x @ draft_w, x @ target_w, None, **_options(name))
    out.mean().backward()
    assert draft_w.grad is not None and draft_w.grad.abs().sum() > 0
    assert target_w.grad is None


@pytest.mark.parametrize("name", ALL)
def test_shape_errors_raise(name):
    fn, opts = LOSSES[name], _options(name)
    d, t = _pair()
    with pytest.raises(ValueError):
        fn(d, t[:, :, :-1], None, **opts)  # vocabularies differ
    with pytest.raises(ValueError):
        fn(d, t[:, :-1], None, **opts)  # lengths differ
    with pytest.raises(ValueError):
        fn(d[0], t[0], None, **opts)  # [T, V], not [B, T, V]
    with pytest.raises(ValueError):
        fn(d[None], t[None], None, **opts)  # 4-D
    with pytest.raises(ValueError):
        fn(d, t, torch.ones(2, 4), **opts)  # mask [B, T-1]
    with pytest.raises(ValueError):
        fn(d, t, torch.ones(10), **opts)  # flat mask


@pytest.mark.parametrize("name", ALL)
def test_all_masked_gives_zeros(name):
    d, t = _pair()
    out = LOSSES[name](d, t, torch.zeros(2, 5), **_options(name))
    assert out.shape == (2, 5)
    assert (out == 0).all()


# ------------------------------------------------------------------ closed forms


def test_tvd_is_one_minus_overlap_and_at_most_one():
    for seed in range(5):
        d, t = _pair(B=3, T=6, V=17, seed=seed, scale=1.0 + seed)
        p, q = t.softmax(-1), d.softmax(-1)
        out = tvd(d, t)
        torch.testing.assert_close(out, 1 - torch.minimum(p, q).sum(-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(out, 0.5 * (p - q).abs().sum(-1), rtol=0, atol=1e-6)
        assert (out <= 1 + 1e-6).all()


def test_tvd_is_one_for_disjoint_supports():
    V = 8
    d = torch.full((1, 2, V), -60.0)
    t = torch.full((1, 2, V), -60.0)
    d[0, 0, :4], t[0, 0, 4:] = 60.0, 60.0  # q on the first half, p on the second
    d[0, 1, 0], t[0, 1, 7] = 60.0, 60.0  # point masses on different tokens
    torch.testing.assert_close(tvd(d, t), torch.ones(1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(textbook_tvd(d, t), torch.ones(1, 2), rtol=0, atol=1e-6)


def test_fkl_is_cross_entropy_minus_entropy():
    for seed in range(4):
        d, t = _pair(B=2, T=4, V=13, seed=seed, scale=2.5)
        logp, logq = t.double().log_softmax(-1), d.double().log_softmax(-1)
        p = logp.exp()
        cross_entropy = -(p * logq).sum(-1)
        entropy = -(p * logp).sum(-1)
        torch.testing.assert_close(fkl(d, t).double(), cross_entropy - entropy, rtol=1e-5, atol=1e-6)


def test_fkl_known_value():
    """KL between two-token distributions written out by hand."""
    p0, q0 = 0.8, 0.3
    t = torch.tensor([[[math.log(p0), math.log(1 - p0)]]])
    d = torch.tensor([[[math.log(q0), math.log(1 - q0)]]])
    want = p0 * math.log(p0 / q0) + (1 - p0) * math.log((1 - p0) / (1 - q0))
    assert float(fkl(d, t)) == pytest.approx(want, rel=1e-5)
    back = q0 * math.log(q0 / p0) + (1 - q0) * math.log((1 - q0) / (1 - p0))
    assert float(rkl(d, t)) == pytest.approx(back, rel=1e-5)
    assert float(tvd(d, t)) == pytest.approx(abs(p0 - q0), abs=1e-6)


def test_rkl_is_fkl_with_arguments_swapped():
    for seed in range(4):
        d, t = _pair(B=2, T=4, V=13, seed=seed, scale=2.5)
        torch.testing.assert_close(rkl(d, t), fkl(t, d), rtol=1e-6, atol=1e-6)
        # and KL is not symmetric: the two differ on random inputs
        assert (rkl(d, t) - fkl(d, t)).abs().max() > 1e-3


def test_jsd_matches_its_definition():
    for beta in (0.1, 0.5, 0.9):
        d, t = _pair(B=2, T=3, V=7, seed=int(beta * 10))
        p, q = t.double().softmax(-1), d.double().softmax(-1)
        m = beta * p + (1 - beta) * q
        want = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
        torch.testing.assert_close(jsd(d, t, beta=beta).double(), want, rtol=1e-5, atol=1e-6)


def test_jsd_symmetric_at_half_and_bounded_by_log2():
    for seed in range(4):
        d, t = _pair(B=2, T=4, V=13, seed=seed, scale=3.0)
        torch.testing.assert_close(jsd(d, t, beta=0.5), jsd(t, d, beta=0.5), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(jsd(d, t), jsd(t, d), rtol=1e-6, atol=1e-7)
        assert (jsd(d, t) <= math.log(2) + 1e-6).all()
    # disjoint supports reach the bound
    d = torch.full((1, 1, 4), -80.0)
    t = torch.full((1, 1, 4), -80.0)
    d[..., 0], t[..., 1] = 80.0, 80.0
    assert float(jsd(d, t)) == pytest.approx(math.log(2), abs=1e-5)
    # not symmetric away from beta = 0.5
    d, t = _pair(seed=1, scale=3.0)
    assert (jsd(d, t, beta=0.2) - jsd(t, d, beta=0.2)).abs().max() > 1e-3


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_jsd_beta_outside_unit_interval_raises(beta):
    d, t = _pair()
    with pytest.raises(ValueError):
        jsd(d, t, beta=beta)


def test_jsd_endpoints_are_the_limits_fkl_and_rkl():
    d, t = _pair(B=2, T=3, V=9, seed=5, scale=2.0)
    torch.testing.assert_close(jsd(d, t, beta=0.0), fkl(d, t))
    torch.testing.assert_close(jsd(d, t, beta=1.0), rkl(d, t))
    # the scaled divergence approaches them: JSD / beta -> FKL, JSD / (1 - beta) -> RKL (fast
    # where p / q stays moderate: the expansion is in beta * p / q)
    d, t = _pair(B=2, T=3, V=9, seed=5, scale=0.5)

    def gap(beta, end):
        scaled = jsd(d, t, beta=beta) / (beta if end == 0 else 1 - beta)
        limit = fkl(d, t) if end == 0 else rkl(d, t)
        return float(((scaled - limit).abs() / limit).max())

    for end, betas in ((0, (0.1, 0.01, 0.001)), (1, (0.9, 0.99, 0.999))):
        gaps = [gap(b, end) for b in betas]
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02, gaps


@pytest.mark.parametrize("name,options", [("tvd++", {"normalise": "batch"}), ("fkl", {"beta": 0.5}),
                                          ("jsd", {"betta": 0.1})])
def test_unknown_loss_options_raise(name, options):
    from draftalign.distill import kd_loss_fn
    from draftalign.losses import check_options

    with pytest.raises(ValueError, match="takes no option"):
        check_options(name, options)
    with pytest.raises(ValueError, match="takes no option"):
        kd_loss_fn(None, name, **options)
    d, t = _pair()
    with pytest.raises(TypeError):
        get_loss(name)(d, t, **options)


def test_tvd_gradient_closed_form():
    """dTVD/dz_j = 0.5 q_j (s_j - sum_x s_x q_x), s = sign(q - p)."""
    d, t = _pair(B=3, T=4, V=10, seed=11, scale=1.5)
    p, q = t.double().softmax(-1), d.double().softmax(-1)
    assert ((q - p).abs() > 1e-6).all()  # no ties
    s = torch.sign(q - p)
    want = 0.5 * q * (s - (s * q).sum(-1, keepdim=True))
    w = torch.rand(3, 4, generator=_gen(2))  # per-position weights: positions are separate
    _, g = _grad(tvd, d, t, weights=w)
    torch.testing.assert_close(g.double(), want * w[..., None], rtol=1e-5, atol=1e-7)
    # and the autograd of the textbook formula agrees
    _, g_ref = _grad(textbook_tvd, d, t, weights=w)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ chunking


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd"])
def test_chunked_equals_reference(monkeypatch, name, use_mask):
    monkeypatch.setattr(L, "CHUNK", 3)
    fn, ref = getattr(L, name), getattr(L, f"textbook_{name}")
    d, t = _pair(B=3, T=5, V=9, seed=21, scale=2.0)  # 15 positions: 5 chunks
    mask = _mask(B=3, T=5, seed=21) if use_mask else None
    if use_mask:
        assert int(mask.sum()) > 2 * 3  # several chunks also with the mask
    w = torch.rand(3, 5, generator=_gen(4)) + 0.5
    out, g = _grad(fn, d, t, mask, weights=w)
    out_ref, g_ref = _grad(ref, d, t, None if mask is None else mask.float(), weights=w)
    torch.testing.assert_close(out, out_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_chunk_size_does_not_change_values_or_gradients(monkeypatch, name):
    d, t = _pair(B=3, T=5, V=9, seed=22)
    mask = _mask(B=3, T=5, seed=22)
    opts = {} if name != "tvd++" else {"normalize": "batch"}
    big = _grad(LOSSES[name], d, t, mask, **opts)
    monkeypatch.setattr(L, "CHUNK", 2)
    small = _grad(LOSSES[name], d, t, mask, **opts)
    torch.testing.assert_close(small[0], big[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(small[1], big[1], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ TVD++


def _equal_reward_cases():
    V = 9
    same = _logits(B=2, T=3, V=V, seed=31)
    # both point masses on the same token, by different (huge) gaps: p == q == one-hot in
    # fp32 although the logits differ, so the reward 1[p > q] is 0 everywhere
    peak_t = torch.zeros(2, 3, V)
    peak_d = torch.zeros(2, 3, V)
    peak_t[..., 2], peak_d[..., 2] = 300.0, 200.0
    # the target has one token far above everything (the draft is random)
    far_t = torch.zeros(2, 3, V)
    far_t[..., 4] = 60.0
    far_d = _logits(B=2, T=3, V=V, seed=32)
    return {"q_equals_p": (same, same.clone()), "both_point_masses": (peak_d, peak_t),
            "target_far_above": (far_d, far_t)}


@pytest.mark.parametrize("baseline", [True, False])
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_tvdpp_finite_when_rewards_are_constant(estimator, normalize, baseline):
    for case, (d, t) in _equal_reward_cases().items():
        labels = _labels(B=2, T=3, V=9) if estimator == "data" else None
        d = d.clone().requires_grad_(True)
        out = tvdpp(d, t, None, estimator=estimator, normalize=normalize, baseline=baseline,
                    labels=labels, generator=_gen(0))
        out.sum().backward()
        assert torch.isfinite(out).all(), case
        assert torch.isfinite(d.grad).all(), case
        torch.testing.assert_close(out.detach(), tvd(d.detach(), t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_tvdpp_no_gradient_when_q_equals_p(estimator, normalize):
    """Same logits: ``r(x) = 1[p(x) > q(x)] = 0`` for every token, so every estimate of the
    gradient is 0 (as TVD's is) -- under any baseline and scale. A reward that the
    surrogate computes differently from the statistics (rounding ties into 1s while the
    statistics see a constant reward, std 0, scale ``1 / eps``) shows up here."""
    same = _logits(B=2, T=3, V=9, seed=31)
    for baseline in (True, False):
        d = same.clone().requires_grad_(True)
        out = tvdpp(d, same.clone(), None, estimator=estimator, normalize=normalize, baseline=baseline,
                    labels=_labels(B=2, T=3, V=9), generator=_gen(0))
        out.sum().backward()
        assert (out.detach().abs() < 1e-6).all()
        assert float(d.grad.abs().max()) < 1e-6, f"baseline={baseline}: max |grad| {float(d.grad.abs().max()):.3g}"


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_tvdpp_value_is_tvd(estimator, normalize):
    d, t = _pair(seed=41)
    mask = _mask(seed=41)
    labels = _labels(seed=41)
    out = tvdpp(d, t, mask, estimator=estimator, normalize=normalize, labels=labels, generator=_gen(1))
    torch.testing.assert_close(out, tvd(d, t, mask), rtol=0, atol=1e-6)


def test_tvdpp_exact_no_baseline_no_scale_has_tvd_gradient():
    d, t = _pair(B=3, T=4, V=10, seed=42)
    mask = _mask(B=3, T=4, seed=42)
    w = torch.rand(3, 4, generator=_gen(5)) + 0.5
    _, g = _grad(tvdpp, d, t, mask, weights=w, estimator="exact", normalize="none", baseline=False)
    _, g_tvd = _grad(tvd, d, t, mask, weights=w)
    torch.testing.assert_close(g, g_tvd, rtol=1e-5, atol=1e-7)
    # the exact baseline b = E_q[r] cancels too (sum_x grad q(x) = 0)
    _, g_b = _grad(tvdpp, d, t, mask, weights=w, estimator="exact", normalize="none", baseline=True)
    torch.testing.assert_close(g_b, g_tvd, rtol=1e-5, atol=1e-7)


def test_tvdpp_exact_position_normalize_rescales_each_position():
    """Exact, per position: TVD's gradient divided by the reward's std under q_t."""
    d, t = _pair(B=2, T=4, V=10, seed=43)
    _, g = _grad(tvdpp, d, t, estimator="exact", normalize="position")
    _, g_tvd = _grad(tvd, d, t)
    p, q = t.softmax(-1), d.softmax(-1)
    mean = (q * (p > q).float()).sum(-1)
    std = (mean * (1 - mean)).sqrt()
    torch.testing.assert_close(g, g_tvd / (std[..., None] + 1e-6), rtol=1e-4, atol=1e-6)


def test_tvdpp_exact_batch_normalize_is_parallel_to_tvd():
    d, t = _pair(B=3, T=4, V=10, seed=44)
    mask = _mask(B=3, T=4, seed=44)
    _, g = _grad(tvdpp, d, t, mask, estimator="exact", normalize="batch", baseline=True)
    _, g_tvd = _grad(tvd, d, t, mask)
    assert _cos(g, g_tvd) > 0.9999
    # one common positive factor for every position
    ratio = g.flatten()[g_tvd.flatten().abs() > 1e-4] / g_tvd.flatten()[g_tvd.flatten().abs() > 1e-4]
    assert (ratio > 0).all()
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-3, atol=0)
    # without the baseline too
    _, g_nb = _grad(tvdpp, d, t, mask, estimator="exact", normalize="batch", baseline=False)
    assert _cos(g_nb, g_tvd) > 0.9999


def test_tvdpp_sampled_approaches_tvd_gradient():
    """REINFORCE with many samples: E_{x~q}[-r(x) grad log q(x)] is TVD's gradient."""
    d, t = _pair(B=2, T=3, V=8, seed=45, scale=1.5)
    _, g = _grad(tvdpp, d, t, estimator="sampled", normalize="none", baseline=False,
                 num_samples=20000, generator=_gen(123))
    _, g_tvd = _grad(tvd, d, t)
    assert _cos(g, g_tvd) > 0.98
    assert float((g - g_tvd).norm()) < 0.2 * float(g_tvd.norm())  # the magnitude too: an average
    # a handful of samples is visibly noisier
    _, g_few = _grad(tvdpp, d, t, estimator="sampled", normalize="none", baseline=False,
                     num_samples=2, generator=_gen(123))
    assert _cos(g_few, g_tvd) < _cos(g, g_tvd)


def test_tvdpp_sampled_is_reproducible_with_a_generator():
    d, t = _pair(seed=46)
    a = _grad(tvdpp, d, t, estimator="sampled", num_samples=3, generator=_gen(7))[1]
    b = _grad(tvdpp, d, t, estimator="sampled", num_samples=3, generator=_gen(7))[1]
    c = _grad(tvdpp, d, t, estimator="sampled", num_samples=3, generator=_gen(8))[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_tvdpp_sampled_baseline_lowers_variance():
    """Sampled REINFORCE (4 samples) with the exact baseline ``b = E_q[r]`` against none:
    the total variance of the gradient over 30 seeds on a fixed input is clearly lower."""
    d, t = _pair(B=4, T=4, V=8, seed=44, scale=1.5)

    def spread(baseline: bool) -> float:
        grads = torch.stack([_grad(tvdpp, d, t, estimator="sampled", normalize="none", baseline=baseline,
                                   num_samples=4, generator=_gen(seed))[1] for seed in range(30)])
        return float(grads.var(0).sum())

    with_b, without_b = spread(True), spread(False)
    assert with_b < 0.85 * without_b


def test_tvdpp_data_estimator_uses_the_labels():
    """One label per position: the gradient is -(r(x) - b) / s * grad log q(x) at x = label."""
    d, t = _pair(B=2, T=3, V=8, seed=48)
    labels = _labels(B=2, T=3, V=8, seed=48)
    _, g = _grad(tvdpp, d, t, estimator="data", normalize="none", baseline=False, labels=labels)
    p, q = t.softmax(-1), d.softmax(-1)
    r = (p.gather(-1, labels[..., None]) > q.gather(-1, labels[..., None])).float()  # [B, T, 1]
    onehot = F.one_hot(labels, 8).float()
    want = -r * (onehot - q)
    torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
    other = (labels + 1) % 8
    _, g2 = _grad(tvdpp, d, t, estimator="data", normalize="none", baseline=False, labels=other)
    assert not torch.allclose(g, g2)


def test_tvdpp_data_estimator_needs_labels():
    d, t = _pair()
    with pytest.raises(ValueError):
        tvdpp(d, t, estimator="data")


@pytest.mark.parametrize("options", [{"estimator": "reinforce"}, {"normalize": "global"},
                                     {"estimator": "Exact"}, {"normalize": None}])
def test_tvdpp_unknown_options_raise(options):
    d, t = _pair()
    with pytest.raises(ValueError):
        tvdpp(d, t, **options)


@pytest.mark.parametrize("name", ALL)
def test_recomputed_chunks_give_the_same_values_and_gradients(monkeypatch, name):
    """Above ``CHECKPOINT_ABOVE`` logits each chunk is recomputed in the backward pass
    (activation checkpointing): values and gradients must not change."""
    d, t = _pair(B=3, T=5, V=9, seed=23)
    mask = _mask(B=3, T=5, seed=23)
    opts = {} if name != "tvd++" else {"normalize": "position"}
    monkeypatch.setattr(L, "CHUNK", 2)
    kept = _grad(LOSSES[name], d, t, mask, **opts)
    calls = []
    real = L.checkpoint
    monkeypatch.setattr(L, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(L, "CHECKPOINT_ABOVE", 0)  # every selection now counts as large
    recomputed = _grad(LOSSES[name], d, t, mask, **opts)
    assert calls, "the checkpointed branch did not run"
    torch.testing.assert_close(recomputed[0], kept[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(recomputed[1], kept[1], rtol=1e-5, atol=1e-7)
