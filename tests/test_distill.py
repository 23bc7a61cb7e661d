"""Distillation (:mod:`draftalign.distill`): the cached top-k expansion, the answer-only
logits, the training examples, the KD loss function and a whole (tiny) distillation run.

Everything runs on tiny random Llamas (vocabulary 32, hidden 16-32) built by the
``tiny_llama`` fixture; the "by hand" versions run each row on its own, unpadded, through
the full model and pick the positions whose next token belongs to the answer.
"""

from __future__ import annotations

import math

import pytest
import torch

from draftalign.distill import answer_logits, distill, distill_examples, expand_topk, kd_loss_fn
from draftalign.distill_measures import token_budget
from draftalign.losses import textbook_fkl, textbook_rkl, textbook_tvd
from draftalign.train import Batches, TrainConfig

V = 32


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(tiny_llama, *, init_std=0.1, hidden=16, layers=1):
    target = tiny_llama(vocab_size=V, hidden_size=hidden, num_layers=layers, num_heads=2, seed=1,
                        init_std=init_std, eos_token_id=None)
    draft = tiny_llama(vocab_size=V, hidden_size=hidden, num_layers=layers, num_heads=2, seed=2,
                       init_std=init_std, eos_token_id=None)
    return target, draft


def _random_rows(n=5, seed=0):
    """Rows of different prompt and answer lengths (ids >= 4, so never BOS/EOS/pad)."""
    g = _gen(seed)
    rows = []
    for i in range(n):
        plen = 2 + int(torch.randint(0, 4, (1,), generator=g))
        rlen = 1 + int(torch.randint(0, 6, (1,), generator=g))
        rows.append({"index": 10 + i,
                     "prompt_ids": [1] + torch.randint(4, V, (plen - 1,), generator=g).tolist(),
                     "response_ids": torch.randint(4, V, (rlen,), generator=g).tolist()})
    return rows


def _answer_rows(model, rows):
    """Per row, the model's full logits ``[n_answer, V]`` at the positions that predict the
    answer tokens (one unpadded forward pass per row)."""
    out = []
    for r in rows:
        ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        P = len(r["prompt_ids"])
        out.append(model(ids).logits[0, P - 1:-1])
    return out


def _mean_tvd(draft, target, rows) -> float:
    with torch.no_grad():
        q = torch.cat(_answer_rows(draft, rows)).softmax(-1)
        p = torch.cat(_answer_rows(target, rows)).softmax(-1)
    return float(0.5 * (p - q).abs().sum(-1).mean())


def _exact_topk(target, rows, k=V):
    """The target's exact top-k log-probabilities for every answer token, as load_topk gives."""
    out = {}
    with torch.no_grad():
        for r, logits in zip(rows, _answer_rows(target, rows)):
            values, ids = logits.log_softmax(-1).topk(k, dim=-1)
            out[r["index"]] = (ids, values)
    return out


# ------------------------------------------------------------------ expand_topk


def test_expand_topk_sums_to_one_keeps_topk_spreads_rest():
    g = _gen(1)
    logits = torch.randn(6, V, generator=g) * 2
    logp = logits.log_softmax(-1)
    k = 5
    values, ids = logp.topk(k, dim=-1)
    full = expand_topk(ids, values, V)
    assert full.shape == (6, V)
    assert full.dtype == torch.float32
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(6), rtol=0, atol=1e-6)
    assert torch.equal(full.gather(1, ids), values)  # the kept log-probs, exactly
    rest = 1 - values.exp().sum(-1)
    kept = torch.zeros(6, V, dtype=torch.bool).scatter_(1, ids, True)
    for i in range(6):
        others = full[i][~kept[i]]
        assert len(others) == V - k
        assert torch.equal(others, others[0].expand_as(others))  # evenly
        assert float(others[0].exp()) == pytest.approx(float(rest[i]) / (V - k), rel=1e-5)
    # the expansion keeps the order: kept tokens are more likely than the evenly spread rest
    assert (full.gather(1, ids).min(-1).values > full.masked_fill(kept, -math.inf).max(-1).values).all()


