"""Chapter 5's measurements (:mod:`draftalign.replay`, :mod:`draftalign.costmodel`, :mod:`draftalign.timing`, :mod:`draftalign.book.chapter5`) on tiny random Llama models, each
against the engine, a hand computation or a known case: the greedy replay gives the
engine's blocks exactly; the target as its own draft accepts everything; a cost model
fitted to exactly linear pass costs recovers them; the break-even contour at zero draft
cost with a flat verification cost is alpha = 0."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from draftalign import costmodel, evaluate, replay, timing
from draftalign.book import chapter5
from draftalign.metrics import expected_tau, per_position_acceptance, speedup
from draftalign.speculative import autoregressive_generate, speculative_generate

N_NEW = 24  # a multiple of gamma + 1 for gamma = 1, 2, 3, 5


def _noisy_copy(model, noise: float, seed: int = 1):
    """The model with Gaussian noise on every weight: a draft that agrees with it sometimes."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise * p.std())
    return draft


@pytest.fixture(scope="module")
def pair(tiny_llama):
    """A peaked tiny target that can stop at EOS (id 3) and a draft agreeing ~60% of the time."""
    target = tiny_llama(vocab_size=32, hidden_size=16, num_layers=1, seed=0, init_std=0.5)
    return target, _noisy_copy(target, 0.1)


def _answers(target, n: int = 6, max_new_tokens: int = N_NEW):
    out = []
    for i in range(n):
        ids = torch.tensor([[1, 5 + i, 9, 2 + i]])  # [1, T]
        res = autoregressive_generate(target, ids, max_new_tokens=max_new_tokens)
        out.append({"id": i, "category": "ab"[i % 2], "input_ids": ids, "tokens": res.tokens,
                    "budget": max_new_tokens, "result": res})
    return out


# ------------------------------------------------------------------ replay

def test_replay_by_hand():
    """agree = T F T T F T T, gamma 2, budget 7: blocks accept 1, 2, 1 of 2, 2, 1 drafted
    (the last block may draft only budget - t - 1 = 1), so tau = 7 / 3."""
    res = replay.replay_greedy(list(range(7)), [1, 0, 1, 1, 0, 1, 1], gamma=2, budget=7)
    assert res.accepted == [1, 2, 1] and res.drafted == [2, 2, 1]
    assert res.target_calls == 3 and res.draft_calls == 5 and res.tau == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="gamma"):
        replay.replay_greedy([1, 2], [1, 1], gamma=0)
    with pytest.raises(ValueError, match="flags"):
        replay.replay_greedy([1, 2], [1], gamma=1)


@pytest.mark.parametrize("gamma", [1, 2, 3, 5])
def test_replay_equals_engine(pair, gamma):
    """The replay of the target's greedy answers gives the engine's tokens, target calls
    and accepted count of every block, EOS-stopped answers included."""
    target, draft = pair
    answers = _answers(target)
    assert any(len(a["tokens"]) < N_NEW for a in answers), "want some answers stopped at EOS"
    agree = replay.agreements(draft, answers)
    assert 0.3 < np.mean(np.concatenate(agree)) < 0.9  # the draft is right sometimes
    engine = [speculative_generate(target, draft, a["input_ids"], gamma=gamma, max_new_tokens=N_NEW)
              for a in answers]
    check = replay.replay_check({0: [a["result"] for a in answers], gamma: engine}, answers, agree)
    assert list(check.index) == [gamma]
    row = check.loc[gamma]
    assert row["same tokens"] == row["same blocks"] == row["answers"] == len(answers)
    assert row["tau (engine)"] == pytest.approx(row["tau (replay)"])
    table = replay.replay_table(answers, agree, gamma=gamma)
    for res, eng in zip(table.result, engine):
        assert (res.accepted, res.drafted, res.target_calls) == (eng.accepted, eng.drafted, eng.target_calls)


