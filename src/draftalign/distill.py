"""Distillation: fine-tune a draft on the target's answers with any registered KD loss.

Reads a draft, the target, a distillation dataset (:mod:`draftalign.generate`, columns
``prompt_ids`` and ``response_ids``) and a loss name from :data:`draftalign.losses.LOSSES`;
writes, through :func:`draftalign.train.train`, checkpoints and the distilled draft as a
Hugging Face folder. Chapter 4 runs it once per loss from the same pretrained draft.

The target's distributions are computed online, exactly, in the same batch as the draft's,
or taken from the target's top-k cached with the data (:mod:`draftalign.cached_losses`,
an approximation whose tail is spread flat); only positions whose next token belongs to
the target's answer enter the loss. A draft over a sub-vocabulary (:mod:`draftalign.subvocab`) trains
in its own small space, against the target restricted to its tokens.

:func:`answer_ce` is the plain cross-entropy on the target's answer tokens (sequence-level
KD, Kim and Rush 2016): the reference drafter's last stage trains with it.
"""

from __future__ import annotations


import pandas as pd
import torch

from .cached_losses import CACHED_LOSSES, cached_loss, expand_topk, restrict_topk, topk_top1  # noqa: F401 (re-exported)
from .chat import distill_example
from .losses import check_options, get_loss
from .metrics import tvd_probs
from .subvocab import SubVocabDraft
from .train import Batches, TrainConfig, train

__all__ = ["distill_examples", "expand_topk", "restrict_topk", "answer_logits", "kd_loss_fn", "distill", "train_kd",
           "answer_ce"]


def distill_examples(dataset, *, max_length: int | None = None, topk: dict | None = None) -> list[dict]:
    """Training examples (prompt ids + answer ids, mask on the answer) from a dataset,
    cut to ``max_length`` tokens; rows whose answer would be cut away entirely are dropped.
    With ``topk`` (:func:`draftalign.answers.load_topk`), each example also carries the
    target's cached top-k for its answer tokens (``topk_ids``, ``topk_logprobs``)."""
    out = []
    for row in dataset:
        ex = distill_example(row["prompt_ids"], row["response_ids"])
        if max_length is not None:
            ex = {k: v[:max_length] for k, v in ex.items()}
        n = sum(ex["loss_mask"])
        if n == 0:
            continue
        if topk is not None:
            if row["index"] not in topk:
                raise ValueError(f"no cached top-k for row {row['index']}")
            ids, logprobs = topk[row["index"]]
            first = ex["loss_mask"][0]  # with an empty prompt no position predicts answer token 0
            ex["topk_ids"], ex["topk_logprobs"] = ids[first:n], logprobs[first:n]
        out.append(ex)
    if not out:
        raise ValueError("no usable distillation examples")
    return out


def _sub_vocab_loss(fn, target, draft: SubVocabDraft, batch: dict, options: dict):
    """Loss and stats for a sub-vocabulary draft: the loss against the target restricted to
    the kept tokens and renormalised; TVD and top-1 against the full target (a kept token
    can never match a target token outside the sub-vocabulary)."""
    ids, attn = batch["input_ids"], batch.get("attention_mask")
    pos = batch["loss_mask"][:, 1:].bool()
    K = draft.sub_size
    draft_logits = answer_logits(draft.model, draft.sub_ids(ids), attn, pos)[..., :K]  # [1, n, K]
    with torch.no_grad():
        if "topk_ids" in batch:
            top_ids, top_lp = batch["topk_ids"], batch["topk_logprobs"]
            sub_lp = restrict_topk(top_ids, top_lp, draft.full_vocab_size, draft.to_sub, K)  # [n, K]
            best = topk_top1(top_ids, top_lp)
        else:
            full = answer_logits(target, ids, attn, pos)[0].float().log_softmax(-1)  # [n, V]
            sub_lp, best = full.index_select(-1, draft.keep), full.argmax(-1)
    labels = draft.sub_ids(ids[:, 1:][pos])
    labels = torch.where(labels < K, labels, sub_lp.argmax(-1))  # an answer token outside: the likeliest kept one
    per_pos = fn(draft_logits, sub_lp[None], None, labels=labels[None], **options)  # [1, n]
    with torch.no_grad():
        q, p = draft_logits[0].float().softmax(-1), sub_lp.exp()
        tvd_rows = 0.5 * ((q - p).abs().sum(-1) + (1 - p.sum(-1)).clamp(min=0))  # the mass outside counts too
        agree = draft.keep[q.argmax(-1)] == best
    return _result(per_pos, draft_logits, pos, tvd_rows, agree)


