"""Export a draft as a standard Hugging Face folder that other tools load as it is.

Reads a draft model and the target's tokenizer; writes ``folder/`` with the weights
(safetensors), ``config.json``, ``generation_config.json`` carrying the target's special
token ids, the tokenizer files, a model card ``README.md`` and ``manifest.json``.
``AutoModelForCausalLM.from_pretrained(folder)`` loads the result, and transformers'
``generate(..., assistant_model=draft)`` accepts it for the target it was made for.
The reference drafter in ``data/drafts/`` is written with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .artifacts import write_manifest
from .models import count_parameters, vocab_size
from .subvocab import SubVocabDraft

__all__ = ["export_draft", "model_card"]


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


def export_draft(draft, folder, *, tokenizer, card: str | None = None, dtype: torch.dtype | None = None,
                 manifest: dict | None = None) -> Path:
    """Write ``draft`` to ``folder`` as a standard Hugging Face model folder; returns the path.

    ``tokenizer``: the target's (its files are copied, and its special ids go into the
    generation config). ``card``: the model card's text (:func:`model_card`); a short one
    naming the vocabulary and size is written when ``None``. ``dtype``: cast the weights
    (e.g. ``torch.bfloat16`` to halve the folder); the draft itself is left unchanged.
    ``manifest``: ``{"spec": ..., "inputs": ..., "results": ...}`` for ``manifest.json``.
    """
    if isinstance(draft, SubVocabDraft):
        raise NotImplementedError("a sub-vocabulary draft is written by its own save_pretrained "
                                  "(draftalign.subvocab); this export takes full-vocabulary drafts")
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