def test_replay_with_a_smaller_budget(pair):
    """Replaying the first 10 tokens of 24-token answers is decoding with max_new_tokens=10."""
    target, draft = pair
    answers = _answers(target)
    table = replay.replay_table(answers, replay.agreements(draft, answers), gamma=3, max_new_tokens=10)
    for a, res in zip(answers, table.result):
        eng = speculative_generate(target, draft, a["input_ids"], gamma=3, max_new_tokens=10)
        assert (res.tokens, res.accepted, res.drafted) == (eng.tokens, eng.accepted, eng.drafted)


def test_target_as_own_draft(tiny_llama):
    """The target drafting for itself: every draft accepted at every position, so
    measured tau, E[tau] from alpha and from the positions are all gamma + 1."""
    target = tiny_llama(vocab_size=32, hidden_size=16, seed=2, init_std=0.5, eos_token_id=None)
    answers = _answers(target, n=3)
    agree = replay.agreements(target, answers)
    assert all(a.all() for a in agree)
    for gamma in (1, 2, 3, 5):
        summary, positions = replay.acceptance_summary(
            {"self": replay.replay_table(answers, agree, gamma=gamma)}, gamma=gamma)
        assert (positions["self"] == 1).all() and len(positions) == gamma
        assert summary.loc["self"].tolist() == pytest.approx([gamma + 1, 1.0, gamma + 1, gamma + 1])
    sweep = replay.gamma_sweep(answers, {"self": agree}, [1, 5], parameters={"self": 10}, n_target=10)
    assert sweep.tau.tolist() == [2, 6] and sweep.mbsu.tolist() == pytest.approx([1, 1])  # c = 1: no gain


def test_acceptance_summary_by_hand():
    """Two blocks at gamma 2 accepting 2 and 0: position 1 accepted 1 of 2, position 2 1 of 1;
    alpha = 2 accepted of 3 reached; E[tau] from positions = 1 + 0.5 + 0.5 * 1 = 2."""
    res = replay.replay_greedy([0] * 4, [1, 1, 0, 0], gamma=2, budget=10)
    assert res.accepted == [2, 0] and res.drafted == [2, 2]
    table = pd.DataFrame({"result": [res]})
    summary, positions = replay.acceptance_summary({"d": table}, gamma=2)
    assert positions["d"].tolist() == pytest.approx(per_position_acceptance([res], 2).tolist())
    assert positions["d"].tolist() == pytest.approx([0.5, 1.0])
    assert summary.loc["d", "alpha (pooled)"] == pytest.approx(2 / 3)
    assert summary.loc["d", "E[tau] from per-position acceptance"] == pytest.approx(2.0)
    assert summary.loc["d", "E[tau] from alpha, i.i.d."] == pytest.approx(expected_tau(2 / 3, 2))
    assert summary.loc["d", "tau (measured)"] == pytest.approx(2.0)
    assert replay.tau_from_positions([0.5, 0.5]) == pytest.approx(1.75)
    assert replay.tau_from_positions([1.0, float("nan")]) == pytest.approx(2.0)


# ------------------------------------------------------------------ cost model and break-even

def test_cost_model_recovers_linear_costs():
    costs = pd.DataFrame({"k": [1, 2, 4, 8, 9], "ms_median": [40 + 5 * k for k in (1, 2, 4, 8, 9)]})
    cm = costmodel.fit_cost_model(costs)
    assert (cm.a_ms, cm.b_ms) == pytest.approx((40.0, 5.0))
    assert cm.verify(1) == pytest.approx(1.0) and cm.verify(5) == pytest.approx(65 / 45)
    # the speed-up by hand: tau 2.5 at gamma 4, c = 0.1: 2.5 / (4 * 0.1 + t(5) / t(1))
    assert cm.speedup(2.5, 4, 0.1) == pytest.approx(2.5 / (0.4 + 65 / 45))
    with pytest.raises(ValueError):
        costmodel.fit_cost_model(costs.iloc[:1])


