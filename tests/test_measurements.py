"""``evaluate.tau_table`` / ``tau_by_category`` and ``timing.compare_decoders``: the tables
the chapters print, checked against the engine's own results and against decoders whose
cost and output are known."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from draftalign.evaluate import tau_by_category, tau_table
from draftalign.metrics import mean_tau
from draftalign.speculative import speculative_generate
from draftalign.timing import compare_decoders


def test_tau_table_rows_are_the_engines_results(tiny_llama, tokenizer):
    target = tiny_llama(vocab_size=49152, hidden_size=16, num_layers=2, seed=1, init_std=0.3, eos_token_id=2,
                        max_position_embeddings=256)
    draft = tiny_llama(vocab_size=49152, hidden_size=8, num_layers=1, seed=2, init_std=0.3, eos_token_id=2)
    prompts = [{"id": "a", "category": "x", "prompt": "Hello there"},
               {"id": "b", "category": "x", "prompt": "Name a river."},
               {"id": "c", "category": "y", "prompt": "Count to five."}]
    table = tau_table(target, draft, tokenizer, prompts, gamma=2, max_new_tokens=10, progress=False)
    assert list(table.id) == ["a", "b", "c"] and list(table.category) == ["x", "x", "y"]
    for row, p in zip(table.itertuples(), prompts):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                            return_tensors="pt")["input_ids"]
        res = speculative_generate(target, draft, ids, max_new_tokens=10, gamma=2)
        assert (row.tokens, row.target_calls) == (len(res.tokens), res.target_calls)
        assert row.tau == pytest.approx(res.tau)
    by_cat = tau_by_category(table)
    assert by_cat.loc["all", "tau"] == pytest.approx(mean_tau(list(table.result)))
    x = table[table.category == "x"]
    assert by_cat.loc["x", "tau"] == pytest.approx(x.tokens.sum() / x.target_calls.sum())  # pooled, not a mean


def test_compare_decoders_interleaves_rotates_and_times_ratios():
    calls = []

    def decoder(name, seconds, tokens, target_calls):
        def run(ids):
            calls.append(name)
            time.sleep(seconds)
            return SimpleNamespace(tokens=list(range(tokens)), target_calls=target_calls,
                                   accepted=[1] * target_calls, drafted=[2] * target_calls)
        return run

    methods = {"slow": decoder("slow", 0.02, 10, 10), "fast": decoder("fast", 0.01, 10, 5)}
    prompts = [torch.zeros(1, 3), torch.zeros(1, 4)]
    table, first = compare_decoders(methods, prompts, rounds=2, progress=False)
    assert calls == ["slow", "slow", "fast", "fast", "fast", "fast", "slow", "slow"]  # rotated per round
    assert list(table.index) == ["slow", "fast"]
    assert table.loc["fast", "tau"] == pytest.approx(2.0) and table.loc["slow", "tau"] == pytest.approx(1.0)
    assert table.loc["fast", "alpha"] == pytest.approx(0.5)  # one of two reached drafts accepted per block
    assert 0.3 < table.loc["fast", "time_vs_slow"] < 0.8  # half the time, with scheduling noise
    assert table.loc["slow", "time_vs_slow"] == pytest.approx(1.0)
    assert len(first["slow"]) == 2
