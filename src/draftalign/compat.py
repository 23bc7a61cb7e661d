"""Will a draft folder work with a target in transformers, vLLM and llama.cpp?

Reads two Hugging Face folders (``config.json``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``; no weights are loaded); writes nothing.
Each tool's rules are the ones its own code applies to a draft, encoded here and named in
:func:`compatibility_report`'s docstring; ``draftalign check`` prints the report, and
:func:`draftalign.export.compatibility_report` is this function.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["compatibility_report", "VLLM_ARCHITECTURES", "LLAMA_CPP_MODEL_TYPES"]

# Decoder architectures vLLM runs as a separate draft model (a subset of its model registry:
# the common chat-model families). Another architecture is reported as unknown, not as failing.
VLLM_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "PhiForCausalLM", "GPT2LMHeadModel",
    "GPTNeoXForCausalLM", "OPTForCausalLM", "GraniteForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM",
    "StableLmForCausalLM", "Starcoder2ForCausalLM", "InternLM2ForCausalLM", "SmolLM3ForCausalLM",
})
# model types llama.cpp's convert_hf_to_gguf.py converts and its loader runs (a subset)
LLAMA_CPP_MODEL_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox",
    "starcoder2", "stablelm", "olmo", "olmo2", "granite", "internlm2", "smollm3",
})
# models transformers cannot roll back (generation/utils.py: ``_is_stateful``)
_STATEFUL = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm"})
SPEC_VOCAB_MAX_SIZE_DIFFERENCE = 128  # llama.cpp common/speculative.cpp
SPEC_VOCAB_CHECK_START_TOKEN_ID = 5


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config


def _ids(folder: Path, name: str):
    """A special token id: the generation config's, else the model config's (lists as sets)."""
    for source in (_json(folder / "generation_config.json"), _text_config(_json(folder / "config.json"))):
        value = source.get(f"{name}_token_id")
        if value is not None:
            return frozenset(value) if isinstance(value, list) else frozenset([value])
    return frozenset()


def _vocab(folder: Path) -> tuple[str | None, dict[int, str]]:
    """The tokenizer's model type (BPE, Unigram, WordPiece, ...) and its id -> token text."""
    tok = _json(folder / "tokenizer.json")
    model = tok.get("model", {})
    vocab = model.get("vocab", {})
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        table = {i: piece[0] for i, piece in enumerate(vocab)}
    else:
        table = {int(i): t for t, i in vocab.items()}
    for added in tok.get("added_tokens", []):
        table[int(added["id"])] = added["content"]
    return model.get("type"), table