def test_memory_bound_model_is_the_book_equation():
    mb = costmodel.CostModel.memory_bound()
    for tau, gamma, c in [(1.0, 1, 0.0), (2.3, 4, 0.0164), (3.0, 6, 0.2)]:
        assert mb.speedup(tau, gamma, c) == pytest.approx(speedup(tau, gamma, c))
    assert mb.best_gamma(0.0, 0.05) == 1  # nothing accepted: every draft is pure cost
    pred = mb.predicted(0.8, [1, 2, 3], 0.05)
    assert pred[2] == pytest.approx(expected_tau(0.8, 2) / 1.1)
    best = max(range(1, 13), key=lambda g: speedup(expected_tau(0.8, g), g, 0.05))
    assert mb.best_gamma(0.8, 0.05, range(1, 13)) == best


def test_break_even():
    mb = costmodel.CostModel.memory_bound()
    assert costmodel.alpha_needed(0.0, 4, mb) == 0.0  # a free draft always pays
    # gamma = 1: E[tau] = 1 + alpha must reach c + t(2) / t(1)
    assert costmodel.alpha_needed(0.3, 1, mb) == pytest.approx(0.3)
    linear = costmodel.CostModel(40.0, 5.0)
    assert costmodel.alpha_needed(0.1, 1, linear) == pytest.approx(0.1 + 50 / 45 - 1)
    assert costmodel.alpha_needed(0.0, 4, linear) > 0  # verifying 5 tokens costs more than 1
    assert np.isnan(costmodel.alpha_needed(1.1, 4, mb))  # a draft dearer than the target never pays
    # the grid crosses 1 exactly at alpha_needed
    alphas, cs = np.linspace(0, 0.99, 5), np.array([0.0, 0.05, 0.2])
    grid = costmodel.speedup_grid(alphas, cs, 4, linear)
    assert grid.shape == (3, 5)
    assert grid[1, 2] == pytest.approx(linear.speedup(expected_tau(alphas[2], 4), 4, 0.05))
    for c in cs:
        a = costmodel.alpha_needed(c, 4, linear)
        assert costmodel.speedup_grid([a], [c], 4, linear)[0, 0] == pytest.approx(1.0, abs=1e-9)
        assert costmodel.alpha_needed(c, 4, linear, speedup=1.5) > a


def test_step_ms_and_pass_cost_fit(pair):
    target, draft = pair
    assert costmodel.step_ms(draft, prefix_len=8, repeats=2) > 0


# ------------------------------------------------------------------ decoding measurements

def test_greedy_answers(pair):
    target, _ = pair

    class Tok:  # a chat template that just maps the text's length to ids
        def apply_chat_template(self, messages, add_generation_prompt=True, return_tensors="pt"):
            n = len(messages[-1]["content"])
            return torch.tensor([[1, 4 + n % 20, 7]])

    prompts = [{"id": "a", "category": "x", "prompt": "hello"}, {"id": "b", "category": "y", "prompt": "hi"}]
    answers = replay.greedy_answers(target, Tok(), prompts, max_new_tokens=10)
    assert [a["id"] for a in answers] == ["a", "b"] and answers[1]["budget"] == 10
    plain = autoregressive_generate(target, torch.tensor([[1, 9, 7]]), max_new_tokens=10)
    assert answers[0]["tokens"] == plain.tokens


def test_wall_clock_by_gamma(pair):
    target, draft = pair
    answers = _answers(target, n=2, max_new_tokens=12)
    table, results = timing.wall_clock_by_gamma(target, draft, [a["input_ids"] for a in answers], [1, 3],
                                                  max_new_tokens=12, rounds=1)
    assert table.gamma.tolist() == [0, 1, 3] and set(results) == {0, 1, 3}
    assert table.loc["plain", "speed-up"] == pytest.approx(1.0)
    check = replay.replay_check(results, answers, replay.agreements(draft, answers))
    assert (check["same tokens"] == 2).all() and (check["same blocks"] == 2).all()


