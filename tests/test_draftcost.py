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
                                       {"method": "gamma=2", "threads": 1, "tokens_per_s": 80.0, "speed_up": 0.8,
                                        "acceptance": 0.5},
                                       {"method": "gamma=1", "threads": 1, "tokens_per_s": 90.0, "speed_up": 0.9,
                                        "acceptance": 0.6}]}]
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


def test_chapter5_runtime_tables_from_a_record():
    from draftalign.book import runtimes
    from draftalign.costmodel import CostModel

    record = _record()
    record["shape_costs"] = [{"threads": 1, "shape": s, "layers": L, "hidden": 192, "vocab": 100, "ms": 1.0 + 0.1 * L,
                              "c": (1.0 + 0.1 * L) / 10, "parameters": 1000 + L}
                             for s, L in (("draft", 6), ("1 layer", 1), ("2 layers", 2))]
    torch_cost = pd.DataFrame({"k": [1, 2, 3], "ms_median": [10.0, 11.0, 12.0]})
    curves = runtimes.pass_cost_curves(torch_cost, record)
    assert curves.loc[2, runtimes.TORCH] == pytest.approx(1.1)
    assert curves.loc[5, runtimes.llama_name(1)] == pytest.approx(3.0)  # 30 ms over a 10 ms decoded token
    assert np.isnan(curves.loc[5, runtimes.TORCH])
    torch_model = CostModel(9.0, 1.0)  # t(k) = 9 + k
    table = runtimes.runtime_table(torch_model, 0.1, {1: 1.2}, record, gammas=(1, 2))
    assert table.loc[runtimes.TORCH, "t(2)/t(1)"] == pytest.approx(1.1)
    assert table.loc[runtimes.llama_name(1), "speed-up, gamma 2"] == pytest.approx(0.8)
    assert table.loc[runtimes.llama_name(1), "c (shipped drafter)"] == pytest.approx(0.2)
    assert np.isnan(table.loc[runtimes.TORCH, "speed-up, gamma 2"])
    # gamma 1, acceptance 0.6: tau 1.6 over c + t(2)/t(1) = 0.2 + 1.5
    assert table.loc[runtimes.llama_name(1), "predicted speed-up, gamma 1"] == pytest.approx(1.6 / 1.7)
    torch_shapes = pd.DataFrame(record["shape_costs"]).drop(columns="threads").set_index("shape")
    split = runtimes.cost_split_table(torch_shapes, record)
    assert split.loc[runtimes.llama_name(1), "per_layer_ms"] == pytest.approx(0.1)
    assert split.loc[runtimes.TORCH, "rest_ms"] == pytest.approx(1.0)
    shapes = runtimes.shape_table(torch_shapes, record, torch_model, gamma=1, alpha=0.5)
    # the draft itself needs exactly its own acceptance to match itself
    assert shapes.loc["draft", f"alpha to match, {runtimes.TORCH}"] == pytest.approx(0.5, abs=1e-6)
    assert shapes.loc["1 layer", f"alpha to match, {runtimes.TORCH}"] < 0.5  # cheaper: less acceptance needed
    text = runtimes.reading(table, split, gamma=1)
    assert "1.10 times one" in text and "0.80x at gamma 2" in text and "acceptance 0.60" in text
    assert "costs little more than one" in text  # PyTorch here: t(5)/t(1) = 1.4
    assert runtimes.regime(4.5).endswith("nearly k tokens") and "between" in runtimes.regime(2.2)
    trim = pd.DataFrame({"vocabulary": {"full": 100, "trimmed": 25}, "c (PyTorch, measured)": {"full": 0.2, "trimmed": 0.1},
                         "tau at gamma 4": {"full": 2.0, "trimmed": 1.9},
                         "predicted speed-up (PyTorch)": {"full": 1.1, "trimmed": 1.3}})
    assert "25 tokens" in runtimes.trim_reading(trim, gamma=4) and "25% of the vocabulary" in runtimes.trim_reading(trim, gamma=4)


def test_shipped_speedups_read_the_manifest():
    from draftalign.book import runtimes

    manifest = {"results": {"run": {"bench-cpu-float32.json": {"table": [
        {"method": "plain", "time_vs_plain": 1.0}, {"method": "gamma=1", "time_vs_plain": 0.8}]}}}}
    assert runtimes.shipped_speedups(manifest) == {1: pytest.approx(1.25)}
    assert runtimes.shipped_speedups({}) == {}


def test_measured_cost_reads_its_points_and_the_line_beyond():
    from draftalign.costmodel import MeasuredCost, alpha_needed

    m = MeasuredCost(4.0, 5.0, points=((1, 10.0), (2, 19.0), (4, 25.0)))
    assert m.t1_ms == 10.0
    assert m.verify(2) == pytest.approx(1.9) and m.verify(3) == pytest.approx(2.2)
    assert m.verify(8) == pytest.approx((4 + 5 * 8) / 10)
    # gamma 1 at c = 0.1 breaks even where 1 + alpha = 0.1 + 1.9
    assert alpha_needed(0.1, 1, m) == pytest.approx(1.0, abs=1e-6)
    assert m.speedup(1.5, 1, 0.0) == pytest.approx(1.5 / 1.9)
