"""Exported drafts (:mod:`draftalign.export`): a standard Hugging Face folder over the
target's full vocabulary, from a full-vocabulary draft or from a sub-vocabulary one.

Checked: the folder loads with ``AutoModelForCausalLM``, carries the target's special ids,
tokenizer files, a model card with the hub's YAML header and a manifest; a sub-vocabulary
draft's export proposes the same greedy tokens on any context of target ids (inside or
outside its kept tokens), gives the other tokens a vanishing probability, keeps speculative
decoding exact, and works as transformers' ``assistant_model``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from draftalign.export import export_draft, full_vocab_model, model_card, SUB_VOCAB_CARD_NOTE
from draftalign.speculative import autoregressive_generate, speculative_generate
from draftalign.subvocab import sub_vocab_draft

VOCAB = 49152


def test_export_writes_a_folder_transformers_loads(tiny_llama, tokenizer, tmp_path):
    draft = tiny_llama(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=1, eos_token_id=7,
                       tie_embeddings=True)
    card = model_card(title="T", base_model="org/target", body="Body.", datasets=("org/data",))
    folder = export_draft(draft, tmp_path / "d", tokenizer=tokenizer, card=card, dtype=torch.bfloat16)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.dtype == torch.bfloat16 and loaded.config.vocab_size == VOCAB
    assert (loaded.generation_config.eos_token_id, loaded.generation_config.pad_token_id) == (2, 2)
    assert next(draft.parameters()).dtype == torch.float32  # the draft itself is unchanged
    text = (folder / "README.md").read_text()
    assert text.startswith("---\nbase_model: org/target\n") and "- org/data" in text and "# T" in text
    assert json.loads((folder / "manifest.json").read_text())["results"]["dtype"] == "bfloat16"
    assert (folder / "tokenizer.json").exists()


def _sub_draft(tiny_llama, tie, vocab=40, hidden=16, heads=2):
    draft = tiny_llama(vocab_size=vocab, hidden_size=hidden, num_layers=2, num_heads=heads, init_std=0.3,
                       tie_embeddings=tie, seed=3, eos_token_id=3)
    keep = torch.tensor([0, 1, 2, 3, 5, 8, 13, 21, 34, vocab - 1])
    return sub_vocab_draft(draft, keep).eval(), keep


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_full_vocab_export_proposes_the_same_greedy_tokens(tiny_llama, tie, heads):
    sub, keep = _sub_draft(tiny_llama, tie, heads=heads)
    full = full_vocab_model(sub)
    assert full.config.vocab_size == 40 and full.config.hidden_size % heads == 0
    g = torch.Generator().manual_seed(heads)
    ids = torch.randint(0, 40, (6, 25), generator=g)  # most ids lie outside the kept tokens
    a, b = sub(input_ids=ids).logits, full(input_ids=ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    outside = torch.ones(40, dtype=torch.bool)
    outside[keep] = False
    assert b[..., outside].max() < -1000  # probability 0 in fp32
    qa, qb = a.softmax(-1), b.softmax(-1)
    assert 0.5 * (qa - qb).abs().sum(-1).max() < 1e-4  # and the kept tokens' distribution barely moves
    assert full.generation_config.eos_token_id == 3


def test_sub_vocab_export_keeps_speculative_decoding_exact(tiny_llama):
    target = tiny_llama(vocab_size=40, hidden_size=16, num_layers=2, init_std=0.3, seed=8, eos_token_id=None)
    sub, _ = _sub_draft(tiny_llama, True)
    full = full_vocab_model(sub)
    prompt = torch.tensor([[1, 5, 8, 13]])
    plain = autoregressive_generate(target, prompt, max_new_tokens=20)
    for draft in (sub, full):
        spec = speculative_generate(target, draft, prompt, max_new_tokens=20, gamma=3)
        assert spec.tokens == plain.tokens
    a = speculative_generate(target, sub, prompt, max_new_tokens=20, gamma=3)
    b = speculative_generate(target, full, prompt, max_new_tokens=20, gamma=3)
    assert a.accepted == b.accepted  # the same proposals, block by block


def test_sub_vocab_draft_exports_to_an_assistant_model(tiny_llama, tokenizer, tmp_path):
    target = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=2, init_std=0.3, seed=8, eos_token_id=2,
                        max_position_embeddings=128)
    small = tiny_llama(vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, init_std=0.3, seed=4,
                       eos_token_id=2, tie_embeddings=True)
    sub = sub_vocab_draft(small, torch.arange(0, 3000)).eval()
    folder = export_draft(sub, tmp_path / "sub", tokenizer=tokenizer)
    assert SUB_VOCAB_CARD_NOTE in (folder / "README.md").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.vocab_size == VOCAB
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    plain = target.generate(ids, max_new_tokens=12, do_sample=False)
    assisted = target.generate(ids, max_new_tokens=12, do_sample=False, assistant_model=loaded)
    assert torch.equal(plain, assisted)
    probe = torch.tensor([[1, 504, 30000, 282, 47000, 314]])  # ids outside the kept tokens too
    assert torch.equal(sub(input_ids=probe).logits.argmax(-1), loaded(input_ids=probe).logits.argmax(-1))


# -- compatibility with transformers, vLLM and llama.cpp ------------------------------------

@pytest.fixture(scope="module")
def pair(tiny_llama, tokenizer, tmp_path_factory):
    """A target folder and a compatible draft folder over SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("pair")
    target = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=2, eos_token_id=2, max_position_embeddings=64)
    target.save_pretrained(root / "target")
    tokenizer.save_pretrained(root / "target")
    draft = tiny_llama(vocab_size=VOCAB, hidden_size=8, num_layers=1, eos_token_id=2, max_position_embeddings=64)
    export_draft(draft, root / "draft", tokenizer=tokenizer)
    return root / "target", root / "draft"


