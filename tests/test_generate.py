"""``generate_distillation_data``: resume after an interruption or a torn last line,
refusal of a folder written with other settings, the on-disk format, input checks and
the sampling distribution.

The target is a tiny random Llama with SmolLM2's vocabulary size (49152), so that it
works with the real SmolLM2 tokenizer. Its head is edited so that almost all the mass
sits on ten tokens, one of them ``<|im_end|>`` (id 2): responses then end either by
the end-of-turn token or by the length limit, and transformers' top-k default cannot
change which tokens are sampled.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from draftalign.chat import generation_prefix_ids
from draftalign.data import CATEGORIES
from draftalign.answers import generate_distillation_data, load_distillation_data
from draftalign.sampling import warp

EOS = 2
VOCAB = 49152
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about rain.",
    "List three prime numbers.",
    "Explain recursion to a child in two short sentences, please.",
    "Hi",
    "Summarize: the cat sat on the mat and then went to sleep in the sun.",
    "Translate 'good morning' into Spanish.",
]
CATS = [CATEGORIES[i % len(CATEGORIES)] for i in range(len(PROMPTS))]
KW = dict(max_new_tokens=6, temperature=1.0, top_p=0.95, batch_size=3, seed=11, progress=False)
COLUMNS = {"index", "prompt", "category", "prompt_ids", "response", "response_ids", "finish_reason"}
# ordinary word tokens that, with EOS, carry almost all of the edited target's mass
LIKELY = [EOS, 504, 3575, 282, 4649, 314, 7042, 30, 4590, 1296]


def _concentrate(model, tokens, weight):
    """Make the last hidden state's dimension 0 about +4 at every position (a constant
    embedding column dominates the residual stream) and give ``tokens`` head weight
    ``weight`` on it, every other token 0: those tokens get logits near ``4 * weight``."""
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tokens, 0] = weight
    return model


@pytest.fixture(scope="module")
def target(tiny_llama):
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=EOS,
                       max_position_embeddings=128, seed=0)
    assert model.config.eos_token_id == EOS == model.generation_config.eos_token_id
    assert model.config.pad_token_id == EOS == model.generation_config.pad_token_id
    return _concentrate(model, LIKELY, 3.0)


def _run(target, tokenizer, out_dir, prompts=PROMPTS, **overrides):
    kw = {**KW, "categories": CATS if prompts is PROMPTS else None, **overrides}
    return generate_distillation_data(target, tokenizer, prompts, out_dir, **kw)


def _rows(ds):
    return [(r["index"], r["prompt"], r["category"], r["prompt_ids"], r["response"], r["response_ids"],
             r["finish_reason"]) for r in ds]


def _lines(folder):
    return (Path(folder) / "records.jsonl").read_text(encoding="utf-8").splitlines()


def _check_rows(ds, tokenizer, max_new_tokens=KW["max_new_tokens"]):
    """One row per prompt in order, every field consistent with the prompt and the ids."""
    assert set(ds.column_names) == COLUMNS
    assert ds["index"] == list(range(len(PROMPTS)))
    assert ds["prompt"] == PROMPTS
    for r in ds:
        assert r["prompt_ids"] == generation_prefix_ids(tokenizer, r["prompt"])
        ids = r["response_ids"]
        assert 1 <= len(ids) <= max_new_tokens
        if r["finish_reason"] == "stop":
            assert ids[-1] == EOS and EOS not in ids[:-1]
        else:
            assert r["finish_reason"] == "length"
            assert len(ids) == max_new_tokens and EOS not in ids
        assert r["response"] == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def reference(target, tokenizer, tmp_path_factory):
    """An uninterrupted run: ``(dataset, folder)``."""
    folder = tmp_path_factory.mktemp("reference")
    calls = []
    ds = _run(target, tokenizer, folder, on_batch=calls.append)
    assert calls == [3, 6, 7]  # called after each batch with the number of prompts done
    _check_rows(ds, tokenizer)
    assert ds["category"] == CATS
    # the edited target ends some answers and runs others to the limit
    assert set(ds["finish_reason"]) == {"stop", "length"}
    lines = _lines(folder)
    assert [json.loads(line)["index"] for line in lines] == list(range(len(PROMPTS)))
    return ds, folder


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_rows(target, tokenizer, reference, tmp_path):
    ref, _ = reference
    seen = []

    def die(n_done):
        seen.append(n_done)
        raise _Interrupt

    with pytest.raises(_Interrupt):
        _run(target, tokenizer, tmp_path, on_batch=die)
    assert seen == [3]
    assert [json.loads(line)["index"] for line in _lines(tmp_path)] == [0, 1, 2]

    calls = []
    ds = _run(target, tokenizer, tmp_path, on_batch=calls.append)
    assert calls == [6, 7]  # the first batch is not answered again
    _check_rows(ds, tokenizer)
    assert _rows(ds) == _rows(ref)
    lines = _lines(tmp_path)
    assert len(lines) == len(set(lines)) == len(PROMPTS)
    assert [json.loads(line)["index"] for line in lines] == list(range(len(PROMPTS)))

    # a finished folder: a rerun answers nothing and changes nothing
    before = (tmp_path / "records.jsonl").read_bytes()
    calls.clear()
    again = _run(target, tokenizer, tmp_path, on_batch=calls.append)
    assert calls == [] and (tmp_path / "records.jsonl").read_bytes() == before
    assert _rows(again) == _rows(ref) == _rows(load_distillation_data(tmp_path))


@pytest.mark.parametrize("complete_lines,cut", [(3, 0.5), (4, 0.5), (4, 1.0), (6, 0.1)],
                         ids=["after-batch", "mid-batch", "no-newline", "last-batch"])
def test_torn_last_line_is_dropped_and_answered_again(target, tokenizer, reference, tmp_path,
                                                      complete_lines, cut):
    """A kill mid-write leaves part of a line (``cut`` of the next record's characters,
    without its newline): it is never read as a row, and the rerun completes the data
    exactly as an uninterrupted run."""
    ref, ref_folder = reference
    shutil.copy(ref_folder / "settings.json", tmp_path / "settings.json")
    lines = _lines(ref_folder)
    torn = lines[complete_lines][: int(len(lines[complete_lines]) * cut)]
    (tmp_path / "records.jsonl").write_text("".join(x + "\n" for x in lines[:complete_lines]) + torn,
                                            encoding="utf-8")

    with pytest.warns(UserWarning, match="dropped a torn last line"):
        partial = load_distillation_data(tmp_path)
    assert partial["index"] == list(range(complete_lines))
    assert _rows(partial) == _rows(ref)[:complete_lines]

    ds = _run(target, tokenizer, tmp_path)
    _check_rows(ds, tokenizer)
    assert _rows(ds) == _rows(ref)
    new_lines = _lines(tmp_path)
    assert sorted(new_lines) == sorted(lines)  # every line whole, none twice
    assert [json.loads(x)["index"] for x in new_lines] == list(range(len(PROMPTS)))


@pytest.mark.parametrize("change,name", [
    ({"max_new_tokens": 5}, "max_new_tokens"),
    ({"temperature": 0.7}, "temperature"),
    ({"top_p": 0.9}, "top_p"),
    ({"batch_size": 2}, "batch_size"),
    ({"seed": 12}, "seed"),
    ({"system": "Answer briefly."}, "system"),
    ({"prompts": PROMPTS[:-1] + ["Translate 'good night' into Spanish."]}, "prompts_sha256"),
])
def test_other_settings_in_the_same_folder_are_refused(target, tokenizer, reference, tmp_path, change, name):
    _, ref_folder = reference
    for f in ("settings.json", "records.jsonl"):
        shutil.copy(ref_folder / f, tmp_path / f)
    before = (tmp_path / "records.jsonl").read_bytes()
    change = dict(change)
    prompts = change.pop("prompts", PROMPTS)
    with pytest.raises(ValueError, match=name) as info:
        _run(target, tokenizer, tmp_path, prompts=prompts, **change)
    assert "other settings" in str(info.value)
    assert (tmp_path / "records.jsonl").read_bytes() == before
    assert json.loads((tmp_path / "settings.json").read_text()) == \
        json.loads((ref_folder / "settings.json").read_text())


def test_output_loads_with_datasets_json(reference, tokenizer, tmp_path):
    ref, folder = reference
    ds = datasets.load_dataset("json", data_files=str(folder / "records.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds.column_names) == COLUMNS
    assert len(ds) == len(PROMPTS)
    assert ds["index"] == list(range(len(PROMPTS)))
    assert ds["prompt"] == PROMPTS and ds["category"] == CATS
    assert ds["response_ids"] == ref["response_ids"] and ds["prompt_ids"] == ref["prompt_ids"]
    assert ds["finish_reason"] == ref["finish_reason"] and ds["response"] == ref["response"]
    settings = json.loads((folder / "settings.json").read_text())
    assert {k: settings[k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")} == \
        {k: KW[k] for k in ("max_new_tokens", "temperature", "top_p", "batch_size", "seed")}
    assert settings["n_prompts"] == len(PROMPTS) and settings["system"] is None


@pytest.mark.parametrize("prompts,extra,match", [
    ([], {}, "non-empty"),
    ([""], {}, "non-empty"),
    (["fine", "   "], {}, "non-empty"),
    (["fine", None], {}, "non-empty"),
    (["a", "b", "c"], {"categories": ["code", "math"]}, "2 categories for 3 prompts"),
    (["a"], {"max_new_tokens": 0}, "max_new_tokens"),
    (["a"], {"batch_size": 0}, "batch_size"),
    (["a"], {"temperature": -0.1}, "temperature"),
    (["a"], {"top_p": 0.0}, "top_p"),
    (["a"], {"top_p": 1.5}, "top_p"),
])
def test_bad_inputs_are_refused(target, tokenizer, tmp_path, prompts, extra, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        generate_distillation_data(target, tokenizer, prompts, out, **{**KW, **extra})
    assert not out.exists()  # refused before anything is written


def test_load_distillation_data_needs_records(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_distillation_data(tmp_path)


def test_greedy_left_padding_matches_one_prompt_at_a_time(tiny_llama, tokenizer, tmp_path):
    """temperature 0 is greedy: the seed does not matter, and answering prompts of
    different lengths together (left-padded) gives the answers they get alone."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=EOS,
                       max_position_embeddings=128, seed=3, init_std=0.5)
    kw = {**KW, "temperature": 0.0}
    together = generate_distillation_data(model, tokenizer, PROMPTS, tmp_path / "a", **kw)
    alone = generate_distillation_data(model, tokenizer, PROMPTS, tmp_path / "b",
                                       **{**kw, "batch_size": 1, "seed": 99})
    _check_rows(together, tokenizer)
    assert together["response_ids"] == alone["response_ids"]
    assert together["finish_reason"] == alone["finish_reason"]
    assert len({tuple(r) for r in together["response_ids"]}) > 1  # answers depend on the prompt


