"""The reference drafter's pieces: the prompt pool (decontamination, passages, exact resume),
greedy agreement, target-projected embeddings, time budgets (deadlines and step plans),
profile overrides, answer cross-entropy, and the offline target's special tokens.

Tiny random Llamas stand in for the target, except where the real tokenizer is needed
(the prompt pool writes prompts through the chat template).
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from draftalign.answers import generate_distillation_rows
from draftalign.book.profiles import parse_override
from draftalign.data import load_prompts
from draftalign.distill import answer_ce
from draftalign.drafts import init_from_target, projected_embeddings
from draftalign.models import _align_special_tokens, target_id
from draftalign.prompt_pool import (PASSAGE_TASKS, Decontaminator, decontaminate, build_prompt_pool, held_out_prompts,
                                    passage_prompts, word_ngrams)
from draftalign.replay import greedy_agreement
from draftalign.speculative import autoregressive_generate
from draftalign.train import Batches, TrainConfig, lm_loss, steps_for_budget, train

VOCAB = 49152
LIKELY = [2, 504, 3575, 282, 4649, 314, 7042, 30, 4590, 1296]  # <|im_end|>, "The", " capital", ...


@pytest.fixture(scope="module")
def talker(tiny_llama):
    """A tiny target over SmolLM2's vocabulary that writes short English-looking turns:
    almost all its mass on ten word tokens and the end-of-turn token."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=2,
                       max_position_embeddings=256, seed=1)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[LIKELY, 0] = 3.0
        model.lm_head.weight[2, 0] = 2.6  # end the turn now and then
    return model


# -- decontamination and passages ------------------------------------------------------

def test_word_ngrams_ignore_case_and_punctuation():
    assert word_ngrams("A, b! c", n=2) == {("a", "b"), ("b", "c")}
    assert word_ngrams("Too short", n=8) == {("too", "short")}
    assert word_ngrams("", n=3) == set()


def test_decontaminator_rejects_shared_runs_of_eight_words():
    guard = Decontaminator(["Why do we see lightning before we hear thunder during a storm?"])
    assert not guard.clean("Tell me: why do we see lightning before we hear thunder, please")
    assert guard.clean("Why do we see lightning? Thunder comes later, but why?")
    held = held_out_prompts()
    assert len(held) == 72 + 80
    guard = Decontaminator(held)
    assert not any(guard.clean(p) for p in held)  # every held-out prompt is caught by itself
    # three built-in distillation prompts share template wording with evaluation prompts
    dirty = sorted(r["id"] for r in load_prompts("distill") if not guard.clean(r["prompt"]))
    assert dirty == ["d0115", "d0229", "d0296"]
    assert [r["id"] for r in decontaminate(load_prompts("distill"))] == [
        r["id"] for r in load_prompts("distill") if r["id"] not in dirty]


def test_pool_and_profiles_leave_out_prompts_that_share_a_run(talker, tokenizer, tmp_path):
    from draftalign.book.pipeline import distill_prompts
    from draftalign.book.profiles import PROFILES

    pool = build_prompt_pool(talker, tokenizer, tmp_path, n_self_instruct=0, progress=False)
    ids = {r["id"] for r in pool}
    assert len(pool) == 342 - 3 and not ids & {"d0115", "d0229", "d0296"}
    for name in ("ci", "cpu", "reference"):
        P = PROFILES[name]
        if P.distill_source == "builtin":
            assert not {r["id"] for r in distill_prompts(P)} & {"d0115", "d0229", "d0296"}


def test_passage_prompts_use_each_passage_once_within_word_limits():
    passages = [" ".join(f"w{i}_{j}" for j in range(30 + 10 * i)) + "." for i in range(12)]
    rows = passage_prompts(passages, 5, seed=3, min_words=40, max_words=80)
    assert len(rows) == 5
    bodies = [r["prompt"].split("\n\n", 1)[1] for r in rows]
    assert len(set(bodies)) == 5
    for body in bodies:
        assert 40 <= len(body.split()) <= 80
    assert [r["prompt"].split("\n\n")[0] for r in rows] == [t.split("\n\n")[0] for t in PASSAGE_TASKS[:5]]
    assert rows == passage_prompts(passages, 5, seed=3, min_words=40, max_words=80)
    assert rows != passage_prompts(passages, 5, seed=4, min_words=40, max_words=80)


