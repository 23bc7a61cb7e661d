"""On-policy distillation (draftalign.onpolicy) and the top-k cache of an existing answer
set (draftalign.generate.compute_topk), on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from draftalign.artifacts import SettingsMismatch
from draftalign.answers import compute_topk
from draftalign.onpolicy import distill_on_policy, OnPolicyBatches, sample_answers
from draftalign.speculative import autoregressive_generate
from draftalign.train import TrainConfig

V = 32
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14, 15, 16, 17, 18], [19, 20]]


@pytest.fixture()
def models(tiny_llama):
    return tiny_llama(vocab_size=V, seed=0, init_std=0.2), tiny_llama(vocab_size=V, seed=1, init_std=0.2)


def test_batched_greedy_answers_are_the_engines(models):
    target, _ = models
    answers = sample_answers(target, PROMPTS, max_new_tokens=9, temperature=0)
    for p, a in zip(PROMPTS, answers):
        assert a == autoregressive_generate(target, torch.tensor([p]), max_new_tokens=9).tokens


def test_sampled_answers_follow_the_seed_and_stop_at_eos(models):
    target, _ = models
    a = sample_answers(target, PROMPTS, max_new_tokens=12, temperature=1.0, seed=3)
    assert a == sample_answers(target, PROMPTS, max_new_tokens=12, temperature=1.0, seed=3)
    assert a != sample_answers(target, PROMPTS, max_new_tokens=12, temperature=1.0, seed=4)
    for ans in a:
        assert 1 <= len(ans) <= 12 and (3 not in ans[:-1])  # EOS (3) only ever last
    with pytest.raises(ValueError, match="empty prompt"):
        sample_answers(target, [[]], max_new_tokens=2)


def test_on_policy_batches_hold_the_drafts_own_answers(models):
    target, draft = models
    data = OnPolicyBatches(PROMPTS, draft, max_new_tokens=6, seed=1)
    batch = data.batch(0, 3)
    idx = data.indices(0, 3)
    answers = sample_answers(draft, [PROMPTS[i] for i in idx], max_new_tokens=6, seed=1_000_003)
    for j, i in enumerate(idx):
        n = len(PROMPTS[i]) + len(answers[j])
        assert batch["input_ids"][j, :n].tolist() == PROMPTS[i] + answers[j]
        assert batch["loss_mask"][j, :n].sum() == len(answers[j])  # the mask covers the answer only


def test_on_policy_training_resumes_exactly(models, tmp_path):
    target, _ = models
    cfg = TrainConfig(max_steps=4, batch_size=2, lr=1e-2, warmup_steps=1, eval_every=100, checkpoint_every=2)
    from conftest import build_tiny_llama

    straight = build_tiny_llama(vocab_size=V, seed=1, init_std=0.2)
    h = distill_on_policy(straight, target, PROMPTS, tmp_path / "a", loss="tvd++", cfg=cfg, max_new_tokens=5,
                          progress=False)
    assert len(h) == 4 and (h.tokens > 0).all()
    split = build_tiny_llama(vocab_size=V, seed=1, init_std=0.2)
    distill_on_policy(split, target, PROMPTS, tmp_path / "b", loss="tvd++", cfg=cfg, max_new_tokens=5,
                      stop_after=2, progress=False)
    again = build_tiny_llama(vocab_size=V, seed=1, init_std=0.2)  # a fresh process: weights from the checkpoint
    distill_on_policy(again, target, PROMPTS, tmp_path / "b", loss="tvd++", cfg=cfg, max_new_tokens=5, progress=False)
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_compute_topk_matches_the_target_and_resumes(models, tmp_path):
    target, _ = models
    rows = [{"index": i, "prompt_ids": p, "response_ids": [4 + i, 20, 21][: 1 + i % 3]} for i, p in enumerate(PROMPTS)]
    cache = compute_topk(target, rows, tmp_path, topk=5, chunk=2, batch_size=2, progress=False)
    assert sorted(cache) == list(range(len(rows)))
    for r in rows:
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        m, n = len(r["prompt_ids"]), len(r["response_ids"])
        lp = target(ids).logits[0, m - 1:m + n - 1].log_softmax(-1)
        want_v, want_i = lp.topk(5, dim=-1)
        got_i, got_v = cache[r["index"]]
        assert torch.equal(got_i, want_i)
        assert np.allclose(got_v.numpy(), want_v.detach().numpy(), atol=2e-3)  # stored in fp16
    (tmp_path / "topk" / "batch-00001.npz").unlink()  # as if killed before that chunk
    again = compute_topk(target, rows, tmp_path, topk=5, chunk=2, batch_size=2, progress=False)
    assert all(torch.equal(again[i][0], cache[i][0]) for i in cache)
    with pytest.raises(SettingsMismatch, match="other settings"):
        compute_topk(target, rows[:3], tmp_path, topk=5, chunk=2, progress=False)
