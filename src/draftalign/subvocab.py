"""A draft whose output layer covers only the tokens the target actually uses.

A small draft spends most of its compute in the output layer: ``d x V`` per position, with
``V = 49,152`` for the book's target against a body of a few hundred thousand
parameters. Chat answers use a small part of that vocabulary, so the draft can predict
over a sub-vocabulary ``keep`` (every token of the distillation data) and give every
other token probability 0. Speculative decoding stays exact: the verification rule
accepts or corrects any ``q``, including one that is 0 outside ``keep``; the draft only
loses the positions whose target token lies outside ``keep``.

Reads a full-vocabulary draft and a token list; writes a Hugging Face model folder that
``AutoModelForCausalLM.from_pretrained`` loads (the inner model over ``len(keep) + 1``
rows: the kept tokens, then one row shared by every other input token) plus
``sub_vocab.json`` (the kept ids of the target's vocabulary).
:func:`draftalign.drafts.load_draft` loads either kind of draft folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from .models import SPECIAL_KEYS, cache_kwargs, vocab_size

__all__ = ["SubVocabDraft", "sub_vocabulary", "sub_vocab_draft", "SUB_VOCAB_FILE"]

SUB_VOCAB_FILE = "sub_vocab.json"


def sub_vocabulary(rows, *, topk: dict | None = None, per_position: int = 4, always=()) -> torch.Tensor:
    """The sorted token ids a sub-vocabulary draft keeps: every prompt and answer token of
    ``rows`` (dicts with ``prompt_ids`` and ``response_ids``), the first ``per_position``
    of the target's cached top-k at each answer token (``topk``: ``{index: (ids, logprobs)}``
    from :func:`draftalign.answers.load_topk`; rows then need ``index``), and ``always``
    (e.g. the special tokens)."""
    if per_position < 0:
        raise ValueError(f"per_position must be >= 0, got {per_position}")
    kept = {int(t) for t in always}
    for row in rows:
        kept.update(int(t) for t in row["prompt_ids"])
        kept.update(int(t) for t in row["response_ids"])
        if topk and per_position:
            ids, _ = topk[row["index"]]
            kept.update(ids[:, :per_position].reshape(-1).tolist())
    if not kept:
        raise ValueError("no tokens to keep")
    return torch.tensor(sorted(kept), dtype=torch.long)


class SubVocabDraft(torch.nn.Module):
    """A causal LM over a sub-vocabulary, seen from outside as a model over the target's.

    ``model``: a causal LM with ``len(keep) + 1`` rows: row ``j < K`` is token ``keep[j]``,
    row ``K`` stands for every other token as input and is never predicted. ``forward``
    takes the target's ids and returns logits over the target's ``full_vocab_size`` tokens,
    ``-inf`` outside ``keep`` (probability 0), so speculative decoding, tau and the
    samplers use it like any draft. Training (:func:`draftalign.distill.kd_loss_fn`) stays
    in the small space: :meth:`sub_ids` in, the inner model's ``K`` kept logits out.
    """

    def __init__(self, model, keep: torch.Tensor, full_vocab_size: int):
        super().__init__()
        keep = torch.as_tensor(keep, dtype=torch.long).flatten()
        rows = model.get_input_embeddings().weight.shape[0]
        if rows != len(keep) + 1:
            raise ValueError(f"the inner model has {rows} rows; a sub-vocabulary of {len(keep)} tokens "
                             f"needs {len(keep) + 1} (the kept tokens and one for all others)")
        if len(keep) and (int(keep.min()) < 0 or int(keep.max()) >= full_vocab_size):
            raise ValueError(f"kept ids must lie in [0, {full_vocab_size})")
        if len(torch.unique(keep)) != len(keep):
            raise ValueError("kept ids must be distinct")
        self.model = model
        self.full_vocab_size = int(full_vocab_size)
        self.register_buffer("keep", keep.clone())
        to_sub = torch.full((full_vocab_size,), len(keep), dtype=torch.long)
        to_sub[keep] = torch.arange(len(keep))
        self.register_buffer("to_sub", to_sub)

    # what speculative decoding and the trainers read from a model
    @property
    def config(self):
        return self.model.config

    @property
    def generation_config(self):
        return self.model.generation_config

    @generation_config.setter
    def generation_config(self, value):
        self.model.generation_config = value

    @property
    def device(self) -> torch.device:
        return self.keep.device

    @property
    def sub_size(self) -> int:
        return len(self.keep)

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def sub_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The target's ids as rows of the inner model (``K`` for any token outside ``keep``)."""
        return self.to_sub[input_ids]

    def full_logits(self, sub_logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., K]`` over the kept tokens as logits over the full vocabulary (``-inf`` elsewhere)."""
        full = sub_logits.new_full((*sub_logits.shape[:-1], self.full_vocab_size), float("-inf"))
        return full.index_copy_(-1, self.keep, sub_logits[..., :self.sub_size])

    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None, logits_to_keep=0, **kwargs):
        """The inner model's output with ``logits`` over the full vocabulary."""
        if cache is None:
            cache = kwargs.pop("past_key_values", None)
        extra = cache_kwargs(self.model, cache) if cache is not None else {}
        out = self.model(input_ids=self.sub_ids(input_ids), attention_mask=attention_mask, use_cache=use_cache,
                         logits_to_keep=logits_to_keep, **extra, **kwargs)
        out.logits = self.full_logits(out.logits)
        return out

    def save_pretrained(self, folder, **kwargs) -> None:
        """The inner model as a Hugging Face folder, and ``sub_vocab.json`` beside it."""
        folder = Path(folder)
        self.model.save_pretrained(folder, **kwargs)
        (folder / SUB_VOCAB_FILE).write_text(json.dumps(
            {"full_vocab_size": self.full_vocab_size, "keep": self.keep.tolist(),
             "note": "row j of this model is token keep[j] of the full vocabulary; the last row "
                     "stands for every other token; draftalign.drafts.load_draft restores the mapping"}))


