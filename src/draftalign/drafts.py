"""Drafts for a target: built fresh, projected from the target, cut from its layers, or
loaded from a folder.

Reads a target model (its configuration and embeddings) or a draft folder; writes nothing.
:func:`make_draft` builds the book's Llama-architecture draft with the target's padded
vocabulary and special ids (Chapter 2); :func:`load_draft_for` is the one way to load any
draft folder for a target (a standard Hugging Face folder or a sub-vocabulary draft's
training form), on the target's device.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from .models import special_ids
from .models import vocab_size as _vocab  # load_draft has a parameter of that name
from .subvocab import SUB_VOCAB_FILE, SubVocabDraft

__all__ = ["make_draft", "projected_embeddings", "init_from_target", "layer_subset_draft", "load_draft",
           "load_draft_for", "recorded_target"]


def make_draft(target, *, hidden_size: int, num_layers: int, num_heads: int | None = None,
               intermediate_size: int | None = None, tie_embeddings: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.float32):
    """A fresh (randomly initialised) Llama-architecture draft that fits ``target``.

    Its ``vocab_size`` is the target's padded embedding size (what vLLM and transformers'
    ``assistant_model`` compare), its special-token ids and maximum positions are the
    target's, and it lives on the target's device in ``dtype`` (fp32 by default: the master
    weights training needs; cast a copy for 16-bit inference). Defaults:
    ``num_heads = max(1, hidden_size // 64)``; ``intermediate_size`` about
    ``8/3 * hidden_size`` rounded up to a multiple of 64 (the SwiGLU convention).
    """
    if hidden_size < 1 or num_layers < 1:
        raise ValueError(f"hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}")
    num_heads = num_heads or max(1, hidden_size // 64)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    if intermediate_size is None:
        intermediate_size = -(-(8 * hidden_size // 3) // 64) * 64
    tcfg = target.config
    vocab = target.get_input_embeddings().weight.shape[0]
    ids = special_ids(target)
    rope = getattr(tcfg, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        hidden_act="silu",
        max_position_embeddings=getattr(tcfg, "max_position_embeddings", 2048),
        rms_norm_eps=getattr(tcfg, "rms_norm_eps", 1e-5),
        rope_parameters=dict(rope),
        tie_word_embeddings=tie_embeddings,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
    )
    param = next(target.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draft = LlamaForCausalLM(config)
    draft.to(device=param.device, dtype=dtype).eval()
    for key, value in ids.items():
        setattr(draft.generation_config, key, value)
    return draft


def projected_embeddings(target, hidden_size: int) -> torch.Tensor:
    """The target's input embeddings ``[V, D]`` projected onto their top ``hidden_size``
    right singular vectors: ``E V_d = U_d S_d`` ``[V, d]``, fp32.

    With tied embeddings the target's logits are dot products ``h . E[x]``; among all
    ``d``-dimensional linear maps of the rows this one keeps those dot products best (the
    truncated SVD is the best rank-``d`` approximation of ``E``), so a draft starts with
    token vectors whose geometry is the target's.
    """
    emb = target.get_input_embeddings().weight.detach().float().cpu()  # [V, D]
    if not 1 <= hidden_size <= emb.shape[1]:
        raise ValueError(f"hidden_size must lie in [1, {emb.shape[1]}] (the target's width), got {hidden_size}")
    _, _, vh = torch.linalg.svd(emb, full_matrices=False)  # vh [D, D]
    return emb @ vh[:hidden_size].T  # [V, d]


def init_from_target(draft, target) -> None:
    """Set ``draft``'s input embeddings (and its tied output layer) to
    :func:`projected_embeddings` of ``target``, in place."""
    emb = draft.get_input_embeddings().weight
    if emb.shape[0] != target.get_input_embeddings().weight.shape[0]:
        raise ValueError("draft and target differ in vocabulary size")
    with torch.no_grad():
        emb.copy_(projected_embeddings(target, emb.shape[1]).to(emb.dtype))


def layer_subset_draft(target, layers):
    """A draft made of a subset of the target's layers, with no training.

    ``layers``: an int ``n`` (the first ``n`` layers) or the indices of the layers to keep,
    in order; embeddings, final norm and output head are the target's. This is
    self-speculative decoding by layer skipping (Zhang et al. 2023, "Draft & Verify").
    The copy shares no tensors with ``target``.
    """
    n_total = target.config.num_hidden_layers
    keep_layers = list(range(layers)) if isinstance(layers, int) else [int(i) for i in layers]
    if not keep_layers or any(not 0 <= i < n_total for i in keep_layers) or len(set(keep_layers)) != len(keep_layers):
        raise ValueError(f"layers must be distinct indices in [0, {n_total}) (or a count in "
                         f"[1, {n_total}]), got {layers!r}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(keep_layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep_layers]
    param = next(target.parameters())
    draft = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    renumber = {old: new for new, old in enumerate(keep_layers)}
    state = {}
    for key, value in target.state_dict().items():
        match = re.search(r"\.layers\.(\d+)\.", key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in renumber:
            new_key = key.replace(match.group(0), f".layers.{renumber[int(match.group(1))]}.", 1)
            state[new_key] = value
    draft.load_state_dict(state, strict=True)
    draft.generation_config = copy.deepcopy(target.generation_config)
    return draft.to(param.device).eval()


def load_draft(folder, *, dtype=None, device=None, vocab_size: int | None = None):
    """A draft from a folder written by ``save_pretrained``: a :class:`SubVocabDraft` when
    the folder has ``sub_vocab.json``, the plain Hugging Face model otherwise.

    ``vocab_size``: the target's; a plain folder over another vocabulary is refused (its
    ids would be read as the target's). Faults get an error naming the folder and what to
    do: no such folder, no ``config.json``, unreadable weights, a ``sub_vocab.json`` that
    does not fit the model.
    """
    from .artifacts import CorruptFile

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no draft folder {folder}")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a model folder (drafts are written "
                                f"by save_pretrained or draftalign.export.export_draft)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        weights = sorted(p.name for p in folder.glob("*.safetensors")) or ["(no weights file)"]
        raise CorruptFile(f"could not load the draft in {folder} ({', '.join(weights)}): {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}. The weights are missing, truncated "
                          f"or not this config's; export or train the draft again.", folder) from exc
    path = folder / SUB_VOCAB_FILE
    if path.exists():
        try:
            meta = json.loads(path.read_text())
            model = SubVocabDraft(model, torch.tensor(meta["keep"], dtype=torch.long), meta["full_vocab_size"])
        except (ValueError, KeyError) as exc:
            raise CorruptFile(f"{path} does not fit the model in {folder}: {exc}", path) from exc
    if vocab_size is not None and _vocab(model) != vocab_size:
        hint = (" (a sub-vocabulary draft whose sub_vocab.json is missing?)" if _vocab(model) < vocab_size else "")
        raise ValueError(f"the draft in {folder} is over {_vocab(model)} ids, the target's vocabulary over "
                         f"{vocab_size}{hint}: its ids would be misread")
    return model.to(device) if device is not None else model


def recorded_target(folder):
    """The target a draft folder's manifest says it was trained against (a
    :func:`~draftalign.models.target_identity` dict or an older record's id string), or ``None``."""
    folder = Path(folder)
    for place in (folder, folder.parent):  # a sub-vocabulary draft's training form sits inside its folder
        path = place / "manifest.json"
        if path.exists():
            manifest = json.loads(path.read_text())
            if manifest.get("target_identity"):
                return manifest["target_identity"]
            stack = [manifest]
            while stack:
                node = stack.pop(0)
                if isinstance(node, dict):
                    if "target" in node and isinstance(node["target"], (str, dict)):
                        return node["target"]
                    stack += list(node.values())
            return None
    return None


def load_draft_for(folder, target, *, dtype=None):
    """The draft in ``folder`` (any kind :func:`load_draft` reads) for ``target``: checked
    against the target's vocabulary, on the target's device, in ``dtype`` (the target's by
    default; fp32 for training), in eval mode. A draft whose manifest says it was trained
    against other weights than ``target``'s is loaded with a warning naming both: it still
    drafts exactly (the target verifies), but its acceptance here can differ from its record."""
    import warnings

    from .models import same_target, target_identity

    param = next(target.parameters())
    draft = load_draft(folder, dtype=dtype or param.dtype, device=param.device, vocab_size=_vocab(target)).eval()
    recorded = recorded_target(folder)
    if same_target(recorded, target) is False:
        name = recorded if isinstance(recorded, str) else recorded.get("id")
        warnings.warn(f"the draft in {Path(folder).name} was trained against {name}; the target here is "
                      f"{target_identity(target)['id']}: it drafts exactly, but its acceptance here can differ "
                      "from its records", stacklevel=2)
    return draft