def test_sampling_follows_temperature_and_top_p_only(tiny_llama, tokenizer, tmp_path):
    """The data is sampled from the target's distribution warped by ``temperature`` and
    ``top_p`` (the settings recorded, and the warp speculative sampling reproduces),
    with nothing else cut off.

    The target here gives EOS probability ~0.17 as the first token and spreads the rest
    over the other 49151 tokens. Pure temperature/top-p sampling stops at the first
    token in ~17% of 60 prompts; an extra top-k cut (transformers' default top_k = 50
    when neither the call nor the generation config sets it) leaves EOS with ~99% of
    the mass and almost every answer stops at once."""
    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=EOS,
                       max_position_embeddings=128, seed=1)
    _concentrate(model, [EOS], 2.3)
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(60)]
    with torch.no_grad():
        p_eos = [float(warp(model(torch.tensor([generation_prefix_ids(tokenizer, p)])).logits[0, -1],
                            1.0, 1.0)[EOS]) for p in prompts[:5]]
    p = sum(p_eos) / len(p_eos)
    assert 0.05 < p < 0.4  # the model is what this test assumes
    ds = generate_distillation_data(model, tokenizer, prompts, tmp_path, max_new_tokens=1, temperature=1.0,
                                    top_p=1.0, batch_size=60, seed=0, progress=False)
    stopped = sum(r == [EOS] for r in ds["response_ids"])
    n = len(prompts)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(stopped - n * p) <= 5 * sd, (
        f"{stopped}/{n} answers sampled EOS first; temperature 1 / top_p 1 gives p(EOS) = {p:.3f} "
        f"(expected {n * p:.1f} +- {sd:.1f}): the sampler cuts the distribution beyond temperature/top_p")