def _broken(pair, tmp_path, *, config=None, tokenizer_json=None, tokenizer_config=None, generation=None):
    """A copy of the draft folder with one thing changed."""
    import shutil

    _, draft = pair
    folder = tmp_path / "broken"
    shutil.copytree(draft, folder)
    for name, change in (("config.json", config), ("tokenizer.json", tokenizer_json),
                         ("tokenizer_config.json", tokenizer_config), ("generation_config.json", generation)):
        if change is not None:
            data = json.loads((folder / name).read_text())
            change(data)
            (folder / name).write_text(json.dumps(data))
    return folder


def test_an_exported_draft_is_compatible_everywhere(pair):
    from draftalign.export import compatibility_report

    report = compatibility_report(*pair)
    assert report == {tool: {"ok": True, "reasons": []} for tool in ("transformers", "vllm", "llama_cpp")}


def _set(key, value):
    def change(d):
        d[key] = value
    return change


@pytest.mark.parametrize("change,broken,match", [
    (dict(config=_set("vocab_size", 4872)), {"transformers", "vllm", "llama_cpp"}, "vocab_size 4872"),
    (dict(config=_set("max_position_embeddings", 32)), {"transformers", "vllm", "llama_cpp"}, "context"),
    (dict(config=_set("model_type", "mamba")), {"transformers", "llama_cpp"}, "stateful"),
    (dict(config=_set("architectures", ["FancyNewForCausalLM"])), {"vllm"}, "FancyNewForCausalLM"),
    (dict(config=_set("model_type", "fancy_new")), {"transformers", "llama_cpp"}, "fancy_new"),
    (dict(generation=_set("eos_token_id", 1)), {"llama_cpp"}, "EOS id"),
    (dict(generation=_set("bos_token_id", 0)), {"llama_cpp"}, "BOS id"),
    (dict(tokenizer_config=_set("add_bos_token", True)), {"llama_cpp"}, "add_bos_token"),
])
def test_each_rule_has_a_draft_that_breaks_it(pair, tmp_path, change, broken, match):
    from draftalign.export import compatibility_report

    report = compatibility_report(pair[0], _broken(pair, tmp_path, **change))
    assert {tool for tool, r in report.items() if not r["ok"]} == broken
    assert all(report[tool]["reasons"] for tool in broken)
    assert any(match in reason for tool in broken for reason in report[tool]["reasons"]), report


