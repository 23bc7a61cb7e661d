"""Export a draft as a standard Hugging Face folder that other tools load as it is.

Reads a draft model and the target's tokenizer; writes ``folder/`` with the weights
(safetensors), ``config.json``, ``generation_config.json`` carrying the target's special
token ids, the tokenizer files, a model card ``README.md`` and ``manifest.json``.
``AutoModelForCausalLM.from_pretrained(folder)`` loads the result, and transformers'
``generate(..., assistant_model=draft)`` accepts it for the target it was made for.
The reference drafter in ``data/drafts/`` is written with it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from .artifacts import write_manifest
from .compat import compatibility_report  # noqa: F401 (part of this module's API)
from .gguf_export import export_gguf  # noqa: F401 (part of this module's API)
from .models import count_parameters, vocab_size
from .subvocab import SubVocabDraft

__all__ = ["export_draft", "export_gguf", "model_card", "full_vocab_model", "compatibility_report",
           "SUB_VOCAB_CARD_NOTE"]

# How a sub-vocabulary draft's exported distribution relates to the original's (for the card).
SUB_VOCAB_CARD_NOTE = (
    "This draft was trained over a sub-vocabulary (the tokens of its training data) and exported over "
    "the target's full vocabulary. Its greedy proposals are the original's on any context. Sampled "
    "proposals differ slightly: tokens outside the sub-vocabulary get a logit near -1e6 times a positive "
    "factor (probability 0 in practice), and the kept tokens' logits are multiplied by a positive factor "
    "just below 1 that depends on the position (a temperature slightly above 1). Speculative sampling "
    "stays exact with it, as with any draft: only the acceptance rate can change, and negligibly.")


def model_card(*, title: str, base_model: str, body: str, license: str = "apache-2.0",
               tags: tuple[str, ...] = ("speculative-decoding", "draft-model", "draftalign"),
               datasets: tuple[str, ...] = (), pipeline_tag: str = "text-generation") -> str:
    """A model card: the hub's YAML header (base_model, license, tags, datasets), a title
    and ``body`` (Markdown)."""
    lines = ["---", f"base_model: {base_model}", f"license: {license}", f"pipeline_tag: {pipeline_tag}",
             "library_name: transformers", "tags:"] + [f"- {t}" for t in tags]
    if datasets:
        lines += ["datasets:"] + [f"- {d}" for d in datasets]
    lines += ["---", "", f"# {title}", "", body.strip(), ""]
    return "\n".join(lines)


def full_vocab_model(draft: SubVocabDraft, *, offset: float | None = None, penalty: float = 1e6):
    """A plain Llama over the full vocabulary whose greedy proposals are ``draft``'s.

    A linear output layer without bias cannot give the tokens outside the sub-vocabulary
    the ``-inf`` that :class:`SubVocabDraft` gives them, so the export adds ``n`` hidden
    dimensions (``n`` = the number of heads, since transformers wants the width to be a
    multiple of it), the first of which carries a constant:

    - every weight that reads the residual stream has zero columns for them, every weight
      that writes it zero rows, so they stay 0 through all layers; the RMS norms then
      average over ``d + n`` values, which ``rms_norm_eps * d / (d + n)`` and norm weights
      scaled by ``sqrt(d / (d + n))`` undo exactly;
    - the last MLP's down-projection writes ``offset`` into it (``mlp_bias``; every other
      bias is 0), so after the final norm it holds a positive value ``e``;
    - a token outside the sub-vocabulary has output row ``-penalty`` on that dimension and
      0 elsewhere: logit ``-penalty * e``. The kept tokens' logits are the original's
      times one positive factor per position (the final norm now also counts ``offset``),
      which keeps their order: the argmax is unchanged.

    ``offset`` defaults to ``0.01 * sqrt(d)``, small next to the residual stream's norm,
    so the positive factor stays within about 1e-4 of 1 for a stream of norm near
    ``sqrt(d)``. The input embedding of every token outside is the draft's shared row.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    inner = draft.model
    cfg = inner.config
    if cfg.model_type != "llama":
        raise NotImplementedError(f"full-vocabulary export is written for Llama drafts, not {cfg.model_type!r}")
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    n = heads - d % heads if d % heads else heads  # extra width; the first carries the constant
    K, V = draft.sub_size, draft.full_vocab_size
    keep = draft.keep.cpu()
    offset = 0.01 * d ** 0.5 if offset is None else float(offset)
    scale = (d / (d + n)) ** 0.5
    config = LlamaConfig(**{**cfg.to_dict(), "vocab_size": V, "hidden_size": d + n, "head_dim": head_dim,
                            "mlp_bias": True, "attention_bias": False, "tie_word_embeddings": False,
                            "rms_norm_eps": cfg.rms_norm_eps * d / (d + n)})
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            setattr(config, name, int(keep[value]) if value < K else None)
        elif isinstance(value, (list, tuple)):
            setattr(config, name, [int(keep[v]) for v in value if v < K] or None)
    with torch.random.fork_rng(devices=[]):
        out = LlamaForCausalLM(config)  # every weight is overwritten below
    src = {k: v.detach().float().cpu() for k, v in inner.state_dict().items()}
    emb = src["model.embed_tokens.weight"]  # [K + 1, d]
    head = src.get("lm_head.weight", emb)
    state = {}
    full_emb = emb[K].repeat(V, 1)  # every token outside: the shared row
    full_emb[keep] = emb[:K]
    state["model.embed_tokens.weight"] = torch.cat([full_emb, torch.zeros(V, n)], 1)
    full_head = torch.zeros(V, d + n)
    full_head[:, d] = -penalty
    full_head[keep, :d] = head[:K]
    full_head[keep, d] = 0.0
    state["lm_head.weight"] = full_head

    def pad_in(w):  # reads the residual stream: zero columns
        return torch.cat([w, torch.zeros(w.shape[0], n)], 1)

    def pad_out(w):  # writes the residual stream: zero rows
        return torch.cat([w, torch.zeros(n, w.shape[1])], 0)

    def norm(w, extra=0.0):
        return torch.cat([w * scale, torch.tensor([extra] + [0.0] * (n - 1))])

    last = cfg.num_hidden_layers - 1
    for key, w in src.items():
        if key in ("model.embed_tokens.weight", "lm_head.weight") or "rotary" in key:
            continue
        if key.endswith("norm.weight"):
            state[key] = norm(w, extra=1.0 if key == "model.norm.weight" else 0.0)
        elif key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            state[key] = pad_in(w)
        elif key.endswith(("o_proj.weight", "down_proj.weight")):
            state[key] = pad_out(w)
        else:
            raise NotImplementedError(f"no export rule for weight {key!r}")
    for i in range(cfg.num_hidden_layers):
        mlp = f"model.layers.{i}.mlp"
        state[f"{mlp}.gate_proj.bias"] = torch.zeros(cfg.intermediate_size)
        state[f"{mlp}.up_proj.bias"] = torch.zeros(cfg.intermediate_size)
        bias = torch.zeros(d + n)
        if i == last:
            bias[d] = offset
        state[f"{mlp}.down_proj.bias"] = bias
    out.load_state_dict(state, strict=True)
    out.generation_config = copy.deepcopy(inner.generation_config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(out.generation_config, name, getattr(config, name, None))
    param = next(inner.parameters())
    return out.to(device=param.device, dtype=param.dtype).eval()


def export_draft(draft, folder, *, tokenizer, card: str | None = None, dtype: torch.dtype | None = None,
                 manifest: dict | None = None) -> Path:
    """Write ``draft`` to ``folder`` as a standard Hugging Face model folder; returns the path.

    A :class:`draftalign.subvocab.SubVocabDraft` is written over the full vocabulary with
    :func:`full_vocab_model` (greedy proposals unchanged; the card should include
    :data:`SUB_VOCAB_CARD_NOTE`). ``tokenizer``: the target's (its files are copied, and its
    special ids go into the generation config). ``card``: the model card's text (:func:`model_card`); a short one
    naming the vocabulary and size is written when ``None``. ``dtype``: cast the weights
    (e.g. ``torch.bfloat16`` to halve the folder); the draft itself is left unchanged.
    ``manifest``: ``{"spec": ..., "inputs": ..., "results": ...}`` for ``manifest.json``.
    """
    if isinstance(draft, SubVocabDraft):
        draft = full_vocab_model(draft)
        if card is None:
            card = model_card(title="Draft model", base_model=getattr(tokenizer, "name_or_path", "unknown"),
                              body=f"A draft over the target's vocabulary ({vocab_size(draft)} ids), "
                                   f"{count_parameters(draft):,} parameters.\n\n{SUB_VOCAB_CARD_NOTE}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = draft
    if dtype is not None and next(draft.parameters()).dtype != dtype:
        import copy

        model = copy.deepcopy(draft).to(dtype)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            setattr(model.generation_config, key, value)
            setattr(model.config, key, value)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if card is None:
        card = model_card(title="Draft model", base_model=getattr(tokenizer, "name_or_path", "unknown"),
                          body=f"A draft over the target's vocabulary ({vocab_size(draft)} ids), "
                               f"{count_parameters(draft):,} parameters.")
    (folder / "README.md").write_text(card, encoding="utf-8")
    info = manifest or {}
    write_manifest(folder, info.get("spec", {"stage": "export"}), inputs=info.get("inputs"),
                   results={**(info.get("results") or {}), "parameters": count_parameters(draft),
                            "dtype": str(next(model.parameters()).dtype).replace("torch.", "")})
    json.loads((folder / "config.json").read_text())  # written and readable
    return folder
