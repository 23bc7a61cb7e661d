"""Drafts over a sub-vocabulary (:mod:`draftalign.subvocab`).

Checked: the kept set; the wrapped draft's logits (the copied rows, ``-inf`` elsewhere,
identical to the original draft when every token is kept); speculative decoding with it
stays exact (greedy tokens equal the target's, and sampled continuations pass a
chi-square test against the target's distribution); save and load; and distillation in
the small space (loss against the renormalised restricted target, stats against the
full target, equal to the plain draft's when every token is kept, TVD going down).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from draftalign.distill import distill, distill_examples, expand_topk, kd_loss_fn, restrict_topk
from draftalign.losses import get_loss
from draftalign.models import check_compatible, vocab_size
from draftalign.sampling import warp
from draftalign.speculative import autoregressive_generate, speculative_generate
from draftalign.subvocab import sub_vocab_draft, sub_vocabulary, SubVocabDraft
from draftalign.drafts import load_draft
from draftalign.train import Batches, TrainConfig

V = 32


def _rows(n, seed, vocab=V, low=4):
    g = torch.Generator().manual_seed(seed)
    return [{"index": i, "prompt_ids": torch.randint(low, vocab, (5,), generator=g).tolist(),
             "response_ids": torch.randint(low, vocab, (6,), generator=g).tolist()} for i in range(n)]


# ------------------------------------------------------------------ the kept set


def test_sub_vocabulary_is_the_sorted_union_of_prompts_answers_topk_and_always():
    rows = [{"index": 0, "prompt_ids": [9, 5], "response_ids": [7, 7]},
            {"index": 1, "prompt_ids": [5], "response_ids": [30]}]
    topk = {0: (torch.tensor([[11, 12, 13], [14, 15, 16]]), torch.zeros(2, 3)),
            1: (torch.tensor([[20, 21, 22]]), torch.zeros(1, 3))}
    assert sub_vocabulary(rows).tolist() == [5, 7, 9, 30]
    assert sub_vocabulary(rows, topk=topk, per_position=2, always=[0, 2]).tolist() == \
        [0, 2, 5, 7, 9, 11, 12, 14, 15, 20, 21, 30]
    assert sub_vocabulary(rows, topk=topk, per_position=0).tolist() == [5, 7, 9, 30]
    with pytest.raises(ValueError):
        sub_vocabulary(rows, per_position=-1)
    with pytest.raises(ValueError):
        sub_vocabulary([])


# ------------------------------------------------------------------ the wrapped draft


@pytest.mark.parametrize("tie", [False, True])
def test_wrapped_logits_are_the_kept_rows_and_minus_inf_elsewhere(tiny_llama, tie):
    draft = tiny_llama(vocab_size=V, seed=2, init_std=0.2, tie_embeddings=tie)
    keep = torch.tensor([1, 3, 4, 8, 9, 15, 22, 31])
    sub = sub_vocab_draft(draft, keep).eval()
    assert isinstance(sub, SubVocabDraft) and sub.sub_size == len(keep) and vocab_size(sub) == V
    assert sub.get_input_embeddings().weight.shape[0] == len(keep) + 1
    torch.testing.assert_close(sub.get_input_embeddings().weight[:-1], draft.get_input_embeddings().weight[keep])
    ids = torch.tensor([[1, 4, 9, 31, 3]])  # all kept: the body sees the same embeddings
    with torch.no_grad():
        full, small = draft(ids).logits, sub(ids).logits
    assert small.shape == (1, 5, V)
    outside = torch.ones(V, dtype=torch.bool)
    outside[keep] = False
    assert torch.isinf(small[..., outside]).all() and (small[..., outside] < 0).all()
    torch.testing.assert_close(small[..., keep], full[..., keep])
    q = small.softmax(-1)
    assert (q[..., outside] == 0).all() and torch.allclose(q.sum(-1), torch.ones(1, 5))
    # a token outside the sub-vocabulary is read as the shared last row
    assert sub.sub_ids(torch.tensor([0, 1, 2, 31])).tolist() == [len(keep), 0, len(keep), len(keep) - 1]
    with torch.no_grad():
        a, b = sub(torch.tensor([[1, 0, 4]])).logits, sub(torch.tensor([[1, 2, 4]])).logits
    torch.testing.assert_close(a, b)


def test_keeping_every_token_reproduces_the_draft(tiny_llama):
    draft = tiny_llama(vocab_size=V, seed=5, init_std=0.2)
    sub = sub_vocab_draft(draft, torch.arange(V)).eval()
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sub(ids).logits, draft(ids).logits)


def test_bad_sub_vocabularies_raise(tiny_llama):
    draft = tiny_llama(vocab_size=V)
    inner = sub_vocab_draft(draft, torch.tensor([1, 2, 3])).model
    with pytest.raises(ValueError, match="rows"):
        SubVocabDraft(inner, torch.tensor([1, 2]), V)
    with pytest.raises(ValueError, match="lie in"):
        SubVocabDraft(inner, torch.tensor([1, 2, V]), V)
    with pytest.raises(ValueError, match="distinct"):
        SubVocabDraft(inner, torch.tensor([1, 2, 2]), V)


def test_special_ids_follow_the_mapping(tiny_llama):
    draft = tiny_llama(vocab_size=V)  # bos 1, eos = pad = 3
    inner = sub_vocab_draft(draft, torch.tensor([1, 3, 7])).model
    assert (inner.config.bos_token_id, inner.config.eos_token_id, inner.config.pad_token_id) == (0, 1, 1)
    inner = sub_vocab_draft(draft, torch.tensor([7, 8])).model
    assert inner.config.eos_token_id is None


def test_save_and_load(tiny_llama, tmp_path):
    target = tiny_llama(vocab_size=V, seed=1)
    sub = sub_vocab_draft(tiny_llama(vocab_size=V, seed=2, init_std=0.2), torch.tensor([0, 2, 5, 6, 20, 29])).eval()
    sub.save_pretrained(tmp_path)
    back = load_draft(tmp_path).eval()
    assert isinstance(back, SubVocabDraft) and torch.equal(back.keep, sub.keep)
    check_compatible(target, back)
    ids = torch.tensor([[0, 5, 7, 29]])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, sub(ids).logits)
    inner = AutoModelForCausalLM.from_pretrained(tmp_path)  # a standard folder: the inner model
    assert inner.config.vocab_size == 7
    plain = tiny_llama(vocab_size=V, seed=3)
    plain.save_pretrained(tmp_path / "plain")
    assert not isinstance(load_draft(tmp_path / "plain"), SubVocabDraft)
    with pytest.raises(ValueError, match="vocab_size mismatch"):
        check_compatible(tiny_llama(vocab_size=V + 1), back)


# ------------------------------------------------------------------ speculative decoding stays exact


def test_greedy_speculative_with_a_sub_vocabulary_draft_equals_the_target(tiny_llama):
    target = tiny_llama(vocab_size=V, seed=1, init_std=0.3, eos_token_id=None)
    draft = tiny_llama(vocab_size=V, seed=1, init_std=0.3, eos_token_id=None)  # the target's twin
    ids = torch.tensor([[1, 2, 3]])
    plain = autoregressive_generate(target, ids, max_new_tokens=30)
    counts = {t: plain.tokens.count(t) for t in set(plain.tokens)}
    dropped = sorted(counts, key=counts.get)[:2]  # two tokens the target does produce, rarely
    assert len(counts) > 2 and len(dropped) == 2
    sub = sub_vocab_draft(draft, torch.tensor([t for t in range(V) if t not in dropped])).eval()
    spec = speculative_generate(target, sub, ids, max_new_tokens=30, gamma=3)
    assert spec.tokens == plain.tokens  # including the dropped tokens, which the target supplies
    assert all(t not in dropped for b in spec.blocks for t in b.drafts)
    assert spec.tau > 1  # the twin's kept tokens are accepted
    assert spec.target_calls < plain.target_calls


SMALL_V, PROMPT, LENGTH = 5, [0, 1, 2], 2


def _exact(model, temperature):
    probs = {}
    with torch.no_grad():
        first = warp(model(torch.tensor([PROMPT])).logits[0, -1], temperature).double()
        for a in range(SMALL_V):
            second = warp(model(torch.tensor([PROMPT + [a]])).logits[0, -1], temperature).double()
            for b in range(SMALL_V):
                probs[(a, b)] = float(first[a] * second[b])
    return probs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_speculative_sampling_with_a_sub_vocabulary_draft_is_lossless(tiny_llama, chi2, temperature):
    target = tiny_llama(vocab_size=SMALL_V, eos_token_id=None, init_std=0.1, seed=3)
    draft = sub_vocab_draft(tiny_llama(vocab_size=SMALL_V, eos_token_id=None, init_std=0.1, seed=4),
                            torch.tensor([1, 2, 4])).eval()  # never proposes 0 or 3
    probs = _exact(target, temperature)
    runs = [speculative_generate(target, draft, torch.tensor([PROMPT]), max_new_tokens=LENGTH, gamma=2,
                                 temperature=temperature, seed=s) for s in range(2500)]
    drafted = [t for r in runs for b in r.blocks for t in b.drafts]
    assert set(drafted) <= {1, 2, 4} and drafted
    assert any(a < d for r in runs for a, d in zip(r.accepted, r.drafted))
    index = {seq: i for i, seq in enumerate(itertools.product(range(SMALL_V), repeat=LENGTH))}
    counts = np.zeros(len(index))
    for r in runs:
        counts[index[tuple(r.tokens)]] += 1
    assert counts[[index[s] for s in index if 0 in s or 3 in s]].sum() > 0  # tokens it cannot draft still come
    pvalue = chi2(counts, [probs[s] for s in index])
    assert pvalue > 1e-3, (pvalue, counts)


# ------------------------------------------------------------------ distillation in the small space


def test_restrict_topk_equals_the_kept_columns_of_expand_topk():
    g = torch.Generator().manual_seed(0)
    lp, ids = torch.randn(7, V, generator=g).log_softmax(-1).topk(5, -1)
    keep = torch.tensor([0, 3, 4, 9, 10, 11, 17, 25, 30])
    to_sub = torch.full((V,), len(keep))
    to_sub[keep] = torch.arange(len(keep))
    got = restrict_topk(ids, lp, V, to_sub, len(keep))
    torch.testing.assert_close(got, expand_topk(ids, lp, V)[:, keep])


def _pair(tiny_llama):
    target = tiny_llama(vocab_size=V, seed=1, init_std=0.2)
    draft = tiny_llama(vocab_size=V, seed=2, init_std=0.2)
    return target, draft


@pytest.mark.parametrize("name", ["fkl", "rkl", "tvd", "tvd++"])
def test_sub_vocabulary_loss_is_the_loss_on_the_renormalised_restricted_target(tiny_llama, name):
    target, draft = _pair(tiny_llama)
    rows = _rows(4, seed=3)
    keep = torch.tensor(sorted(set(range(0, V, 3)) | {t for r in rows for t in r["prompt_ids"][:2]}))
    sub = sub_vocab_draft(draft, keep)
    batch = Batches(distill_examples(rows)).get([0, 1, 2, 3])
    loss, stats = kd_loss_fn(target, name)(sub, batch)
    pos = batch["loss_mask"][:, 1:].bool()
    with torch.no_grad():
        full_q = sub(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][pos]
        p = target(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][pos]
    want = get_loss(name)(full_q[:, keep][None], p.log_softmax(-1)[:, keep][None]).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    tvd_full = 0.5 * (full_q.softmax(-1) - p.softmax(-1)).abs().sum(-1).mean()
    assert stats["tvd"] == pytest.approx(float(tvd_full), rel=1e-5)
    assert stats["top1"] == pytest.approx(float((full_q.argmax(-1) == p.argmax(-1)).float().mean()))
    loss.backward()
    assert sub.model.get_input_embeddings().weight.grad is not None
    assert all(q.grad is None for q in target.parameters())


@pytest.mark.parametrize("cached", [False, True])
def test_keeping_every_token_trains_like_the_plain_draft(tiny_llama, cached):
    target, draft = _pair(tiny_llama)
    rows = _rows(4, seed=4)
    topk = None
    if cached:  # the target's exact distribution as a full "top-k"
        topk = {}
        for r in rows:
            with torch.no_grad():
                logits = target(torch.tensor([r["prompt_ids"] + r["response_ids"]])).logits[0]
            lp, ids = logits[len(r["prompt_ids"]) - 1:-1].log_softmax(-1).topk(V, -1)
            topk[r["index"]] = (ids, lp)
    batch = Batches(distill_examples(rows, topk=topk)).get([0, 1, 2, 3])
    sub = sub_vocab_draft(draft, torch.arange(V))
    for name in ("fkl", "tvd"):
        a, sa = kd_loss_fn(target, name)(draft, batch)
        b, sb = kd_loss_fn(target, name)(sub, batch)
        assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-4)
        assert sb == pytest.approx(sa, rel=1e-4)


def test_distill_a_sub_vocabulary_draft_lowers_tvd_and_saves_it(tiny_llama, tmp_path):
    target = tiny_llama(vocab_size=V, seed=1, init_std=0.1, eos_token_id=None)
    rows = []
    for i in range(16):  # the target's own samples
        res = autoregressive_generate(target, torch.tensor([[1, 5 + i % 7]]), max_new_tokens=8, temperature=1.0,
                                      seed=i)
        rows.append({"index": i, "prompt_ids": [1, 5 + i % 7], "response_ids": res.tokens})
    keep = sub_vocabulary(rows, always=[0, 1, 2, 3])
    sub = sub_vocab_draft(tiny_llama(vocab_size=V, seed=2, init_std=0.1, eos_token_id=None), keep)
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=10)
    history = distill(sub, target, rows, tmp_path, loss="fkl", cfg=cfg, progress=False)
    assert history["tvd"].iloc[-5:].mean() < 0.8 * history["tvd"].iloc[:5].mean()
    back = load_draft(tmp_path)
    assert isinstance(back, SubVocabDraft) and torch.equal(back.keep, keep)
    for a, b in zip(back.parameters(), sub.parameters()):
        torch.testing.assert_close(a, b)
    # a run stopped after 10 steps and resumed from its checkpoint ends where the
    # uninterrupted run ended
    cut = sub_vocab_draft(tiny_llama(vocab_size=V, seed=2, init_std=0.1, eos_token_id=None), keep)
    first = distill(cut, target, rows, tmp_path / "cut", loss="fkl", cfg=cfg, progress=False, stop_after=10)
    assert len(first) == 10 and not (tmp_path / "cut" / "config.json").exists()
    again = sub_vocab_draft(tiny_llama(vocab_size=V, seed=2, init_std=0.1, eos_token_id=None), keep)
    h2 = distill(again, target, rows, tmp_path / "cut", loss="fkl", cfg=cfg, progress=False)
    assert len(h2) == 30
    for a, b in zip(again.parameters(), sub.parameters()):
        torch.testing.assert_close(a, b)