def test_llama_cpp_vocabulary_rules(pair, tmp_path):
    from draftalign.export import compatibility_report

    def retext(d):  # one token's text changed
        vocab = d["model"]["vocab"]
        token = next(t for t, i in vocab.items() if i == 300)
        vocab["zz_" + token] = vocab.pop(token)

    def shrink(d):  # 200 tokens fewer
        d["model"]["vocab"] = {t: i for t, i in d["model"]["vocab"].items() if i < 48800}

    def retype(d):
        d["model"]["type"] = "Unigram"

    # a tokenizer 200 tokens short of vocab_size: the GGUF pads its table to vocab_size, so the
    # counts agree and the padded ids' texts do not
    for change, match in ((retext, "token texts differ"), (shrink, "token texts differ"), (retype, "vocabulary type")):
        report = compatibility_report(pair[0], _broken(pair, tmp_path / change.__name__, tokenizer_json=change))
        assert not report["llama_cpp"]["ok"] and report["transformers"]["ok"] and report["vllm"]["ok"]
        assert any(match in r for r in report["llama_cpp"]["reasons"]), report["llama_cpp"]["reasons"]
    # the first five ids are not compared (llama.cpp skips its special tokens there)
    def early(d):
        vocab = d["model"]["vocab"]
        token = next(t for t, i in vocab.items() if i == 4)
        vocab["zz_" + token] = vocab.pop(token)
    assert compatibility_report(pair[0], _broken(pair, tmp_path / "early", tokenizer_json=early))["llama_cpp"]["ok"]


def test_a_sub_vocabulary_folder_fails_where_users_hit_it(tiny_llama, tokenizer, pair, tmp_path):
    from draftalign.export import compatibility_report

    small = tiny_llama(vocab_size=VOCAB, hidden_size=8, num_layers=1, eos_token_id=2, max_position_embeddings=64)
    sub = sub_vocab_draft(small, torch.arange(0, 500))
    sub.save_pretrained(tmp_path / "internal")  # the training form: 501 rows
    tokenizer.save_pretrained(tmp_path / "internal")
    report = compatibility_report(pair[0], tmp_path / "internal")
    assert not report["transformers"]["ok"] and not report["vllm"]["ok"]
    # llama.cpp too: its GGUF would hold 501 tokens (one per embedding row) against the target's
    # 49,152, though the full tokenizer sits beside it
    assert not report["llama_cpp"]["ok"] and any("differ by" in r for r in report["llama_cpp"]["reasons"])
    exported = export_draft(sub, tmp_path / "exported", tokenizer=tokenizer)
    assert all(r["ok"] for r in compatibility_report(pair[0], exported).values())


# -- GGUF for llama.cpp -----------------------------------------------------------------------