def sub_vocab_draft(draft, keep: torch.Tensor) -> SubVocabDraft:
    """A :class:`SubVocabDraft` initialised from a full-vocabulary ``draft``: the same body,
    the kept rows of its embeddings (and output layer, if untied), and their mean as the
    row of all other tokens. ``draft`` is left unchanged."""
    keep = torch.as_tensor(keep, dtype=torch.long).flatten()
    V = vocab_size(draft)
    config = draft.config.__class__.from_dict(draft.config.to_dict())
    config.vocab_size = len(keep) + 1
    to_sub = {int(t): j for j, t in enumerate(keep.tolist())}
    for name in SPECIAL_KEYS:
        value = getattr(config, name, None)
        if isinstance(value, int):
            setattr(config, name, to_sub.get(value))
        elif isinstance(value, (list, tuple)):
            setattr(config, name, [to_sub[v] for v in value if v in to_sub] or None)
    param = next(draft.parameters())
    inner = AutoModelForCausalLM.from_config(config).to(device=param.device, dtype=param.dtype)
    state = dict(draft.state_dict())

    def rows(weight):
        return torch.cat([weight[keep.to(weight.device)], weight.mean(0, keepdim=True)])

    emb = draft.get_input_embeddings().weight
    out_layer = draft.get_output_embeddings()
    for key, value in state.items():
        if value.data_ptr() == emb.data_ptr() or (out_layer is not None
                                                  and value.data_ptr() == out_layer.weight.data_ptr()):
            state[key] = rows(value)
    missing, unexpected = inner.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ValueError(f"the draft's weights do not fit its sub-vocabulary copy: missing {missing}, "
                         f"unexpected {unexpected}")
    if getattr(draft, "generation_config", None) is not None:
        inner.generation_config = draft.generation_config
    return SubVocabDraft(inner, keep, V).to(param.device).train(draft.training)
