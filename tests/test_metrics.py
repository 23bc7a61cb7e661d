"""Metrics: closed forms against Monte Carlo and hand-built generation results."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from draftalign.metrics import acceptance_rate, cost_ratio_from_params, expected_tau, mbsu, mean_tau, per_position_acceptance, simulate_blocks, simulate_tau, speedup, tvd_probs
from draftalign.drafts import make_draft
from draftalign.speculative import GenerationResult, speculative_generate


def _result(accepted, drafted):
    """A ``GenerationResult`` as ``speculative_generate`` would build it (no EOS cut)."""
    tokens = [0] * sum(a + 1 for a in accepted)
    return GenerationResult(tokens=tokens, target_calls=len(accepted), accepted=list(accepted),
                            drafted=list(drafted), gamma=max(drafted, default=None))


# ------------------------------------------------------------------ expected_tau

@pytest.mark.parametrize("gamma", [1, 3, 5, 8])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.6, 0.9, 1.0])
def test_expected_tau_matches_monte_carlo(alpha, gamma):
    """``(1 - a^(g+1)) / (1 - a)`` is the mean of (accepted prefix + 1) over simulated
    blocks with i.i.d. acceptance, within 5 standard errors."""
    rng = np.random.default_rng(int(alpha * 100) + gamma)
    tokens = simulate_blocks(alpha, gamma, 100_000, seed=rng) + 1
    se = tokens.std() / math.sqrt(len(tokens))
    assert abs(tokens.mean() - expected_tau(alpha, gamma)) <= 5 * se + 1e-12
    assert expected_tau(alpha, gamma) == pytest.approx(sum(alpha ** k for k in range(gamma + 1)))


def test_expected_tau_limits_and_monotonicity():
    """alpha = 0 gives 1, alpha = 1 gives gamma + 1 (continuously), and tau grows with
    both alpha and gamma."""
    assert expected_tau(0.0, 4) == 1.0
    assert expected_tau(1.0, 4) == 5.0
    assert expected_tau(1 - 1e-9, 4) == pytest.approx(5.0, abs=1e-6)
    taus = [expected_tau(a, 4) for a in np.linspace(0, 1, 11)]
    assert all(x < y for x, y in zip(taus, taus[1:]))
    assert all(expected_tau(0.7, g) < expected_tau(0.7, g + 1) for g in range(1, 8))


@pytest.mark.parametrize("alpha, gamma, match", [
    (-0.1, 3, "alpha"), (1.1, 3, "alpha"), (float("nan"), 3, "alpha"),
    (0.5, 0, "gamma"), (0.5, -1, "gamma"), (0.5, 2.5, "gamma"),
])
def test_expected_tau_rejects_bad_input(alpha, gamma, match):
    with pytest.raises(ValueError, match=match):
        expected_tau(alpha, gamma)


# ------------------------------------------------- simulated blocks, tvd_probs

def test_simulated_blocks_extremes_and_tau():
    """alpha = 0: no draft accepted (tau 1); alpha = 1: all gamma (tau gamma + 1);
    simulate_tau is the mean of accepted + 1 over the same blocks."""
    assert simulate_blocks(0.0, 4, 7, seed=1).tolist() == [0] * 7
    assert simulate_blocks(1.0, 4, 7, seed=1).tolist() == [4] * 7
    assert simulate_tau(0.0, 4, 50) == 1.0 and simulate_tau(1.0, 4, 50) == 5.0
    blocks = simulate_blocks(0.6, 3, 1_000, seed=5)
    assert blocks.shape == (1_000,) and set(blocks.tolist()) <= {0, 1, 2, 3}
    assert simulate_tau(0.6, 3, 1_000, seed=5) == pytest.approx((blocks + 1).mean())


def test_simulated_blocks_count_the_run_before_the_first_rejection():
    """Each block is the number of leading uniforms below alpha (gamma when all are)."""
    rng = np.random.default_rng(11)
    u = rng.random((2_000, 4))
    expected = [next((i for i, x in enumerate(row) if x >= 0.7), 4) for row in u]
    assert simulate_blocks(0.7, 4, 2_000, seed=11).tolist() == expected


def test_simulated_blocks_continue_a_generators_stream():
    """The same int seed repeats the blocks; a Generator is consumed, so two calls on one
    generator give the blocks of one call twice as long."""
    assert simulate_blocks(0.5, 3, 100, seed=2).tolist() == simulate_blocks(0.5, 3, 100, seed=2).tolist()
    rng = np.random.default_rng(2)
    two = np.concatenate([simulate_blocks(0.5, 3, 100, seed=rng), simulate_blocks(0.5, 3, 100, seed=rng)])
    assert two.tolist() == simulate_blocks(0.5, 3, 200, seed=2).tolist()


@pytest.mark.parametrize("args, match", [((0.5, 4, 0), "blocks"), ((1.5, 4, 10), "alpha"),
                                         ((0.5, 0, 10), "gamma")])
def test_simulate_tau_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        simulate_tau(*args)


def test_tvd_probs_known_values():
    """Half the L1 distance: 0 for equal vectors, 1 for disjoint ones, and a float."""
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([1.0, 0.0, 0.0])
    assert tvd_probs(p, q) == 0.5 and isinstance(tvd_probs(p, q), float)
    assert tvd_probs(p, p) == 0.0
    assert tvd_probs(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert tvd_probs(np.array([0.2, 0.8]), np.array([0.6, 0.4])) == pytest.approx(0.4)


def test_tvd_probs_is_one_minus_acceptance_and_the_logits_tvd():
    """Along the last axis: ``1 - sum min(p, q)`` (eq. beta), the same as losses.tvd on the
    logits, and symmetric."""
    from draftalign.losses import tvd

    g = torch.Generator().manual_seed(0)
    p, q = (torch.randn(2, 3, 10, generator=g) * 2).softmax(-1), (torch.randn(2, 3, 10, generator=g) * 2).softmax(-1)
    d = tvd_probs(p, q)
    assert d.shape == (2, 3)
    assert torch.allclose(d, 1 - torch.minimum(p, q).sum(-1), atol=1e-6)
    assert torch.allclose(d, tvd(q.log(), p.log()), atol=1e-6)
    assert torch.equal(d, tvd_probs(q, p))
    with pytest.raises(ValueError, match="shape"):
        tvd_probs(p, q[..., :5])


# ------------------------------------------------------- speedup, mbsu, cost ratio

def test_speedup_formula():
    """speed-up = tau / (gamma * c + 1): a block costs gamma draft steps plus one target
    step; with free drafts (c = 0) it is tau itself."""
    assert speedup(3.0, 4, 0.1) == pytest.approx(3.0 / 1.4)
    assert speedup(2.5, 5, 0.0) == 2.5
    assert speedup(1.0, 1, 1.0) == 0.5
    assert speedup(5.0, 4, 0.05) == pytest.approx(5.0 / 1.2)  # tau = gamma + 1 allowed


@pytest.mark.parametrize("tau, gamma, c, match", [
    (2.0, 4, -0.1, "cost ratio"), (0.9, 4, 0.1, "tau"), (5.5, 4, 0.1, "tau"),
    (float("nan"), 4, 0.1, "tau"), (2.0, 0, 0.1, "gamma"), (2.0, 1.5, 0.1, "gamma"),
])
def test_speedup_rejects_bad_input(tau, gamma, c, match):
    with pytest.raises(ValueError, match=match):
        speedup(tau, gamma, c)


def test_cost_ratio_and_mbsu():
    """``c = N_draft / N_target`` and mbsu = speedup with that c."""
    assert cost_ratio_from_params(10, 100) == pytest.approx(0.1)
    n_d, n_t = 13_000_000, 134_515_008
    assert mbsu(3.2, 4, n_d, n_t) == pytest.approx(3.2 / (4 * n_d / n_t + 1))
    assert mbsu(3.2, 4, n_d, n_t) == speedup(3.2, 4, cost_ratio_from_params(n_d, n_t))


@pytest.mark.parametrize("n_draft, n_target", [(0, 10), (10, 0), (-5, 10)])
def test_cost_ratio_rejects_non_positive_counts(n_draft, n_target):
    with pytest.raises(ValueError, match="parameter counts must be positive"):
        cost_ratio_from_params(n_draft, n_target)
    with pytest.raises(ValueError, match="parameter counts must be positive"):
        mbsu(2.0, 4, n_draft, n_target)


# ------------------------------------------- per-position acceptance, alpha, tau

def test_per_position_acceptance_by_hand():
    """Blocks (accepted/drafted) 3/3, 0/3, 1/3, 2/3, 1/1, 0/0: position 1 is reached by 5
    blocks and passed by 4; position 2 reached by 3 (1/1 drafted only one) and passed by
    2; position 3 reached by 2, passed by 1. A position never reached is NaN."""
    results = [_result([3, 0, 1], [3, 3, 3]), _result([2, 1, 0], [3, 1, 0])]
    out = per_position_acceptance(results)
    np.testing.assert_allclose(out, [4 / 5, 2 / 3, 1 / 2])
    out4 = per_position_acceptance(results, gamma=4)
    assert out4.shape == (4,) and math.isnan(out4[3])
    np.testing.assert_allclose(out4[:3], out)
    # pooled alpha: 7 accepted drafts over 3 + 1 + 2 + 3 + 1 + 0 = 10 reached drafts
    assert acceptance_rate(results) == pytest.approx(7 / 10)


def test_acceptance_rate_extremes_and_empty():
    """All drafts accepted gives 1, none gives 0, no drafts at all gives NaN."""
    assert acceptance_rate([_result([4, 4, 2], [4, 4, 2])]) == 1.0
    assert acceptance_rate([_result([0, 0, 0], [4, 4, 1])]) == 0.0
    assert math.isnan(acceptance_rate([_result([0], [0])]))
    assert math.isnan(acceptance_rate([]))


@pytest.mark.parametrize("alpha", [0.25, 0.8])
def test_metrics_recover_a_known_alpha(alpha):
    """On simulated results with i.i.d. acceptance ``alpha`` (gamma 4, some last blocks
    cut short), acceptance_rate and every per-position rate estimate alpha, and mean_tau
    of the full blocks matches expected_tau(alpha, 4)."""
    rng, gamma = np.random.default_rng(42), 4
    results = []
    for _ in range(400):
        acc = simulate_blocks(alpha, gamma, 30, seed=rng).tolist()
        dr = [gamma] * 30
        last_d = int(rng.integers(0, gamma))  # a last block cut to last_d drafts
        dr.append(last_d)
        acc.append(min(last_d, int(simulate_blocks(alpha, gamma, 1, seed=rng)[0])))
        results.append(_result(acc, dr))
    n_trials = sum(min(a + 1, d) for r in results for a, d in zip(r.accepted, r.drafted))
    tol = 5 * math.sqrt(alpha * (1 - alpha) / n_trials)
    assert acceptance_rate(results) == pytest.approx(alpha, abs=tol)
    per_pos = per_position_acceptance(results, gamma)
    assert np.all(np.abs(per_pos - alpha) < 0.05), per_pos
    full = [_result(r.accepted[:-1], r.drafted[:-1]) for r in results]
    assert mean_tau(full) == pytest.approx(expected_tau(alpha, gamma), rel=0.02)


def test_mean_tau_pools_tokens_over_calls():
    """mean_tau is total tokens over total target calls, not a mean of ratios."""
    a = GenerationResult(tokens=list(range(10)), target_calls=5)
    b = GenerationResult(tokens=list(range(3)), target_calls=3)
    assert mean_tau([a, b]) == pytest.approx(13 / 8)
    assert mean_tau([a]) == a.tau == 2.0
    with pytest.raises(ValueError, match="no target calls"):
        mean_tau([GenerationResult(tokens=[], target_calls=0)])


def test_metrics_on_real_speculative_results(tiny_llama):
    """On actual speculative runs: the target drafting for itself has alpha = 1 and
    per-position rates of 1; a random draft's numbers agree with its block records."""
    target = tiny_llama(vocab_size=16, eos_token_id=None, init_std=0.5, seed=7)
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2, seed=8)
    prompts = [torch.tensor([[1, i, 2 * i % 16]]) for i in range(5)]
    own = [speculative_generate(target, target, p, max_new_tokens=20, gamma=3) for p in prompts]
    assert acceptance_rate(own) == 1.0
    np.testing.assert_array_equal(per_position_acceptance(own), [1.0, 1.0, 1.0])
    assert mean_tau(own) == pytest.approx(100 / sum(r.target_calls for r in own))
    rnd = [speculative_generate(target, draft, p, max_new_tokens=20, gamma=3) for p in prompts]
    # counted from the blocks themselves: every accepted draft is a success, and a block
    # that stopped before its last draft also had one failure (the rejected draft)
    successes = failures = 0
    for r in rnd:
        for block, drafted in zip(r.blocks, r.drafted):
            successes += block.n_accepted
            failures += block.n_accepted < drafted
    assert acceptance_rate(rnd) == pytest.approx(successes / (successes + failures))
    assert mean_tau(rnd) == pytest.approx(100 / sum(r.target_calls for r in rnd))


def test_blocks_without_drafted_records_are_not_silently_dropped():
    """Blocks whose ``drafted`` entry is missing must not vanish from the metrics. A
    ``GenerationResult`` built by hand with ``accepted`` only (``drafted`` left at its
    default ``[]``) counts every block as a full one (each rejection one failure: 2
    successes, 3 failures); a ``drafted`` list of another length is refused."""
    hand = GenerationResult(tokens=[0] * 5, target_calls=3, accepted=[2, 0, 0])
    assert acceptance_rate([hand]) == pytest.approx(2 / 5)
    np.testing.assert_allclose(per_position_acceptance([hand], gamma=3)[:2], [1 / 3, 1.0])
    short = SimpleNamespace(accepted=[2, 0, 0], drafted=[2])
    with pytest.raises(ValueError, match="3 accepted counts but 1 drafted"):
        per_position_acceptance([short], gamma=2)
    with pytest.raises(ValueError):
        acceptance_rate([short])