def test_prompt_pool_resumes_exactly_after_a_torn_round(talker, tokenizer, tmp_path):
    kw = dict(n_self_instruct=40, batch_size=6, seed=5, max_new_tokens=12, builtin_per_category=1,
              passages=["word " * 50], n_passage=1, progress=False)
    full = build_prompt_pool(talker, tokenizer, tmp_path / "a", max_rounds=4, **kw)
    magpie = [r for r in full if r["source"] == "magpie"]
    assert magpie, "the tiny target should write some keepable prompts"
    assert [r["source"] for r in full[:10]] == ["builtin"] * 9 + ["passage"]
    # the same work in two calls, the second after a round torn mid-write
    build_prompt_pool(talker, tokenizer, tmp_path / "b", max_rounds=2, **kw)
    with open(tmp_path / "b" / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "seed": 7, "rows": [{"id": "self-0')
    resumed = build_prompt_pool(talker, tokenizer, tmp_path / "b", max_rounds=4, **kw)
    assert resumed == full
    rounds = [json.loads(line) for line in (tmp_path / "b" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    keys = [" ".join(r["prompt"].lower().split()) for r in full]
    assert len(keys) == len(set(keys))


def test_prompt_pool_stops_at_its_deadline(talker, tokenizer, tmp_path):
    pool = build_prompt_pool(talker, tokenizer, tmp_path, n_self_instruct=40, batch_size=4, seed=0,
                             builtin_per_category=1, deadline=time.time() - 1, progress=False)
    assert [r["source"] for r in pool] == ["builtin"] * 9
    assert not (tmp_path / "rounds.jsonl").exists()


def test_garbage_round_names_file_and_line(talker, tokenizer, tmp_path):
    (tmp_path / "rounds.jsonl").write_text('{"round": 0, "seed": 0, "rows": []}\nnot json\n{"round": 2}\n')
    with pytest.raises(ValueError, match=r"rounds.jsonl, line 2"):
        build_prompt_pool(talker, tokenizer, tmp_path, n_self_instruct=1, progress=False)


# -- agreement -------------------------------------------------------------------------

def test_greedy_agreement_is_one_for_the_target_itself_and_padding_free(tiny_llama):
    target = tiny_llama(vocab_size=40, hidden_size=16, num_layers=2, eos_token_id=None, seed=2, init_std=0.3)
    draft = tiny_llama(vocab_size=40, hidden_size=16, num_layers=1, eos_token_id=None, seed=9, init_std=0.3)
    rows = []
    for i, prompt in enumerate(([1, 5, 7], [1, 9], [1, 4, 4, 8, 2, 6])):
        res = autoregressive_generate(target, torch.tensor([prompt]), max_new_tokens=6 + i)
        rows.append({"id": i, "category": "c" if i else "d", "prompt_ids": prompt, "response_ids": res.tokens})
    same = greedy_agreement(target, rows, batch_size=2)
    assert (same.agreement == 1.0).all() and same.tokens.tolist() == [6, 7, 8]
    other = greedy_agreement(draft, rows, batch_size=3)
    assert other.hits.sum() < other.tokens.sum()
    one_by_one = greedy_agreement(draft, rows, batch_size=1)
    assert other.hits.tolist() == one_by_one.hits.tolist()
    # the hits are exactly the positions where the draft's argmax is the target's next token
    for r, hits in zip(rows, other.hits):
        seq = torch.tensor([r["prompt_ids"] + r["response_ids"]])
        pred = draft(input_ids=seq).logits[0].argmax(-1)
        n = len(r["prompt_ids"])
        assert hits == int((pred[n - 1:-1] == torch.tensor(r["response_ids"])).sum())
    # with labels (the target's argmax along an answer it sampled), hits are counted against them
    labelled = [dict(r, labels=draft(input_ids=torch.tensor([r["prompt_ids"] + r["response_ids"]])).logits[0]
                     .argmax(-1)[len(r["prompt_ids"]) - 1:-1].tolist()) for r in rows]
    assert (greedy_agreement(draft, labelled, batch_size=2).agreement == 1.0).all()


# -- embeddings from the target --------------------------------------------------------

def test_projected_embeddings_keep_the_targets_geometry(tiny_llama):
    target = tiny_llama(vocab_size=50, hidden_size=24, num_layers=1, seed=3, init_std=0.5)
    emb = target.get_input_embeddings().weight.detach()
    full = projected_embeddings(target, 24)
    torch.testing.assert_close(full @ full.T, emb @ emb.T, rtol=1e-4, atol=1e-4)  # a rotation at d = D
    low = projected_embeddings(target, 6)
    u, s, _ = torch.linalg.svd(emb, full_matrices=False)
    torch.testing.assert_close(low @ low.T, (u[:, :6] * s[:6]) @ (u[:, :6] * s[:6]).T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="hidden_size"):
        projected_embeddings(target, 25)
    draft = tiny_llama(vocab_size=50, hidden_size=6, num_layers=1, seed=4, tie_embeddings=True)
    init_from_target(draft, target)
    torch.testing.assert_close(draft.get_input_embeddings().weight, low)
    assert draft.get_output_embeddings().weight.data_ptr() == draft.get_input_embeddings().weight.data_ptr()


def test_target_id_does_not_depend_on_the_cache_folder(tiny_llama):
    model = tiny_llama()
    model.draftalign_source = "offline-gguf:/tmp/some/cache/SmolLM2-135M-Instruct-Q4_1"
    assert target_id(model) == "offline-gguf:SmolLM2-135M-Instruct-Q4_1"
    model.draftalign_source = "hub:HuggingFaceTB/SmolLM2-135M-Instruct"
    assert target_id(model) == "hub:HuggingFaceTB/SmolLM2-135M-Instruct"


def test_tokenizer_gets_the_models_special_tokens(tokenizer, tiny_llama):
    tok = copy.deepcopy(tokenizer)  # the session's tokenizer stays as it is
    tok.eos_token = "<|im_start|>"  # what some transformers releases read from the GGUF
    tok.pad_token = None
    model = tiny_llama(vocab_size=VOCAB, hidden_size=8, eos_token_id=2)
    _align_special_tokens(tok, model)
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (2, 2, 1)


# -- budgets ---------------------------------------------------------------------------

def _blocks():
    gen = torch.Generator().manual_seed(0)
    return Batches({"input_ids": torch.randint(0, 32, (24, 12), generator=gen)}, seed=1)


def test_training_past_its_deadline_checkpoints_and_resumes_to_the_same_weights(tiny_llama, tmp_path):
    cfg = TrainConfig(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=1, checkpoint_every=100)
    whole = tiny_llama(vocab_size=32, seed=5)
    train(whole, _blocks(), cfg, tmp_path / "whole", progress=False)
    cut = tiny_llama(vocab_size=32, seed=5)
    history = train(cut, _blocks(), cfg, tmp_path / "cut", progress=False, deadline=time.time() - 1)
    assert len(history) == 1 and (tmp_path / "cut" / "checkpoint" / "state.pt").exists()
    assert not (tmp_path / "cut" / "config.json").exists()  # not finished, not saved as a model
    resumed = tiny_llama(vocab_size=32, seed=5)
    history = train(resumed, _blocks(), cfg, tmp_path / "cut", progress=False)
    assert len(history) == 6
    for a, b in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_steps_for_budget_leaves_model_and_random_state_alone(tiny_llama):
    model = tiny_llama(vocab_size=32, seed=6)
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cfg = TrainConfig(max_steps=10, batch_size=4)
    short = steps_for_budget(model, _blocks(), cfg, 0.01, loss_fn=lm_loss)
    long = steps_for_budget(model, _blocks(), cfg, 60.0, loss_fn=lm_loss)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert short >= 1 and long > 10 * short


def test_generation_past_its_deadline_answers_nothing_then_finishes(talker, tokenizer, tmp_path):
    kw = dict(max_new_tokens=4, temperature=0.0, top_p=1.0, batch_size=2, seed=0, progress=False)
    prompts = ["Hi there", "Name a colour.", "Count to three."]
    assert generate_distillation_rows(talker, tokenizer, prompts, tmp_path, deadline=time.time() - 1, **kw) == []
    rows = generate_distillation_rows(talker, tokenizer, prompts, tmp_path, **kw)
    assert [r["index"] for r in rows] == [0, 1, 2]


# -- the reference run's own pieces ----------------------------------------------------

def test_profile_overrides_take_the_fields_types():
    assert parse_override("kd_batch=4") == {"kd_batch": 4}
    assert parse_override("kd_lr=5e-4") == {"kd_lr": 5e-4}
    assert parse_override("ref_gammas=1,3") == {"ref_gammas": (1, 3)}
    assert parse_override("kd_losses=fkl") == {"kd_losses": ("fkl",)}
    assert parse_override("ref_kd_shards=none") == {"ref_kd_shards": None}
    assert parse_override("pretrain_texts=50") == {"pretrain_texts": 50}
    for bad in ("kd_batch", "nonsense=1", "kd_batch=four", "name=x"):
        with pytest.raises(ValueError):
            parse_override(bad)


def test_answer_ce_is_cross_entropy_on_answer_tokens_only(tiny_llama):
    model = tiny_llama(vocab_size=32, seed=7)
    ids = torch.tensor([[1, 5, 6, 7, 8, 0], [1, 9, 10, 11, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    loss, stats = answer_ce(model, {"input_ids": ids, "loss_mask": mask, "attention_mask": attn})
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    pos = mask[:, 1:].bool()
    expected = torch.nn.functional.cross_entropy(logits[pos], ids[:, 1:][pos])
    torch.testing.assert_close(loss, expected)
    assert stats["tokens"] == 6.0


def test_mt_bench_prompts_are_public_and_held_out():
    rows = load_prompts("mt_bench")
    assert len(rows) == 80 and len({r["id"] for r in rows}) == 80
    assert sorted({r["category"] for r in rows}) == ["coding", "extraction", "humanities", "math", "reasoning",
                                                      "roleplay", "stem", "writing"]
    distill = {r["prompt"] for r in load_prompts("distill")}
    assert not distill & {r["prompt"] for r in rows}
    with pytest.raises(ValueError, match="unknown categories"):
        load_prompts("mt_bench", categories=["open_qa"])
