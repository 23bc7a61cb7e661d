"""Models: a draft built by ``make_draft`` fits its target; parameter counting; the real
target loads with the expected size and chat template."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from draftalign.models import check_compatible, count_parameters, size_ratio
from draftalign.drafts import make_draft


def _llama_params(vocab, hidden, layers, inter, heads, kv_heads, tied):
    """Hand count of a Llama: embeddings (+ untied head), per layer q/o (h x h), k/v
    (h x kv_heads * head_dim), SwiGLU (3 h I), two RMSNorms (2 h); final norm (h)."""
    head_dim = hidden // heads
    attn = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


@pytest.fixture(scope="module")
def target(tiny_llama):
    return tiny_llama(vocab_size=40, hidden_size=32, num_layers=2, max_position_embeddings=48,
                      init_std=0.5, seed=0)


def test_draft_fits_the_target(target):
    """Vocabulary (embedding rows, head rows, config), special ids, context length,
    device and dtype of the draft are the target's."""
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2)
    assert draft.get_input_embeddings().weight.shape == (40, 16)
    assert draft.get_output_embeddings().weight.shape == (40, 16)
    assert draft.config.vocab_size == 40
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(draft.config, key) == getattr(target.config, key)
        assert getattr(draft.generation_config, key) == getattr(target.generation_config, key)
    assert (draft.config.bos_token_id, draft.config.eos_token_id) == (1, 3)
    assert draft.config.max_position_embeddings == 48
    assert draft.config.rms_norm_eps == target.config.rms_norm_eps
    p = next(draft.parameters())
    assert p.dtype == torch.float32 and p.device == next(target.parameters()).device
    assert not draft.training
    check_compatible(target, draft)  # does not raise


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_draft_is_fp32_master_weights_whatever_the_targets_dtype(tiny_llama, dtype):
    target = tiny_llama(vocab_size=24, dtype=dtype)
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2)
    assert {p.dtype for p in draft.parameters()} == {torch.float32}
    out = draft(torch.tensor([[1, 2, 3]])).logits
    assert out.dtype == torch.float32 and out.shape == (1, 3, 24)
    asked = make_draft(target, hidden_size=16, num_layers=1, num_heads=2, dtype=dtype)
    assert {p.dtype for p in asked.parameters()} == {dtype}


def test_draft_uses_the_padded_embedding_size_and_target_rope():
    """When the embedding matrix is padded beyond ``config.vocab_size`` the draft takes
    the padded size (what ``assistant_model`` compares); rope settings are copied."""
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                      rms_norm_eps=1e-6, eos_token_id=5, bos_token_id=4, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        padded = LlamaForCausalLM(cfg).eval()
    padded.config.vocab_size = 60  # tokenizer size; the embedding keeps 64 rows
    padded.generation_config.eos_token_id = [5, 6]  # generation_config takes precedence
    draft = make_draft(padded, hidden_size=16, num_layers=1, num_heads=2)
    assert draft.config.vocab_size == 64 == draft.get_input_embeddings().weight.shape[0]
    assert draft.config.rope_parameters["rope_theta"] == 500000.0
    assert draft.config.rms_norm_eps == 1e-6
    assert draft.config.eos_token_id == [5, 6] == draft.generation_config.eos_token_id
    assert draft.config.bos_token_id == 4 and draft.config.pad_token_id == 0


def test_tied_and_untied_parameter_counts(target):
    """count_parameters matches a hand count; tying removes exactly vocab * hidden, and
    the tied head is the embedding tensor itself (counted once although ``state_dict``
    lists it twice)."""
    tied = make_draft(target, hidden_size=32, num_layers=2, num_heads=4, tie_embeddings=True)
    untied = make_draft(target, hidden_size=32, num_layers=2, num_heads=4, tie_embeddings=False)
    inter = tied.config.intermediate_size
    assert count_parameters(tied) == _llama_params(40, 32, 2, inter, 4, 4, tied=True)
    assert count_parameters(untied) == _llama_params(40, 32, 2, inter, 4, 4, tied=False)
    assert count_parameters(untied) - count_parameters(tied) == 40 * 32
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert sum(v.numel() for v in tied.state_dict().values()) == count_parameters(tied) + 40 * 32
    # the tiny target: untied, grouped-query-free, I = 2 h
    assert count_parameters(target) == _llama_params(40, 32, 2, 64, 2, 2, tied=False)
    assert size_ratio(tied, target) == count_parameters(tied) / count_parameters(target)


