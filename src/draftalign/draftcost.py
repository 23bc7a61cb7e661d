"""Where a draft step's time goes, in a given runtime: its layers against the rest (the
output layer over the vocabulary, the embedding, the runtime's fixed cost per call).

A draft of ``L`` layers of width ``d`` over ``V`` tokens does about ``L (4 d^2 + 3 d f)``
multiply-adds per token in its layers (``f``: the MLP width) and ``d V`` in its output layer:
for the shipped drafter (``L = 6``, ``d = 192``, ``f = 768``, ``V = 49,152``) that is 3.5 M
against 9.4 M, so on paper the output layer is most of a step. What a step *costs* depends on
the runtime: this module measures it. Drafts of the draft's own shape at several depths
(random weights: the time of a pass does not depend on the values) are timed, and the line
``ms = a + b L`` splits a step into ``b`` per layer and ``a`` for the rest. Other shapes
(shallower and wider, a vocabulary trimmed to the tokens chat answers use,
:mod:`draftalign.subvocab`) are timed beside it, each as ``c``: its step over the target's.

Reads a draft's config (``config.json`` of a folder, or a model's); writes nothing but, for
llama.cpp, GGUF files in a work folder its caller names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoConfig, AutoModelForCausalLM

__all__ = ["SHAPES", "shaped_draft", "torch_costs", "llama_cpp_costs", "cost_split"]

# name -> (layers, hidden, vocabulary kept or None for the full one); "draft" is the draft's own
# shape, the depth sweep fits the split, the rest are the alternatives a reader would try
SHAPES = {
    "draft": (None, None, None),
    "1 layer": (1, None, None),
    "2 layers": (2, None, None),
    "4 layers": (4, None, None),
    "shallower, wider (3 x 256)": (3, 256, None),
    "shallower, wider (2 x 320)": (2, 320, None),
    "vocabulary of 16,384": (None, None, 16384),
    "vocabulary of 8,192": (None, None, 8192),
}


def _config(draft):
    if isinstance(draft, (str, Path)):
        return AutoConfig.from_pretrained(draft)
    return draft.config


def shaped_draft(draft, *, layers: int | None = None, hidden: int | None = None, vocab: int | None = None,
                 seed: int = 0):
    """A randomly initialised model of ``draft``'s architecture (a folder or a model) with
    ``layers`` layers, width ``hidden`` (heads of 64, the MLP's ratio to the width kept) and,
    with ``vocab``, a :class:`draftalign.subvocab.SubVocabDraft` over the first ``vocab`` ids:
    what a step of that shape costs, whatever it would learn."""
    base = _config(draft)
    config = base.__class__.from_dict(base.to_dict())
    if layers is not None:
        config.num_hidden_layers = int(layers)
    if hidden is not None:
        ratio = base.intermediate_size / base.hidden_size
        heads = max(1, hidden // 64)
        config.hidden_size, config.num_attention_heads, config.num_key_value_heads = hidden, heads, heads
        config.head_dim = hidden // heads
        config.intermediate_size = int(round(ratio * hidden / 64)) * 64
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    if vocab is not None:
        from .subvocab import sub_vocab_draft

        model = sub_vocab_draft(model, torch.arange(int(vocab))).eval()
    return model


def _inner(model):
    from .subvocab import SubVocabDraft

    return model.model if isinstance(model, SubVocabDraft) else model


def _shape_row(name, model) -> dict:
    inner = _inner(model)
    cfg = inner.config
    return {"shape": name, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
            "vocab": int(inner.get_output_embeddings().weight.shape[0]),
            "parameters": sum(p.numel() for p in inner.parameters())}


def _output_layer_ms(model, repeats: int) -> float:
    """Median ms of the output layer alone on one hidden vector."""
    from .timing import median_seconds

    inner = _inner(model)
    head = inner.get_output_embeddings()
    h = torch.randn(1, 1, inner.config.hidden_size)
    with torch.no_grad():
        return 1000 * median_seconds(lambda: head(h), repeats=repeats)


@torch.no_grad()
def torch_costs(target, draft, shapes: dict = SHAPES, *, repeats: int = 30, prefix_len: int = 64) -> pd.DataFrame:
    """PyTorch eager, this process's threads: per shape, the median ms of one cached
    one-token step, ``c`` (over the target's step, timed alike) and the output layer's own
    ms. ``draft``: the draft whose shape is ``"draft"`` (a folder or a model)."""
    from .costmodel import step_ms

    target_ms = step_ms(target, prefix_len=prefix_len, repeats=repeats)
    rows = []
    for name, (layers, hidden, vocab) in shapes.items():
        model = shaped_draft(draft, layers=layers, hidden=hidden, vocab=vocab)
        ms = step_ms(model, prefix_len=prefix_len, repeats=repeats)
        rows.append({**_shape_row(name, model), "ms": ms, "c": ms / target_ms,
                     "output layer ms": _output_layer_ms(model, repeats)})
    table = pd.DataFrame(rows).set_index("shape")
    table.attrs["target_ms"] = target_ms
    return table


def llama_cpp_costs(draft_folder, shapes: dict = SHAPES, *, target_gguf, one_token_ms, gguf_type: str = "q8_0",
                    work_dir) -> pd.DataFrame:
    """llama.cpp: per shape, the ms of one decoded token of a GGUF of that shape in
    ``gguf_type`` and ``c`` over the target's GGUF. ``one_token_ms(path)`` times one GGUF
    (:func:`draftalign.llamacpp.benchmark` passes ``llama-bench``'s decoded token at its
    thread count), so this module stays free of any runtime. Trimmed vocabularies are left
    out: a GGUF holds one embedding row per token of its tokenizer, so llama.cpp has no
    draft over part of the vocabulary."""
    from .export import export_draft
    from .gguf_export import export_gguf
    from .models import load_tokenizer

    work = Path(work_dir)
    tokenizer = load_tokenizer(str(draft_folder))
    target_ms = one_token_ms(target_gguf)
    rows = []
    for i, (name, (layers, hidden, vocab)) in enumerate(shapes.items()):
        if vocab is not None:
            continue
        model = shaped_draft(draft_folder, layers=layers, hidden=hidden)
        folder = export_draft(model, work / f"shape-{i}", tokenizer=tokenizer)
        gguf = export_gguf(folder, work / f"shape-{i}.gguf", dtype=gguf_type, tokenizer_pre="smollm")
        ms = one_token_ms(gguf)
        rows.append({**_shape_row(name, model), "ms": ms, "c": ms / target_ms})
    table = pd.DataFrame(rows).set_index("shape")
    table.attrs["target_ms"] = target_ms
    return table


def cost_split(costs: pd.DataFrame) -> dict:
    """The line ``ms = a + b L`` through the shapes of the draft's own width and vocabulary
    (the depth sweep): ``per_layer_ms`` (b), ``rest_ms`` (a: output layer, embedding, fixed
    cost per call), and at the draft's own depth the share of a step its layers take."""
    own = costs.loc["draft"]
    sweep = costs[(costs.hidden == own.hidden) & (costs.vocab == own.vocab)]
    if sweep.layers.nunique() < 2:
        raise ValueError("cost_split needs the draft's shape at two or more depths")
    b, a = np.polyfit(sweep.layers.to_numpy(float), sweep.ms.to_numpy(float), 1)
    return {"per_layer_ms": float(b), "rest_ms": float(a), "draft_ms": float(own.ms),
            "layers_share": float(b * own.layers / own.ms), "rest_share": float(a / own.ms)}