def test_gguf_export_reads_back_with_transformers_loader(tiny_llama, tokenizer, tmp_path):
    from draftalign.export import export_gguf

    draft = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=2, num_heads=2, init_std=0.3,
                       tie_embeddings=True, eos_token_id=2)
    folder = export_draft(draft, tmp_path / "d", tokenizer=tokenizer)
    out = export_gguf(folder, tmp_path / "d.gguf", tokenizer_pre="smollm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(0))
    a, b = draft(input_ids=ids).logits, loaded(input_ids=ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32 in the file: the same model
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    text = "Write a haiku about rain, please."
    assert tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (tok.eos_token_id, tok.bos_token_id) == (2, 1)


@pytest.mark.parametrize("kind,worst", [("f16", 1e-3), ("q8_0", 1 / 200), ("q4_0", 1 / 6)])
def test_gguf_types_read_back_within_their_precision(tiny_llama, tokenizer, tmp_path, kind, worst):
    """Each weight type the export writes reads back (gguf's reader dequantizes it) within its
    precision: per block of 32 weights, an error below ``worst`` of the block's largest
    magnitude (f16: relative); transformers' GGUF loader takes each file, and its logits follow
    the full-precision draft's (a random tiny model's argmax flips at its many near-ties, so the
    logits are compared, not the argmax)."""
    from draftalign.export import export_gguf
    from draftalign.gguf_export import read_gguf_weights

    draft = tiny_llama(vocab_size=VOCAB, hidden_size=64, num_layers=1, num_heads=2, init_std=0.3,
                       tie_embeddings=True, eos_token_id=2)
    folder = export_draft(draft, tmp_path / "d", tokenizer=tokenizer)
    from gguf import GGUFReader

    sizes = {t: sum(int(x.n_bytes) for x in GGUFReader(str(export_gguf(folder, tmp_path / f"d-{t}.gguf",
                                                                        dtype=t))).tensors) for t in ("f32", kind)}
    assert sizes[kind] < (0.55 if kind == "f16" else 0.3 if kind == "q8_0" else 0.2) * sizes["f32"]  # the weights' bytes
    got = read_gguf_weights(tmp_path / f"d-{kind}.gguf")
    for name, ref in (("token_embd.weight", draft.model.embed_tokens.weight),
                      ("blk.0.ffn_down.weight", draft.model.layers[0].mlp.down_proj.weight)):
        ref = ref.detach().float().numpy()
        err = np.abs(got[name] - ref).reshape(-1, 32)
        scale = np.abs(ref).reshape(-1, 32).max(1, keepdims=True)
        if kind == "f16":
            assert (np.abs(got[name] - ref) <= worst * np.abs(ref) + 1e-7).all(), name
        else:
            assert (err <= worst * scale + 1e-7).all(), (name, float((err / scale).max()))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f"d-{kind}.gguf", dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = draft(input_ids=ids).logits.flatten(), loaded(input_ids=ids).logits.flatten()
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert corr > (0.999 if kind == "f16" else 0.99 if kind == "q8_0" else 0.9), corr


def test_gguf_export_of_a_sub_vocabulary_draft_keeps_every_tensor(tiny_llama, tokenizer, tmp_path):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from draftalign.export import export_gguf

    small = tiny_llama(vocab_size=VOCAB, hidden_size=8, num_layers=2, num_heads=2, init_std=0.3, eos_token_id=2,
                       tie_embeddings=True)
    folder = export_draft(sub_vocab_draft(small, torch.arange(0, 3000)), tmp_path / "s", tokenizer=tokenizer)
    out = export_gguf(folder, tmp_path / "s.gguf", dtype="f16")
    reader = GGUFReader(str(out))
    tensors = {t.name: t for t in reader.tensors}
    state = load_file(folder / "model.safetensors")
    # the MLP biases that give tokens outside the sub-vocabulary their -1e6 travel too: llama.cpp's
    # Llama loader reads them (optional tensors); transformers' GGUF loader has no mlp_bias key
    bias = np.asarray(tensors["blk.1.ffn_down.bias"].data)
    np.testing.assert_array_equal(bias, state["model.layers.1.mlp.down_proj.bias"].float().numpy())
    assert tensors["output.weight"].data.dtype == np.float16  # untied head, in f16 as asked
    head = state["lm_head.weight"].float().numpy()
    np.testing.assert_allclose(np.asarray(tensors["output.weight"].data, dtype=np.float32).reshape(head.shape),
                               head.astype(np.float16).astype(np.float32))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("llama.")}
    assert fields["llama.attention.key_length"] == 4 and fields["llama.embedding_length"] == 10
