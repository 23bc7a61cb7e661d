"""The acceptance report (``draftalign.evaluate.acceptance_report``) on tiny random models:
a self-draft accepts everything, a uniform draft gives the closed form, the expected tau
agrees with the engine, intervals shrink with more prompts, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from draftalign.evaluate import acceptance_report, answer_acceptance, bootstrap_interval, target_answers
from draftalign.metrics import expected_target_calls

V = 32


def prompts(n, seed=0, length=5):
    rng = np.random.default_rng(seed)
    return [{"id": f"p{i}", "category": "ab"[i % 2], "prompt_ids": rng.integers(4, V, size=length).tolist()}
            for i in range(n)]


@pytest.fixture(scope="module")
def pair():
    from conftest import build_tiny_llama

    target = build_tiny_llama(vocab_size=V, seed=0, init_std=0.2, eos_token_id=None)
    draft = build_tiny_llama(vocab_size=V, seed=1, init_std=0.2, eos_token_id=None)
    return target, draft


def test_self_draft_accepts_everything(pair):
    target, _ = pair
    report = acceptance_report(target, {"self": target}, prompts(4), temperatures=(0.0, 1.0), gamma=3,
                               max_new_tokens=9, n_boot=50, progress=False)
    assert list(report.temperature) == [0.0, 1.0]
    assert np.allclose(report.alpha, 1.0) and np.allclose(report.alpha_lo, 1.0)
    # 9 tokens in blocks of gamma + 1 = 4 (the last block cut by the budget): 3 calls per answer
    assert np.allclose(report.expected_tau, 3.0)
    assert np.allclose(report.tau, 3.0)
    assert (report.prompts == 4).all() and (report.tokens == 36).all()


def test_uniform_draft_gives_the_closed_form(pair):
    target, _ = pair
    from conftest import build_tiny_llama

    uniform = build_tiny_llama(vocab_size=V, seed=2, eos_token_id=None)
    with torch.no_grad():
        uniform.lm_head.weight.zero_()  # every logit 0: q = 1 / V at every temperature
    ps = prompts(3)
    answers = target_answers(target, ps, temperatures=(0.0, 0.7), max_new_tokens=6, progress=False)
    report = acceptance_report(target, {"uniform": uniform}, ps, temperatures=(0.0, 0.7), gamma=2,
                               max_new_tokens=6, answers=answers, engine_prompts=0, n_boot=20, progress=False)
    for temp in (0.0, 0.7):
        total = hits = 0.0
        n = 0
        for a in (a for a in answers if a["temperature"] == temp):
            ids = torch.tensor([a["prompt_ids"] + a["tokens"]])
            logits = target(ids).logits[0, len(a["prompt_ids"]) - 1:-1]  # [L, V]
            if temp == 0:
                hits += sum(int(t == 0) for t in a["tokens"])  # the argmax of equal logits is id 0
            else:
                total += torch.minimum((logits / temp).softmax(-1), torch.full((V,), 1 / V)).sum(-1).sum().item()
            n += len(a["tokens"])
        want = hits / n if temp == 0 else total / n
        got = report.set_index("temperature").loc[temp, "alpha"]
        assert got == pytest.approx(want, abs=1e-6)


def test_greedy_expected_tau_is_the_engines(pair):
    target, draft = pair
    ps = prompts(5, seed=3)
    report = acceptance_report(target, {"d": draft}, ps, temperatures=(0.0,), gamma=4, max_new_tokens=12,
                               n_boot=50, progress=False)
    row = report.iloc[0]
    assert row.expected_tau == pytest.approx(row.tau, abs=1e-12)
    per = report.attrs["per_prompt"]
    assert len(per) == 5 and set(per.columns) >= {"positions", "alpha_sum", "expected_calls", "tokens"}


def test_sampled_expected_tau_agrees_with_the_engine(pair):
    target, draft = pair
    ps = prompts(2, seed=4)
    gamma, temp, n_tokens = 3, 1.0, 10
    seeds = tuple(range(60))
    report = acceptance_report(target, {"d": draft}, ps, temperatures=(temp,), gamma=gamma,
                               max_new_tokens=n_tokens, seeds=seeds, n_boot=200, progress=False)
    row = report.iloc[0]
    assert 0.2 < row.alpha < 0.95
    # the engine's tau over 60 seeds and the expected tau over 60 sampled answers: the same
    # quantity estimated twice (the engine's spread over seeds, about 0.05 here)
    assert abs(row.tau - row.expected_tau) < 0.12, (row.tau, row.expected_tau)
    assert row.expected_tau_lo <= row.expected_tau <= row.expected_tau_hi


def test_answer_acceptance_alpha_is_one_minus_tvd(pair):
    target, draft = pair
    a = target_answers(target, prompts(1), temperatures=(0.7,), max_new_tokens=5, progress=False)[0]
    got = answer_acceptance(target, {"d": draft}, a)["d"]
    ids = torch.tensor([a["prompt_ids"] + a["tokens"]])
    m = len(a["prompt_ids"])
    with torch.no_grad():
        p = (target(ids).logits[0, m - 1:-1] / 0.7).softmax(-1)
        q = (draft(ids).logits[0, m - 1:-1] / 0.7).softmax(-1)
    assert np.allclose(got["alpha"], 1 - 0.5 * (p - q).abs().sum(-1).numpy(), atol=1e-6)
    x = torch.tensor(a["tokens"])
    assert np.allclose(got["accept"], (q[range(5), x] / p[range(5), x]).clamp(max=1).numpy(), atol=1e-6)


def test_intervals_shrink_with_more_prompts(pair):
    target, draft = pair
    widths = []
    for n in (4, 64):
        r = acceptance_report(target, {"d": draft}, prompts(n, seed=5), temperatures=(1.0,), gamma=2,
                              max_new_tokens=8, engine_prompts=0, n_boot=400, progress=False).iloc[0]
        assert r.alpha_lo <= r.alpha <= r.alpha_hi and r.expected_tau_lo <= r.expected_tau <= r.expected_tau_hi
        widths.append((r.alpha_hi - r.alpha_lo, r.expected_tau_hi - r.expected_tau_lo))
    # 16 times the prompts: about a quarter of the width (measured 0.45 and 0.34 of it here)
    assert widths[1][0] < 0.6 * widths[0][0] and widths[1][1] < 0.6 * widths[0][1]


def test_expected_calls_match_a_simulation():
    rng = np.random.default_rng(0)
    accept = rng.random(11)
    gamma, budget = 3, 13
    sims = []
    for _ in range(20_000):
        ok = rng.random(11) < accept
        t = calls = 0
        while t < 11:
            g = min(gamma, budget - t - 1)
            k = 0
            while k < g and t + k < 11 and ok[t + k]:
                k += 1
            t += k + 1
            calls += 1
        sims.append(calls)
    assert expected_target_calls(accept, gamma, budget=budget) == pytest.approx(np.mean(sims), abs=0.03)


def test_bad_input_is_refused(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="no drafts"):
        acceptance_report(target, {}, prompts(1))
    with pytest.raises(ValueError, match="temperatures"):
        acceptance_report(target, {"d": draft}, prompts(1), temperatures=(-1.0,))
    with pytest.raises(ValueError, match="tokenizer"):
        acceptance_report(target, {"d": draft}, ["a prompt as text"])
    with pytest.raises(ValueError, match="engine_drafts"):
        acceptance_report(target, {"d": draft}, prompts(1), temperatures=(0.0,), max_new_tokens=2,
                          engine_drafts=["missing"], progress=False)
    with pytest.raises(ValueError, match="gamma"):
        acceptance_report(target, {"d": draft}, prompts(1), gamma=0)
    assert np.isnan(bootstrap_interval(np.array([np.nan]))[0])
