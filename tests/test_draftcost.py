"""Where a draft step's time goes: the shapes timed are the shapes asked for, the split is
the least-squares line through the depth sweep, and llama.cpp's tables read its record."""

import numpy as np
import pandas as pd
import pytest

from draftalign.draftcost import cost_split, shaped_draft, torch_costs
from draftalign.llamacpp import cost_model, tables
from draftalign.subvocab import SubVocabDraft


def test_shaped_draft_has_the_shape_asked_for(tiny_llama):
    base = tiny_llama(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128)
    wide = shaped_draft(base, layers=3, hidden=128)
    assert wide.config.num_hidden_layers == 3 and wide.config.hidden_size == 128
    assert wide.config.num_attention_heads == 2 and wide.config.head_dim == 64
    assert wide.config.intermediate_size == 512  # the MLP keeps 4x the width
    trimmed = shaped_draft(base, vocab=16)
    assert isinstance(trimmed, SubVocabDraft)
    assert trimmed.model.get_output_embeddings().weight.shape[0] == 17  # 16 kept + the shared row
    assert trimmed.full_vocab_size == 64
    assert base.config.num_hidden_layers == 2  # the draft itself is left alone


def test_cost_split_recovers_the_line():
    # ms = 5 + 0.5 L at the draft's width and vocabulary; other shapes must not enter the fit
    rows = [("draft", 6, 192, 100, 8.0), ("1 layer", 1, 192, 100, 5.5), ("2 layers", 2, 192, 100, 6.0),
            ("wide", 2, 320, 100, 50.0), ("trimmed", 6, 192, 17, 1.0)]
    costs = pd.DataFrame(rows, columns=["shape", "layers", "hidden", "vocab", "ms"]).set_index("shape")
    split = cost_split(costs)
    assert split["per_layer_ms"] == pytest.approx(0.5) and split["rest_ms"] == pytest.approx(5.0)
    assert split["layers_share"] == pytest.approx(3.0 / 8.0) and split["rest_share"] == pytest.approx(5.0 / 8.0)
    with pytest.raises(ValueError, match="two or more depths"):
        cost_split(costs.loc[["draft", "wide"]])


def test_torch_costs_times_every_shape(tiny_llama):
    target = tiny_llama(vocab_size=64, hidden_size=64, num_layers=2, num_heads=2)
    draft = tiny_llama(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=128)
    shapes = {"draft": (None, None, None), "1 layer": (1, None, None), "trimmed": (None, None, 8)}
    costs = torch_costs(target, draft, shapes, repeats=3, prefix_len=8)
    assert list(costs.index) == list(shapes)
    assert list(costs.layers) == [2, 1, 2] and list(costs.vocab) == [64, 64, 9]
    assert (costs.ms > 0).all() and np.allclose(costs.c, costs.ms / costs.attrs["target_ms"])
    assert costs.loc["trimmed", "parameters"] < costs.loc["draft", "parameters"]


def _record():
    # one thread: a decoded token 10 ms, a pass over k tokens 10 + 5 (k - 1) ms; the draft 2 ms
    costs = [{"model": "target", "test": "tg16", "k": 1, "threads": 1, "ms_per_pass": 10.0}]
    costs += [{"model": "target", "test": f"pp{k}", "k": k, "threads": 1, "ms_per_pass": 10.0 + 5 * (k - 1)}
              for k in (1, 2, 3, 5)]
    costs += [{"model": "draft (q8_0)", "test": "tg16", "k": 1, "threads": 1, "ms_per_pass": 2.0}]
    servers = [{"threads": 1, "rows": [{"method": "plain", "threads": 1, "tokens_per_s": 100.0, "speed_up": 1.0},
                                       {"method": "gamma=2", "threads": 1, "tokens_per_s": 80.0, "speed_up": 0.8}]}]
    return {"pass_costs": costs, "servers": servers, "threads": [1], "gammas": [1, 2], "served_type": "q8_0",
            "export_bytes": {"f32": 4_000_000, "q8_0": 1_062_500}}


def test_llama_cpp_tables_read_the_record():
    record = _record()
    model = cost_model(record["pass_costs"], 1)
    assert model.verify(3) == pytest.approx(2.0)  # 20 ms over 10 ms
    t = tables(record)
    assert t["pass cost"].loc[(1, 2), "vs one token"] == pytest.approx(1.5)
    assert t["export"].loc["q8_0", "MB"] == pytest.approx(1.1)
    even = t["break-even"]
    assert even.loc[(1, 1), "c"] == pytest.approx(0.2)
    # gamma 1: a block costs 0.2 + t(2)/t(1) = 1.7 passes, so E[tau] = 1 + alpha must reach 1.7
    assert even.loc[(1, 1), "alpha needed"] == pytest.approx(0.7, abs=1e-3)
    assert t["servers"].loc[(1, "gamma=2"), "speed_up"] == pytest.approx(0.8)
