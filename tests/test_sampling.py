"""The sampling primitives: ``warp`` and the accept / reject / residual step.

Everything here runs on hand-made distributions, so the expected behaviour is known in
closed form: acceptance probability ``min(1, p(x) / q(x))``, residual
``norm(max(0, p - q))``, bonus from the last row of ``p``, and the emitted token
distributed exactly as ``p``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from draftalign.sampling import BlockOutcome, sample, verify_block, verify_block_greedy, warp


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _within_binomial(k: int, n: int, prob: float, sigmas: float = 5.0) -> bool:
    return abs(k / n - prob) <= sigmas * math.sqrt(prob * (1 - prob) / n) + 1e-12


# ---------------------------------------------------------------------------- warp


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 3.0])
def test_warp_is_softmax_of_scaled_logits(temperature):
    """``warp(l, T)`` is ``softmax(l / T)`` in fp32 for any input dtype, row by row."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0], [0.1, 0.2, 0.3, 0.4, 0.5]],
                          dtype=torch.float64)
    out = warp(logits, temperature)
    assert out.dtype == torch.float32 and out.shape == logits.shape
    expected = torch.softmax(logits / temperature, dim=-1).float()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out.sum(-1), torch.ones(2), rtol=0, atol=1e-6)
    # log-probability gaps shrink as 1 / T
    gap = math.log(out[0, 4]) - math.log(out[0, 1])
    assert gap == pytest.approx((3.0 - -1.0) / temperature, rel=1e-4)


def test_warp_bfloat16_logits_give_fp32_probabilities():
    """bf16 logits (what a GPU target returns) are warped in fp32."""
    logits = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    out = warp(logits, 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.softmax(logits.float(), -1))


def test_warp_low_temperature_sharpens_high_flattens():
    """Lower temperature raises the top probability, higher lowers it toward 1 / V."""
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0])
    tops = [float(warp(logits, t).max()) for t in (0.2, 0.5, 1.0, 2.0, 10.0)]
    assert all(a > b for a, b in zip(tops, tops[1:]))
    assert tops[0] > 0.99 and tops[-1] < 0.3


# probabilities in a scrambled order: sorted they are 0.5, 0.25, 0.15, 0.1
_PROBS = torch.tensor([0.15, 0.5, 0.1, 0.25])


@pytest.mark.parametrize("top_p, kept", [
    (0.4, {1}),            # 0.5 alone reaches 0.4
    (0.6, {1, 3}),         # 0.5 < 0.6, 0.75 >= 0.6
    (0.8, {1, 3, 0}),      # 0.75 < 0.8, 0.9 >= 0.8
    (0.95, {0, 1, 2, 3}),  # 0.9 < 0.95: the last token is needed
    (1.0, {0, 1, 2, 3}),
])
def test_warp_top_p_keeps_smallest_set_reaching_top_p(top_p, kept):
    """Top-p keeps the most likely tokens up to and including the one whose cumulative
    mass reaches ``top_p``, zeroes the others and renormalises the kept ones."""
    out = warp(_PROBS.log(), 1.0, top_p)
    support = {i for i in range(4) if out[i] > 0}
    assert support == kept
    idx = sorted(kept)
    expected = _PROBS[idx] / _PROBS[idx].sum()
    torch.testing.assert_close(out[idx], expected, rtol=1e-5, atol=1e-6)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)


def test_warp_top_p_applies_per_row_after_temperature():
    """Top-p works row by row on a batch, on the temperature-scaled distribution."""
    logits = torch.stack([_PROBS.log(), _PROBS.flip(0).log()])  # [2, 4]
    out = warp(logits, 1.0, 0.6)
    assert torch.equal(out[0] > 0, torch.tensor([False, True, False, True]))
    assert torch.equal(out[1] > 0, torch.tensor([True, False, True, False]))
    # at T = 0.25 the top token (0.5 ** 4 vs 0.25 ** 4 ...) holds > 90 % of the mass alone
    sharp = warp(_PROBS.log(), 0.25, 0.9)
    assert int((sharp > 0).sum()) == 1 and float(sharp[1]) == pytest.approx(1.0)


@pytest.mark.parametrize("temperature, top_p", [
    (-0.5, 1.0), (0.0, 1.0), (1.0, 0.0), (1.0, -0.1), (1.0, 1.5), (1.0, float("nan")),
])
def test_warp_rejects_bad_temperature_or_top_p(temperature, top_p):
    """Negative or zero temperature (greedy does not warp) and top_p outside (0, 1]
    raise ``ValueError``."""
    with pytest.raises(ValueError, match="temperature|top_p"):
        warp(torch.zeros(3), temperature, top_p)


def test_warp_rejects_nan_temperature():
    """A NaN temperature is as invalid as a negative one and must raise ``ValueError``
    (it would otherwise turn every probability into NaN)."""
    with pytest.raises(ValueError, match="temperature"):
        warp(torch.zeros(3), float("nan"))