def test_expand_topk_unsorted_ids_and_fp16_logprobs():
    """Ids in any order and fp16 log-probs (as stored on disk) give the same expansion."""
    logp = (torch.randn(3, V, generator=_gen(2)) * 1.5).log_softmax(-1)
    values, ids = logp.topk(4, dim=-1)
    perm = torch.tensor([2, 0, 3, 1])
    a = expand_topk(ids, values, V)
    b = expand_topk(ids[:, perm].to(torch.int32), values[:, perm], V)
    assert torch.equal(a, b)
    c = expand_topk(ids, values.half(), V)
    assert c.dtype == torch.float32
    torch.testing.assert_close(c.gather(1, ids), values.half().float(), rtol=0, atol=0)
    torch.testing.assert_close(c.exp().sum(-1), torch.ones(3), rtol=0, atol=1e-5)


def test_expand_topk_with_all_tokens_is_exact():
    logp = (torch.randn(4, V, generator=_gen(3)) * 2).log_softmax(-1)
    values, ids = logp.topk(V, dim=-1)
    full = expand_topk(ids, values, V)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(full, logp, rtol=0, atol=0)


# ------------------------------------------------------------------ answer_logits


def test_answer_logits_equals_full_forward_at_positions(tiny_llama):
    model = tiny_llama(vocab_size=V, hidden_size=16, num_layers=2, seed=3, init_std=0.2)
    ids = torch.randint(0, V, (3, 7), generator=_gen(4))
    positions = torch.rand(3, 6, generator=_gen(5)) > 0.5
    positions[0, 0] = True
    with torch.no_grad():
        want = model(ids).logits[:, :-1][positions]
        got = answer_logits(model, ids, None, positions)
        got_mask = answer_logits(model, ids, torch.ones_like(ids), positions)
    assert got.shape == (1, int(positions.sum()), V)
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_mask[0], want, rtol=1e-5, atol=1e-6)


def test_answer_logits_right_padded_rows_match_unpadded(tiny_llama):
    model = tiny_llama(vocab_size=V, hidden_size=16, num_layers=1, seed=6, init_std=0.2)
    rows = _random_rows(4, seed=6)
    batch = Batches(distill_examples(rows)).get([0, 1, 2, 3])
    pos = batch["loss_mask"][:, 1:].bool()
    with torch.no_grad():
        got = answer_logits(model, batch["input_ids"], batch["attention_mask"], pos)
        want = torch.cat(_answer_rows(model, rows))
    assert got.shape == (1, len(want), V)
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)


def test_answer_logits_gradient_reaches_the_model(tiny_llama):
    model = tiny_llama(vocab_size=V, hidden_size=16, num_layers=1, seed=7)
    ids = torch.randint(0, V, (2, 5), generator=_gen(7))
    pos = torch.zeros(2, 4, dtype=torch.bool)
    pos[:, 2:] = True
    answer_logits(model, ids, None, pos).sum().backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ distill_examples


def test_distill_examples_masks_only_answer_tokens():
    rows = [{"index": 0, "prompt_ids": [1, 5, 6], "response_ids": [7, 8, 9]},
            {"index": 1, "prompt_ids": [1, 4], "response_ids": [3]}]
    ex = distill_examples(rows)
    assert ex == [{"input_ids": [1, 5, 6, 7, 8, 9], "loss_mask": [0, 0, 0, 1, 1, 1]},
                  {"input_ids": [1, 4, 3], "loss_mask": [0, 0, 1]}]
    assert token_budget(ex) == 4


def test_distill_examples_cut_to_max_length_and_drop_empty_rows():
    rows = [{"index": 0, "prompt_ids": [1, 5, 6], "response_ids": [7, 8, 9]},
            {"index": 1, "prompt_ids": [1, 2, 3, 4, 5], "response_ids": [6, 7]},  # answer cut away
            {"index": 2, "prompt_ids": [1, 9, 9, 9], "response_ids": [10]},  # answer exactly fits
            {"index": 3, "prompt_ids": [1], "response_ids": [4, 5]}]
    ex = distill_examples(rows, max_length=4)  # rows 1 and 2 lose their whole answer
    assert [e["input_ids"] for e in ex] == [[1, 5, 6, 7], [1, 4, 5]]
    assert [e["loss_mask"] for e in ex] == [[0, 0, 0, 1], [0, 1, 1]]
    assert all(len(e["input_ids"]) <= 4 for e in ex)
    # a longer limit keeps row 2 (its one answer token is the 5th)
    ex = distill_examples(rows, max_length=5)
    assert [e["input_ids"] for e in ex] == [[1, 5, 6, 7, 8], [1, 9, 9, 9, 10], [1, 4, 5]]
    with pytest.raises(ValueError):
        distill_examples([rows[1]], max_length=4)  # nothing usable at all


