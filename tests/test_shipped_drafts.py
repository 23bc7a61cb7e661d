"""The drafts shipped in ``data/drafts/``: standard Hugging Face folders over the target's
full vocabulary that transformers loads as they are and takes as ``assistant_model``, with
the target's greedy output unchanged; within the size limits; with a model card and a
manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from draftalign.models import count_parameters
from draftalign.book.profiles import get_profile, repo_root
from draftalign.speculative import autoregressive_generate, speculative_generate

DRAFTS = repo_root() / "data" / "drafts"
DRAFTER = DRAFTS / "smollm2-135m-instruct-drafter"
PRETRAINED = Path(repo_root() / get_profile("cpu").pretrained_from)
N_TARGET = 134_515_008  # SmolLM2-135M-Instruct, embeddings included


@pytest.mark.parametrize("folder", [DRAFTER, PRETRAINED], ids=["drafter", "pretrained"])
def test_shipped_folder_is_standard_small_and_documented(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 49152
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert (folder / "tokenizer.json").exists() and (folder / "generation_config.json").exists()
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert size <= 40e6, f"{folder.name} is {size / 1e6:.1f} MB"
    card = (folder / "README.md").read_text()
    header = card.split("---")[1]
    for key in ("base_model:", "license:", "tags:"):
        assert key in header
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"spec", "results", "versions"} <= set(manifest)
    draft = AutoModelForCausalLM.from_pretrained(folder)
    assert count_parameters(draft) <= 0.10 * N_TARGET


def test_drafter_card_holds_the_tables():
    card = (DRAFTER / "README.md").read_text()
    assert "make reference" in card and "| book eval (72) |" in card and "| MT-Bench (80) |" in card
    assert "## Wall clock" in card and "gamma=4" in card


@pytest.mark.slow
def test_drafter_is_transformers_assistant_with_the_target_greedy_output(real_target, chat_ids):
    target, _ = real_target
    draft = AutoModelForCausalLM.from_pretrained(DRAFTER, dtype=torch.float32).eval()
    gen = json.loads((DRAFTER / "generation_config.json").read_text())
    assert gen["eos_token_id"] == target.generation_config.eos_token_id
    ids = chat_ids("Name three rivers in Europe and say where each one ends.")
    n = 24
    plain = autoregressive_generate(target, ids, max_new_tokens=n).tokens
    with torch.no_grad():
        assisted = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft,
                                   do_sample=False, max_new_tokens=n)[0, ids.shape[1]:].tolist()
    assert assisted == plain[: len(assisted)] and len(assisted) >= min(n, len(plain))
    spec = speculative_generate(target, draft, ids, max_new_tokens=n, gamma=2)
    assert spec.tokens == plain and spec.tau > 1.2, "the drafter is accepted often on a chat prompt"


@pytest.mark.parametrize("name", ["ci", "cpu", "colab", "gpu", "reference"])
def test_every_profile_names_shipped_data_that_exists_and_fits(name):
    """A profile that starts from a shipped pretrained draft has that draft's shape (else
    Chapter 4 would distil a draft of another size than Chapter 2 says), and a shipped
    distillation set it names is in data/."""
    P = get_profile(name)
    if P.pretrained_from:
        config = json.loads((repo_root() / P.pretrained_from / "config.json").read_text())
        assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
                config["intermediate_size"]) == (P.draft_hidden, P.draft_layers, P.draft_heads, P.draft_intermediate)
    if P.kd_data not in ("generated", "reference"):
        folder = repo_root() / P.kd_data
        assert (folder / "records.jsonl").exists() or (folder / "answers.npz.xz").exists(), folder
