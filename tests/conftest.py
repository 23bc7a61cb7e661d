"""Shared fixtures: tiny random Llama models built in code, and the real chat target.

Most tests run on tiny ``LlamaForCausalLM`` models (vocabulary 5-64, hidden 16-32, one or
two layers) that build in milliseconds. Tests that need only SmolLM2's tokenizer take
:func:`tokenizer`, built from files tracked in the repository (no download, no conversion).
Tests marked ``slow`` use the real embedded target (SmolLM2-135M-Instruct), loaded once per
session by :func:`real_target`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from draftalign.models import load_target

_NO_EOS = object()
# The shipped pretrained draft carries the target's tokenizer files (tokenizer.json,
# tokenizer_config.json, chat_template.jinja); test_models checks they match load_target's.
TOKENIZER_FOLDER = Path(__file__).parents[1] / "data" / "drafts" / "smollm2-135m-instruct-pretrained"


def build_tiny_llama(*, vocab_size: int = 32, hidden_size: int = 16, num_layers: int = 1,
                     num_heads: int = 2, intermediate_size: int | None = None, seed: int = 0,
                     eos_token_id=_NO_EOS, init_std: float = 0.02,
                     max_position_embeddings: int = 64, tie_embeddings: bool = False,
                     dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama in eval mode.

    ``eos_token_id`` defaults to 3 (inside every vocabulary used here, so EOS can come up by
    chance); pass ``None`` for a model that never stops early. ``pad_token_id`` is set to
    the EOS id (or left ``None``) so that ``generate`` does not warn. ``bos_token_id`` is 1.
    ``init_std`` is the initializer range: larger values make the next-token
    distributions more peaked.
    """
    eos = 3 if eos_token_id is _NO_EOS else eos_token_id
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=1,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(dtype).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, eos, eos
    return model


@pytest.fixture(scope="session")
def tiny_llama():
    """Factory: ``tiny_llama(vocab_size=..., seed=..., ...)`` (see :func:`build_tiny_llama`)."""
    return build_tiny_llama


@pytest.fixture(autouse=True)
def _single_intra_op_thread():
    """Run every test on one intra-op thread (restored afterwards).

    Tiny models are pure per-call overhead, so a second OpenMP thread brings nothing to
    them; and whenever another process competes for the two cores, spinning OpenMP workers
    make each forward pass many times slower (measured here: 200 three-token generations
    of a tiny model took 14 s with 2 threads against 0.45 s with 1; 24 greedy tokens of
    the real 135M target 3-5.5 s against 2.0 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, from tracked files: no network,
    no target conversion. Shared by the whole session: do not modify it (copy it first)."""
    tok = AutoTokenizer.from_pretrained(TOKENIZER_FOLDER)
    assert len(tok) == 49152
    assert tok.eos_token_id == 2 and tok.convert_ids_to_tokens(2) == "<|im_end|>"
    return tok


@pytest.fixture(scope="session")
def real_target():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct in fp32 on the CPU, loaded once."""
    model, tokenizer = load_target(device="cpu", dtype=torch.float32)
    return model, tokenizer


@pytest.fixture(scope="session")
def chat_ids(real_target):
    """Factory: a user message -> ``[1, T]`` prompt ids from the target's chat template."""
    _, tokenizer = real_target

    def encode(text: str) -> torch.Tensor:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, return_tensors="pt")
        return enc["input_ids"]

    return encode


def chi2_pvalue(counts, probs, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of observed ``counts`` against exact ``probs``.

    Outcomes with probability 0 must never be observed: if one is, the p-value is 0.
    Outcomes whose expected count is below ``min_expected`` are merged into one bin (and
    that bin into the smallest other one if it is still too small).
    """
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float)
    assert counts.shape == probs.shape
    n = counts.sum()
    if counts[probs <= 0].sum() > 0:
        return 0.0
    keep = probs > 0
    obs, exp = counts[keep], probs[keep] / probs[keep].sum() * n
    small = exp < min_expected
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        exp = np.append(exp[~small], exp[small].sum())
        if exp[-1] < min_expected and len(exp) > 1:
            j = int(np.argmin(exp[:-1]))
            obs[j] += obs[-1]
            exp[j] += exp[-1]
            obs, exp = obs[:-1], exp[:-1]
    if len(exp) < 2:
        return 1.0
    return float(chisquare(obs, exp).pvalue)


@pytest.fixture(scope="session")
def chi2():
    """The :func:`chi2_pvalue` helper, as a fixture."""
    return chi2_pvalue