def compatibility_report(target_path, draft_path) -> dict:
    """``{"transformers" | "vllm" | "llama_cpp": {"ok": bool, "reasons": [str, ...]}}``:
    whether each tool would take the folder ``draft_path`` as a draft for ``target_path``,
    and why not.

    The rules, as each tool applies them:

    - **transformers** (``generation/utils.py``, ``GenerationMixin._validate_generation_mode``
      for ``assistant_model``): equal ``vocab_size`` (of the text config) selects the
      same-tokenizer path; a different size demands ``tokenizer`` and
      ``assistant_tokenizer`` (the slower universal-assisted path); a stateful model
      (Mamba, RWKV) cannot be an assistant; the model type must be one transformers knows.
    - **vLLM** (``vllm/config/speculative.py``,
      ``SpeculativeConfig.verify_equal_vocab_size_if_draft_model``): ``method="draft_model"``
      needs the draft's vocab_size to equal the target's, else ``ValueError``; the
      architecture must be one vLLM implements (:data:`VLLM_ARCHITECTURES` lists those
      this check knows).
    - **llama.cpp** (``common/speculative.cpp``, ``common_speculative_are_compatible``):
      the same vocabulary type; the same BOS/EOS ids (and add-BOS/add-EOS flags); token
      counts within 128 (``SPEC_VOCAB_MAX_SIZE_DIFFERENCE``; a GGUF has one token per row of
      the model's embedding, so the count is the config's ``vocab_size``, whatever the
      tokenizer beside it holds); the same text for every token
      id from 5 (``SPEC_VOCAB_CHECK_START_TOKEN_ID``) up to the smaller count; and a model
      type its converter handles (:data:`LLAMA_CPP_MODEL_TYPES`).
    - **all three**: the draft's context (``max_position_embeddings``) must cover the
      target's, or drafting fails (transformers, llama.cpp) or stops (vLLM) on long prompts.
    """
    target, draft = Path(target_path), Path(draft_path)
    for name, folder in (("target", target), ("draft", draft)):
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the {name} {folder} has no config.json: not a Hugging Face model folder")
    tcfg, dcfg = _text_config(_json(target / "config.json")), _text_config(_json(draft / "config.json"))
    report = {tool: {"ok": True, "reasons": []} for tool in ("transformers", "vllm", "llama_cpp")}

    def fail(tools, reason):
        for tool in tools:
            report[tool]["ok"] = False
            report[tool]["reasons"].append(reason)

    tv, dv = tcfg.get("vocab_size"), dcfg.get("vocab_size")
    if tv != dv:
        fail(["transformers"], f"vocab_size {dv} differs from the target's {tv}: transformers then takes the "
                               f"different-tokenizer path and asks for tokenizer and assistant_tokenizer")
        fail(["vllm"], f"vocab_size {dv} differs from the target's {tv}: vLLM refuses a draft model over "
                       f"another vocabulary size")
    tctx, dctx = tcfg.get("max_position_embeddings"), dcfg.get("max_position_embeddings")
    if tctx and dctx and dctx < tctx:
        fail(["transformers", "vllm", "llama_cpp"],
             f"context: the draft holds {dctx} positions, the target {tctx}; longer prompts cannot be drafted")
    model_type = dcfg.get("model_type")
    try:
        from transformers import CONFIG_MAPPING

        known = model_type in CONFIG_MAPPING
    except ImportError:  # pragma: no cover - transformers is a dependency
        known = True
    if not known:
        fail(["transformers"], f"model_type {model_type!r} is not one transformers knows")
    if model_type in _STATEFUL:
        fail(["transformers"], f"model_type {model_type!r} is stateful: transformers cannot use it as an assistant")
    arch = (dcfg.get("architectures") or [None])[0]
    if arch not in VLLM_ARCHITECTURES:
        fail(["vllm"], f"architecture {arch!r} is not among those this check knows vLLM runs")
    if model_type not in LLAMA_CPP_MODEL_TYPES:
        fail(["llama_cpp"], f"model_type {model_type!r} is not among those llama.cpp converts")
    ttype, ttable = _vocab(target)
    dtype, dtable = _vocab(draft)
    if not dtable:
        fail(["llama_cpp"], "the draft folder has no tokenizer.json: llama.cpp needs the vocabulary in the GGUF")
    else:
        if ttype != dtype:
            fail(["llama_cpp"], f"vocabulary type {dtype!r} differs from the target's {ttype!r}")
        # a GGUF holds one token per row of the model's embedding (the converter pads or cuts the
        # tokenizer's table to vocab_size): that count is what llama.cpp compares, not the table's
        tcount, dcount = tv or len(ttable), dv or len(dtable)
        diff = abs(tcount - dcount)
        if diff > SPEC_VOCAB_MAX_SIZE_DIFFERENCE:
            fail(["llama_cpp"], f"token counts {dcount} and {tcount} (the models' vocab_size) differ by {diff}, "
                                f"more than {SPEC_VOCAB_MAX_SIZE_DIFFERENCE}")
        upto = min(tcount, dcount)
        # ids the tokenizer lacks are padding tokens in the GGUF (their text says so)
        bad = [i for i in range(SPEC_VOCAB_CHECK_START_TOKEN_ID, upto)
               if ttable.get(i, f"[PAD{i}]") != dtable.get(i, f"[PAD{i}]")]
        if bad:
            fail(["llama_cpp"], f"{len(bad)} token texts differ from the target's (first: id {bad[0]}, "
                                f"{dtable.get(bad[0])!r} against {ttable.get(bad[0])!r})")
    for name in ("bos", "eos"):
        if _ids(target, name) != _ids(draft, name):
            fail(["llama_cpp"], f"{name.upper()} id {sorted(_ids(draft, name))} differs from the target's "
                                f"{sorted(_ids(target, name))}")
    tflags, dflags = _json(target / "tokenizer_config.json"), _json(draft / "tokenizer_config.json")
    for flag in ("add_bos_token", "add_eos_token"):
        if bool(tflags.get(flag, False)) != bool(dflags.get(flag, False)):
            fail(["llama_cpp"], f"{flag} is {dflags.get(flag)} in the draft, {tflags.get(flag)} in the target")
    return report