def test_distill_examples_attach_topk_aligned_with_answer_tokens():
    k = 3
    rows = [{"index": 7, "prompt_ids": [1, 5, 6], "response_ids": [7, 8, 9, 10]},
            {"index": 4, "prompt_ids": [1, 4], "response_ids": [3, 11]}]
    topk = {}
    for r in rows:
        L = len(r["response_ids"])
        ids = torch.arange(L)[:, None] * 100 + r["index"] + torch.arange(k)[None]  # row j, tag
        topk[r["index"]] = (ids, -torch.arange(L * k, dtype=torch.float32).view(L, k) - r["index"])
    topk[99] = (torch.zeros(1, k, dtype=torch.long), torch.zeros(1, k))  # unused extra row
    ex = distill_examples(rows, topk=topk)
    for e, r in zip(ex, rows):
        n = sum(e["loss_mask"])
        assert n == len(r["response_ids"])
        assert torch.equal(e["topk_ids"], topk[r["index"]][0])
        assert torch.equal(e["topk_logprobs"], topk[r["index"]][1])
    # cut: row 7 keeps its first two answer tokens and the first two top-k rows
    ex = distill_examples(rows, max_length=5, topk=topk)
    assert sum(ex[0]["loss_mask"]) == 2 and len(ex[0]["topk_ids"]) == 2
    assert torch.equal(ex[0]["topk_ids"], topk[7][0][:2])
    assert torch.equal(ex[0]["topk_logprobs"], topk[7][1][:2])
    assert torch.equal(ex[1]["topk_ids"], topk[4][0])


def test_distill_examples_missing_topk_raises():
    rows = [{"index": 0, "prompt_ids": [1, 5], "response_ids": [7]},
            {"index": 1, "prompt_ids": [1, 4], "response_ids": [3]}]
    topk = {0: (torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2))}
    with pytest.raises(ValueError, match="1"):
        distill_examples(rows, topk=topk)


def test_distill_examples_accepts_any_iterable_of_rows():
    rows = _random_rows(4)
    assert distill_examples(iter(rows)) == distill_examples(rows)
    assert distill_examples(r for r in rows) == distill_examples(list(rows))


# ------------------------------------------------------------------ kd_loss_fn


def _hand_loss(draft, target, rows, ref):
    """Mean over all answer positions (pooled over rows) of the per-position loss."""
    q_logits = torch.cat(_answer_rows(draft, rows))[None]
    with torch.no_grad():
        p_logits = torch.cat(_answer_rows(target, rows))[None]
    return ref(q_logits, p_logits).mean(), q_logits.detach(), p_logits


@pytest.mark.parametrize("name,ref", [("fkl", textbook_fkl), ("rkl", textbook_rkl), ("tvd", textbook_tvd),
                                      ("tvd++", textbook_tvd)])
def test_kd_loss_equals_mean_per_position_loss_by_hand(tiny_llama, name, ref):
    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(5, seed=8)
    batch = Batches(distill_examples(rows)).get([0, 1, 2, 3, 4])
    fn = kd_loss_fn(target, name)
    loss, stats = fn(draft, batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in draft.named_parameters()}
    draft.zero_grad(set_to_none=True)
    want, q, p = _hand_loss(draft, target, rows, ref)
    want.backward()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5, abs=1e-7)
    n = sum(len(r["response_ids"]) for r in rows)
    assert stats["tokens"] == n
    tvd_hand = float((0.5 * (q.softmax(-1) - p.softmax(-1)).abs().sum(-1)).mean())
    assert stats["tvd"] == pytest.approx(tvd_hand, rel=1e-5)
    top1 = float((q.argmax(-1) == p.argmax(-1)).float().mean())
    assert stats["top1"] == pytest.approx(top1)
    if name != "tvd++":  # TVD++'s gradient is its own estimate, not TVD's
        for pname, g in got.items():
            torch.testing.assert_close(g, draft.get_parameter(pname).grad, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in target.parameters())