def test_sample_follows_probabilities_and_generator():
    """``sample`` returns the only token of a one-hot vector, and equal generator seeds
    give equal draws."""
    assert sample(torch.tensor([0.0, 0.0, 1.0, 0.0]), _gen()) == 2
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    a = [sample(probs, g) for g in [_gen(7)] for _ in range(50)]
    b = [sample(probs, g) for g in [_gen(7)] for _ in range(50)]
    assert a == b and len(set(a)) > 1


# --------------------------------------------------------------------- verify_block

P_ROW = torch.tensor([0.0, 0.5, 0.3, 0.2])
Q_ROW = torch.tensor([0.7, 0.1, 0.1, 0.1])


def test_never_accept_then_sample_from_residual(chi2):
    """If ``p`` gives the drafted token probability 0, it is never accepted and the next
    token comes from ``norm(max(0, p - q))`` = [0, .4, .2, .1] / .7."""
    gen, n = _gen(1), 12000
    p = torch.stack([P_ROW, torch.full((4,), 0.25)])
    counts = np.zeros(4)
    for _ in range(n):
        out = verify_block(p, Q_ROW[None], [0], gen)
        assert out.n_accepted == 0
        counts[out.next_token] += 1
    residual = np.array([0.0, 0.4, 0.2, 0.1]) / 0.7
    assert counts[0] == 0
    assert chi2(counts, residual) > 1e-3, counts


def test_residual_comes_from_the_rejecting_row():
    """A rejection at position ``i`` draws from row ``i``'s residual, not row 0's: here
    position 0 is always accepted (p = q) and position 1's residual is one-hot on token 2."""
    q = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]])
    gen = _gen(2)
    for _ in range(300):
        out = verify_block(p, q, [3, 0], gen)
        assert out == BlockOutcome(1, 2)
        assert out.tokens([3, 0]) == [3, 2]


@pytest.mark.parametrize("gamma", [1, 3])
def test_always_accept_when_p_equals_q_and_bonus_from_last_row(gamma, chi2):
    """With ``p == q`` on the drafted rows every draft is accepted, and the bonus token
    is drawn from the last row of ``p``."""
    gen = torch.Generator().manual_seed(3)
    q = torch.softmax(torch.randn(gamma, 5, generator=gen), -1)
    last = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    p = torch.cat([q, last[None]])
    drafts = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(gamma)]
    counts = np.zeros(5)
    for _ in range(3000):
        out = verify_block(p, q, drafts, gen)
        assert out.n_accepted == gamma
        assert out.tokens(drafts)[:gamma] == drafts
        counts[out.next_token] += 1
    assert chi2(counts, last.numpy()) > 1e-3, counts


def test_always_accept_when_p_dominates_q_on_drafted_tokens():
    """``p(x) >= q(x)`` on each drafted token means acceptance with probability 1, even
    where ``p`` and ``q`` differ elsewhere."""
    q = torch.tensor([[0.4, 0.3, 0.3], [0.2, 0.2, 0.6]])
    p = torch.tensor([[0.6, 0.0, 0.4], [0.1, 0.2, 0.7], [0.0, 1.0, 0.0]])
    gen = _gen(4)
    for _ in range(500):
        assert verify_block(p, q, [0, 2], gen) == BlockOutcome(2, 1)


@pytest.mark.parametrize("p0, q0", [(0.2, 0.5), (0.05, 0.9), (0.45, 0.5)])
def test_sometimes_accept_with_probability_p_over_q(p0, q0):
    """A draft with ``p(x) < q(x)`` is accepted with frequency ``p(x) / q(x)``."""
    p = torch.tensor([[p0, 1 - p0], [0.5, 0.5]])
    q = torch.tensor([[q0, 1 - q0]])
    gen, n = _gen(5), 10000
    hits = sum(verify_block(p, q, [0], gen).n_accepted for _ in range(n))
    assert _within_binomial(hits, n, p0 / q0), (hits / n, p0 / q0)


def test_acceptance_is_sequential_product_of_min_ratios():
    """With fixed drafts the number accepted is ``k`` with probability
    ``a_1 ... a_k (1 - a_{k+1})``, ``a_i = min(1, p_i(x_i) / q_i(x_i))``: positions are
    tested in order and the block stops at the first rejection."""
    ratios = [0.8, 0.5, 0.25]
    q = torch.full((3, 2), 0.5)
    p = torch.tensor([[0.5 * r, 1 - 0.5 * r] for r in ratios] + [[0.5, 0.5]])
    gen, n = _gen(6), 10000
    counts = np.bincount([verify_block(p, q, [0, 0, 0], gen).n_accepted for _ in range(n)],
                         minlength=4)
    expected = [1 - ratios[0], ratios[0] * (1 - ratios[1]),
                ratios[0] * ratios[1] * (1 - ratios[2]), math.prod(ratios)]
    for k in range(4):
        assert _within_binomial(int(counts[k]), n, expected[k]), (counts, expected)