def test_count_parameters_counts_a_shared_tensor_once():
    """A module holding one parameter in two places counts it once."""
    a, b = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(8, 4, bias=False)
    b.weight = a.weight
    assert count_parameters(torch.nn.ModuleList([a, b])) == 32


@pytest.mark.parametrize("hidden, heads, inter", [(64, 1, 192), (96, 1, 256), (100, 1, 320),
                                                  (128, 2, 384), (256, 4, 704)])
def test_default_heads_and_intermediate_size(target, hidden, heads, inter):
    """Defaults: ``max(1, hidden // 64)`` heads, ``8/3 hidden`` rounded up to 64."""
    draft = make_draft(target, hidden_size=hidden, num_layers=1)
    assert draft.config.num_attention_heads == heads == draft.config.num_key_value_heads
    assert draft.config.intermediate_size == inter


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_size": 0, "num_layers": 1}, "must be >= 1"),
    ({"hidden_size": 16, "num_layers": 0}, "must be >= 1"),
    ({"hidden_size": 30, "num_layers": 1, "num_heads": 4}, "not divisible by num_heads 4"),
])
def test_make_draft_rejects_bad_sizes(target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_draft(target, **kwargs)


def test_seed_reproducibility_and_global_rng_untouched(target):
    """Equal seeds give identical weights, different seeds different ones, and building a
    draft leaves the global torch RNG where it was."""
    kw = dict(hidden_size=16, num_layers=1, num_heads=2)
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    a = make_draft(target, seed=5, **kw)
    assert torch.equal(torch.rand(4), expected_next)
    b, c = make_draft(target, seed=5, **kw), make_draft(target, seed=6, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_check_compatible_names_both_sizes(tiny_llama, target):
    with pytest.raises(ValueError, match=r"target has 40, draft has 24"):
        check_compatible(target, tiny_llama(vocab_size=24))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draft_works_as_transformers_assistant_model(tiny_llama, seed):
    """transformers' assisted generation accepts the draft, and its greedy output equals
    plain greedy ``generate`` (12 new tokens)."""
    target = tiny_llama(vocab_size=32, init_std=0.5, seed=10 + seed)
    draft = make_draft(target, hidden_size=16, num_layers=1, num_heads=2, seed=seed)
    ids = torch.tensor([[1, 5 + seed, 7, 9]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
        assisted = target.generate(ids, attention_mask=mask, assistant_model=draft,
                                   do_sample=False, max_new_tokens=12)
    assert plain.shape[1] > ids.shape[1]
    assert torch.equal(assisted, plain)


# ------------------------------------------------------------------ the real target

@pytest.mark.slow
def test_real_target_loads_with_its_size_and_chat_template(real_target, chat_ids):
    """SmolLM2-135M-Instruct: 134,515,008 parameters (tied embeddings), vocab 49152,
    ChatML template starting with ``<|im_start|>`` (id 1), EOS id 2 = ``<|im_end|>``."""
    model, tok = real_target
    assert count_parameters(model) == 134_515_008
    assert model.get_input_embeddings().weight.shape[0] == 49152 == model.config.vocab_size
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert hasattr(model, "draftalign_source")
    ids = chat_ids("Hello!")
    assert ids.dim() == 2 and ids.shape[0] == 1 and ids.dtype == torch.long
    assert ids[0, 0].item() == 1 == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2 == model.generation_config.eos_token_id
    text = tok.decode(ids[0])
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.slow
def test_make_draft_for_the_real_target(real_target):
    """A draft for the real target has its vocab, special ids and context, and a size
    ratio that matches the parameter counts."""
    model, _ = real_target
    draft = make_draft(model, hidden_size=64, num_layers=2)
    assert draft.get_input_embeddings().weight.shape == (49152, 64)
    assert draft.config.max_position_embeddings == model.config.max_position_embeddings
    assert (draft.generation_config.eos_token_id, draft.generation_config.bos_token_id,
            draft.generation_config.pad_token_id) == (2, 1, 2)
    n = count_parameters(draft)
    assert n == _llama_params(49152, 64, 2, draft.config.intermediate_size, 1, 1, tied=True)
    assert size_ratio(draft, model) == pytest.approx(n / 134_515_008)
    check_compatible(model, draft)


@pytest.mark.slow
def test_the_tokenizer_fixture_is_the_targets_tokenizer(real_target, tokenizer):
    """The ``tokenizer`` fixture (tracked files, no target) gives load_target's ids: special
    tokens, plain text and chat prompts (default and own system prompt, several turns)."""
    _, tok = real_target
    assert len(tokenizer) == len(tok) and tokenizer.get_vocab() == tok.get_vocab()
    for name in ("bos", "eos", "pad", "unk"):
        assert getattr(tokenizer, f"{name}_token_id") == getattr(tok, f"{name}_token_id"), name
    assert tokenizer.all_special_ids == tok.all_special_ids
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    text = "Speculative decoding: a draft proposes, the target verifies.\n  def f(x): return x + 1  # ok? ünïcode 😀"
    assert tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    chats = [[{"role": "user", "content": "Hello!"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}],
             [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1, 2, 3."},
              {"role": "user", "content": "And to five?\nPlease."}]]
    for chat in chats:
        for add in (True, False):
            ours = tokenizer.apply_chat_template(chat, add_generation_prompt=add, return_tensors="pt")["input_ids"]
            theirs = tok.apply_chat_template(chat, add_generation_prompt=add, return_tensors="pt")["input_ids"]
            assert torch.equal(ours, theirs), (chat, add)
            assert tokenizer.decode(ours[0]) == tok.decode(theirs[0])


def test_layer_subset_draft_renumbers_the_kept_layers(tiny_llama):
    from draftalign.drafts import layer_subset_draft

    target = tiny_llama(vocab_size=24, hidden_size=16, num_layers=4, num_heads=2, seed=5, init_std=0.3)
    draft = layer_subset_draft(target, [0, 2])
    assert draft.config.num_hidden_layers == 2
    for new, old in enumerate([0, 2]):
        for (n1, a), (n2, b) in zip(draft.model.layers[new].named_parameters(),
                                    target.model.layers[old].named_parameters()):
            assert n1 == n2 and torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy
    ids = torch.tensor([[1, 5, 9, 3]])
    torch.testing.assert_close(layer_subset_draft(target, 4)(input_ids=ids).logits, target(input_ids=ids).logits)
    assert not torch.allclose(draft(input_ids=ids).logits, target(input_ids=ids).logits)
    for bad in ([], [0, 0], [4], 0):
        with pytest.raises(ValueError):
            layer_subset_draft(target, bad)


@pytest.mark.slow
def test_offline_fallback_when_the_hub_cannot_be_reached(monkeypatch):
    """With no hub, the default target comes from the offline copy (the GGUF converted once)
    and says so; another hub id fails with both reasons named."""
    import draftalign.models as M

    monkeypatch.setattr(M, "hub_reachable", lambda timeout=3.0: False)
    real = M._from_folder

    def no_cache(name_or_path, device, dtype, *, source, local_files_only=False):
        if local_files_only:
            raise OSError("not in the local cache")
        return real(name_or_path, device, dtype, source=source)

    monkeypatch.setattr(M, "_from_folder", no_cache)
    model, tokenizer = M.load_target()
    assert model.draftalign_source.startswith("offline-gguf:") and tokenizer.eos_token_id == 2
    with pytest.raises(RuntimeError, match="hub unreachable"):
        M.load_target("someone/some-model")