def test_kd_loss_ignores_prompt_and_padding(tiny_llama):
    """Changing prompt-free padding or the tokens after the answer changes nothing; the
    loss only depends on answer positions."""
    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(3, seed=9)
    fn = kd_loss_fn(target, "fkl")
    a = fn(draft, Batches(distill_examples(rows), pad_id=0).get([0, 1, 2]))[0]
    b = fn(draft, Batches(distill_examples(rows), pad_id=17).get([0, 1, 2]))[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    # each row alone, weighted by its answer length, gives the pooled mean
    parts = [(fn(draft, Batches(distill_examples([r])).get([0]))[0].item(), len(r["response_ids"])) for r in rows]
    pooled = sum(v * n for v, n in parts) / sum(n for _, n in parts)
    assert a.item() == pytest.approx(pooled, rel=1e-5)


def test_kd_loss_jsd_and_options_are_passed(tiny_llama):
    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(3, seed=10)
    batch = Batches(distill_examples(rows)).get([0, 1, 2])
    a = kd_loss_fn(target, "jsd", beta=0.2)(draft, batch)[0].item()
    b = kd_loss_fn(target, "jsd", beta=0.8)(draft, batch)[0].item()
    assert a != pytest.approx(b, rel=1e-3)
    with pytest.raises(ValueError):
        kd_loss_fn(target, "jsd", beta=1.5)(draft, batch)
    with pytest.raises(ValueError):
        kd_loss_fn(target, "mse")
    with pytest.raises(ValueError, match="normalise"):
        kd_loss_fn(target, "tvd++", normalise="batch")  # misspelt: refused before any training
    # TVD++'s data estimator gets the answer tokens as labels
    loss = kd_loss_fn(target, "tvd++", estimator="data", normalize="none", baseline=False)(draft, batch)[0]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in draft.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["fkl", "tvd", "rkl", "tvd++"])
def test_kd_loss_cached_full_topk_equals_online(tiny_llama, name):
    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(5, seed=11)
    topk = _exact_topk(target, rows, k=V)
    online = Batches(distill_examples(rows)).get([3, 0, 4, 1, 2])
    cached = Batches(distill_examples(rows, topk=topk)).get([3, 0, 4, 1, 2])
    assert "topk_ids" in cached and len(cached["topk_ids"]) == sum(len(r["response_ids"]) for r in rows)
    loss_on, stats_on = kd_loss_fn(target, name)(draft, online)
    loss_on.backward()
    g_on = [p.grad.clone() for p in draft.parameters()]
    draft.zero_grad(set_to_none=True)
    loss_c, stats_c = kd_loss_fn(None, name)(draft, cached)  # the target is never run
    loss_c.backward()
    assert loss_c.item() == pytest.approx(loss_on.item(), rel=1e-5, abs=1e-7)
    for k in ("tvd", "top1", "tokens"):
        assert stats_c[k] == pytest.approx(stats_on[k], rel=1e-5, abs=1e-7)
    for a, p in zip(g_on, draft.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["fkl", "tvd", "rkl", "tvd++"])
def test_kd_loss_closed_form_equals_expanded_top_k(tiny_llama, name, monkeypatch):
    """With k < V the closed forms (the default) give the expanded target's loss and gradients."""
    import draftalign.distill as distill_module

    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(5, seed=13)
    batch = Batches(distill_examples(rows, topk=_exact_topk(target, rows, k=5))).get([4, 2, 0, 1, 3])
    results = []
    for closed in (True, False):
        if not closed:  # force the generic path: no loss has a closed form
            monkeypatch.setattr(distill_module, "CACHED_LOSSES", ())
        draft.zero_grad(set_to_none=True)
        loss, stats = kd_loss_fn(None, name)(draft, batch)
        loss.backward()
        results.append((loss.item(), stats, [p.grad.clone() for p in draft.parameters()]))
    (a, sa, ga), (b, sb, gb) = results
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    for k in ("tvd", "top1", "tokens"):
        assert sa[k] == pytest.approx(sb[k], rel=1e-5, abs=1e-7)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_kd_loss_cached_topk_misaligned_rows_change_the_loss(tiny_llama):
    """The cached rows are really used: the top-k of another row gives another loss."""
    target, draft = _pair(tiny_llama, init_std=0.2)
    rows = _random_rows(2, seed=12)
    rows[1]["response_ids"] = rows[1]["response_ids"][:1] + [5] * (len(rows[0]["response_ids"]) - 1)
    assert len(rows[0]["response_ids"]) == len(rows[1]["response_ids"]) > 1
    topk = _exact_topk(target, rows, k=V)
    swapped = {rows[0]["index"]: topk[rows[1]["index"]], rows[1]["index"]: topk[rows[0]["index"]]}
    a = kd_loss_fn(None, "fkl")(draft, Batches(distill_examples(rows, topk=topk)).get([0, 1]))[0].item()
    b = kd_loss_fn(None, "fkl")(draft, Batches(distill_examples(rows, topk=swapped)).get([0, 1]))[0].item()
    c = kd_loss_fn(target, "fkl")(draft, Batches(distill_examples(rows)).get([0, 1]))[0].item()
    assert a == pytest.approx(c, rel=1e-5)
    assert abs(a - b) > 1e-3