def _tvd_and_agreement(draft_logits, target_logits, chunk: int = 1024):
    """Per row of ``[n, V]`` logits: TVD between the two softmaxes and whether their argmaxes
    agree, a chunk of rows at a time (four fp32 ``[n, V]`` tensors at once would not fit a
    GPU's memory at the ``gpu`` profile's batch)."""
    tvd, agree = [], []
    for start in range(0, draft_logits.shape[0], chunk):
        d, t = draft_logits[start:start + chunk].float(), target_logits[start:start + chunk].float()
        tvd.append(tvd_probs(d.softmax(-1), t.softmax(-1)))
        agree.append(d.argmax(-1) == t.argmax(-1))
    if not tvd:
        return draft_logits.new_zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(tvd), torch.cat(agree)


def _result(per_pos, draft_logits, pos, tvd_rows, agree):
    """The loss (mean over answer positions; a zero that keeps the graph when there are
    none) and the stats every KD loss reports: mean TVD, top-1 agreement, tokens."""
    value = per_pos.mean() if per_pos.numel() else draft_logits.sum() * 0
    with torch.no_grad():
        tvd = tvd_rows.mean() if tvd_rows.numel() else torch.tensor(0.0)
        top1 = agree.float().mean() if agree.numel() else torch.tensor(0.0)
    return value, {"tvd": float(tvd), "top1": float(top1), "tokens": float(pos.sum())}