def test_one_position_acceptance_is_one_minus_tvd_and_output_is_p(chi2):
    """Drafting ``x ~ q`` and verifying: acceptance rate is ``sum_x min(p, q) = 1 - TVD``
    and the emitted token is distributed exactly as ``p`` (the theorem of speculative
    sampling), although ``q`` is far from ``p``."""
    p_row = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    q_row = torch.tensor([0.3, 0.1, 0.3, 0.2, 0.1])
    p = torch.stack([p_row, torch.full((5,), 0.2)])
    gen, n = _gen(7), 12000
    accepted, counts = 0, np.zeros(5)
    for _ in range(n):
        x = sample(q_row, gen)
        out = verify_block(p, q_row[None], [x], gen)
        accepted += out.n_accepted
        counts[out.tokens([x])[0]] += 1
    one_minus_tvd = float(torch.minimum(p_row, q_row).sum())
    assert one_minus_tvd == pytest.approx(1 - 0.5 * float((p_row - q_row).abs().sum()))
    assert _within_binomial(accepted, n, one_minus_tvd), (accepted / n, one_minus_tvd)
    assert chi2(counts, p_row.numpy()) > 1e-3, counts
    # the draft's own distribution is clearly rejected at this sample size
    assert chi2(counts, q_row.numpy()) < 1e-6


def test_verify_block_is_reproducible_with_a_seeded_generator():
    """Equal generator seeds give equal outcomes (the sampler uses only ``generator``)."""
    p = torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    runs = [[verify_block(p, q, [0, 1], g) for _ in range(100)] for g in (_gen(8), _gen(8))]
    assert runs[0] == runs[1]
    assert len({o.n_accepted for o in runs[0]}) > 1


@pytest.mark.parametrize("p_rows, q_rows", [(2, 2), (4, 2), (3, 1), (3, 3)])
def test_verify_block_rejects_bad_shapes(p_rows, q_rows):
    """``p`` must have ``gamma + 1`` rows and ``q`` ``gamma`` rows (gamma = 2 drafts)."""
    with pytest.raises(ValueError, match=r"expected p \[3, V\] and q \[2, V\]"):
        verify_block(torch.full((p_rows, 4), 0.25), torch.full((q_rows, 4), 0.25), [0, 1])


# -------------------------------------------------------------- verify_block_greedy

_LOGITS = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0], [1.0, 4.0, 0.0]])
# argmax per row: 1, 0, 2, 1


@pytest.mark.parametrize("drafts, expected", [
    ([1, 0, 2], BlockOutcome(3, 1)),   # all equal the argmax: bonus = argmax of last row
    ([1, 0, 0], BlockOutcome(2, 2)),   # mismatch at 2: the target's token replaces it
    ([2, 0, 2], BlockOutcome(0, 1)),   # mismatch at 0: later matches do not count
    ([1, 2, 2], BlockOutcome(1, 0)),
])
def test_verify_block_greedy_accepts_the_argmax_prefix(drafts, expected):
    """Greedy verification keeps drafts while they equal the target's argmax and then
    emits the target's argmax at the first mismatch (or the bonus)."""
    assert verify_block_greedy(_LOGITS, drafts) == expected


def test_verify_block_greedy_without_drafts_is_plain_argmax():
    """A block with no drafts (``gamma`` capped to 0 by the token budget) emits the argmax."""
    assert verify_block_greedy(_LOGITS[2:3], []) == BlockOutcome(0, 2)


@pytest.mark.parametrize("logits", [_LOGITS[:3], torch.cat([_LOGITS, _LOGITS[:1]])],
                         ids=["one-row-short", "one-row-extra"])
def test_verify_block_greedy_rejects_bad_shapes(logits):
    """Like ``verify_block``, greedy verification needs ``gamma + 1`` rows of logits and
    should say so with a ``ValueError`` instead of an ``IndexError`` or a silent result."""
    with pytest.raises(ValueError, match="expected"):
        verify_block_greedy(logits, [1, 0, 2])


def test_a_cpu_generator_draws_the_same_tokens_for_probabilities_on_another_device():
    """Probabilities on a device other than the generator's (``meta`` stands in for a GPU
    here: only the device differs) are moved to the generator's device first, so the draws
    depend on the seed alone."""
    from draftalign.sampling import sample, verify_block

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    class Elsewhere(torch.Tensor):  # a tensor that reports another device
        @property
        def device(self):
            return torch.device("meta")

    moved = probs.as_subclass(Elsewhere)
    a = [sample(probs, torch.Generator().manual_seed(s)) for s in range(20)]
    b = [sample(moved, torch.Generator().manual_seed(s)) for s in range(20)]
    assert a == b
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    q = torch.tensor([[0.9, 0.1]])
    outcomes = {verify_block(p, q, [0], torch.Generator().manual_seed(s)) for s in range(3)}
    assert outcomes == {verify_block(p.as_subclass(Elsewhere), q.as_subclass(Elsewhere), [0],
                                     torch.Generator().manual_seed(s)) for s in range(3)}