# ------------------------------------------------------------------ distill


def _sampled_rows(target, n=16, plen=4, rlen=8, seed=0):
    """Answers sampled from the target itself (a batch of equal-length prompts)."""
    g = _gen(seed)
    ids = torch.randint(4, V, (n, plen), generator=g)
    ids[:, 0] = 1
    with torch.no_grad():
        for _ in range(rlen):
            probs = target(ids).logits[:, -1].softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)], 1)
    return [{"index": i, "prompt_ids": ids[i, :plen].tolist(), "response_ids": ids[i, plen:].tolist()}
            for i in range(n)]


@pytest.fixture(scope="module")
def distill_setup(tiny_llama):
    def models():
        target = tiny_llama(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, seed=1, init_std=0.1,
                            eos_token_id=None)
        draft = tiny_llama(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, seed=2, init_std=0.1,
                           eos_token_id=None)
        return target, draft

    threads = torch.get_num_threads()  # module-scoped: set up before the per-test one-thread fixture
    torch.set_num_threads(1)
    try:
        rows = _sampled_rows(models()[0])
    finally:
        torch.set_num_threads(threads)
    return models, rows


@pytest.mark.parametrize("loss", ["fkl", "tvd", "tvd++"])
def test_distill_lowers_tvd(distill_setup, tmp_path, loss):
    models, rows = distill_setup
    target, draft = models()
    before = _mean_tvd(draft, target, rows)
    assert before > 0.1
    cfg = TrainConfig(max_steps=40, batch_size=8, lr=1e-2, warmup_steps=2)
    dataset = iter(rows) if loss == "tvd" else rows  # any iterable of row dicts
    history = distill(draft, target, dataset, tmp_path, loss=loss, cfg=cfg, progress=False)
    after = _mean_tvd(draft, target, rows)
    assert after < 0.8 * before, (before, after)
    assert len(history) == 40
    assert history["tvd"].iloc[-5:].mean() < 0.8 * history["tvd"].iloc[:5].mean()
    assert (history["tokens"] == 8 * 8).all()  # 8 rows of 8 answer tokens per step
    assert (tmp_path / "config.json").exists()
    # the target is left untouched
    fresh, _ = models()
    for a, b in zip(target.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_distill_with_full_cached_topk_matches_online(distill_setup, tmp_path):
    """A few steps on the target's exact top-k (k = V) train the draft like the online target."""
    models, rows = distill_setup
    target, draft_on = models()
    _, draft_c = models()
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=1e-2, warmup_steps=1)
    h_on = distill(draft_on, target, rows, tmp_path / "on", loss="tvd", cfg=cfg, progress=False)
    h_c = distill(draft_c, target, rows, tmp_path / "cached", loss="tvd", cfg=cfg, progress=False,
                  topk=_exact_topk(target, rows, k=V))
    for col in ("loss", "tvd", "top1", "tokens"):
        assert h_c[col].tolist() == pytest.approx(h_on[col].tolist(), rel=1e-4, abs=1e-6)
    for a, b in zip(draft_c.parameters(), draft_on.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_stats_in_chunks_equal_the_whole():
    from draftalign.distill import _tvd_and_agreement

    g = torch.Generator().manual_seed(3)
    d, t = torch.randn(10, 7, generator=g) * 2, torch.randn(10, 7, generator=g) * 2
    whole = _tvd_and_agreement(d, t, chunk=100)
    parts = _tvd_and_agreement(d, t, chunk=3)
    torch.testing.assert_close(parts[0], whole[0])
    assert torch.equal(parts[1], whole[1])
    torch.testing.assert_close(whole[0], 0.5 * (d.softmax(-1) - t.softmax(-1)).abs().sum(-1))
    empty = _tvd_and_agreement(d[:0], t[:0])
    assert empty[0].numel() == 0 and empty[1].numel() == 0