def test_tau_per_temperature(tiny_llama):
    """The target as its own draft accepts every sampled draft too (q = p: min(1, p/q) = 1)."""
    target = tiny_llama(vocab_size=32, hidden_size=16, seed=3, init_std=0.5, eos_token_id=None)
    other = tiny_llama(vocab_size=32, hidden_size=16, seed=4, init_std=0.5, eos_token_id=None)
    prompts = [torch.tensor([[1, 5, 9]]), torch.tensor([[1, 6, 2]])]
    out = evaluate.tau_per_temperature(target, {"self": target, "other": other}, prompts,
                                       temperatures=[0.0, 1.0], gamma=3, max_new_tokens=N_NEW)
    assert len(out) == 4
    own = out[out.draft == "self"]
    assert own.tau.tolist() == [4.0, 4.0] and own.alpha.tolist() == [1.0, 1.0]
    assert (out[out.draft == "other"].tau < 4).all()


def test_against_transformers(pair):
    """transformers' assisted generation, fixed and dynamic, with the same draft: greedy,
    so every method gives the plain tokens; calls are counted and the hook removed."""
    target, draft = pair
    prompts = [a["input_ids"] for a in _answers(target, n=2, max_new_tokens=12)]
    own = draft.generation_config
    table, results = timing.against_transformers(target, draft, prompts, gamma=3, max_new_tokens=12,
                                                   rounds=1, pad_token_id=0)
    assert not target._forward_hooks and draft.generation_config is own
    agreement = timing.output_agreement(results)
    assert (agreement["same tokens as plain"] == "2 of 2").all()
    assert (table.target_calls <= table.loc["plain", "target_calls"]).all()
    assert table.loc["transformers, gamma=3", "tau"] > 1  # the draft is right sometimes


def test_output_agreement_by_hand():
    r = lambda toks: type("R", (), {"tokens": toks})()  # noqa: E731
    out = timing.output_agreement({"plain": [r([1, 2, 3]), r([4, 5])], "x": [r([1, 9, 3]), r([4, 5])]})
    assert out.loc["x"].tolist() == ["1 of 2", "1"] and out.loc["plain"].tolist() == ["2 of 2", "-"]


# ------------------------------------------------------------------ drafts and the paper

def test_shipped_draft_folders(tmp_path):
    assert chapter5.shipped_draft_folders(tmp_path) == []
    for name, has_config in [("b-draft", True), ("a-draft", True), ("empty", False)]:
        (tmp_path / "data" / "drafts" / name).mkdir(parents=True)
        if has_config:
            (tmp_path / "data" / "drafts" / name / "config.json").write_text("{}")
    assert [f.name for f in chapter5.shipped_draft_folders(tmp_path)] == ["a-draft", "b-draft"]


def test_full_vocabulary_draft(tmp_path, tiny_llama):
    from draftalign.subvocab import sub_vocab_draft

    target = tiny_llama(vocab_size=32, hidden_size=16)
    plain = tiny_llama(vocab_size=32, hidden_size=16, seed=5)
    plain.save_pretrained(tmp_path / "plain")
    sub_vocab_draft(plain, torch.arange(0, 32, 2)).save_pretrained(tmp_path / "sub")
    assert chapter5.full_vocabulary_draft(tmp_path / "plain", target) is not None
    assert chapter5.full_vocabulary_draft(tmp_path / "sub", target) is None


def test_paper_table():
    book = pd.DataFrame({"size ratio": [0.05], "tau": [1.4]}, index=["fkl"])
    table = chapter5.paper_table(book)
    first = table.iloc[0]
    assert (first["size ratio"], first["tau"], first["speed-up (reported)"]) == (0.0164, 2.3, 2.4)
    assert table.index[1] == "fkl"
    # within one configuration the speed-up of eq. speedup never exceeds tau
    assert all(speedup(2.3, g, c) <= 2.3 for g in range(2, 9) for c in (0.0, 0.0164))