def answer_logits(model, ids, attention_mask, positions) -> torch.Tensor:
    """Logits ``[1, n, V]`` at the ``n`` positions where ``positions [B, T-1]`` is True.

    The output layer (a ``d x V`` product per position, the largest single cost of a small
    draft) runs only there, not over the prompt. Models whose logits are more than the
    output layer applied to the last hidden state (e.g. with logit soft-capping) take the
    full forward pass instead.
    """
    inner = getattr(model, "module", model)  # the model inside a DDP or FSDP wrapper
    if inner is not model or getattr(inner.config, "final_logit_softcapping", None):
        # through the wrapper's own forward (it synchronises the gradients there): every position
        return model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1][positions][None]
    hidden = model.base_model(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # [B, T, d]
    return model.get_output_embeddings()(hidden[:, :-1][positions])[None]


def kd_loss_fn(target, loss: str, **options):
    """A ``loss_fn(draft, batch) -> (loss, stats)`` for :func:`draftalign.train.train`.

    Position ``t`` predicts token ``t + 1``; it enters the loss when token ``t + 1`` is
    part of the target's answer. Batches that carry the target's cached top-k use the
    closed forms of :mod:`draftalign.cached_losses` when the loss has one (fkl, rkl, tvd,
    exact tvd++): the same values and gradients as the expanded target, without building
    it. Stats: ``tvd`` (mean per-position TVD, so ``1 - tvd`` is the expected acceptance
    of a sampled draft token) and ``top1`` (how often the draft's and the target's most
    likely next tokens agree: the greedy acceptance).
    """
    fn = get_loss(loss)
    check_options(loss, options)
    closed_form = loss in CACHED_LOSSES and options.get("estimator", "exact") == "exact"

    def loss_fn(draft, batch):
        if isinstance(getattr(draft, "module", None), SubVocabDraft):
            raise NotImplementedError("a sub-vocabulary draft trains on one process; use a full-vocabulary "
                                      "draft with several")
        if isinstance(draft, SubVocabDraft):
            return _sub_vocab_loss(fn, target, draft, batch, options)
        ids, attn = batch["input_ids"], batch.get("attention_mask")
        pos = batch["loss_mask"][:, 1:].bool()  # [B, T-1]: the next token is the target's
        labels = ids[:, 1:][pos][None]  # [1, n]
        draft_logits = answer_logits(draft, ids, attn, pos)  # [1, n, V]
        if "topk_ids" in batch and closed_form:  # cached target, closed form: no [n, V] target
            top_ids, top_lp = batch["topk_ids"], batch["topk_logprobs"]
            per_pos, tvd_rows = cached_loss(loss, draft_logits[0], top_ids, top_lp, **options)
            best = topk_top1(top_ids, top_lp)
            return _result(per_pos, draft_logits, pos, tvd_rows, draft_logits[0].argmax(-1) == best)
        with torch.no_grad():
            if "topk_ids" in batch:  # the target's cached top-k, expanded to full logits
                target_logits = expand_topk(batch["topk_ids"], batch["topk_logprobs"],
                                            draft_logits.shape[-1])[None]  # [1, n, V]
            else:
                target_logits = answer_logits(target, ids, attn, pos)  # [1, n, V]
        per_pos = fn(draft_logits, target_logits, None, labels=labels, **options)  # [1, n]
        with torch.no_grad():
            tvd_rows, agree = _tvd_and_agreement(draft_logits[0], target_logits[0])
        return _result(per_pos, draft_logits, pos, tvd_rows, agree)

    return loss_fn


def distill(draft, target, dataset, out_dir, *, loss: str, cfg: TrainConfig, max_length: int = 256,
            eval_dataset=None, loss_options: dict | None = None, pad_id: int = 0, topk: dict | None = None,
            eval_topk: dict | None = None, resume: bool = True, stop_after: int | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Fine-tune ``draft`` in place on ``dataset`` with the KD loss ``loss``; returns the
    training history (loss, tvd, top1, tokens/s; eval columns when ``eval_dataset`` is
    given). The target's distributions are computed online (exact), or taken from a
    cached top-k (``topk``, from :func:`draftalign.answers.load_topk`; approximate,
    several times faster on a CPU). Evaluation uses the exact target, or with ``eval_topk``
    (the held-out rows' cached top-k) the cached one: a held-out curve with many points
    without a target pass at each (its ``eval_tvd`` is then against the cached target).
    Checkpoints, resume and the final Hugging Face folder as in :func:`draftalign.train.train`."""
    data = Batches(distill_examples(dataset, max_length=max_length, topk=topk), pad_id=pad_id, seed=cfg.seed)
    return train_kd(draft, target, data, out_dir, loss=loss, cfg=cfg, max_length=max_length,
                    eval_dataset=eval_dataset, eval_topk=eval_topk, loss_options=loss_options, pad_id=pad_id,
                    resume=resume, stop_after=stop_after, progress=progress, desc=f"distilling ({loss})")


def train_kd(draft, target, data, out_dir, *, loss: str, cfg: TrainConfig, max_length: int | None, eval_dataset,
             eval_topk: dict | None, loss_options: dict | None, pad_id: int, resume: bool, stop_after: int | None,
             progress: bool, desc: str) -> pd.DataFrame:
    """Train ``draft`` on the batches ``data`` with the KD loss ``loss`` against a frozen
    ``target``, with a held-out curve on ``eval_dataset``: what :func:`distill` (the target's
    answers) and :func:`draftalign.onpolicy.distill_on_policy` (the draft's own) share."""
    loss_fn = kd_loss_fn(target, loss, **(loss_options or {}))
    eval_data = None if eval_dataset is None else Batches(
        distill_examples(eval_dataset, max_length=max_length, topk=eval_topk), pad_id=pad_id)
    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return train(draft, data, cfg, out_dir, loss_fn=loss_fn, eval_data=eval_data, resume=resume,
                 stop_after=stop_after, progress=progress, desc=desc)


def answer_ce(draft, batch: dict) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the draft on the target's answer tokens (the output layer runs at
    answer positions only); stats ``top1`` (greedy agreement) and ``tokens``."""
    ids, attn = batch["input_ids"], batch.get("attention_mask")
    pos = batch["loss_mask"][:, 1:].bool()  # [B, T-1]
    logits = answer_logits(draft, ids, attn, pos)[0]  # [n, V]
    labels = ids[:, 1:][pos]  # [n]
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        top1 = (logits.argmax(-1) == labels).float().mean()
    return loss, {"top1": float(top1), "tokens": float(pos.sum())}
