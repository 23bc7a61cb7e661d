"""A draft folder as a GGUF file for llama.cpp (``llama-server -m target.gguf -md draft.gguf``).

Reads a Hugging Face Llama folder (``config.json``, safetensors weights, ``tokenizer.json``,
``tokenizer_config.json``, ``generation_config.json``); writes one ``.gguf`` file with the
``gguf`` package's writer: the hyperparameters, the BPE vocabulary with its merges and
special ids, the chat template, and the tensors under llama.cpp's names, the query and
key projections permuted into the rotary layout llama.cpp uses. transformers' own GGUF
loader (``from_pretrained(..., gguf_file=...)``) reads it back; the tests check that the
model it gives proposes the same greedy tokens as the folder. Exposed as
:func:`draftalign.export.export_gguf`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["GGUF_TYPES", "export_gguf", "read_gguf_weights"]

# Hugging Face weight name (after "model.layers.N.") -> GGUF tensor name (after "blk.N.")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.bias": "ffn_down.bias",
}


def _rotary_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query/key projection from Hugging Face's rotate-half layout (each head's
    first half, then its second half) to llama.cpp's interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(f))
    return state


GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")  # what export_gguf writes the weight matrices as


def export_gguf(folder, out_file, *, dtype: str = "f32", tokenizer_pre: str = "default") -> Path:
    """Write the Llama draft in ``folder`` to ``out_file`` (GGUF); returns the path.

    ``dtype``: the weight matrices' type, one of :data:`GGUF_TYPES`: ``"f32"``, ``"f16"``, or
    llama.cpp's block quantizations ``"q8_0"`` (8-bit, one scale per 32 weights: a quarter of
    f32's bytes) and ``"q4_0"`` (4-bit: an eighth), written with the ``gguf`` package's own
    quantizer; a matrix whose rows do not split into blocks of 32 stays f16. Norms and biases
    stay fp32, as in llama.cpp's own files. ``tokenizer_pre``: llama.cpp's name for the
    tokenizer's pre-tokenizer (``"smollm"`` for the SmolLM2 family; llama.cpp warns and falls
    back on ``"default"`` otherwise).
    """
    import gguf

    folder, out_file = Path(folder), Path(out_file)
    if dtype not in GGUF_TYPES:
        raise ValueError(f"dtype must be one of {GGUF_TYPES}, got {dtype!r}")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") not in ("llama", "mistral"):
        raise NotImplementedError(f"GGUF export is written for Llama-architecture drafts, not "
                                  f"{config.get('model_type')!r}")
    tok_path = folder / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"{folder} has no tokenizer.json: llama.cpp needs the vocabulary in the file "
                                f"(export_draft writes it)")
    tok = json.loads(tok_path.read_text(encoding="utf-8"))
    if tok.get("model", {}).get("type") != "BPE":
        raise NotImplementedError("GGUF export handles byte-level BPE tokenizers (gpt2 style)")
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() else {}
    gen = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").exists() else {}

    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))

    writer = gguf.GGUFWriter(str(out_file), "llama")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype])

    # the vocabulary: every id up to vocab_size (padding slots, if any, as unused tokens)
    table = {int(i): t for t, i in tok["model"]["vocab"].items()}
    special = set()
    for added in tok.get("added_tokens", []):
        table[int(added["id"])] = added["content"]
        if added.get("special"):
            special.add(int(added["id"]))
    tokens, types = [], []
    for i in range(config["vocab_size"]):
        if i in table:
            tokens.append(table[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id)):
        value = gen.get(f"{name}_token_id", config.get(f"{name}_token_id"))
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(bool(tok_cfg.get("add_bos_token", False)))
    template = tok_cfg.get("chat_template")
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(template)

    state = _state(folder)
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in state

    def put(name, tensor, matrix=True):
        arr = np.ascontiguousarray(tensor.float().numpy())
        if matrix and dtype in ("q8_0", "q4_0") and arr.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0 if dtype == "q8_0" else gguf.GGMLQuantizationType.Q4_0
            writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)  # shape: the bytes
            return
        if matrix and dtype != "f32":
            arr = arr.astype(np.float16)
        writer.add_tensor(name, arr)

    put("token_embd.weight", state["model.embed_tokens.weight"])
    put("output_norm.weight", state["model.norm.weight"], matrix=False)
    if not tied:
        put("output.weight", state["lm_head.weight"])
    for i in range(config["num_hidden_layers"]):
        for hf, gg in _LAYER_NAMES.items():
            key = f"model.layers.{i}.{hf}"
            if key not in state:
                continue
            w = state[key]
            if hf == "self_attn.q_proj.weight":
                w = torch.from_numpy(_rotary_permute(w.float().numpy(), heads))
            elif hf == "self_attn.k_proj.weight":
                w = torch.from_numpy(_rotary_permute(w.float().numpy(), kv_heads))
            put(f"blk.{i}.{gg}", w, matrix=w.dim() == 2)
    unknown = [k for k in state if not (k.startswith("model.layers.") or k in (
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"))]
    unknown += [k for k in state if k.startswith("model.layers.") and k.split(".", 3)[3] not in _LAYER_NAMES]
    if unknown:
        raise NotImplementedError(f"no GGUF name for weights {unknown[:4]}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def read_gguf_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file dequantized to fp32 (``gguf``'s reader), by GGUF name, in
    the shapes of the Hugging Face weights (rows first)."""
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
    return out