def test_cached_topk_is_aligned_with_answer_tokens_under_left_padding(tiny_llama, tokenizer, tmp_path):
    """The top-k kept while answering a left-padded batch is, at every answer token, the
    target's own top-k given that prompt and the answer so far (teacher forcing, alone)."""
    from draftalign.answers import load_topk

    model = tiny_llama(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, eos_token_id=EOS,
                       max_position_embeddings=128, seed=4, init_std=0.5)
    ds = generate_distillation_data(model, tokenizer, PROMPTS, tmp_path, **{**KW, "temperature": 0.0, "topk": 3})
    topk = load_topk(tmp_path)
    assert sorted(topk) == list(range(len(PROMPTS)))
    for row in ds:
        ids, logprobs = topk[row["index"]]
        assert ids.shape == (len(row["response_ids"]), 3)
        seq = torch.tensor([row["prompt_ids"] + row["response_ids"]])
        with torch.no_grad():
            logp = model(input_ids=seq).logits[0, len(row["prompt_ids"]) - 1:-1].float().log_softmax(-1)
        want_lp, want_ids = logp.topk(3, dim=-1)
        assert torch.equal(ids, want_ids)
        torch.testing.assert_close(logprobs, want_lp, rtol=0, atol=2e-3)  # stored in fp16
        assert torch.equal(ids[:, 0], torch.tensor(row["response_ids"]))  # greedy: the answer is the argmax
